"""`python -m loadtest`: streaming load against any OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gpt2serve.loadtest.report import format_summary, save_json, save_plot
from gpt2serve.loadtest.runner import run_load
from gpt2serve.loadtest.workload import build_requests


def _numbers(text: str, kind: type) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    p = argparse.ArgumentParser(prog="gpt2serve-loadtest", description=__doc__)
    p.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="the server, with or without /v1"
    )
    p.add_argument("--model", required=True, help="model name the server serves")
    p.add_argument("--api-key", default=None)
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument(
        "--concurrency", default=None, help="closed loop; comma list sweeps, e.g. 1,4,16"
    )
    p.add_argument(
        "--request-rate", default="inf", help="open loop req/s (Poisson); comma list sweeps"
    )
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in ±ratio")
    p.add_argument("--prompt-format", choices=["ids", "text"], default="ids")
    p.add_argument("--max-context", type=int, default=1024)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-requests", type=int, default=2)
    p.add_argument("--result-json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="PNG of latency/throughput vs load")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_points(args: argparse.Namespace) -> tuple[str, list]:
    if args.concurrency:
        return "concurrency", _numbers(args.concurrency, int)
    return "request_rate", _numbers(args.request_rate, float)


async def _run(args: argparse.Namespace) -> int:
    specs = build_requests(
        args.num_requests, args.input_len, args.output_len, args.range_ratio,
        args.prompt_format, args.seed, args.max_context,
    )  # fmt: skip
    if args.warmup_requests:
        await run_load(args.base_url, args.model, specs[: args.warmup_requests], progress=False,
                       api_key=args.api_key, ignore_eos=args.ignore_eos)  # fmt: skip
    load_key, points = _load_points(args)
    runs = []
    failed = 0
    for point in points:
        settings = {
            **{k: v for k, v in vars(args).items() if not isinstance(v, Path)},
            load_key: point,
        }
        summary, _ = await run_load(
            args.base_url, args.model, specs,
            concurrency=point if load_key == "concurrency" else None,
            request_rate=point if load_key == "request_rate" else float("inf"),
            ignore_eos=args.ignore_eos, api_key=args.api_key, seed=args.seed,
            progress=not args.no_progress,
        )  # fmt: skip
        print(format_summary(summary, f"({load_key}={point}) "))
        runs.append((settings, summary))
        failed += summary.failed
    if args.result_json:
        save_json(args.result_json, runs)
    if args.plot:
        save_plot(args.plot, runs, load_key)
    return 1 if failed and all(s.completed == 0 for _, s in runs) else 0


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        sys.exit(asyncio.run(_run(args)))
    except ValueError as exc:
        sys.exit(f"gpt2serve-loadtest: {exc}")


if __name__ == "__main__":
    main()
