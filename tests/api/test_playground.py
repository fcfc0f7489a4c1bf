"""The playground over HTTP (no browser): page, assets, config, auth, offline docs, packaging."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib

from gpt2serve.server.api.playground import ASSET_DIR, ASSETS, PLAYGROUND_PATHS
from gpt2serve.server.core import sampling_params as bounds
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sekret"
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# Size guard: the whole page (HTML, JS, CSS, docs) stays small enough to read and to vendor.
MAX_TOTAL_BYTES = 48 * 1024
# The table the page's controls must agree with, name by name.
TABLE = {
    "temperature": bounds.TEMPERATURE,
    "top_p": bounds.TOP_P,
    "top_k": bounds.TOP_K,
    "min_p": bounds.MIN_P,
    "repetition_penalty": bounds.REPETITION_PENALTY,
    "presence_penalty": bounds.PRESENCE_PENALTY,
    "frequency_penalty": bounds.FREQUENCY_PENALTY,
    "no_repeat_ngram_size": bounds.NO_REPEAT_NGRAM_SIZE,
    "seed": bounds.SEED,
    "logprobs": bounds.LOGPROBS,
}
# Beam search's controls, drawn in their own group.
BEAM_TABLE = {"best_of": bounds.BEST_OF, "length_penalty": bounds.LENGTH_PENALTY}


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer) -> Iterator[str]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, max_tokens_limit=100, max_sequences_per_request=4) as (url, _):
        yield url


@pytest.fixture(scope="module")
def keyed(tiny_model, tokenizer) -> Iterator[str]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine, api_key=API_KEY, open_docs=False) as (url, _):
        yield url


def asset_files() -> list[Path]:
    return sorted(p for p in ASSET_DIR.iterdir() if p.is_file())


def test_the_page_is_served_at_the_root(server: str) -> None:
    response = httpx.get(f"{server}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert '<script src="/playground/app.js" defer></script>' in response.text
    assert 'href="/playground/style.css"' in response.text


@pytest.mark.parametrize("name", ASSETS)
def test_assets_are_served_with_their_media_type(server: str, name: str) -> None:
    response = httpx.get(f"{server}/playground/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(MEDIA[Path(name).suffix])
    assert response.content == (ASSET_DIR / name).read_bytes()


def test_unknown_assets_are_not_found(server: str) -> None:
    for path in ("/playground/missing.js", "/playground/..%2Fplayground.py"):
        response = httpx.get(f"{server}{path}")
        assert response.status_code == 404
        assert "message" in response.json()["error"]


def test_assets_reference_nothing_outside_the_server() -> None:
    for path in asset_files():
        text = path.read_text()
        assert not re.search(r"https?://|\bwss?://", text), f"{path.name} names an external URL"
        for attribute in re.findall(r"""(?:src|href)=["']([^"']*)""", text):
            assert attribute.startswith(("/", "#", "data:")), (path.name, attribute)
        assert "@import" not in text and "url(" not in text, path.name


def test_the_page_is_small() -> None:
    total = sum(path.stat().st_size for path in asset_files())
    assert total <= MAX_TOTAL_BYTES, f"{total} bytes"


def test_config_is_the_bounds_table(server: str) -> None:
    config = httpx.get(f"{server}/playground/config.json").json()
    params = {p["name"]: p for p in config["params"]}
    defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    for name, bound in TABLE.items():
        param = params[name]
        assert (param["min"], param["max"]) == (bound.low, bound.high), name
        assert param["min_exclusive"] == bound.low_open, name
        assert param["default"] == defaults[name], name
    # The running server's limits: --max-tokens-limit 100, --max-sequences-per-request 4.
    assert (params["max_tokens"]["min"], params["max_tokens"]["max"]) == (1, 100)
    assert params["max_tokens"]["default"] == 100  # --default-max-tokens 256, capped
    assert params["min_tokens"]["max"] == 100
    assert (params["n"]["min"], params["n"]["max"]) == (1, 4)
    assert config["stop"] == {
        "max_count": bounds.MAX_STOP_STRINGS,
        "max_length": bounds.MAX_STOP_STRING_LEN,
    }
    assert config["auth_required"] is False


def test_beam_search_config_is_the_bounds_table(server: str) -> None:
    config = httpx.get(f"{server}/playground/config.json").json()
    beam = {p["name"]: p for p in config["beam_params"]}
    assert list(beam) == list(BEAM_TABLE)
    defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    for name, bound in BEAM_TABLE.items():
        param = beam[name]
        assert (param["min"], param["max"]) == (bound.low, bound.high), name
        assert param["min_exclusive"] == bound.low_open, name
        assert param["default"] == defaults[name], name
    assert beam["best_of"]["type"] == "integer" and beam["best_of"]["default"] is None  # n beams
    assert beam["best_of"]["max"] == bounds.MAX_BEAM_WIDTH
    assert beam["length_penalty"]["type"] == "number"


def test_config_agrees_with_the_openapi_document(server: str) -> None:
    config = httpx.get(f"{server}/playground/config.json").json()
    spec = httpx.get(f"{server}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    properties = dict(schemas["CompletionRequest"]["properties"])
    # Completions take max_tokens 0 (scoring only); the page generates, as chat does.
    chat = schemas["ChatCompletionRequest"]["properties"]
    properties["max_tokens"] = chat["max_completion_tokens"]
    for param in config["params"] + config["beam_params"]:
        schema = properties[param["name"]]
        schema = schema["anyOf"][0] if "anyOf" in schema else schema
        low = schema.get("exclusiveMinimum", schema.get("minimum"))
        assert low == param["min"], param["name"]
        assert ("exclusiveMinimum" in schema) == param["min_exclusive"], param["name"]
        assert schema.get("maximum") == param["max"], param["name"]
        assert schema["type"] == param["type"], param["name"]


def test_the_page_needs_no_key(keyed: str) -> None:
    for path in sorted(PLAYGROUND_PATHS):
        assert httpx.get(f"{keyed}{path}").status_code == 200, path
    assert httpx.get(f"{keyed}/playground/config.json").json()["auth_required"] is True
    # Everything else still needs it, including the docs under --no-open-docs.
    for path in ("/v1/models", "/docs", "/redoc", "/openapi.json", "/playground/other.js"):
        assert httpx.get(f"{keyed}{path}").status_code == 401, path
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{keyed}/v1/models", headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_are_offline(server: str, path: str) -> None:
    response = httpx.get(f"{server}{path}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="/playground/docs.js" defer></script>' in response.text
    assert not re.search(r"https?://", response.text)
    assert "swagger" not in response.text.lower() and "redoc.standalone" not in response.text


def test_playground_routes_stay_out_of_the_openapi_document(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/playground", "/docs", "/redoc"))]
    assert "get" not in paths.get("/", {})  # `POST /` may be documented; the page is not


def test_every_asset_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gpt2serve.server.api"]
    package_dir = REPO / "server" / "api"
    for path in asset_files():
        relative = path.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
