"""--chat-template FILE over HTTP: it renders the prompt; its sandbox holds (400, not 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

TAGGED = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>|{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Name a colour"},
]
RENDERED = "<system>Be terse.</system>|<user>Name a colour</user>|<assistant>"

# Classic Jinja2 escapes, chosen by the first message; anything else renders normally.
ESCAPES = {
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "mutate": "{{ messages.append(messages[0]) }}",
}
# Runaway or crashing templates (500s before: OverflowError, ZeroDivisionError).
RUNAWAY = {
    "range": "{% for i in range(100001) %}{% endfor %}",
    "divide": "{{ 1 / 0 }}",
    "repeat": "{{ 'x' * 10**9 }}",
}
# The sandbox's formatter renders an unsafe field as empty rather than raising.
FORMAT_ESCAPE = "{{ 'A{0.__class__}B'.format(messages) }}"
ESCAPING = (
    "".join(
        f"{'{% if' if i == 0 else '{% elif'} messages[0].content == '{name}' %}}{body}"
        for i, (name, body) in enumerate(
            [*ESCAPES.items(), *RUNAWAY.items(), ("format", FORMAT_ESCAPE)]
        )
    )
    + "{% else %}{{ messages[0].content }}{% endif %}"
)


def serve_with_template(tmp_path_factory, tiny_model, tokenizer, source: str) -> Iterator[str]:
    path = Path(tmp_path_factory.mktemp("templates")) / "chat.jinja"
    path.write_text(source)
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, chat_template=str(path)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def tagged_url(tmp_path_factory, tiny_model, tokenizer) -> Iterator[str]:
    yield from serve_with_template(tmp_path_factory, tiny_model, tokenizer, TAGGED)


@pytest.fixture(scope="module")
def escaping_url(tmp_path_factory, tiny_model, tokenizer) -> Iterator[str]:
    yield from serve_with_template(tmp_path_factory, tiny_model, tokenizer, ESCAPING)


def test_template_file_renders_the_prompt(tagged_url, tokenizer) -> None:
    expected = tokenizer.encode(RENDERED)
    tokens = httpx.post(f"{tagged_url}/tokenize", json={"messages": MESSAGES}, timeout=30)
    assert tokens.json()["tokens"] == expected
    greedy = {"max_tokens": 6, "temperature": 0.0, "ignore_eos": True}
    chat = httpx.post(
        f"{tagged_url}/v1/chat/completions", json={"messages": MESSAGES, **greedy}, timeout=60
    ).json()
    assert chat["usage"]["prompt_tokens"] == len(expected)
    # The same text as a plain completion prompt continues identically: it is the prompt.
    plain = httpx.post(
        f"{tagged_url}/v1/completions", json={"prompt": RENDERED, **greedy}, timeout=60
    ).json()
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]


def test_add_generation_prompt_false_reaches_the_template(tagged_url, tokenizer) -> None:
    body = {"messages": MESSAGES, "add_generation_prompt": False}
    tokens = httpx.post(f"{tagged_url}/tokenize", json=body, timeout=30).json()["tokens"]
    assert tokens == tokenizer.encode(RENDERED.removesuffix("<assistant>"))


@pytest.mark.parametrize("attempt", sorted(ESCAPES))
def test_sandbox_escape_is_a_400(escaping_url, attempt: str) -> None:
    body = {"messages": [{"role": "user", "content": attempt}], "max_tokens": 2}
    response = httpx.post(f"{escaping_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert "unsafe" in error["message"] or "not safely callable" in error["message"]
    normal = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    after = httpx.post(f"{escaping_url}/v1/chat/completions", json=normal, timeout=30)
    assert after.status_code == 200
    assert after.json()["usage"]["prompt_tokens"] == 1  # "hello": the else branch rendered


def test_sandboxed_format_leaks_nothing(escaping_url, tokenizer) -> None:
    body = {"messages": [{"role": "user", "content": "format"}]}
    tokens = httpx.post(f"{escaping_url}/tokenize", json=body, timeout=30).json()["tokens"]
    assert tokenizer.decode(tokens) == "AB"


@pytest.mark.parametrize("attempt", sorted(RUNAWAY))
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
def test_runaway_template_is_a_400_on_chat_and_tokenize(escaping_url, attempt, route) -> None:
    body = {"messages": [{"role": "user", "content": attempt}]}
    response = httpx.post(f"{escaping_url}{route}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and "chat template" in error["message"]
