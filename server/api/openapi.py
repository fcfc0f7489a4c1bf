"""The OpenAPI document as the server really answers: statuses, media types and limits.

FastAPI documents every body route with a 422 (this server answers 400, `errors.py`), knows
nothing of the statuses middleware and handlers answer (401, 404, 413, 503, 500), declares
`application/json` for SSE and Prometheus answers, and knows none of the limits a running server
enforces (its `--max-tokens-limit`, prompts per request, the vocabulary, the context). The
document is built once, after the engine is attached (the vocabulary and the context come from
it), and cached in `app.openapi_schema`; asked for earlier, it is built without them and not
cached.

Request schemas carry every bound a single field has. Rules that tie fields together (min_tokens
<= max_tokens, prompt + max_tokens within the context, best_of == n, prompts x n)
are beyond JSON Schema; they are listed in the body's description and answered with a 400 that
names the field.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from gpt2serve.server.api.auth import ALWAYS_OPEN_PATHS, DOCS_PATHS
from gpt2serve.server.api.openapi_requests import (
    DocumentedLimits,
    document_requests,
    normalize_integer_bounds,
)
from gpt2serve.server.api.openapi_schemas import (
    GENERATION_RESPONSES,
    JSON_MEDIA_TYPE,
    METRICS_MEDIA_TYPE,
    OK_SCHEMAS,
    RESPONSE_SCHEMAS,
    SSE_MEDIA_TYPE,
    STRING,
    Schema,
    error_schema,
    json_content,
    ref,
    sse_event_schema,
)  # fmt: skip
from gpt2serve.server.api.openapi_tgi import (
    TGI_PATHS,
    TGI_RESPONSE_SCHEMAS,
    document_tgi_operation,
    document_tgi_requests,
)
from gpt2serve.server.config import ServerSettings


def install_openapi(app: FastAPI, settings: ServerSettings) -> None:
    """Serve the OpenAPI document post-processed by `document` (built once the engine is up)."""
    generate = app.openapi  # FastAPI's own generator (it caches in app.openapi_schema too)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        ctx = getattr(app.state, "ctx", None)
        schema = copy.deepcopy(generate())
        app.openapi_schema = None
        result = document(schema, settings, DocumentedLimits.of(settings, ctx))
        if ctx is not None:
            app.openapi_schema = result
        return result

    app.openapi = openapi  # type: ignore[method-assign]


def document(schema: dict[str, Any], settings: ServerSettings, limits: DocumentedLimits) -> dict:
    """FastAPI's generated `schema`, rewritten in place to say what the server answers."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    normalize_integer_bounds(schemas)
    document_requests(schemas, limits)
    document_tgi_requests(schemas, limits)
    schemas.update(copy.deepcopy(RESPONSE_SCHEMAS))
    schemas.update(copy.deepcopy(TGI_RESPONSE_SCHEMAS))
    protected = _protected_paths(schema, settings)
    if protected:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "--api-key"}
        }
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                _document_operation(path, operation, schemas, path in protected)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def _protected_paths(schema: dict[str, Any], settings: ServerSettings) -> set[str]:
    if not settings.api_key:
        return set()
    open_paths = ALWAYS_OPEN_PATHS | (DOCS_PATHS if settings.open_docs else frozenset())
    return {path for path in schema.get("paths", {}) if path not in open_paths}


def _body_schema(operation: dict[str, Any], schemas: dict[str, Schema]) -> Schema | None:
    body = operation.get("requestBody", {}).get("content", {}).get(JSON_MEDIA_TYPE, {})
    ref = body.get("schema", {}).get("$ref", "")
    return schemas.get(ref.rsplit("/", 1)[-1]) if ref else None


def _document_operation(
    path: str, operation: dict[str, Any], schemas: dict[str, Schema], protected: bool
) -> None:
    """One operation's responses (one method per path here: the path decides)."""
    responses: dict[str, Any] = operation["responses"]
    responses.pop("422", None)
    body = _body_schema(operation, schemas)
    has_body = "requestBody" in operation
    _document_success(path, responses)
    parameters = operation.get("parameters", [])
    if has_body or any(p.get("in") != "path" for p in parameters):  # a path is any string
        responses["400"] = error_schema("Invalid request: the error names the field (`param`).")
    if protected:
        operation["security"] = [{"bearer": []}]
        responses["401"] = error_schema(
            "Missing or wrong API key (`Authorization: Bearer <key>`).",
            {"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}},
        )
    if body is not None and "model" in body.get("properties", {}):
        responses["404"] = error_schema("The `model` is not the one this server serves.")
    if any(p.get("name") == "model_id" for p in parameters):
        responses["404"] = error_schema("The id is not the model this server serves.")
    if has_body:
        responses["413"] = error_schema("The request body is over --max-request-bytes.")
    if path in GENERATION_RESPONSES:
        responses["503"] = error_schema(
            "Overloaded (--max-waiting-requests), shutting down, or the engine is not running.",
            {
                "Retry-After": {
                    "description": "Seconds to wait (overload and shutdown; not a dead engine).",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        )
    # Answered by the HTTP layer before any route runs (server/api/http_limits.py).
    responses["408"] = error_schema("The headers or the body took longer than --header-timeout"
                                    " / --body-timeout.")  # fmt: skip
    responses["431"] = error_schema("The request line and headers exceed --max-header-bytes, or"
                                    " there are more than --max-headers.")  # fmt: skip
    responses["500"] = error_schema("Internal error (no details are given).")
    if path in TGI_PATHS and has_body:  # POST / only: GET / is the playground page
        document_tgi_operation(path, responses)


def _document_success(path: str, responses: dict[str, Any]) -> None:
    ok = responses.setdefault("200", {"description": "Successful Response"})
    if path in GENERATION_RESPONSES:
        whole, chunk = GENERATION_RESPONSES[path]
        ok["description"] = "The whole response, or with `stream: true` server-sent events."
        ok["content"] = {
            JSON_MEDIA_TYPE: {"schema": ref(whole)},
            SSE_MEDIA_TYPE: {"schema": sse_event_schema(chunk)},
        }
    elif path in OK_SCHEMAS:
        ok["content"] = json_content(ref(OK_SCHEMAS[path]))
    elif path == "/health":
        responses["200"] = {"description": "Serving (an empty body)."}
        responses["503"] = {
            "description": "The engine is not running, or the server is shutting down.",
            "content": json_content(ref("HealthFailure")),
        }
    elif path == "/metrics":
        ok["description"] = "Prometheus text exposition."
        ok["content"] = {METRICS_MEDIA_TYPE: {"schema": STRING}}


# -- request bodies ---------------------------------------------------------------------------
