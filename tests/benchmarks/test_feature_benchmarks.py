"""The benchmarks behind issues 15-17 run end to end at tiny sizes and report what they claim."""

from __future__ import annotations

import re

import pytest

from gpt2serve.benchmarks import beam_search, prefill_stall, structured_output


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ][1:]


def test_prefill_stall_reports_each_budget(capsys: pytest.CaptureFixture[str]) -> None:
    prefill_stall.main(["--model", "random:tiny", "--budgets", "32", "64", "--rounds", "1",
                        "--prompt-len", "200"])  # fmt: skip
    out = capsys.readouterr().out
    assert "default budget on this machine: 2048" in out  # tiny: 3.4M parameters
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["32", "64"]
    assert all(float(cell) > 0 for row in rows for cell in row[1:])


def test_beam_search_benchmark_shows_shared_prompt_blocks(capsys) -> None:
    beam_search.main(["--model", "random:tiny", "--beams", "4", "--prompt-len", "160",
                      "--max-tokens", "8", "--rounds", "1"])  # fmt: skip
    rows = {row[0]: row for row in table_rows(capsys.readouterr().out)}
    beams, sampled = int(rows["beam search k=4"][1]), int(rows["4 sampled requests"][1])
    assert beams < sampled / 2  # the 10 prompt blocks once, not four times


def test_structured_output_benchmark_measures_the_mask_cost(capsys) -> None:
    pytest.importorskip("xgrammar")
    structured_output.main(["--model", "random:tiny", "--batches", "1", "4", "--steps", "3",
                            "--rounds", "1"])  # fmt: skip
    rows = table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["1 (1)", "4 (2)"]
    assert all(float(row[4]) > 0 for row in rows)  # the constrained rows filled masks
    assert all(re.fullmatch(r"[+-]\d+\.\d%", row[3]) for row in rows)
