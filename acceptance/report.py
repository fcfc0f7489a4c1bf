"""The run's report: one JSON and one Markdown table, plus the targets that span steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gpt2serve.acceptance import targets
from gpt2serve.acceptance.results import FAILING, Measurement, StepResult, find_number


def cross_step_targets(results: list[StepResult]) -> StepResult | None:
    """Targets that compare two steps: our offline throughput against HF compiled."""
    ours = find_number(results, "engine", "tok_s")
    theirs = find_number(results, "hf-compiled", "tok_s")
    if ours is None or theirs is None:
        return None
    ratio = ours / theirs
    measurement = Measurement(
        "offline throughput, gpt2serve / HF static cache + torch.compile",
        f"{ratio:.2f}x ({ours:,.0f} vs {theirs:,.0f} tok/s)",
        f">= {targets.THROUGHPUT_VS_HF_COMPILED:.0f}x",
        ratio >= targets.THROUGHPUT_VS_HF_COMPILED,
        {"ratio": ratio},
    )
    return StepResult("targets", "performance", "pass", 0.0, [measurement])


def failed_correctness(results: list[StepResult]) -> list[str]:
    """Correctness steps that failed, crashed or ran out of time."""
    return [r.step for r in results if r.kind == "correctness" and r.status in FAILING]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: list[StepResult], mode: str, seconds: float) -> str:
    """One table: a row per measurement (or per step that measured nothing)."""
    lines = [
        f"# gpt2serve acceptance ({mode}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| step | status | measurement | value | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        head = f"| {result.step} | {result.status} ({result.seconds:.0f} s) |"
        if not result.measurements:
            lines.append(f"{head} {_cell(result.detail)[:300]} | | | |")
        for m in result.measurements:
            met = {True: "yes", False: "**no**", None: ""}[m.met]
            value = f"skipped: {m.skipped}" if m.skipped else m.value
            lines.append(f"{head} {_cell(m.name)} | {_cell(value)} | {_cell(m.target)} | {met} |")
    failed = failed_correctness(results)
    missed = [
        m.name
        for r in results
        for m in r.measurements
        if r.kind == "performance" and m.met is False
    ]
    lines += ["", f"Total {seconds:.0f} s."]
    lines.append(f"Correctness: {'FAILED: ' + ', '.join(failed) if failed else 'all passed'}.")
    lines.append(
        f"Speed targets missed: {len(missed)}" + (f" ({'; '.join(missed)})." if missed else ".")
    )
    details = [f"- {r.step}: {_cell(r.detail)}" for r in results if r.detail and r.measurements]
    if details:
        lines += ["", "Details:", *details]
    return "\n".join(lines) + "\n"


def write(results: list[StepResult], mode: str, seconds: float, out: Path) -> str:
    """Write report.json and report.md into `out`; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    everything = list(results)
    derived = None if mode == "cpu" else cross_step_targets(results)  # tiny shapes hold nothing
    if derived is not None:
        everything.append(derived)
    text = markdown(everything, mode, seconds)
    payload = {
        "mode": mode,
        "seconds": seconds,
        "correctness_failed": failed_correctness(results),
        "steps": [r.to_json() for r in everything],
    }
    (out / "report.json").write_text(json.dumps(payload, indent=2))
    (out / "report.md").write_text(text)
    return text
