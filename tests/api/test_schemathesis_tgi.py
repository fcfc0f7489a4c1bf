"""Schemathesis over the TGI routes (`/generate`, `/generate_stream`, `POST /`), as
tests/api/test_schemathesis.py does for the OpenAI ones: every built-in check, no 5xx, the
documented statuses, media types and bodies (SSE events included), with and without a key."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.tgi_protocol import TGIParameters, TGIRequest
from gpt2serve.server.core.structured_output import GrammarError

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

from support import schemathesis_checks as checks  # noqa: E402

SERVER_LIMITS = {"max_tokens_limit": 8, "default_max_tokens": 8}
API_KEY = "fuzz-key"
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
EXAMPLES = {
    ("/generate", POSITIVE): 120,
    ("/generate", NEGATIVE): 80,
    ("/generate_stream", POSITIVE): 80,
    ("/generate_stream", NEGATIVE): 50,
    ("/", POSITIVE): 100,
    ("/", NEGATIVE): 50,
}
PATHS = sorted({path for path, _ in EXAMPLES})
SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": list(HealthCheck)}  # fmt: skip


@pytest.fixture(scope="module")
def live(tiny_model, tokenizer):
    with checks.fuzzed_server(tiny_model, tokenizer, SERVER_LIMITS) as served:
        yield served


@pytest.fixture(scope="module")
def api(live):
    return checks.served_schema(live[0])


def broken_cross_field_rules(ctx: Any, path: str, raw_body: Any) -> set[str]:
    """The fields a 400 may name for a schema-valid body that breaks a rule between fields."""
    try:
        body = TGIRequest.model_validate(raw_body)
    except ValidationError:
        return set()
    except APIError as exc:  # beam-search rules between fields run while parsing
        return {exc.param} & BEAM_RULE_FIELDS if _asks_beam_rules(raw_body) else set()
    parameters = body.parameters or TGIParameters()
    broken = set()
    spec = parameters.structured_output()
    if spec is not None:  # the grammar must compile
        try:
            ctx.engine.grammars.compile_now(spec)
        except GrammarError:
            broken.add("grammar")
    if parameters.uses_beams:
        broken |= {n for n in ("decoder_input_details", "top_n_tokens") if getattr(parameters, n)}
    streams = path == "/generate_stream" or (path == "/" and body.stream)
    if streams and parameters.decoder_input_details:
        broken.add("decoder_input_details")
    prompt = ctx.encode(body.inputs)
    if parameters.truncate is not None:
        prompt = prompt[-parameters.truncate :]
    # Left out or null, max_new_tokens is lowered to the room the prompt leaves (at least 1).
    max_new_tokens = parameters.max_new_tokens
    if "max_new_tokens" not in parameters.model_fields_set or max_new_tokens is None:
        max_new_tokens = 1
    if len(prompt) + max_new_tokens > ctx.request_limits.max_sequence_tokens:
        broken.add("max_new_tokens")
    limits = ctx.request_limits
    if (
        parameters.uses_beams
        and parameters.num_beams * (len(prompt) + max_new_tokens) > limits.num_cache_tokens
    ):
        broken.add("num_beams")
    return broken


BEAM_RULE_FIELDS = {"num_beams", "length_penalty", "early_stopping", "temperature", "top_p",
                    "top_k", "grammar"}  # fmt: skip


def _asks_beam_rules(raw_body: Any) -> bool:
    parameters = raw_body.get("parameters") if isinstance(raw_body, dict) else None
    return isinstance(parameters, dict) and any(
        parameters.get(n) is not None
        for n in ("num_beams", "length_penalty", "early_stopping", "grammar")
    )


def call_and_check(live, path: str, case, headers: dict[str, str] | None = None, auth=True):
    """Every built-in check; a broken rule between fields must be a 400 whose message names it."""
    return checks.call_and_check(
        live, path, case, broken_cross_field_rules,
        lambda error, broken: any(name in error["error"] for name in broken), headers, auth,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("path", "mode"), list(EXAMPLES), ids=[f"{p} {m.value}" for p, m in EXAMPLES]
)
def test_fuzz(live, api, path: str, mode: GenerationMode) -> None:
    # `stream` is often left out: positive bodies of `POST /` are also made to stream.
    streaming = st.booleans() if mode.is_positive and path == "/" else st.just(False)
    sent = []

    @given(case=api[path]["POST"].as_strategy(generation_mode=mode), stream=streaming)
    @settings(max_examples=EXAMPLES[(path, mode)], **SETTINGS)
    def fuzz(case, stream: bool) -> None:
        if stream and isinstance(case.body, dict):
            case.body["stream"] = True
        sent.append(1)
        call_and_check(live, path, case)

    fuzz()
    assert len(sent) >= 0.8 * EXAMPLES[(path, mode)]
    assert httpx.get(f"{live[0]}/health").status_code == 200


@pytest.mark.parametrize("path", PATHS)
def test_coverage_phase(live, api, path: str) -> None:
    """Schemathesis' deterministic cases: each bound at and past its edge, each field missing or
    of the wrong type, each undeclared method."""
    operation = api[path]["POST"]
    cases = api.iter_coverage_cases(
        operation,
        generation_modes=[POSITIVE, NEGATIVE],
        generation_config=api.config.generation_for(operation=operation, phase="coverage"),
    )
    sent = 0
    for case in cases:
        if path == "/" and case.method in ("GET", "HEAD"):
            continue  # the playground's page, outside the API document
        sent += 1
        call_and_check(live, path, case)
    assert sent > 0
    assert httpx.get(f"{live[0]}/health").status_code == 200


@pytest.fixture(scope="module")
def keyed(tiny_model, tokenizer):
    with checks.fuzzed_server(tiny_model, tokenizer, SERVER_LIMITS, api_key=API_KEY) as served:
        yield served


@pytest.mark.parametrize("path", PATHS)
def test_fuzz_with_api_key(keyed, path: str) -> None:
    """With --api-key (which the playground's open `/` must not weaken for `POST /`): sent with
    the key, each accepted case is resent without it and with a wrong one, which must fail."""
    url, _ = keyed
    api = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())

    @given(case=api[path]["POST"].as_strategy(), with_key=st.booleans())
    @settings(max_examples=10, **SETTINGS)
    def fuzz(case, with_key: bool) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"} if with_key else None
        response = call_and_check(keyed, path, case, headers, auth=with_key)
        if not with_key:
            assert response.status_code == 401

    fuzz()


def test_openapi_declares_the_tgi_routes(live) -> None:
    spec = httpx.get(f"{live[0]}/openapi.json").json()
    generate = spec["paths"]["/generate"]["post"]["responses"]
    assert list(generate["200"]["content"]) == ["application/json"]
    stream = spec["paths"]["/generate_stream"]["post"]["responses"]
    assert list(stream["200"]["content"]) == ["text/event-stream"]
    root = spec["paths"]["/"]["post"]["responses"]
    assert set(root["200"]["content"]) == {"application/json", "text/event-stream"}
    for responses in (generate, stream, root):
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/TGIErrorResponse"
        )
        assert "Retry-After" in responses["503"]["headers"]
    parameters = spec["components"]["schemas"]["TGIParameters"]["properties"]
    assert parameters["max_new_tokens"]["anyOf"][0]["maximum"] == SERVER_LIMITS["max_tokens_limit"]
    assert parameters["max_tokens"] is False
    assert parameters["num_beams"]["anyOf"][0]["maximum"] == 16  # the beam-width cap
    assert spec["components"]["schemas"]["TGIRequest"]["properties"]["max_new_tokens"] is False
