"""Run the plan: each step in a process of its own, under its budget and the run's time limit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gpt2serve.acceptance.plan import Step
from gpt2serve.acceptance.results import StepResult

MIN_STEP_SECONDS = 5.0  # below this a step is not started: it is reported as out of time


def run_steps(
    steps: list[Step],
    mode: str,
    scratch: Path,
    log_path: Path,
    time_limit: float,
    tests_dir: Path | None = None,
    on_result: Callable[[list[StepResult]], None] | None = None,
) -> list[StepResult]:
    """Every step in order; a failure, crash or timeout of one never stops the next."""
    deadline = time.monotonic() + time_limit
    results: list[StepResult] = []
    for step in steps:
        remaining = deadline - time.monotonic()
        if remaining < MIN_STEP_SECONDS:
            detail = f"not started: the run's {time_limit:.0f} s time limit was reached"
            results.append(StepResult(step.name, step.kind, "timeout", detail=detail))
        else:
            budget = min(step.budgets[mode], remaining)
            results.append(run_step(step, mode, scratch, log_path, budget, tests_dir))
        if on_result is not None:
            on_result(results)
    return results


def run_step(
    step: Step, mode: str, scratch: Path, log_path: Path, budget: float, tests_dir: Path | None
) -> StepResult:
    """One step in a subprocess (its own process group, so nothing it starts outlives it)."""
    folder = scratch / step.name
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    command = [sys.executable, "-m", "gpt2serve.acceptance.step", step.function, step.name,
               step.kind, mode, str(folder), str(result_path)]  # fmt: skip
    if tests_dir is not None:
        command += ["--tests", str(tests_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if mode == "cpu":  # the Triton kernels run in the interpreter (read when they are decorated)
        env.setdefault("TRITON_INTERPRET", "1")
    started = time.monotonic()
    step_log = folder / "log.txt"
    with step_log.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            process.wait(timeout=budget)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(process)
    seconds = time.monotonic() - started
    _append_log(log_path, step.name, step_log)
    return _collect(step, result_path, step_log, seconds, budget, timed_out, process.returncode)


def _kill_group(process: subprocess.Popen) -> None:
    """End the step and anything it started (a server, pytest), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _collect(
    step: Step, result_path: Path, step_log: Path, seconds: float, budget: float,
    timed_out: bool, returncode: int | None,
) -> StepResult:  # fmt: skip
    """The step's own result file if it wrote one; else what its exit says."""
    result = None
    if result_path.exists():
        try:
            result = StepResult.from_json(json.loads(result_path.read_text()))
        except (ValueError, TypeError):
            result = None
    if timed_out:
        done = result.measurements if result else []
        detail = f"stopped at its {budget:.0f} s budget after {len(done)} measurement(s)"
        return StepResult(step.name, step.kind, "timeout", seconds, done, detail)
    if result is None or (result.status == "timeout" and returncode != 0):
        tail = step_log.read_text(errors="replace")[-1500:]
        done = result.measurements if result else []
        detail = f"the step's process exited with {returncode}: {tail}"
        return StepResult(step.name, step.kind, "error", seconds, done, detail)
    result.seconds = seconds  # wall time, process start-up included
    return result


def _append_log(log_path: Path, name: str, step_log: Path) -> None:
    """One log for the whole run (a device returns few files): each step's output in turn."""
    with log_path.open("a") as log:
        log.write(f"\n===== {name} =====\n")
        log.write(step_log.read_text(errors="replace"))
