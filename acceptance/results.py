"""What a step reports: measurements, each against its target, and the step's status."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["info", "correctness", "performance"]
Status = Literal["pass", "fail", "error", "timeout", "skipped"]
# A correctness step in one of these states makes the whole run fail.
FAILING: tuple[Status, ...] = ("fail", "error", "timeout")


class StepSkipped(Exception):
    """Raised by a step that cannot run here; the message says why."""


@dataclass
class Measurement:
    """One figure: what was measured, its value as shown, and the target it is held to."""

    name: str
    value: str
    target: str = ""
    met: bool | None = None  # None: nothing to meet, or not measured
    numbers: dict[str, Any] = field(default_factory=dict)  # raw values for the JSON report
    skipped: str = ""  # why it could not be measured here

    @classmethod
    def skip(cls, name: str, reason: str, target: str = "") -> Measurement:
        """A measurement this machine cannot take."""
        return cls(name, "skipped", target, None, {}, reason)


@dataclass
class StepResult:
    """The outcome of one step."""

    step: str
    kind: Kind
    status: Status
    seconds: float = 0.0
    measurements: list[Measurement] = field(default_factory=list)
    detail: str = ""  # why it was skipped, or how it failed

    def to_json(self) -> dict[str, Any]:
        """A plain dict for json.dump."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        """The inverse of `to_json`."""
        measurements = [Measurement(**m) for m in data.get("measurements", [])]
        return cls(**{**data, "measurements": measurements})


def status_of(kind: Kind, measurements: list[Measurement]) -> Status:
    """A finished step's status: a correctness step fails on any target missed.

    Performance targets are reported (met or missed), never a failure of the run.
    """
    if measurements and all(m.skipped for m in measurements):
        return "skipped"
    if kind == "correctness" and any(m.met is False for m in measurements):
        return "fail"
    return "pass"


def find_number(results: list[StepResult], step: str, key: str) -> float | None:
    """A raw number some step recorded under `key`, if it ran."""
    for result in results:
        if result.step == step:
            for measurement in result.measurements:
                if key in measurement.numbers:
                    return measurement.numbers[key]
    return None
