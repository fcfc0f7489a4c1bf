"""SSE on the wire: exact framing, usage chunks, ids, and errors after the stream started."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import aclosing

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server
from support.metrics import value, wait_until

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
POISON = "poisoned prompt"


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer) -> Iterator[tuple[str, object, Engine]]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine) as (url, app):
        yield url, app, engine


def body_for(path: str, prompt: str, **extra: object) -> dict:
    if path == CHAT:
        return {"messages": [{"role": "user", "content": prompt}], **extra}
    return {"prompt": prompt, **extra}


def raw_stream(url: str, path: str, body: dict) -> tuple[httpx.Response, bytes]:
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as r:
        return r, b"".join(r.iter_raw())


def split_events(raw: bytes) -> list[bytes]:
    """The payloads of a well-framed SSE body; fails on anything but `data: ...\\n\\n` events."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event, event
    return [event[len(b"data: ") :] for event in events]


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_sse_framing_without_usage(server, path: str) -> None:
    url, _, _ = server
    body = body_for(path, "Framing", max_tokens=6, ignore_eos=True, temperature=0)
    response, raw = raw_stream(url, path, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = split_events(raw)
    assert payloads[-1] == b"[DONE]" and payloads.count(b"[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(chunk["choices"] for chunk in chunks)  # no usage chunk
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert len({chunk["created"] for chunk in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_sse_usage_chunk_with_include_usage(server, path: str) -> None:
    url, _, _ = server
    body = body_for(
        path, "Usage please", max_tokens=5, ignore_eos=True, stream_options={"include_usage": True}
    )
    _, raw = raw_stream(url, path, body)
    payloads = split_events(raw)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    last = chunks[-1]
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert all(chunk["choices"] and chunk["usage"] is None for chunk in chunks[:-1])
    assert len({chunk["id"] for chunk in chunks}) == 1
    expected = "chat.completion.chunk" if path == CHAT else "text_completion"
    assert {chunk["object"] for chunk in chunks} == {expected}


def test_chat_stream_role_first_then_content(server) -> None:
    url, _, _ = server
    _, raw = raw_stream(url, CHAT, body_for(CHAT, "Roles", max_tokens=4, ignore_eos=True))
    chunks = [json.loads(p) for p in split_events(raw)[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in chunk["choices"][0]["delta"] for chunk in chunks[1:])


@pytest.fixture
def poisoned(server, monkeypatch) -> Iterator[None]:
    """Make the engine output path raise after two deltas, for the POISON prompt only."""
    _, app, _ = server
    engine = app.state.ctx.engine
    tokenizer = app.state.ctx.tokenizer
    real_generate = engine.generate

    async def generate(request, request_id=None):
        poisoned = POISON in tokenizer.decode(request.prompt_token_ids)
        async with aclosing(real_generate(request, request_id)) as outputs:
            count = 0
            async for output in outputs:
                if poisoned and count == 2:
                    raise RuntimeError("secret internal detail")
                count += 1
                yield output

    monkeypatch.setattr(engine, "generate", generate)
    yield


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_error_after_stream_started_is_a_final_error_chunk(
    server, poisoned, path: str, caplog
) -> None:
    url, _, engine = server
    before = value(url, "gpt2serve_request_errors_total", code="500")
    bad = body_for(path, POISON, max_tokens=30, ignore_eos=True, stream=True)
    good = body_for(path, "healthy neighbour", max_tokens=30, ignore_eos=True, stream=True)

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                client.post(f"{url}{path}", json=bad), client.post(f"{url}{path}", json=good)
            )

    with caplog.at_level(logging.ERROR):
        bad_response, good_response = asyncio.run(both())
    assert bad_response.status_code == 200
    payloads = split_events(bad_response.content)
    assert payloads[-1] == b"[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["type"] == "internal_server_error" and error["code"] == 500
    assert error["message"] == "internal server error"
    assert len(payloads) >= 4  # some real chunks went out before the failure
    assert b"secret" not in bad_response.content and b"Traceback" not in bad_response.content
    assert any("secret internal detail" in str(r.exc_info) for r in caplog.records if r.exc_info)
    assert value(url, "gpt2serve_request_errors_total", code="500") == before + 1

    good_chunks = [json.loads(p) for p in split_events(good_response.content)[:-1]]
    assert good_chunks[-1]["choices"][0]["finish_reason"] == "length"
    manager = engine.block_manager
    assert wait_until(lambda: manager.num_free_blocks == manager.num_usable_blocks)
    after = httpx.post(f"{url}{path}", json=body_for(path, "after", max_tokens=2), timeout=30)
    assert after.status_code == 200
