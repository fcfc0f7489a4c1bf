"""One schemathesis case against a live server, with the project's one exception to the checks.

A schema-valid body that breaks a rule between fields (JSON Schema cannot state those) must be
refused with a 400 that names the rule's field, instead of accepted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

BrokenRules = Callable[[Any, str, Any], set[str]]  # (ServingContext, path, body) -> fields
NamesField = Callable[[Any, set[str]], bool]  # (error response JSON, fields) -> named one?


def call_and_check(
    live: tuple[str, Any],
    path: str,
    case: Any,
    broken_rules: BrokenRules,
    names_field: NamesField,
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> Any:
    """Send `case` and run every built-in check on the answer (unless `auth` is False, when the
    API key check refuses the body before any rule between fields is looked at)."""
    url, app = live
    broken = set()
    if auth and case.meta.generation.mode.is_positive:
        broken = broken_rules(app.state.ctx, path, case.body)
    excluded = [positive_data_acceptance] if broken else []
    response = case.call_and_validate(
        base_url=url, headers=headers, excluded_checks=excluded, timeout=60
    )
    if broken:
        assert response.status_code == 400, (case.body, response.text)
        assert names_field(response.json(), broken), (case.body, response.text)
    return response


@contextlib.contextmanager
def fuzzed_server(
    model: Any, tokenizer: Any, limits: dict[str, Any], api_key: str | None = None
) -> Iterator[tuple[str, Any]]:
    """(url, app) of a live server to fuzz: room for 16 sequences, or 4 behind an API key
    (only the key check is fuzzed there)."""
    config = (
        EngineConfig(num_blocks=64, max_num_seqs=4)
        if api_key
        else EngineConfig(num_blocks=256, max_num_seqs=16)
    )
    with running_server(Engine(model, tokenizer, config), api_key=api_key, **limits) as live:
        yield live


def served_schema(url: str) -> Any:
    """The schemathesis schema of the OpenAPI document the server at `url` serves."""
    return schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
