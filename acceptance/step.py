"""One step in its own process, started by the runner; not meant to be run by hand.

Step functions are generators of `Measurement`s: the result file is rewritten after each one,
so a step stopped at its time budget still leaves what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement, StepResult, StepSkipped, status_of

StepFunction = Callable[[StepContext], Iterator[Measurement]]


def resolve(function: str) -> StepFunction:
    """`module:function` -> the function."""
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


def execute(function: str, name: str, kind: str, ctx: StepContext, result_path: Path) -> StepResult:
    """Run the step, writing its result (partial, then final) to `result_path`."""
    started = time.perf_counter()
    result = StepResult(name, kind, "timeout")  # what a killed step leaves behind  # type: ignore[arg-type]

    def save() -> None:
        result.seconds = time.perf_counter() - started
        result_path.write_text(json.dumps(result.to_json(), indent=2))

    save()
    try:
        for measurement in resolve(function)(ctx):
            result.measurements.append(measurement)
            print(f"[{name}] {measurement.name}: {measurement.value}", flush=True)
            save()
        result.status = status_of(result.kind, result.measurements)
    except StepSkipped as exc:
        result.status, result.detail = "skipped", str(exc)
    except Exception as exc:  # the step failed; the run goes on
        traceback.print_exc()
        lines = traceback.format_exception(exc)
        result.status, result.detail = "error", "".join(lines[-3:]).strip()[-1500:]
    save()
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse the runner's arguments and execute the step."""
    parser = argparse.ArgumentParser(description="one acceptance step (started by the runner)")
    for argument in ("function", "name", "kind", "mode", "scratch", "result"):
        parser.add_argument(argument)
    parser.add_argument("--tests", type=Path)
    args = parser.parse_args(argv)
    ctx = StepContext(args.mode, Path(args.scratch), args.tests)
    execute(args.function, args.name, args.kind, ctx, Path(args.result))


if __name__ == "__main__":
    main()
