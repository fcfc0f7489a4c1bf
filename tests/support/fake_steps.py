"""Step functions for testing the acceptance runner: each misbehaves in its own way."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement, StepSkipped


def fine(ctx: StepContext) -> Iterator[Measurement]:
    """Two measurements, one with a target it meets."""
    yield Measurement("first", "1", numbers={"x": 1})
    yield Measurement("second", "2", "2", True)


def misses(ctx: StepContext) -> Iterator[Measurement]:
    """A target missed: fails a correctness step, only reports in a performance step."""
    yield Measurement("wrong", "3", "4", False)


def hangs(ctx: StepContext) -> Iterator[Measurement]:
    """One measurement, then a child process and a hang: the budget must end both."""
    yield Measurement("before the hang", "ok")
    child = subprocess.Popen(["sleep", "1000"])
    (ctx.scratch.parent / "child.pid").write_text(str(child.pid))
    time.sleep(1000)


def raises(ctx: StepContext) -> Iterator[Measurement]:
    """A Python error after one measurement."""
    yield Measurement("before the error", "ok")
    raise RuntimeError("simulated CUDA failure")


def dies(ctx: StepContext) -> Iterator[Measurement]:
    """The process ends abruptly, as a crash in native code would end it."""
    yield Measurement("before the crash", "ok")
    os._exit(7)


def skips(ctx: StepContext) -> Iterator[Measurement]:
    """Cannot run here."""
    raise StepSkipped("no such device here")
    yield  # pragma: no cover - makes this a generator
