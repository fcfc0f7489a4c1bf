"""The steps of an acceptance run, in order of importance, and their time budgets per mode.

Modes: `full` (about 8 minutes on one H100/H200), `quick` (about 3), and `cpu` (the dry run:
tiny shapes on the CPU, for CI). A step without a budget for a mode does not run in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt2serve.acceptance.results import Kind

MODES = ("full", "quick", "cpu")
TIME_LIMITS = {"full": 480.0, "quick": 200.0, "cpu": 600.0}  # the whole run, seconds


@dataclass(frozen=True)
class Step:
    """One step: what it checks, where its code is, and its budget (seconds) per mode."""

    name: str
    kind: Kind
    function: str  # "module:function", called with a StepContext
    budgets: dict[str, float]


A = "gpt2serve.acceptance"
# Budgets are ceilings, sized from what each step does on an H100/H200 (Triton compiles, CUDA
# graph capture at 20 batch sizes, random init of gpt2-xl on the CPU); the run's time limit
# cuts the last steps first, and they are ordered so that what matters most runs first.
STEPS = [
    Step("environment", "info", f"{A}.env_info:run", {"full": 20, "quick": 15, "cpu": 60}),
    Step("correctness", "correctness", f"{A}.correctness:run",
         {"full": 90, "quick": 50, "cpu": 120}),
    Step("kv-sizing", "correctness", f"{A}.kv_sizing:run", {"full": 45, "quick": 30, "cpu": 60}),
    Step("gpu-tests", "correctness", f"{A}.gpu_tests:run", {"full": 100, "cpu": 120}),
    Step("kernels", "performance", f"{A}.kernel_speed:run", {"full": 75, "quick": 35, "cpu": 60}),
    Step("engine", "performance", f"{A}.engine_speed:run", {"full": 75, "quick": 40, "cpu": 90}),
    Step("http", "performance", f"{A}.http_load:run", {"full": 90, "quick": 50, "cpu": 120}),
    Step("structured-output", "performance", f"{A}.structured:run",
         {"full": 40, "quick": 30, "cpu": 60}),
    Step("engine-xl", "performance", f"{A}.engine_speed:run_xl", {"full": 60, "cpu": 60}),
    Step("hf-compiled", "performance", f"{A}.engine_speed:run_hf_compiled",
         {"full": 90, "cpu": 150}),
]  # fmt: skip


def steps_for(mode: str, only: list[str] | None = None) -> list[Step]:
    """The steps that run in `mode` (optionally only those named), in order."""
    chosen = [s for s in STEPS if mode in s.budgets]
    if only:
        unknown = set(only) - {s.name for s in STEPS}
        if unknown:
            raise ValueError(f"unknown steps: {sorted(unknown)}; steps: {[s.name for s in STEPS]}")
        chosen = [s for s in chosen if s.name in only]
    return chosen


@dataclass(frozen=True)
class StepContext:
    """What a step function is given."""

    mode: str
    scratch: Path  # a folder of its own for temporary files
    tests_dir: Path | None  # the repository's tests, for `pytest -m gpu`

    @property
    def dry_run(self) -> bool:
        """The CPU dry run: tiny shapes, no CUDA."""
        return self.mode == "cpu"

    @property
    def device(self) -> str:
        """Where models and tensors go."""
        return "cpu" if self.dry_run else "cuda"
