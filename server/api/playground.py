"""The built-in web playground at `/`, its assets, and the offline API docs at `/docs`, `/redoc`.

Every asset ships inside the package (`web/`, package data): nothing is loaded from a
CDN, so the page and the docs work on an air-gapped machine. FastAPI's own /docs and /redoc load
Swagger UI and ReDoc from a CDN; they are replaced by a small page that renders /openapi.json.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.openapi_requests import DocumentedLimits
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core import sampling_params as bounds
from gpt2serve.server.core.field_checks import Bound
from gpt2serve.server.core.sampling_params import SamplingParams

ASSET_DIR = Path(__file__).with_name("web")
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
ASSETS = ("app.js", "docs.js", "style.css")
# The page's controls come from this endpoint rather than from /openapi.json: under
# --no-open-docs the document needs the key, yet the page must draw its controls before one is
# typed; and there the sampling fields are `anyOf [..., null]` with null defaults (the engine's
# defaults live in `SamplingParams`), which the page would have to restate.
CONFIG_PATH = "/playground/config.json"
# Open with or without --api-key: the page asks for the key, so it must load without one. The
# config holds only the request bounds (the same table the OpenAPI document states), no data.
PLAYGROUND_PATHS = frozenset({"/", CONFIG_PATH, *(f"/playground/{name}" for name in ASSETS)})
# Same-origin only: a stray external URL in an asset fails in every browser, not just offline.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its own page
}
# The generation controls the page shows, in its order; each one's bounds come from the table.
PARAMETERS: tuple[tuple[str, Bound, str], ...] = (
    ("temperature", bounds.TEMPERATURE, "number"),
    ("top_p", bounds.TOP_P, "number"),
    ("top_k", bounds.TOP_K, "integer"),
    ("min_p", bounds.MIN_P, "number"),
    ("repetition_penalty", bounds.REPETITION_PENALTY, "number"),
    ("presence_penalty", bounds.PRESENCE_PENALTY, "number"),
    ("frequency_penalty", bounds.FREQUENCY_PENALTY, "number"),
    ("no_repeat_ngram_size", bounds.NO_REPEAT_NGRAM_SIZE, "integer"),
)


@cache
def asset(name: str) -> bytes:
    """An asset's bytes (read once: the package does not change under a running server)."""
    return (ASSET_DIR / name).read_bytes()


def asset_response(name: str) -> Response:
    """An asset with its media type and the headers every playground answer carries."""
    media_type = MEDIA_TYPES[Path(name).suffix]
    return Response(asset(name), media_type=media_type, headers=HEADERS)


def _param(name: str, kind: str, bound: Bound, default: Any, high: float | None = None) -> dict:
    """One control: its JSON type, inclusive bounds (`min_exclusive` for an open low end)."""
    top = bound.high if high is None else high
    cast = int if kind == "integer" else float
    return {
        "name": name,
        "type": kind,
        "min": cast(bound.low),
        "max": None if top is None else cast(top),
        "min_exclusive": bound.low_open,
        "default": default,
    }


def playground_config(settings: ServerSettings, ctx: Any) -> dict[str, Any]:
    """What the page needs to draw its controls: bounds and defaults as this server enforces.

    Built from `core.sampling_params`'s table and `SamplingParams`' defaults, with the running
    engine's limits (context, --max-tokens-limit) applied the way the OpenAPI document applies
    them (`DocumentedLimits`), so the page never restates a number.
    """
    limits = DocumentedLimits.of(settings, ctx)
    defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    max_new = limits.max_new_tokens
    max_tokens_default = settings.default_max_tokens
    if max_new is not None:
        max_tokens_default = min(max_tokens_default, max_new)
    n_max = min(int(bounds.N.high or 1), limits.max_sequences_per_request)
    params = [
        _param("max_tokens", "integer", bounds.MAX_NEW_TOKENS, max_tokens_default, max_new),
        *(_param(name, kind, bound, defaults[name]) for name, bound, kind in PARAMETERS),
        _param("min_tokens", "integer", bounds.MIN_TOKENS, defaults["min_tokens"], max_new),
        _param("n", "integer", bounds.N, defaults["n"], n_max),
        _param("seed", "integer", bounds.SEED, defaults["seed"]),
        _param("logprobs", "integer", bounds.LOGPROBS, defaults["logprobs"]),
    ]
    # Beam search's own controls (best_of None: n beams); drawn in a group of their own.
    beam = [
        _param("best_of", "integer", bounds.BEST_OF, defaults["best_of"]),
        _param("length_penalty", "number", bounds.LENGTH_PENALTY, defaults["length_penalty"]),
    ]
    return {
        "auth_required": bool(settings.api_key),
        "params": params,
        "beam_params": beam,
        "stop": {
            "max_count": bounds.MAX_STOP_STRINGS,
            "max_length": bounds.MAX_STOP_STRING_LEN,
        },
    }


def install_playground(app: FastAPI, settings: ServerSettings) -> None:
    """`/`, its assets and config, and the offline `/docs` and `/redoc` (none in the schema)."""

    @app.get("/", include_in_schema=False)
    async def playground() -> Response:
        return asset_response("index.html")

    # Before the asset route, which would take `config.json` for an asset name.
    @app.get(CONFIG_PATH, include_in_schema=False)
    async def config(request: Request) -> Response:
        ctx = getattr(request.app.state, "ctx", None)
        return JSONResponse(playground_config(settings, ctx), headers=HEADERS)

    @app.get("/playground/{name}", include_in_schema=False)
    async def playground_asset(name: str) -> Response:
        if name not in ASSETS:  # only the known files: the name never reaches the filesystem
            raise APIError(404, f"no playground asset {name!r}")
        return asset_response(name)

    @app.get("/docs", include_in_schema=False)
    @app.get("/redoc", include_in_schema=False)
    async def docs() -> Response:
        return asset_response("docs.html")
