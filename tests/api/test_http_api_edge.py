"""API edge cases as OpenAI / vLLM / Hugging Face users expect them (parity named in each test)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

EOS = 50256
PERIOD = 13  # "."


@pytest.fixture(scope="module")
def base_url(tiny_model, tokenizer, tmp_path_factory):
    template = Path(tmp_path_factory.mktemp("tpl")) / "eos.jinja"
    template.write_text("{{ eos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine, chat_template=str(template)) as (url, _):
        yield url


def complete(url: str, **body) -> dict:
    response = httpx.post(f"{url}/v1/completions", json={"prompt": "x", **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_endoftext_in_prompt_text_is_the_special_token_like_hf_and_vllm(base_url) -> None:
    assert complete(base_url, prompt="<|endoftext|>", max_tokens=1)["usage"]["prompt_tokens"] == 1
    tokens = httpx.post(f"{base_url}/tokenize", json={"prompt": "Hi<|endoftext|>Bye"}).json()
    assert tokens["tokens"] == [17250, EOS, 3886, 68]  # as HF GPT2TokenizerFast encodes it


def test_split_special_tokens_reads_endoftext_as_text_like_hf(base_url) -> None:
    body = {"prompt": "<|endoftext|>", "max_tokens": 1, "split_special_tokens": True}
    assert complete(base_url, **body)["usage"]["prompt_tokens"] == 7  # <, |, end, of, text, |, >


def test_eos_token_in_a_chat_template_is_the_special_token(base_url) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    tokens = httpx.post(f"{base_url}/tokenize", json=body, timeout=30).json()["tokens"]
    assert tokens[0] == EOS and len(tokens) == 2


def test_skip_special_tokens_false_shows_endoftext_like_vllm(base_url) -> None:
    forced = {"max_tokens": 2, "ignore_eos": True, "logit_bias": {str(EOS): 100}}
    assert complete(base_url, **forced)["choices"][0]["text"] == ""
    shown = complete(base_url, skip_special_tokens=False, **forced)["choices"][0]["text"]
    assert shown == "<|endoftext|><|endoftext|>"


def test_matched_stop_token_text_is_dropped_like_vllm(base_url) -> None:
    body = {"max_tokens": 5, "logit_bias": {str(PERIOD): 100}, "stop_token_ids": [PERIOD]}
    choice = complete(base_url, **body)["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("", "stop", PERIOD)
    kept = complete(base_url, include_stop_str_in_output=True, **body)["choices"][0]
    assert kept["text"] == "." and kept["stop_reason"] == PERIOD


def test_include_stop_str_in_output_keeps_the_stop_string_like_vllm(base_url) -> None:
    body = {"max_tokens": 5, "logit_bias": {str(PERIOD): 100}, "stop": ".."}
    assert complete(base_url, **body)["choices"][0]["text"] == ""
    kept = complete(base_url, include_stop_str_in_output=True, **body)["choices"][0]
    assert kept["text"] == ".." and kept["stop_reason"] == ".."


@pytest.mark.parametrize(
    ("field", "value", "instead"),
    [
        ("do_sample", False, "temperature"),
        ("num_return_sequences", 3, "n"),
        ("max_new_tokens", 5, "max_tokens"),
        ("max_length", 50, "max_tokens"),
        ("min_length", 5, "min_tokens"),
        ("eos_token_id", 13, "stop_token_ids"),
        ("typical_p", 0.9, "top_p"),
        ("num_beams", 4, "use_beam_search: true with best_of"),
        ("diversity_penalty", 0.5, "group (diverse) beam search is not supported"),
        ("length_penalty", 2.0, "beam search only"),  # vLLM's field, refused without beams
    ],
)
def test_hf_generate_fields_are_refused_naming_the_openai_field(base_url, field, value, instead):
    for path, body in (
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    ):
        response = httpx.post(f"{base_url}{path}", json={**body, field: value}, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field and instead in error["message"]


def test_other_unknown_fields_are_ignored_and_logged_once_like_vllm(
    base_url, caplog, monkeypatch
) -> None:
    from gpt2serve.server.api import protocol

    monkeypatch.setattr(protocol, "_logged_unknown_fields", set())  # other tests' names
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            complete(base_url, max_tokens=1, some_new_field_xyz=1)
    logged = [r for r in caplog.records if "some_new_field_xyz" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING


def test_the_built_in_chat_template_ends_the_turn_at_the_next_user_line() -> None:
    from gpt2serve.server.api.chat_template import ChatTemplate
    from gpt2serve.server.core.sampling_params import SamplingParams

    assert ChatTemplate().stop == ["\nUser:"]
    assert ChatTemplate("{{ messages[0].content }}").stop == []  # a custom one declares its own
    # The turn stop does not count against the client's 16 stop strings.
    params = SamplingParams(stop=[f"s{i}" for i in range(16)], turn_stop=["\nUser:"])
    assert params.all_stop_strings[-1] == "\nUser:" and len(params.all_stop_strings) == 17


def test_chat_turn_stops_end_the_reply_and_are_not_shown(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, chat_template_stop='["."]') as (url, _):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                "logit_bias": {str(PERIOD): 100}}  # fmt: skip
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()
        choice = reply["choices"][0]
        assert choice["message"]["content"] == "" and choice["finish_reason"] == "stop"
        assert reply["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_streamed_final_chunk_carries_stop_reason_like_vllm(base_url, path) -> None:
    body = {"max_tokens": 5, "stream": True, "logit_bias": {str(PERIOD): 100},
            "stop_token_ids": [PERIOD]}  # fmt: skip
    body.update({"prompt": "x"} if "chat" not in path else {
        "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=30) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    finals = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert [(c["finish_reason"], c["stop_reason"]) for c in finals] == [("stop", PERIOD)]
    assert all(c["choices"][0]["stop_reason"] is None for c in chunks
               if not c["choices"][0]["finish_reason"])  # fmt: skip


def test_stops_declared_by_a_template_file_end_the_turn_over_http(
    tiny_model, tokenizer, tmp_path
) -> None:
    template = tmp_path / "declared.jinja"
    template.write_text('{# gpt2serve: {"stop": ["."]} #}{% for m in messages %}{{ m.content }}'
                        "{% endfor %}")  # fmt: skip
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, chat_template=str(template)) as (url, _):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                "logit_bias": {str(PERIOD): 100}}  # fmt: skip
        choice = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()
        assert choice["choices"][0]["message"]["content"] == ""
        assert choice["choices"][0]["finish_reason"] == "stop"
