"""The playground in a real headless Chromium, against a live server on `random:tiny`.

How the browser is found (PyPI's Qt WebEngine in CI): `tests/support/browser.py`. Screenshots
land in `test-artifacts/` (or `$GPT2SERVE_TEST_ARTIFACTS`), which git ignores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.browser import CdpPage, chromium_page, require_browser
from support.http_server import running_server
from support.metrics import value, wait_until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("GPT2SERVE_TEST_ARTIFACTS", REPO / "test-artifacts"))
API_KEY = "playground-key"
RUNNING = "gpt2serve_num_requests_running"
KV_USAGE = "gpt2serve_kv_cache_usage_perc"
GEN_TEXT = "[...document.querySelectorAll('#output .gen')].map((e) => e.textContent).join('')"
SAMPLING_ONLY = ["logprobs", "min_p", "temperature", "top_k", "top_p"]
BOOLEAN_OK = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CdpPage]:
    require_browser()
    with chromium_page(tmp_path_factory.mktemp("chromium")) as page:
        yield page


@pytest.fixture(scope="module")
def live(random_tiny_model, tokenizer) -> Iterator[tuple[str, Any]]:
    engine = Engine(random_tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def server(live: tuple[str, Any]) -> str:
    return live[0]


@pytest.fixture
def page(browser: CdpPage, server: str) -> Iterator[CdpPage]:
    """The playground freshly loaded at a desktop size; no page errors by the end."""
    browser.viewport(1280, 900)
    browser.navigate(f"{server}/")
    browser.wait_for("document.body.dataset.ready === 'true'", what="the page to start")
    browser.errors.clear()
    yield browser
    assert browser.errors == []
    assert browser.evaluate("window.__violations") == []  # nothing the CSP had to block


def artifact(name: str) -> Path:
    """A path under the artifacts folder, which keeps itself out of git."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    return ARTIFACTS / name


def set_param(page: CdpPage, name: str, text: str) -> None:
    page.fill(f"#p-{name}", text)


def choose(page: CdpPage, selector: str, value: str) -> None:
    """Pick an option of a <select>, as a person would (the change event fires)."""
    page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event('change')); }})()"
    )


def record_requests(page: CdpPage) -> None:
    """From now on the page's request bodies collect in `window.__bodies`."""
    page.evaluate(
        "(() => { window.__bodies = []; const send = window.fetch;"
        " window.fetch = (url, options) => { if (options && options.body)"
        " window.__bodies.push(JSON.parse(options.body)); return send(url, options); }; })()"
    )


def last_body(page: CdpPage) -> dict[str, Any]:
    return json.loads(page.evaluate("JSON.stringify(window.__bodies.at(-1))"))


def copied(page: CdpPage, kind: str) -> str:
    """The snippet Copy curl / Copy Python puts on the page."""
    page.evaluate("document.querySelector('#code').textContent = ''")
    page.click(f"#copy-{kind}")
    return page.wait_for("document.querySelector('#code').textContent")


def error_text(page: CdpPage) -> str:
    shown = "!document.querySelector('#error').hidden && document.querySelector('#error')"
    return page.wait_for(f"{shown}.textContent", what="an error")


def generate(page: CdpPage) -> str:
    """Click Generate and wait for the run to end; the stats line."""
    runs = page.evaluate("state.runs")
    page.click("#send")
    page.wait_for(f"state.runs > {runs}", what="the run to end")
    return page.evaluate("document.querySelector('#stats').textContent")


def test_every_control_has_a_label(page: CdpPage) -> None:
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, textarea, select, button')]"
        ".filter((e) => e.tagName === 'BUTTON' ? !e.textContent.trim() : !e.labels.length)"
        ".map((e) => e.id)"
    )
    assert unlabelled == []
    # The controls come from the server's table: every bound is there, with its default.
    config = json.loads(page.evaluate("JSON.stringify(state.config)"))
    for param in config["params"] + config["beam_params"]:
        field = json.loads(page.evaluate(
            f"(() => {{ const e = document.querySelector('#p-{param['name']}');"
            " return JSON.stringify([e.min, e.max, e.value]); })()"
        ))  # fmt: skip
        assert float(field[0]) == param["min"]
        assert field[1] == ("" if param["max"] is None else str(param["max"]))
        if param["default"] is None:
            assert field[2] == ""
        else:
            assert float(field[2]) == param["default"]


