"""Beam search over HTTP: vLLM's fields, Hugging Face's results, streamed and not, real clients."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.hf_oracle import hf_beam_search
from support.http_server import running_server

PROMPT = [464, 3290, 286, 262, 995, 318]


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine) as (url, _):
        yield url, engine


def post(url: str, path: str = "/v1/completions", **body) -> dict:
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "fields",
    [
        {"best_of": 4, "n": 2},  # vLLM's original convention: HF num_beams=4, 2 returned
        {"n": 3},  # without best_of: n beams, all returned (vLLM's current behaviour)
        {"best_of": 5, "n": 5, "length_penalty": 0.0, "early_stopping": True},
        {"best_of": 4, "n": 1, "length_penalty": 2.0, "early_stopping": "never"},
    ],
)
def test_completions_beam_search_returns_hf_generate_sequences_best_first(
    server, hf_tiny, tokenizer, fields
) -> None:
    url, _ = server
    body = post(url, prompt=PROMPT, max_tokens=10, use_beam_search=True, **fields)
    params = SamplingParams(max_tokens=10, use_beam_search=True, **fields)
    expected = hf_beam_search(hf_tiny, PROMPT, params)
    assert [c["index"] for c in body["choices"]] == list(range(params.n))
    texts = [c["text"] for c in body["choices"]]
    eos = tokenizer.eos_token_id
    assert texts == [tokenizer.decode([t for t in tokens if t != eos]) for tokens, _ in expected]
    assert body["usage"]["completion_tokens"] == sum(len(t) for t, _ in expected)


def test_streamed_beam_search_sends_each_final_sequence_once(server) -> None:
    url, _ = server
    whole = post(url, prompt=PROMPT, max_tokens=8, use_beam_search=True, best_of=3, n=2)
    body = {"prompt": PROMPT, "max_tokens": 8, "use_beam_search": True, "best_of": 3, "n": 2,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert sorted((c["index"], c["text"], c["finish_reason"]) for c in choices) == [
        (c["index"], c["text"], c["finish_reason"]) for c in whole["choices"]
    ]
    assert chunks[-1]["usage"] == whole["usage"]


def test_chat_beam_search_with_the_openai_sdk(server) -> None:
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=2,
        extra_body={"use_beam_search": True, "best_of": 4, "length_penalty": 0.5},
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content
    completion = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=5, n=2, extra_body={"use_beam_search": True}
    )
    assert len(completion.choices) == 2


def test_disconnecting_from_a_beam_search_frees_its_blocks(server) -> None:
    url, engine = server
    body = {"prompt": PROMPT * 20, "max_tokens": 300, "use_beam_search": True, "best_of": 8,
            "n": 1, "ignore_eos": True, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        deadline = time.monotonic() + 30
        while len(engine.scheduler.running) < 8:  # the group forked into its 8 beams
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 30
    while engine.block_manager.usage > 0 or engine.beam_searches.groups:
        assert time.monotonic() < deadline, "blocks still held after the client left"
        time.sleep(0.02)


def test_hf_generate_names_for_beams_point_to_the_vllm_fields(server) -> None:
    url, _ = server
    response = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "num_beams": 4})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "num_beams" and "use_beam_search" in error["message"]
