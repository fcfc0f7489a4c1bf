"""Step `gpu-tests`: every test marked `gpu` (`pytest -m gpu`), pass or fail per test.

Only the test files that hold GPU tests are collected, so a package the other tests need
(schemathesis, openai, ...) and that a GPU node lacks cannot stop the run.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement, StepSkipped

GPU_MARKERS = ("pytest.mark.gpu", "mark.gpu")


def gpu_test_files(tests_dir: Path) -> list[Path]:
    """Test modules that mark something `gpu`."""
    return sorted(
        path
        for path in tests_dir.rglob("test_*.py")
        if any(marker in path.read_text(errors="replace") for marker in GPU_MARKERS)
    )


def read_junit(path: Path) -> list[tuple[str, str, str]]:
    """(test id, outcome, message) of every test case in a JUnit XML report."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "pass", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "fail", "error": "error", "skipped": "skipped"}[child.tag]
                message = (
                    (child.get("message") or "").splitlines()[0][:200]
                    if child.get("message")
                    else ""
                )
                break
        cases.append((test_id, outcome, message))
    return cases


def run(ctx: StepContext) -> Iterator[Measurement]:
    """Run pytest on the GPU test files; one measurement per test."""
    if ctx.tests_dir is None:
        raise StepSkipped("no tests folder: run from the repository root, or pass --tests DIR")
    files = gpu_test_files(ctx.tests_dir)
    if not files:
        raise StepSkipped(f"no test in {ctx.tests_dir} is marked gpu")
    report = ctx.scratch / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               f"--junitxml={report}", *map(str, files)]  # fmt: skip
    done = subprocess.run(command, cwd=ctx.tests_dir.parent, capture_output=True, text=True)
    print(done.stdout[-20000:], done.stderr[-5000:], sep="\n")
    if not report.exists():
        raise RuntimeError(f"pytest exited with {done.returncode} and wrote no report")
    cases = read_junit(report)
    if cases and all(outcome == "skipped" for _, outcome, _ in cases):
        raise StepSkipped(f"{len(cases)} GPU tests collected, all skipped: {cases[0][2]}")
    if not cases:
        raise RuntimeError(f"pytest ran no test (exit {done.returncode})")
    for test_id, outcome, message in cases:
        met = None if outcome == "skipped" else outcome == "pass"
        yield Measurement(test_id, outcome + (f": {message}" if message else ""), "pass", met)
