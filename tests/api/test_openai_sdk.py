"""The official openai SDK against a live server: completions and chat, streamed and not."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from gpt2serve.model.weights import save_hf_checkpoint
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


def test_models_lists_the_served_name(client) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_streamed_equals_non_streamed(client) -> None:
    full = client.completions.create(model="tiny", prompt="Hello world", max_tokens=12, **GREEDY)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    assert full.usage.prompt_tokens == 2 and full.usage.completion_tokens == 12
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="Hello world",
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_greedy_text_equals_hf_transformers(client, tiny_model, tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    prompt = "The meaning of life is"
    ids = tokenizer.encode(prompt)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(tiny_model, Path(tmp))
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=0
            )
    expected_ids = out[0, len(ids) :].tolist()
    ours = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, **GREEDY)
    assert ours.choices[0].text == tokenizer.decode(expected_ids)


def test_n2_and_logprobs(client) -> None:
    result = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=5, n=2, seed=3, logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert sorted(c.index for c in result.choices) == [0, 1]
    for choice in result.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
        assert all(len(top) == 2 for top in lp.top_logprobs)
        assert "".join(lp.tokens) == choice.text
        # Each token starts where the previous ones' text ends, and its text is there.
        starts = [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        assert lp.text_offset == starts
        for token, start in zip(lp.tokens, lp.text_offset, strict=True):
            assert choice.text[start : start + len(token)] == token
    assert result.usage.completion_tokens == 10


def complete(client, prompt, max_tokens: int, **extra):
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, **extra)


def test_prompt_forms(client) -> None:
    as_ids = complete(client, [15496, 995], 4, **GREEDY)
    as_text = complete(client, "Hello world", 4, **GREEDY)
    assert as_ids.choices[0].text == as_text.choices[0].text
    goodbye = complete(client, "Goodbye", 4, **GREEDY)
    many = complete(client, ["Hello world", "Goodbye"], 4, n=2, **GREEDY)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    # Choices are grouped by prompt (index = prompt * n + choice), each from its own prompt.
    expected = [as_text.choices[0].text] * 2 + [goodbye.choices[0].text] * 2
    assert [c.text for c in many.choices] == expected
    assert as_text.choices[0].text != goodbye.choices[0].text
    batch = complete(client, [[15496, 995], [1, 2, 3]], 3, **GREEDY)
    singles = [
        complete(client, ids, 3, **GREEDY).choices[0].text for ids in ([15496, 995], [1, 2, 3])
    ]
    assert [c.text for c in batch.choices] == singles
    assert batch.usage.prompt_tokens == 5 and batch.usage.completion_tokens == 6


def test_echo_prepends_the_prompt(client) -> None:
    result = complete(client, "Echo this", 3, echo=True, **GREEDY)
    plain = complete(client, "Echo this", 3, **GREEDY)
    assert result.choices[0].text == "Echo this" + plain.choices[0].text
    chunks = list(complete(client, "Echo this", 3, echo=True, stream=True, **GREEDY))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert texts[0].startswith("Echo this")
    assert "".join(texts) == result.choices[0].text


def test_chat_streamed_and_not(client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, **GREEDY)
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=10, stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_chat_logprobs_and_max_completion_tokens(client) -> None:
    result = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Count"}], max_completion_tokens=4,
        logprobs=True, top_logprobs=3, **GREEDY,
    )  # fmt: skip
    content = result.choices[0].logprobs.content
    assert len(content) == 4 and all(len(item.top_logprobs) == 3 for item in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy
    assert "".join(item.token for item in content) == result.choices[0].message.content


def test_stop_string_through_the_api(client) -> None:
    free = client.completions.create(model="tiny", prompt="Stop test", max_tokens=20, **GREEDY)
    text = free.choices[0].text
    stop = text[5:9]
    cut = client.completions.create(
        model="tiny", prompt="Stop test", max_tokens=20, stop=[stop], **GREEDY
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
