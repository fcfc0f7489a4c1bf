"""The pieces of the steps that decide verdicts: greedy comparison, JUnit parsing, the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2serve.acceptance import __main__ as cli
from gpt2serve.acceptance.correctness import compare
from gpt2serve.acceptance.gpu_tests import gpu_test_files, read_junit
from gpt2serve.acceptance.plan import STEPS, steps_for
from gpt2serve.acceptance.results import Measurement, StepResult, status_of
from gpt2serve.server.core.messages import RequestOutput, TokenLogprobs

REPO = Path(__file__).resolve().parents[2]


def outputs(tokens: list[int], tops: list[dict[int, float]] | None = None) -> list[RequestOutput]:
    """One delta per token; `tops[i]` is the distribution's top entries at token i."""
    result = []
    for i, token in enumerate(tokens):
        top = tops[i] if tops else {token: -0.1}
        entry = TokenLogprobs(token, top.get(token, -9.0), sorted(top.items(), key=lambda t: -t[1]))
        result.append(RequestOutput("r", 0, "", [token], False, None, None, 1, i + 1, [entry]))
    return result


def test_identical_runs() -> None:
    parity = compare({"a": outputs([1, 2, 3])}, {"a": outputs([1, 2, 3])}, tie=1e-4)
    assert (parity.identical, parity.near_ties, parity.mismatches) == (1, [], [])


def test_a_divergence_at_a_near_tie_is_allowed_and_listed() -> None:
    reference = outputs([1, 2, 3], [{1: -0.1}, {2: -0.50000, 5: -0.50003}, {3: -0.2}])
    parity = compare({"a": outputs([1, 5, 9])}, {"a": reference}, tie=1e-4)
    assert parity.identical == 0 and parity.mismatches == []
    assert parity.near_ties == ["a@1: 2 vs 5 (3.0e-05 nats)"]


def test_a_real_divergence_is_a_mismatch() -> None:
    reference = outputs([1, 2], [{1: -0.1}, {2: -0.2, 5: -1.7}])
    parity = compare({"a": outputs([1, 5])}, {"a": reference}, tie=0.05)
    assert parity.mismatches == ["a@1: 2 vs 5 (1.5 nats)"]
    far = compare({"a": outputs([1, 8])}, {"a": reference}, tie=0.05)
    assert far.mismatches == ["a@1: 2 vs 8 (not in the reference's top 5)"]


def test_read_junit(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.kernels.test_x" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.kernels.test_x" name="test_bad">'
        '<failure message="assert 1 == 2&#10;more"/></testcase>'
        '<testcase classname="tests.engine.test_y" name="test_gpu">'
        '<skipped message="needs a CUDA GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert read_junit(xml) == [
        ("tests.kernels.test_x::test_ok", "pass", ""),
        ("tests.kernels.test_x::test_bad", "fail", "assert 1 == 2"),
        ("tests.engine.test_y::test_gpu", "skipped", "needs a CUDA GPU"),
    ]


def test_gpu_test_files_are_the_marked_ones() -> None:
    files = {p.relative_to(REPO).as_posix() for p in gpu_test_files(REPO / "tests")}
    assert "tests/engine/test_gpu_engine.py" in files
    assert "tests/kernels/test_attention.py" in files
    assert "tests/api/test_schemathesis.py" not in files  # needs packages a GPU node may lack


def test_plan_modes() -> None:
    assert [s.name for s in steps_for("cpu")] == [s.name for s in STEPS]
    quick = [s.name for s in steps_for("quick")]
    assert "gpu-tests" not in quick and "hf-compiled" not in quick and quick[0] == "environment"
    assert sum(s.budgets["full"] for s in steps_for("full")) >= 300
    assert [s.name for s in steps_for("full", ["engine", "http"])] == ["engine", "http"]
    with pytest.raises(ValueError, match="unknown steps"):
        steps_for("full", ["nope"])


def test_status_rules() -> None:
    missed = [Measurement("m", "1", "2", False)]
    assert status_of("correctness", missed) == "fail" and status_of("performance", missed) == "pass"
    assert status_of("correctness", [Measurement.skip("m", "why")]) == "skipped"
    result = StepResult("s", "info", "pass", 1.0, [Measurement("m", "v", numbers={"k": 2})])
    assert StepResult.from_json(result.to_json()) == result


def test_without_cuda_the_full_run_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["--out", "/nonexistent/never-written"]) == 2
    assert "--cpu-dry-run" in capsys.readouterr().err
