"""Logprobs in both OpenAI shapes: text_offset over multi-byte characters, streamed == not."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import pytest

from gpt2serve.server.api.openai_format import LegacyLogprobs
from gpt2serve.server.core.messages import TokenLogprobs
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

# 'Hi', ' \xf0\x9f', '\xa4', '\x96', ' é', ' \xe6', '\x97', '\xa5', '\xe6\x9c', '\xac':
# the robot and both CJK characters are split over two or three tokens.
SPLIT_TEXT = "Hi 🤖 é 日本"
# Each token starts where the text decoded from the tokens before it ends; a fragment of a
# character adds nothing until the character completes.
SPLIT_OFFSETS = [0, 2, 3, 3, 4, 6, 7, 7, 8, 8]


def entries(ids: list[int]) -> list[TokenLogprobs]:
    return [TokenLogprobs(token_id=i, logprob=-1.0, top=[(i, -1.0)]) for i in ids]


def test_text_offset_follows_the_decoded_text(tokenizer) -> None:
    ids = tokenizer.encode(SPLIT_TEXT)
    assert len(ids) == len(SPLIT_OFFSETS)
    legacy = LegacyLogprobs(tokenizer)
    for entry in entries(ids):
        legacy.add(entry)
    result = legacy.take()
    assert result["text_offset"] == SPLIT_OFFSETS
    assert max(result["text_offset"]) < len(SPLIT_TEXT)
    assert result["tokens"][2] == "bytes:\\xa4"  # a fragment is shown as its bytes


def test_text_offset_with_a_prefix_and_across_takes(tokenizer) -> None:
    ids = tokenizer.encode(SPLIT_TEXT)
    legacy = LegacyLogprobs(tokenizer, text_offset=5)
    offsets = []
    for start in range(0, len(ids), 3):  # streaming: take() after every few tokens
        for entry in entries(ids[start : start + 3]):
            legacy.add(entry)
        offsets += legacy.take()["text_offset"]
    assert offsets == [5 + o for o in SPLIT_OFFSETS]


@pytest.fixture(scope="module")
def base_url(tiny_model, tokenizer) -> Iterator[str]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine) as (url, _):
        yield url


def streamed_chunks(url: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as r:
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def merged_legacy(chunks: list[dict], index: int) -> dict[str, list]:
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
    merged["text_offset"] = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["index"] == index and choice["logprobs"] is not None:
                lp = choice["logprobs"]
                assert len({len(lp[key]) for key in merged}) == 1  # parallel lists
                for key in merged:
                    merged[key] += lp[key]
    return merged


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0, "n": 1}, {"temperature": 1.0, "n": 2, "seed": 7}],
)
def test_streamed_completion_logprobs_equal_non_streamed(base_url, sampling: dict) -> None:
    body = {"prompt": "The cat", "max_tokens": 8, "logprobs": 3, "ignore_eos": True, **sampling}
    full = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).json()
    chunks = streamed_chunks(base_url, "/v1/completions", body)
    for choice in full["choices"]:
        expected = choice["logprobs"]
        streamed = merged_legacy(chunks, choice["index"])
        assert len(streamed["tokens"]) == 8
        assert streamed["tokens"] == expected["tokens"]
        assert streamed["text_offset"] == expected["text_offset"]
        assert streamed["token_logprobs"] == pytest.approx(expected["token_logprobs"], abs=1e-5)
        tops = zip(streamed["top_logprobs"], expected["top_logprobs"], strict=True)
        for top, expected_top in tops:
            assert len(top) == 3 and top.keys() == expected_top.keys()
            assert all(math.isfinite(v) and v <= 0 for v in top.values())
        assert all(math.isfinite(v) and v <= 0 for v in streamed["token_logprobs"])


def test_streamed_chat_logprobs_equal_non_streamed(base_url) -> None:
    body = {
        "messages": [{"role": "user", "content": "Say something"}], "max_tokens": 6,
        "logprobs": True, "top_logprobs": 2, "temperature": 0.0, "ignore_eos": True,
    }  # fmt: skip
    full = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
    expected = full["choices"][0]["logprobs"]["content"]
    streamed = [
        item
        for chunk in streamed_chunks(base_url, "/v1/chat/completions", body)
        for choice in chunk["choices"]
        if choice["logprobs"] is not None
        for item in choice["logprobs"]["content"]
    ]
    assert len(streamed) == len(expected) == 6
    for item, want in zip(streamed, expected, strict=True):
        assert item["token"] == want["token"] and item["bytes"] == want["bytes"]
        assert math.isfinite(item["logprob"]) and item["logprob"] <= 0
        assert item["logprob"] == pytest.approx(want["logprob"], abs=1e-5)
        assert [t["token"] for t in item["top_logprobs"]] == [
            t["token"] for t in want["top_logprobs"]
        ]
        assert len(item["top_logprobs"]) == 2
        assert item["token"] == item["top_logprobs"][0]["token"]  # greedy picks the top one
