"""`python -m gpt2serve.acceptance`: check and measure everything on a GPU; one report.

  python -m gpt2serve.acceptance --out results/acceptance        # ~8 minutes on an H100/H200
  python -m gpt2serve.acceptance --quick --out results/quick     # ~3 minutes
  python -m gpt2serve.acceptance --cpu-dry-run --out /tmp/dry    # every step, tiny, on CPU

Exit status: 0 when every correctness step passed, 1 when one failed (or crashed, or ran out of
time), 2 when there is nothing to run (no CUDA device without --cpu-dry-run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from gpt2serve.acceptance import report
from gpt2serve.acceptance.plan import TIME_LIMITS, steps_for
from gpt2serve.acceptance.runner import run_steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m gpt2serve.acceptance", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/acceptance"))
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="a ~3 minute subset")
    modes.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--steps", help="comma-separated step names to run (default: all)")
    parser.add_argument("--time-limit", type=float, help="seconds for the whole run")
    parser.add_argument(
        "--tests", type=Path, default=Path("tests"), help="the repository's tests (pytest -m gpu)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the plan, write the report, print its table; the exit status as documented."""
    args = parse_args(argv)
    mode = "cpu" if args.cpu_dry_run else "quick" if args.quick else "full"
    if mode != "cpu":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: nothing to accept here (--cpu-dry-run exercises the script "
                  "on the CPU)", file=sys.stderr)  # fmt: skip
            return 2
    steps = steps_for(mode, args.steps.split(",") if args.steps else None)
    tests_dir = args.tests.resolve() if args.tests.is_dir() else None
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "steps.log"
    log_path.write_text("")
    started = time.monotonic()

    def save(results: list) -> None:  # after every step: a killed run still leaves its report
        report.write(results, mode, time.monotonic() - started, args.out)

    with tempfile.TemporaryDirectory(prefix="gpt2serve-acceptance-") as scratch:
        results = run_steps(
            steps, mode, Path(scratch), log_path, args.time_limit or TIME_LIMITS[mode],
            tests_dir, on_result=save,
        )  # fmt: skip
    print(report.write(results, mode, time.monotonic() - started, args.out))
    return 1 if report.failed_correctness(results) else 0


if __name__ == "__main__":
    sys.exit(main())
