"""One schemathesis case against a live server, with the project's one exception to the checks.

A schema-valid body that breaks a rule between fields (JSON Schema cannot state those) must be
refused with a 400 that names the rule's field, instead of accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemathesis.specs.openapi.checks import positive_data_acceptance

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
