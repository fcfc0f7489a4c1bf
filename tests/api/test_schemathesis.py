"""Property-based fuzzing of every route in /openapi.json against a live server.

Every operation gets schema-valid (positive) and schema-invalid (negative) data, from hypothesis
and from schemathesis' coverage phase (boundary values, missing fields, undeclared methods),
streamed and not, under every built-in schemathesis check: no 5xx; only documented statuses,
media types, headers and bodies (SSE events included); invalid data refused; valid data
accepted. The server bounds the work itself (`--max-tokens-limit`), and the document it serves
says so: the fuzzer never asks for more than a few tokens.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gpt2serve.server.api.app import create_app
from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.protocol import ChatCompletionRequest, CompletionRequest
from gpt2serve.server.api.serving_completions import engine_prompt_logprobs
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core.sampling_params import SamplingParamsError
from gpt2serve.server.core.structured_output import GrammarError

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

from support import schemathesis_checks as checks  # noqa: E402

# What one request may cost this server; small, so a fuzzed generation is a few decode steps.
SERVER_LIMITS = {
    "max_tokens_limit": 8,
    "default_max_tokens": 8,
    "max_prompts_per_request": 4,
    "max_sequences_per_request": 16,
}
API_KEY = "fuzz-key"
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
# (method, path, mode) -> hypothesis examples. A GET without parameters has one possible
# request, which hypothesis sends once however many it is allowed.
EXAMPLES = {
    ("POST", "/v1/completions", POSITIVE): 400,
    ("POST", "/v1/completions", NEGATIVE): 250,
    ("POST", "/v1/chat/completions", POSITIVE): 300,
    ("POST", "/v1/chat/completions", NEGATIVE): 200,
    ("POST", "/tokenize", POSITIVE): 150,
    ("POST", "/tokenize", NEGATIVE): 100,
    ("POST", "/detokenize", POSITIVE): 100,
    ("POST", "/detokenize", NEGATIVE): 100,
    ("GET", "/v1/models", POSITIVE): 5,
    ("GET", "/health", POSITIVE): 5,
    ("GET", "/metrics", POSITIVE): 5,
    ("GET", "/version", POSITIVE): 5,
}
OPERATIONS = sorted({(method, path) for method, path, _ in EXAMPLES})
MIN_TOTAL_CASES = 1000
# Hypothesis may stop short of max_examples when few distinct inputs are left.
MIN_RUN_FRACTION = 0.8
# Cases sent, by test; the last test adds them up.
sent: Counter[str] = Counter()


@pytest.fixture(scope="module")
def live(tiny_model, tokenizer):
    with checks.fuzzed_server(tiny_model, tokenizer, SERVER_LIMITS) as served:
        yield served


@pytest.fixture(scope="module")
def api(live):
    return checks.served_schema(live[0])


def _prompt_tokens(ctx: Any, body: CompletionRequest | ChatCompletionRequest) -> list[list[int]]:
    if isinstance(body, ChatCompletionRequest):
        return [ctx.encode(ctx.chat_template.render(body.messages, body.add_generation_prompt))]
    prompt = body.prompt
    if isinstance(prompt, str):
        return [ctx.encode(prompt)]
    if all(isinstance(p, int) for p in prompt):
        return [prompt]
    return [ctx.encode(p) if isinstance(p, str) else p for p in prompt]


# Fields whose values depend on use_beam_search (SamplingParams' beam rules; README).
BEAM_RULE_FIELDS = {
    *("use_beam_search", "best_of", "n", "length_penalty", "early_stopping"),
    *("temperature", "top_p", "top_k", "min_p", "logprobs", "prompt_logprobs"),
}


# One output constraint per request, and it must compile (README, "Structured output").
STRUCTURED_FIELDS = {"response_format", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar", "structured_outputs"}  # fmt: skip
RULE_FIELDS = BEAM_RULE_FIELDS | STRUCTURED_FIELDS


def _asks_field_rules(raw_body: Any) -> bool:
    asking = {"use_beam_search", "best_of", "length_penalty", "early_stopping"} | STRUCTURED_FIELDS
    return isinstance(raw_body, dict) and any(raw_body.get(n) is not None for n in asking)


def _broken_structured_output(ctx: Any, body: Any) -> set[str]:
    """The field whose schema / regex / grammar does not compile."""
    spec = body.structured_output()
    if spec is None:
        return set()
    try:
        ctx.engine.grammars.compile_now(spec)
    except GrammarError as exc:
        return {exc.param}
    return set()


def _broken_beam_logprobs(body: Any, max_tokens: int) -> set[str]:
    if isinstance(body, CompletionRequest):
        logprobs, prompt_logprobs = body.logprobs, engine_prompt_logprobs(body)
    else:
        logprobs, prompt_logprobs = (body.top_logprobs or 0) if body.logprobs else None, None
    try:
        body.sampling_params(max(max_tokens, 1), logprobs, prompt_logprobs)
    except SamplingParamsError as exc:
        return {exc.param}
    return set()


def broken_cross_field_rules(ctx: Any, path: str, raw_body: Any) -> set[str]:
    """The fields a 400 may name for a schema-valid body that breaks a rule between fields.

    JSON Schema cannot state these (the document lists them in the body's description), so
    schema-valid data may break them; the server must then answer 400 naming the field.
    """
    models = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}
    if path not in models:
        return set()
    try:
        body = models[path].model_validate(raw_body)
    except ValidationError:
        return set()  # refused while the body is parsed: no rule between fields is checked there
    except APIError as exc:  # beam-search and structured-output rules run while parsing
        field = (exc.param or "").split(".")[0]
        return {exc.param} if field in RULE_FIELDS and _asks_field_rules(raw_body) else set()
    try:
        prompts = _prompt_tokens(ctx, body)
    except ValueError:  # a chat template that cannot render these messages: a plain 400
        return set()
    broken = set()
    limits, request_limits = ctx.limits, ctx.request_limits
    if isinstance(body, CompletionRequest):
        max_tokens = body.max_tokens
        if "max_tokens" not in body.model_fields_set:  # OpenAI's 16, capped at the limit
            max_tokens = ctx.capped(body.max_tokens)
    else:
        max_tokens = body.max_completion_tokens or body.max_tokens
    if len(prompts) * body.num_sequences > min(
        limits.max_sequences_per_request, limits.max_waiting_requests
    ):
        broken.add("n")
    if max_tokens is None:
        room = request_limits.default_max_tokens(max(len(p) for p in prompts))
        max_tokens = ctx.capped(min(limits.default_max_tokens, room))
    if limits.max_tokens_limit is not None and max_tokens > limits.max_tokens_limit:
        broken.add("max_tokens")
    if body.min_tokens > max_tokens:
        broken.add("min_tokens")
    if any(len(p) + max_tokens > request_limits.max_sequence_tokens for p in prompts):
        broken.add("max_tokens")
    broken |= _broken_structured_output(ctx, body)
    if body.use_beam_search:  # logprobs of either kind are refused with beams
        broken |= _broken_beam_logprobs(body, max_tokens)
    width = body.num_sequences if body.use_beam_search else 1
    if width > 1 and any(
        width * (len(p) + max_tokens) > request_limits.num_cache_tokens for p in prompts
    ):
        broken.add("best_of")
    return broken


def call_and_check(live, path: str, case, headers: dict[str, str] | None = None, auth=True):
    """Every built-in check; a broken rule between fields must be a 400 whose `param` names it."""
    return checks.call_and_check(
        live, path, case, broken_cross_field_rules,
        lambda error, broken: error["error"]["param"] in broken, headers, auth,
    )  # fmt: skip


# The generator often leaves `stream` out (an optional field), so positive bodies of the
# generation routes are also made to stream, with or without the final usage chunk.
STREAMING = st.sampled_from([None, {"stream": True}, {"stream_options": {"include_usage": True}}])


@pytest.mark.parametrize(
    ("method", "path", "mode"), list(EXAMPLES), ids=[f"{m} {p} {g.value}" for m, p, g in EXAMPLES]
)
def test_fuzz(live, api, method: str, path: str, mode: GenerationMode) -> None:
    key = f"fuzz {method} {path} {mode.value}"
    streaming = STREAMING if mode.is_positive and path in GENERATION_PATHS else st.none()

    @given(case=api[path][method].as_strategy(generation_mode=mode), stream=streaming)
    @settings(
        max_examples=EXAMPLES[(method, path, mode)],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case, stream: dict[str, Any] | None) -> None:
        if stream and isinstance(case.body, dict):
            case.body.update({"stream": True, **stream})
        sent[key] += 1
        call_and_check(live, path, case)

    start = time.monotonic()
    fuzz()
    print(f"{key}: {sent[key]} cases in {time.monotonic() - start:.1f}s")
    if EXAMPLES[(method, path, mode)] > 5:
        assert sent[key] >= MIN_RUN_FRACTION * EXAMPLES[(method, path, mode)]
    assert httpx.get(f"{live[0]}/health").status_code == 200


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_coverage_phase(live, api, method: str, path: str) -> None:
    """Schemathesis' deterministic cases: each bound at and past its edge, each field missing or
    of the wrong type, each undeclared method (405 with `Allow`)."""
    key = f"coverage {method} {path}"
    operation = api[path][method]
    cases = api.iter_coverage_cases(
        operation,
        generation_modes=[POSITIVE, NEGATIVE],
        generation_config=api.config.generation_for(operation=operation, phase="coverage"),
    )
    start = time.monotonic()
    for case in cases:
        sent[key] += 1
        call_and_check(live, path, case)
    print(f"{key}: {sent[key]} cases in {time.monotonic() - start:.1f}s")
    assert sent[key] > 0
    assert httpx.get(f"{live[0]}/health").status_code == 200


@pytest.fixture(scope="module")
def keyed(tiny_model, tokenizer):
    with checks.fuzzed_server(tiny_model, tokenizer, SERVER_LIMITS, api_key=API_KEY) as served:
        yield served


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_with_api_key(keyed, method: str, path: str) -> None:
    """With --api-key: the protected routes declare 401 and the Bearer scheme, and enforce it.

    Sent with the key, `ignored_auth` also resends each accepted case without a key and with a
    wrong one, which must be refused; sent without it, the 401 must be as documented.
    """
    url, _ = keyed
    api = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
    key = f"api key {method} {path}"

    @given(case=api[path][method].as_strategy(), with_key=st.booleans())
    @settings(
        max_examples=10,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case, with_key: bool) -> None:
        sent[key] += 1
        protected = path not in ("/health", "/metrics", "/version")
        headers = {"Authorization": f"Bearer {API_KEY}"} if with_key else None
        response = call_and_check(keyed, path, case, headers, auth=with_key or not protected)
        if protected and not with_key:  # schemathesis sends `Bearer <generated>`, or nothing
            assert response.status_code == 401

    fuzz()


def _responses(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, status, response)
        for path, item in spec["paths"].items()
        for operation in item.values()
        for status, response in operation["responses"].items()
    ]


def test_openapi_declares_what_is_served(live) -> None:
    spec = httpx.get(f"{live[0]}/openapi.json").json()
    assert all(status != "422" for _, status, _ in _responses(spec))
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert {"200", "400", "404", "413", "500", "503"} <= set(completions)
    assert {"application/json", "text/event-stream"} <= set(completions["200"]["content"])
    assert "Retry-After" in completions["503"]["headers"]
    assert not any(status == "401" for _, status, _ in _responses(spec))  # no --api-key
    body = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    assert body["max_tokens"]["anyOf"][0]["maximum"] == SERVER_LIMITS["max_tokens_limit"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
    health = spec["paths"]["/health"]["get"]["responses"]
    assert "content" not in health["200"]
    assert "application/json" in health["503"]["content"]


def test_openapi_with_an_api_key_declares_401_on_protected_routes() -> None:
    """Before startup (no engine yet) too: the document is built, just not cached."""
    settings_ = ServerSettings(model="random:tiny", api_key=API_KEY, open_docs=False)
    app = create_app(settings_)
    spec = app.openapi()
    assert app.openapi_schema is None  # the engine's limits are not known yet
    for path, item in spec["paths"].items():
        for operation in item.values():
            protected = path not in ("/health", "/metrics", "/version")
            assert ("401" in operation["responses"]) == protected, path
            assert ("security" in operation) == protected, path
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_enough_cases_ran() -> None:
    """The module's tests together sent at least MIN_TOTAL_CASES (when all of them ran)."""
    fuzz_keys = {f"fuzz {m} {p} {g.value}" for m, p, g in EXAMPLES}
    if not fuzz_keys <= set(sent):
        pytest.skip("only part of the module ran")
    print(f"{sum(sent.values())} cases: {dict(sent)}")
    assert sum(sent.values()) >= MIN_TOTAL_CASES
    assert sum(sent[k] for k in fuzz_keys) >= MIN_TOTAL_CASES
