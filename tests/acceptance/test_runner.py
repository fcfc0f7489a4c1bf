"""The runner: every step in its own process; no misbehaving step stops the run or leaks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gpt2serve.acceptance import report
from gpt2serve.acceptance.plan import Step
from gpt2serve.acceptance.runner import run_steps

TESTS = Path(__file__).resolve().parents[1]


def fake(name: str, kind: str, function: str, budget: float = 60) -> Step:
    return Step(name, kind, f"support.fake_steps:{function}", {"full": budget})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def importable_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step processes import `support.fake_steps` from the tests folder."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )


def test_each_failure_stays_in_its_step(tmp_path: Path) -> None:
    steps = [
        fake("ok", "correctness", "fine"),
        fake("hang", "performance", "hangs", budget=4),
        fake("boom", "correctness", "raises"),
        fake("crash", "performance", "dies"),
        fake("absent", "correctness", "skips"),
        fake("wrong", "correctness", "misses"),
        fake("slow", "performance", "misses"),
    ]
    seen: list[int] = []
    started = time.monotonic()
    results = run_steps(
        steps, "full", tmp_path, tmp_path / "run.log", 120, on_result=lambda r: seen.append(len(r))
    )
    assert time.monotonic() - started < 60
    by_name = {r.step: r for r in results}
    assert [r.step for r in results] == [s.name for s in steps] and seen == list(range(1, 8))
    assert by_name["ok"].status == "pass" and len(by_name["ok"].measurements) == 2
    hang = by_name["hang"]
    assert hang.status == "timeout" and [m.name for m in hang.measurements] == ["before the hang"]
    assert "4 s budget" in hang.detail
    child = int((tmp_path / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the hanging step's own child went with it
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)
    assert by_name["boom"].status == "error" and "simulated CUDA failure" in by_name["boom"].detail
    assert by_name["boom"].measurements[0].name == "before the error"
    assert by_name["crash"].status == "error" and "exited with 7" in by_name["crash"].detail
    assert (
        by_name["absent"].status == "skipped" and by_name["absent"].detail == "no such device here"
    )
    assert by_name["wrong"].status == "fail"  # a correctness target missed
    assert by_name["slow"].status == "pass"  # a performance target missed is reported, not failed
    assert report.failed_correctness(results) == ["boom", "wrong"]
    log = (tmp_path / "run.log").read_text()
    assert "===== boom =====" in log and "RuntimeError: simulated CUDA failure" in log


def test_the_time_limit_stops_starting_steps(tmp_path: Path) -> None:
    steps = [fake("hang", "correctness", "hangs", budget=30), fake("next", "correctness", "fine")]
    results = run_steps(steps, "full", tmp_path, tmp_path / "run.log", time_limit=6)
    assert [r.status for r in results] == ["timeout", "timeout"]
    assert "time limit" in results[1].detail
    assert report.failed_correctness(results) == ["hang", "next"]


def test_the_report_is_one_table_with_verdicts(tmp_path: Path) -> None:
    steps = [fake("ok", "correctness", "fine"), fake("wrong", "correctness", "misses"),
             fake("absent", "performance", "skips")]  # fmt: skip
    results = run_steps(steps, "full", tmp_path, tmp_path / "run.log", 120)
    text = report.write(results, "full", 12.0, tmp_path / "out")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| step | status | measurement | value | target | met |"
    assert all(row.count("|") == 7 for row in rows), rows
    assert "| wrong | fail" in text and "| **no** |" in text and "no such device here" in text
    assert "Correctness: FAILED: wrong." in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]
