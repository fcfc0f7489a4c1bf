"""Property-based fuzzing of every route in /openapi.json: no input may cause a 5xx."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def live_url(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256, max_num_seqs=16))
    with running_server(engine) as (url, _):
        yield url


def bounded(case) -> None:
    """Keep fuzzed generations short: length, not validity, is what makes them slow."""
    if not isinstance(case.body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = case.body.get(key, 4)
        if isinstance(value, int) and not isinstance(value, bool):
            case.body[key] = min(value, 4)
    case.body.pop("stream", None)


def test_no_server_errors(live_url) -> None:
    spec = httpx.get(f"{live_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            bounded(case)
            case.call_and_validate(base_url=live_url, checks=[not_a_server_error], timeout=60)

        fuzz()
    assert httpx.get(f"{live_url}/health").status_code == 200
