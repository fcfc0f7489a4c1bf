"""The offline benchmark runs end to end at a tiny size and reports consistent numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2serve.benchmarks import engine as bench

pytest.importorskip("transformers")


def test_bench_reports_both_systems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    bench.main(
        ["--model", "random:tiny", "--num-prompts", "3", "--input-len", "5", "--output-len", "4",
         "--batch1-steps", "2", "--num-kv-blocks", "64", "--hf", "--json", str(out)]
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert [r["system"] for r in results] == ["gpt2serve", "hf-transformers (eager)"]
    for result in results:
        assert result["generated_tokens"] == 3 * 4
        assert result["seconds"] > 0 and result["batch1_ms_per_step"] > 0
        expected_rate = result["generated_tokens"] / result["seconds"]
        assert result["tokens_per_second"] == pytest.approx(expected_rate)
    table = capsys.readouterr().out
    assert "| gpt2serve |" in table and "| hf-transformers (eager) |" in table
    assert "1.00x" in table  # the first row is the baseline of the ratio column


def test_format_table_ratio_is_ours_over_theirs() -> None:
    ours = bench.BenchResult("gpt2serve", 1.0, 100, 100.0, 1.0)
    theirs = bench.BenchResult("hf", 4.0, 100, 25.0, 5.0)
    rows = bench.format_table([ours, theirs]).splitlines()
    assert rows[-1].endswith("| 4.00x |")