def test_completion_streams_text_with_stats(page: CdpPage) -> None:
    page.fill("#prompt", "Hello, my name is")
    set_param(page, "max_tokens", "64")
    set_param(page, "temperature", "0.8")
    set_param(page, "seed", "9007199254740993")  # 2^53 + 1: sent exactly, not rounded
    set_param(page, "logprobs", "3")
    page.click("#p-ignore-eos")  # all 24 tokens, even if the random model picks <|endoftext|>
    stats = generate(page)
    assert "TTFT" in stats and "tok/s" in stats and "finish: length" in stats, stats
    assert "64 tokens" in stats, stats
    assert page.evaluate(GEN_TEXT)
    # Logprob colouring: one span per token, the alternatives in its tooltip.
    spans = page.evaluate("document.querySelectorAll('#output .tok').length")
    assert 1 <= spans <= 64
    title = page.evaluate("document.querySelector('#output .tok').title")
    assert "%" in title and "logprob" in title and title.count("\n") >= 1
    page.hover("#output .tok:nth-of-type(3)")
    info = page.wait_for("!document.querySelector('#token-info').hidden &&"
                         " document.querySelector('#token-info').textContent")  # fmt: skip
    assert "logprob" in info and "most likely:" in info
    page.click("#copy-curl")  # the README's screenshot shows the request as curl too
    page.wait_for("document.querySelector('#copy-status').textContent.includes(':')")
    assert '"seed":9007199254740993' in page.evaluate("document.querySelector('#code').textContent")
    page.evaluate("window.scrollTo(0, 0)")  # the page is taller than the screen: show its top
    page.screenshot(artifact("playground.png"))


def test_stop_aborts_a_long_generation_and_frees_its_blocks(page: CdpPage, server: str) -> None:
    page.fill("#prompt", "A very long story:")
    set_param(page, "max_tokens", "1000")
    page.click("#p-ignore-eos")
    page.click("#send")
    # Streamed: text is on the page while the request still runs.
    page.wait_for(f"({GEN_TEXT}).length > 8 && !document.querySelector('#stop').disabled",
                  what="streamed text")  # fmt: skip
    assert value(server, RUNNING) == 1
    page.click("#stop")
    stats = page.wait_for(
        "/stopped/.test(document.querySelector('#stats').textContent)"
        " && document.querySelector('#stats').textContent",
        what="the stop",
    )
    assert "finish: stopped by you" in stats
    assert int(stats.split(" tokens")[0].split()[-1]) < 1000
    # The server noticed the closed stream: the request is gone and its KV blocks are free.
    assert wait_until(lambda: value(server, RUNNING) == 0 and value(server, KV_USAGE) == 0)
    assert page.evaluate("document.querySelector('#send').disabled") is False


def test_chat_keeps_the_conversation(page: CdpPage) -> None:
    page.click("input[name=mode][value=chat]")
    page.wait_for("!document.querySelector('#chat-pane').hidden")
    set_param(page, "max_tokens", "12")
    for turn, text in enumerate(["Hi there!", "Tell me more."], start=1):
        page.fill("#user-input", text)
        page.press("Enter", 13, modifiers=2)  # Ctrl+Enter sends
        page.wait_for(f"state.history.length === {2 * turn} && !state.controller",
                      what=f"reply {turn}")  # fmt: skip
    history = json.loads(page.evaluate("JSON.stringify(state.history)"))
    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    assert history[2]["content"] == "Tell me more."
    assert page.evaluate("document.querySelectorAll('#messages li.assistant .gen').length") == 2
    assert "finish:" in page.evaluate("document.querySelector('#stats').textContent")
    page.screenshot(artifact("playground-chat.png"))


def test_server_errors_are_shown(page: CdpPage, live: tuple[str, Any]) -> None:
    set_param(page, "temperature", "5")
    generate(page)
    error = page.evaluate("document.querySelector('#error').textContent")
    assert error.startswith("400 Bad request: ") and "(field: temperature)" in error, error
    set_param(page, "temperature", "1")
    ctx = live[1].state.ctx
    ctx.draining = True  # as after SIGTERM: new requests get 503 + Retry-After
    try:
        generate(page)
    finally:
        ctx.draining = False
    error = page.evaluate("document.querySelector('#error').textContent")
    assert error == "503 Server unavailable: the server is shutting down (retry in 5 s)", error


