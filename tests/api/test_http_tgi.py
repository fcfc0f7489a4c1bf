"""Hugging Face TGI's native API (`/generate`, `/generate_stream`, `POST /`) against a live server.

Mostly through the real client, `huggingface_hub.InferenceClient(base_url=...).text_generation`,
which posts to the base URL itself (TGI's `POST /`), streamed and not; raw httpx for the shapes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import aclosing

import httpx
import pytest
import torch

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server
from support.metrics import value

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import InferenceClient  # noqa: E402
from huggingface_hub.errors import OverloadedError, ValidationError  # noqa: E402

PROMPT = "The meaning of life is"
API_KEY = "tgi-key"


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer) -> Iterator[tuple[str, object]]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine, max_tokens_limit=64) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(server) -> InferenceClient:
    return InferenceClient(base_url=server[0], api_key="unused", timeout=60)


def post(url: str, path: str, inputs: str, **parameters: object) -> httpx.Response:
    return httpx.post(f"{url}{path}", json={"inputs": inputs, "parameters": parameters}, timeout=60)


def sse_events(url: str, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    """The JSON events of a streamed answer; fails on anything but `data: {...}\\n\\n` events."""
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as response:
        raw = b"".join(response.iter_raw())
    assert raw.endswith(b"\n\n"), raw
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data:") and b"\n" not in e for e in events), raw
    return response, [json.loads(e[len(b"data:") :]) for e in events]


def greedy_completion(url: str, prompt: object, max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


# -- the client ------------------------------------------------------------------------------


def test_do_sample_false_equals_greedy_of_openai_completions(server, client) -> None:
    """Parity with the OpenAI path: the same prompt, greedy, gives the same text."""
    text = client.text_generation(
        PROMPT, max_new_tokens=12, do_sample=False, temperature=0.7, return_full_text=False
    )
    assert text == greedy_completion(server[0], PROMPT, 12)["text"]
    # Left out, do_sample is TGI's rule: no warper set, so greedy too.
    assert client.text_generation(PROMPT, max_new_tokens=12, return_full_text=False) == text


def test_post_root_returns_the_full_text_by_default_as_tgi(server, client) -> None:
    """The client posts to the base URL (TGI's `POST /`), which for a text-generation model
    (GPT-2) returns the prompt too unless return_full_text=false; /generate does not."""
    generated = greedy_completion(server[0], PROMPT, 6)["text"]
    assert client.text_generation(PROMPT, max_new_tokens=6) == PROMPT + generated
    response = post(server[0], "/generate", PROMPT, max_new_tokens=6)
    assert response.json() == {"generated_text": generated}
    full = post(server[0], "/generate", PROMPT, max_new_tokens=6, return_full_text=True)
    assert full.json()["generated_text"] == PROMPT + generated


def test_details_tokens_logprobs_and_length(server, client, tokenizer) -> None:
    out = client.text_generation(PROMPT, max_new_tokens=8, details=True, return_full_text=False)
    details = out.details
    assert details.finish_reason == "length" and details.generated_tokens == 8
    assert details.seed is None  # greedy, as TGI
    assert details.prefill == [] and len(details.tokens) == 8
    assert "".join(t.text for t in details.tokens) == out.generated_text
    assert tokenizer.decode([t.id for t in details.tokens]) == out.generated_text
    assert all(t.logprob < 0 and t.special is False for t in details.tokens)
    assert details.top_tokens is None and details.best_of_sequences is None


def test_decoder_input_details_gives_the_prefill(server, client, tokenizer) -> None:
    out = client.text_generation(
        PROMPT, max_new_tokens=3, details=True, decoder_input_details=True, return_full_text=False
    )
    prefill = out.details.prefill
    assert [t.id for t in prefill] == tokenizer.encode(PROMPT)
    assert [t.text for t in prefill] == [tokenizer.decode([t.id]) for t in prefill]
    assert prefill[0].logprob is None and all(t.logprob < 0 for t in prefill[1:])
    # The same numbers as vLLM's prompt_logprobs on /v1/completions.
    body = {"prompt": PROMPT, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
    choice = httpx.post(f"{server[0]}/v1/completions", json=body, timeout=60).json()["choices"][0]
    expected = [None] + [entry[str(t.id)]["logprob"] for entry, t in
                         zip(choice["prompt_logprobs"][1:], prefill[1:], strict=True)]  # fmt: skip
    assert [t.logprob for t in prefill] == pytest.approx(expected)


def test_stream_token_events_then_generated_text_and_details(server, client, tokenizer) -> None:
    whole = client.text_generation(PROMPT, max_new_tokens=7, details=True, return_full_text=False)
    events = list(
        client.text_generation(
            PROMPT, max_new_tokens=7, stream=True, details=True, return_full_text=False
        )
    )
    assert [e.index for e in events] == list(range(1, 8))
    assert [e.token.id for e in events] == [t.id for t in whole.details.tokens]
    assert [e.token.logprob for e in events] == pytest.approx(
        [t.logprob for t in whole.details.tokens]
    )
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == whole.generated_text == "".join(e.token.text for e in events)
    assert last.details.finish_reason == "length" and last.details.generated_tokens == 7
    assert last.details.input_length == len(tokenizer.encode(PROMPT))
    # Without details the client yields the token texts.
    texts = list(client.text_generation(PROMPT, max_new_tokens=7, stream=True))
    assert "".join(texts) == whole.generated_text


def test_seed_reproduces_and_an_unseeded_draw_reports_its_seed(client) -> None:
    def sample(**extra: object):
        return client.text_generation(
            PROMPT, max_new_tokens=10, do_sample=True, details=True, return_full_text=False,
            **extra,
        )  # fmt: skip

    first, again = sample(seed=7), sample(seed=7)
    assert first.generated_text == again.generated_text and first.details.seed == 7
    drawn = sample()
    assert isinstance(drawn.details.seed, int)
    assert sample(seed=drawn.details.seed).generated_text == drawn.generated_text
    assert len({sample(seed=s).generated_text for s in range(4)}) > 1


def test_temperature_without_do_sample_samples_as_tgi(client) -> None:
    out = client.text_generation(PROMPT, max_new_tokens=4, temperature=1.5, details=True)
    assert isinstance(out.details.seed, int)  # TGI samples whenever a warper is set
    greedy = client.text_generation(PROMPT, max_new_tokens=4, details=True)
    zero = client.text_generation(PROMPT, max_new_tokens=4, do_sample=True, temperature=0.0,
                                  details=True)  # fmt: skip
    assert zero.generated_text == greedy.generated_text
    assert greedy.details.seed is None and zero.details.seed is None


def test_stop_sequence_ends_the_text_with_it(server, client) -> None:
    free = greedy_completion(server[0], "Stop test", 20)["text"]
    stop = free[5:9]
    out = client.text_generation(
        "Stop test", max_new_tokens=20, stop=[stop], details=True, return_full_text=False
    )
    assert out.generated_text == free[: free.find(stop) + len(stop)]  # TGI keeps the stop text
    assert out.details.finish_reason == "stop_sequence"
    events = list(
        client.text_generation(
            "Stop test", max_new_tokens=20, stop=[stop], stream=True, details=True,
            return_full_text=False,
        )
    )  # fmt: skip
    assert events[-1].details.finish_reason == "stop_sequence"
    assert events[-1].generated_text == out.generated_text


def test_truncate_keeps_the_last_prompt_tokens(server, client, tokenizer) -> None:
    ids = tokenizer.encode(PROMPT)
    out = client.text_generation(
        PROMPT, max_new_tokens=5, truncate=2, details=True, decoder_input_details=True
    )
    assert [t.id for t in out.details.prefill] == ids[-2:]
    generated = greedy_completion(server[0], ids[-2:], 5)["text"]
    assert out.generated_text == PROMPT + generated  # the input as sent, untruncated


def test_top_n_tokens(client) -> None:
    out = client.text_generation(
        PROMPT, max_new_tokens=3, details=True, top_n_tokens=2, return_full_text=False
    )
    assert len(out.details.top_tokens) == 3
    # The client leaves a list of lists as plain dicts.
    for token, top in zip(out.details.tokens, out.details.top_tokens, strict=True):
        assert len(top) == 2 and top[0]["id"] == token.id  # greedy: the chosen one is the best
        assert top[0]["logprob"] >= top[1]["logprob"]
    events = list(client.text_generation(PROMPT, max_new_tokens=2, stream=True, details=True,
                                         top_n_tokens=3))  # fmt: skip
    assert all(len(e.top_tokens) == 3 for e in events)


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"typical_p": 0.5}, "typical_p"),
        ({"watermark": True}, "watermark"),
        ({"best_of": 2}, "best_of"),
        ({"grammar": {"type": "regex", "value": "[a-z"}}, "grammar"),
        ({"grammar": {"type": "json", "value": {"type": "strin"}}}, "grammar"),
        ({"adapter_id": "some/lora"}, "adapter_id"),
        ({"temperature": 3.0}, "temperature"),
        ({"top_n_tokens": 50}, "top_n_tokens"),
        ({"stop": [""]}, "stop"),
        ({"max_new_tokens": 65}, "max_new_tokens"),  # over --max-tokens-limit
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_refused_parameters_raise_in_the_client_naming_them(
    server, client, parameters: dict, named: str, stream: bool
) -> None:
    with pytest.raises(ValidationError, match=named):
        result = client.text_generation(PROMPT, stream=stream, **parameters)
        list(result) if stream else None
    assert httpx.get(f"{server[0]}/health").status_code == 200


def test_refusals_are_counted_in_the_error_metric(server) -> None:
    before = value(server[0], "gpt2serve_request_errors_total", code="400")
    assert post(server[0], "/generate", "x", typical_p=0.3).status_code == 400
    assert value(server[0], "gpt2serve_request_errors_total", code="400") == before + 1


# -- raw shapes ------------------------------------------------------------------------------


def test_generate_shape(server) -> None:
    response = post(server[0], "/generate", PROMPT, max_new_tokens=3)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"generated_text"}
    details = post(server[0], "/generate", PROMPT, max_new_tokens=3, details=True).json()
    assert set(details["details"]) == {
        "finish_reason", "generated_tokens", "seed", "prefill", "tokens"
    }  # fmt: skip
    token = details["details"]["tokens"][0]
    assert set(token) == {"id", "text", "logprob", "special"}
    # TGI's /generate ignores `stream`: the answer is whole.
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}, "stream": True}
    whole = httpx.post(f"{server[0]}/generate", json=body, timeout=60)
    assert whole.json() == response.json()


def test_post_root_answers_a_list_or_streams(server) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "return_full_text": False}}
    listed = httpx.post(f"{server[0]}/", json=body, timeout=60)
    assert listed.status_code == 200
    generated = post(server[0], "/generate", PROMPT, max_new_tokens=3).json()
    assert listed.json() == [generated]
    response, events = sse_events(server[0], "/", {**body, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1]["generated_text"] == generated["generated_text"]


def test_generate_stream_event_shapes(server, tokenizer) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "details": True}}
    response, events = sse_events(server[0], "/generate_stream", body)
    assert response.status_code == 200
    assert [set(e) for e in events] == [{"index", "token", "generated_text", "details"}] * 3
    assert events[-1]["details"] == {
        "finish_reason": "length", "generated_tokens": 3, "seed": None,
        "input_length": len(tokenizer.encode(PROMPT)),
    }  # fmt: skip
    no_details = sse_events(server[0], "/generate_stream", {"inputs": PROMPT})[1]
    assert no_details[-1]["details"] is None and isinstance(no_details[-1]["generated_text"], str)
    assert len(no_details) == 64  # TGI's default (100), lowered to --max-tokens-limit


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"inputs": "x", "parameters": {"num_beams": 17}}, "num_beams"),
        ({"inputs": "x", "parameters": {"num_beams": 4, "do_sample": True}}, "num_beams"),
        ({"inputs": "x", "parameters": {"num_beams": 4, "top_n_tokens": 2}}, "top_n_tokens"),
        ({"inputs": "x", "parameters": {"length_penalty": 2.0}}, "length_penalty"),
        ({"inputs": "x", "parameters": {"max_tokens": 4}}, "max_new_tokens"),
        ({"inputs": "x", "parameters": {"stop_sequences": ["a"]}}, "stop"),
        ({"inputs": "x", "parameters": {"do_sample": "yes"}}, "do_sample"),
        ({"inputs": "x", "max_new_tokens": 4}, "parameters.max_new_tokens"),  # a flat body
        ({"inputs": ""}, "inputs"),
        ({"parameters": {}}, "inputs"),
        ({"inputs": "x", "parameters": {"decoder_input_details": True}, "stream": True}, "decoder"),
    ],
)
def test_bad_bodies_are_400_in_tgi_shape(server, body: dict, named: str) -> None:
    for path in ("/generate", "/generate_stream", "/"):
        response = httpx.post(f"{server[0]}{path}", json=body, timeout=60)
        if named == "decoder" and path == "/generate":
            continue  # not streamed there: accepted
        assert response.status_code == 400, (path, response.text)
        error = response.json()
        assert set(error) == {"error", "error_type"} and error["error_type"] == "validation"
        assert named in error["error"], error


def test_unknown_and_beam_fields_without_effect_are_ignored(server, caplog, monkeypatch) -> None:
    from gpt2serve.server.api import tgi_protocol

    monkeypatch.setattr(tgi_protocol, "_logged_unknown_fields", set())  # other tests' names
    plain = post(server[0], "/generate", PROMPT, max_new_tokens=4).json()
    for _ in range(2):
        extra = post(server[0], "/generate", PROMPT, max_new_tokens=4, num_beams=1,
                     length_penalty=1.0, early_stopping=False, some_future_field=1)  # fmt: skip
        assert extra.status_code == 200 and extra.json() == plain
    logged = [r for r in caplog.records if "some_future_field" in r.getMessage()]
    assert len(logged) == 1  # once per name


def test_overload_and_shutdown_are_503_overloaded(server, client, monkeypatch) -> None:
    monkeypatch.setattr(server[1].state.ctx, "draining", True)
    response = post(server[0], "/generate", PROMPT)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error_type"] == "overloaded"
    with pytest.raises(OverloadedError):
        client.text_generation(PROMPT)


def test_invalid_json_is_400_in_tgi_shape(server) -> None:
    response = httpx.post(
        f"{server[0]}/generate", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "request body is not valid JSON",
        "error_type": "validation",
    }


def test_mid_stream_failure_ends_with_a_tgi_error_event(server, monkeypatch) -> None:
    engine = server[1].state.ctx.engine
    real_generate = engine.generate

    async def failing(request, request_id=None):
        async with aclosing(real_generate(request, request_id)) as outputs:
            count = 0
            async for output in outputs:
                if count == 2:
                    raise RuntimeError("secret internal detail")
                count += 1
                yield output

    monkeypatch.setattr(engine, "generate", failing)
    _, events = sse_events(server[0], "/generate_stream", {"inputs": PROMPT})
    assert len(events) == 3
    assert events[-1] == {"error": "internal server error", "error_type": "generation"}


# -- end of sequence, and the API key --------------------------------------------------------


@pytest.fixture(scope="module")
def eos_server(tiny_model, tokenizer) -> Iterator[str]:
    """A model whose every prediction is <|endoftext|>: a constant final hidden state equal to
    EOS's (tied) embedding, the longest of all, so EOS always wins the argmax."""
    model = copy.deepcopy(tiny_model)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[eos] *= 10 * wte.norm(dim=1).max() / wte[eos].norm()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(wte[eos])
    engine = Engine(model, tokenizer, EngineConfig(num_blocks=32))
    with running_server(engine, api_key=API_KEY) as (url, _):
        yield url


def test_eos_token_finish_and_special_token(eos_server) -> None:
    client = InferenceClient(base_url=eos_server, api_key=API_KEY, timeout=60)
    out = client.text_generation(PROMPT, details=True, return_full_text=False)
    assert out.generated_text == "" and out.details.finish_reason == "eos_token"
    (token,) = out.details.tokens
    assert token.special is True and token.text == "<|endoftext|>"
    (event,) = list(client.text_generation(PROMPT, stream=True, details=True))
    assert event.token.special and event.details.finish_reason == "eos_token"
    assert event.generated_text == PROMPT  # full text on POST /, the special token left out


def test_post_root_needs_the_key_though_the_playground_opens_get_root(eos_server) -> None:
    body = {"inputs": PROMPT}
    for path in ("/", "/generate", "/generate_stream"):
        response = httpx.post(f"{eos_server}{path}", json=body, timeout=60)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    keyed = httpx.post(
        f"{eos_server}/", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )
    assert keyed.status_code == 200


def test_num_beams_on_generate_is_the_openai_beam_search_best_sequence(server, tokenizer) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "use_beam_search": True, "best_of": 4, "n": 1,
            "length_penalty": 0.5}  # fmt: skip
    best = httpx.post(f"{server[0]}/v1/completions", json=body, timeout=60).json()["choices"][0]
    answer = post(server[0], "/generate", PROMPT, max_new_tokens=8, num_beams=4,
                  length_penalty=0.5, details=True).json()  # fmt: skip
    assert answer["generated_text"] == best["text"]
    details = answer["details"]
    assert details["generated_tokens"] == len(details["tokens"]) == 8
    assert all(t["logprob"] is None for t in details["tokens"])  # beams have no token logprobs
    assert "".join(t["text"] for t in details["tokens"]) == best["text"]
    whole_chars = [t for t in details["tokens"] if "\ufffd" not in tokenizer.decode([t["id"]])]
    assert len(whole_chars) > 1  # each token has its own text, not the first all of it
    assert all(t["text"] == tokenizer.decode([t["id"]]) for t in whole_chars)


def test_streamed_beam_search_sends_its_tokens_at_the_end_in_order(server) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "num_beams": 3}}
    whole = httpx.post(f"{server[0]}/generate", json=body, timeout=60).json()
    _, events = sse_events(server[0], "/generate_stream", body)
    assert [e["index"] for e in events] == list(range(1, 7))
    assert [e["generated_text"] for e in events[:-1]] == [None] * 5
    assert events[-1]["generated_text"] == whole["generated_text"]
