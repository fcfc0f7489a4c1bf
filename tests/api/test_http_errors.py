"""Every error case answers its status in the OpenAI envelope, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

pytestmark = pytest.mark.reliability  # the bad-input / limits part of the suite


@pytest.fixture(scope="module")
def base_url(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine, max_request_bytes=8192) as (url, _):
        yield url


def post(base_url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", timeout=30, **kwargs)


def assert_error(
    response: httpx.Response, status: int, fragment: str, param: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text
    return error


@pytest.mark.parametrize(
    ("body", "fragment", "param"),
    [
        ({"prompt": "x", "temperature": 5}, "temperature", "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p", "top_p"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "max_tokens"),
        ({"prompt": "x", "n": 100}, "n", "n"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "logprobs"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias", "logit_bias"),
        # str.isdigit() accepted these and int() then raised: 500s before.
        (
            {"prompt": "x", "logit_bias": {"²": 1}},
            "logit_bias keys must be token ids",
            "logit_bias",
        ),
        (
            {"prompt": "x", "logit_bias": {"¹²": 1}},
            "logit_bias keys must be token ids",
            "logit_bias",
        ),
        (
            {"prompt": "x", "logit_bias": {"--5": 1}},
            "logit_bias keys must be token ids",
            "logit_bias",
        ),
        (
            {"prompt": "x", "logit_bias": {"9" * 5000: 1}},
            "logit_bias keys must be token ids",
            "logit_bias",
        ),
        ({"prompt": "x", "logit_bias": {"5": 1000}}, "logit_bias", "logit_bias"),
        ({"prompt": "x", "min_tokens": 50, "max_tokens": 5}, "min_tokens", "min_tokens"),
        ({"prompt": "x", "stop": ["s"] * 100}, "stop", "stop"),
        ({"prompt": "x", "suffix": "y"}, "suffix is not supported", "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of other than n needs use_beam_search", "best_of"),
        ({"prompt": "x", "length_penalty": 2}, "beam search only", "length_penalty"),
        ({"prompt": "x", "use_beam_search": True, "top_p": 0.5}, "does not sample", "top_p"),
        ({"prompt": "x", "use_beam_search": True, "n": 4, "best_of": 2}, ">= n", "best_of"),
        ({"prompt": "x", "use_beam_search": True, "best_of": 17}, "16", "best_of"),
        ({"prompt": "x", "use_beam_search": True, "logprobs": 1}, "beam search", "logprobs"),
        ({"prompt": "x", "use_beam_search": True, "early_stopping": 1}, "never", "early_stopping"),
        ({"prompt": [50257]}, "prompt token ids", "prompt"),
        ({"prompt": "x", "seed": 2**63, "n": 2}, "seed", "seed"),  # past int64
        ({"prompt": "x", "stop_token_ids": [50257]}, "stop_token_ids token ids", "stop_token_ids"),
        ({"prompt": []}, "prompt must not be empty", "prompt"),
        (
            {"prompt": "word " * 1000, "max_tokens": 100},
            "maximum context length is 1024",
            "max_tokens",
        ),
        ({}, "prompt", "prompt"),
    ],
)
def test_invalid_completion_fields_are_400(base_url, body, fragment, param) -> None:
    assert_error(
        post(base_url, "/v1/completions", json={"model": "tiny", **body}), 400, fragment, param
    )


def test_context_error_names_the_numbers(base_url) -> None:
    response = post(base_url, "/v1/completions", json={"prompt": [1] * 1000, "max_tokens": 30})
    assert_error(response, 400, "1000 prompt tokens + 30 max_tokens = 1030")


def test_malformed_json_and_bad_utf8_are_400(base_url) -> None:
    headers = {"content-type": "application/json"}
    assert_error(
        post(base_url, "/v1/completions", content=b"{not json", headers=headers), 400, "JSON"
    )
    bad = b'{"prompt": "\xff\xfe", "max_tokens": 2}'
    response = post(base_url, "/v1/completions", content=bad, headers=headers)
    assert_error(response, 400, "UTF-8")
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(base_url) -> None:
    response = post(base_url, "/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert_error(response, 404, "does not exist", "model")
    assert response.json()["error"]["code"] == "model_not_found"


def test_chat_unknown_model_is_404(base_url) -> None:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}
    response = post(base_url, "/v1/chat/completions", json=body)
    error = assert_error(response, 404, "does not exist", "model")
    assert error["code"] == "model_not_found" and error["type"] == "not_found_error"


def test_body_over_limit_is_413(base_url) -> None:
    response = post(base_url, "/v1/completions", json={"prompt": "x" * 10_000})
    assert_error(response, 413, "exceeds 8192 bytes")


def test_unknown_fields_are_ignored(base_url) -> None:
    body = {"prompt": "Hi", "max_tokens": 2, "some_future_field": {"a": 1}}
    assert post(base_url, "/v1/completions", json=body).status_code == 200


def test_chat_errors(base_url) -> None:
    assert_error(post(base_url, "/v1/chat/completions", json={"messages": []}), 400, "messages")
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    assert_error(post(base_url, "/v1/chat/completions", json=body), 400, "only text content")
    body = {"messages": [{"role": "wizard", "content": "x"}]}
    assert_error(post(base_url, "/v1/chat/completions", json=body), 400, "role")


def test_server_still_serves_after_errors(base_url) -> None:
    response = post(base_url, "/v1/completions", json={"prompt": "Still alive", "max_tokens": 3})
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(f"{base_url}/health").status_code == 200


def test_tokenize_and_detokenize(base_url) -> None:
    tokens = post(base_url, "/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["tokens"] == [15496, 995] and tokens["count"] == 2
    assert (
        post(base_url, "/detokenize", json={"tokens": [15496, 995]}).json()["prompt"]
        == "Hello world"
    )
    assert_error(post(base_url, "/detokenize", json={"tokens": [999999]}), 400, "token ids")
    chat = post(
        base_url, "/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}
    ).json()
    assert chat["count"] > 2


def test_version(base_url) -> None:
    assert "version" in httpx.get(f"{base_url}/version").json()


def test_api_key_required_when_set(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, api_key="sekret") as (url, _):
        body = {"prompt": "x", "max_tokens": 1}
        assert_error(httpx.post(f"{url}/v1/completions", json=body), 401, "API key")
        wrong = {"authorization": "Bearer nope"}
        assert_error(httpx.post(f"{url}/v1/completions", json=body, headers=wrong), 401, "API key")
        right = {"authorization": "Bearer sekret"}
        assert (
            httpx.post(f"{url}/v1/completions", json=body, headers=right, timeout=30).status_code
            == 200
        )
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(tiny_model, tokenizer, scheme: str) -> None:
    """RFC 7235: the auth scheme is case-insensitive (lowercase `bearer` was a 401)."""
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, api_key="sekret") as (url, _):
        headers = {"authorization": f"{scheme}  sekret"}
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                              headers=headers, timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text


def test_auth_is_checked_before_the_body(tiny_model, tokenizer) -> None:
    """Without the key, a malformed, invalid or oversized body is a 401, never a 400/413."""
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, api_key="sekret", max_request_bytes=2048) as (url, _):
        for content in (b"{not json", b'{"prompt": "x", "temperature": 9}', b"x" * 10_000):
            response = httpx.post(f"{url}/v1/completions", content=content,
                                  headers={"content-type": "application/json"})  # fmt: skip
            error = assert_error(response, 401, "API key")
            assert error["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
        for path in ("/tokenize", "/detokenize", "/v1/chat/completions"):
            assert httpx.post(f"{url}{path}", content=b"{").status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "sekret"}).status_code == 401
        # With the key, the same malformed body is the 400 it always was.
        right = {"authorization": "Bearer sekret", "content-type": "application/json"}
        assert httpx.post(f"{url}/v1/completions", content=b"{", headers=right).status_code == 400


@pytest.mark.parametrize("open_docs", [True, False])
def test_docs_under_an_api_key_are_a_documented_choice(tiny_model, tokenizer, open_docs) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, api_key="sekret", open_docs=open_docs) as (url, _):
        for path in ("/openapi.json", "/docs", "/redoc"):
            status = httpx.get(f"{url}{path}").status_code
            assert status == (200 if open_docs else 401), path
        assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"prompt": "x", "temperature": NaN}', "finite number"),
        (b'{"prompt": "x", "top_p": Infinity}', "finite number"),
        (b"[" * 4000 + b"]" * 4000, "nested too deeply"),  # "must be UTF-8" before
        (b'{"prompt": "x' + bytes([0xFF]) + b'"}', "UTF-8"),
    ],
)
def test_messages_say_what_is_wrong(base_url, content: bytes, fragment: str) -> None:
    response = post(base_url, "/v1/completions", content=content,
                    headers={"content-type": "application/json"})  # fmt: skip
    assert_error(response, 400, fragment)


def test_internal_error_is_500_without_traceback(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine) as (url, app):

        def broken_encode(text: str) -> list[int]:
            raise RuntimeError("secret internal detail")

        app.state.ctx.encode = broken_encode
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=30)
        assert_error(response, 500, "internal server error")
        assert "secret internal detail" not in response.text
        assert httpx.get(f"{url}/health").status_code == 200


def test_field_rules_are_checked_with_the_body_before_any_work(base_url) -> None:
    """A bad field fails body validation: before the 300 prompts are counted or tokenized."""
    body = {"prompt": ["x"] * 300, "logit_bias": {"²": 1}, "stop": ["ok"]}
    assert_error(post(base_url, "/v1/completions", json=body), 400, "logit_bias", "logit_bias")
    chat = {"messages": [{"role": "user", "content": "x"}], "stop": [""]}
    assert_error(post(base_url, "/v1/chat/completions", json=chat), 400, "stop", "stop")