def test_several_choices(page: CdpPage) -> None:
    set_param(page, "n", "3")
    set_param(page, "max_tokens", "6")
    page.click("#p-ignore-eos")
    assert "18 tokens" in generate(page)
    labels = page.evaluate(
        "[...document.querySelectorAll('#output .choice-label')].map((e) => e.textContent)"
    )
    assert labels == ["choice 0", "choice 1", "choice 2"]


def test_copied_python_runs(page: CdpPage, tmp_path: Path) -> None:
    page.fill("#prompt", "Copy me")
    set_param(page, "max_tokens", "5")
    set_param(page, "top_k", "5")
    page.click("#copy-python")
    code = page.wait_for("document.querySelector('#code').textContent")
    assert 'extra_body={"top_k": 5}' in code, code
    script = tmp_path / "copied.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page.click("#copy-curl")
    curl = page.wait_for("/^curl/.test(document.querySelector('#code').textContent) &&"
                         " document.querySelector('#code').textContent")  # fmt: skip
    assert "/v1/completions" in curl and '"max_tokens":5' in curl


def test_beam_search(page: CdpPage, tmp_path: Path) -> None:
    record_requests(page)
    page.fill("#prompt", "The beams say")
    set_param(page, "max_tokens", "8")
    set_param(page, "temperature", "0.7")  # sampling controls: left out while beams are on
    set_param(page, "logprobs", "2")
    set_param(page, "n", "2")
    page.click("#beam-box > summary")
    assert page.evaluate("document.querySelector('#p-best_of').disabled") is True
    page.click("#p-use-beam-search")
    disabled = page.evaluate(
        "[...document.querySelectorAll('#params input:disabled')].map((e) => e.name).sort()"
    )
    assert disabled == SAMPLING_ONLY
    assert page.evaluate("document.querySelector('#beam-status').textContent") == "— on"
    set_param(page, "best_of", "3")
    choose(page, "#p-early-stopping", "never")
    stats = generate(page)
    assert page.evaluate("document.querySelector('#error').hidden") is True, error_text(page)
    assert "finish:" in stats, stats
    body = last_body(page)
    assert body["use_beam_search"] is True and body["best_of"] == 3 and body["n"] == 2
    assert body["early_stopping"] == "never"
    assert not set(SAMPLING_ONLY) & set(body), body
    texts = page.evaluate(
        "[...document.querySelectorAll('#output .gen')].map((e) => e.textContent)"
    )
    assert len(texts) == 2 and all(texts), texts
    page.screenshot(artifact("playground-beam.png"))
    # The snippets carry the beam fields: best_of is an SDK argument of completions, the rest
    # vLLM's (extra_body).
    code = copied(page, "python")
    assert "best_of=3" in code and "temperature" not in code, code
    assert 'extra_body={"use_beam_search": True, "early_stopping": "never"}' in code, code
    script = tmp_path / "beams.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"use_beam_search":true,"best_of":3' in copied(page, "curl")
    page.click("#p-use-beam-search")  # off again: sampling back, the beam controls off
    assert page.evaluate("document.querySelectorAll('#params input:disabled').length") == 0
    assert page.evaluate("document.querySelector('#p-best_of').disabled") is True


def test_json_schema_output(page: CdpPage, tmp_path: Path) -> None:
    record_requests(page)
    page.fill("#prompt", "Is it ok?")
    set_param(page, "max_tokens", "48")
    page.click("#format-box > summary")
    assert page.evaluate("document.querySelector('#format-spec-box').hidden") is True
    choose(page, "#format", "json_schema")
    assert (
        page.evaluate("document.querySelector('#format-spec-label').textContent") == "JSON schema"
    )
    page.fill("#format-spec", BOOLEAN_OK)
    stats = generate(page)
    assert page.evaluate("document.querySelector('#error').hidden") is True, error_text(page)
    assert "finish: stop" in stats, stats
    output = json.loads(page.evaluate(GEN_TEXT))
    assert isinstance(output, dict) and isinstance(output["ok"], bool), output
    schema = json.loads(BOOLEAN_OK)
    response_format = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert last_body(page)["response_format"] == response_format
    page.screenshot(artifact("playground-structured.png"))
    # Copied, it runs and prints JSON too (completions take response_format in extra_body).
    code = copied(page, "python")
    assert 'extra_body={"response_format": {"type": "json_schema"' in code, code
    script = tmp_path / "schema.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout)["ok"], bool), done.stdout
    assert '"response_format":{"type":"json_schema"' in copied(page, "curl")
    # Chat: response_format is an SDK argument there.
    page.click("input[name=mode][value=chat]")
    page.fill("#user-input", "Is it ok?")
    assert 'response_format={"type": "json_schema"' in copied(page, "python")


