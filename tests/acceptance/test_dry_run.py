"""The whole acceptance script on the CPU (`--cpu-dry-run`), as CI runs it on every commit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpt2serve.acceptance.plan import steps_for

REPO = Path(__file__).resolve().parents[2]


def test_cpu_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "gpt2serve.acceptance", "--cpu-dry-run", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "steps.log"]
    data = json.loads((out / "report.json").read_text())
    statuses = {s["step"]: s["status"] for s in data["steps"]}
    assert list(statuses) == [s.name for s in steps_for("cpu")]  # no cross-step targets on CPU
    # What runs on a CPU passes; what needs CUDA says so.
    for step in ("environment", "correctness", "kv-sizing", "engine", "http", "engine-xl",
                 "hf-compiled"):  # fmt: skip
        assert statuses[step] == "pass", (step, data["steps"])
    skipped = {s["step"]: s["detail"] for s in data["steps"] if s["status"] == "skipped"}
    assert set(skipped) == {"gpu-tests", "kernels"}
    assert "all skipped" in skipped["gpu-tests"] and "needs CUDA" in skipped["kernels"]
    assert data["correctness_failed"] == []
    correctness = next(s for s in data["steps"] if s["step"] == "correctness")
    assert [m["met"] for m in correctness["measurements"]] == [True, True, None]
    table = (out / "report.md").read_text()
    assert table in done.stdout  # the table is printed at the end
    for step in statuses:
        assert f"| {step} |" in table
    assert "Correctness: all passed." in table