def test_choice_and_regex_output(page: CdpPage) -> None:
    record_requests(page)
    page.click("#format-box > summary")
    choose(page, "#format", "choice")
    page.fill("#format-spec", "yes\nno\n")
    generate(page)
    assert last_body(page)["guided_choice"] == ["yes", "no"]
    assert page.evaluate(GEN_TEXT) in ("yes", "no")
    choose(page, "#format", "regex")
    page.fill("#format-spec", "[0-9]{3}")
    generate(page)
    assert last_body(page)["guided_regex"] == "[0-9]{3}"
    text = page.evaluate(GEN_TEXT)
    assert len(text) == 3 and text.isdigit(), text
    assert page.evaluate("document.querySelector('#format-status').textContent") == "— regex"


def test_a_bad_schema_is_an_error_in_the_page(page: CdpPage) -> None:
    record_requests(page)
    page.click("#format-box > summary")
    choose(page, "#format", "json_schema")
    page.fill("#format-spec", '{"type": "object",')
    page.click("#send")
    error = error_text(page)
    assert error.startswith("Output format: the JSON schema is not valid JSON ("), error
    assert page.evaluate("window.__bodies.length") == 0  # nothing was sent
    assert page.evaluate("document.activeElement.id") == "format-spec"
    assert page.evaluate("document.querySelector('#format-spec').ariaInvalid") == "true"
    page.click("#copy-curl")  # no snippet of a request that cannot be sent
    assert page.evaluate("document.querySelector('#code').textContent") == ""
    # JSON, but no schema the server can compile: its 400, naming the field.
    page.fill("#format-spec", '{"type": "nonsense"}')
    generate(page)
    error = error_text(page)
    assert error.startswith("400 Bad request: "), error
    assert "(field: response_format.json_schema.schema)" in error, error
    assert page.evaluate("document.querySelector('#format-spec').ariaInvalid") is None


def test_phone_viewport(page: CdpPage) -> None:
    page.viewport(390, 844, mobile=True)
    page.navigate(page.evaluate("location.href"))
    page.wait_for("document.body.dataset.ready === 'true'")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert page.evaluate("document.querySelector('#params-box').open") is False
    page.screenshot(artifact("playground-phone.png"))


def test_docs_render_offline(page: CdpPage, server: str) -> None:
    for path in ("/docs", "/redoc"):
        page.navigate(f"{server}{path}")
        page.wait_for("document.body.dataset.ready === 'true'", what=path)
        assert page.evaluate("document.querySelectorAll('#operations section').length") >= 8
    page.screenshot(artifact("docs.png"))


def test_api_key_from_the_field(browser: CdpPage, random_tiny_model, tokenizer) -> None:
    engine = Engine(random_tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, api_key=API_KEY) as (url, _):
        browser.viewport(1280, 900)
        browser.navigate(f"{url}/")
        browser.wait_for("document.body.dataset.ready === 'true'")
        browser.evaluate("sessionStorage.clear()")
        assert browser.evaluate("document.querySelector('#model').textContent") == "API key needed"
        generate(browser)
        error = browser.evaluate("document.querySelector('#error').textContent")
        assert error.startswith("401 Unauthorized: ") and "API key" in error, error
        browser.fill("#api-key", API_KEY)
        browser.press("Tab", 9)  # leaving the field stores the key
        browser.wait_for("document.querySelector('#model').textContent === 'model: tiny'")
        set_param(browser, "max_tokens", "4")
        assert "finish:" in generate(browser)
        assert browser.evaluate("sessionStorage.getItem('gpt2serve.apiKey')") == API_KEY
        assert browser.evaluate("localStorage.length") == 0
        browser.evaluate("sessionStorage.clear()")
