"""The TGI routes in the OpenAPI document: their bodies' bounds, answers, SSE events and errors."""

from __future__ import annotations

from typing import Any

from gpt2serve.server.api.openapi_requests import DocumentedLimits
from gpt2serve.server.api.openapi_schemas import (
    JSON_MEDIA_TYPE,
    SSE_MEDIA_TYPE,
    STRING,
    Schema,
    json_content,
    nullable,
    object_schema,
    ref,
    sse_event_schema,
)  # fmt: skip
from gpt2serve.server.api.tgi_protocol import TGIParameters, TGIRequest
from gpt2serve.server.core import sampling_params as bounds

_COUNT: Schema = {"type": "integer", "minimum": 0}
_LOGPROB: Schema = {"type": ["number", "null"]}
_TOKEN = object_schema(
    {"id": _COUNT, "text": STRING, "logprob": _LOGPROB, "special": {"type": "boolean"}}
)
_TOKENS: Schema = {"type": "array", "items": _TOKEN}
_FINISH_REASON: Schema = {"type": "string", "enum": ["length", "eos_token", "stop_sequence"]}
_END = {"finish_reason": _FINISH_REASON, "generated_tokens": _COUNT, "seed": nullable(_COUNT)}
_PREFILL = object_schema({"id": _COUNT, "text": STRING, "logprob": _LOGPROB})

TGI_RESPONSE_SCHEMAS: dict[str, Schema] = {
    "TGIGenerateResponse": object_schema(
        {"generated_text": STRING},
        {
            "details": object_schema(
                {**_END, "prefill": {"type": "array", "items": _PREFILL}, "tokens": _TOKENS},
                {"top_tokens": {"type": "array", "items": _TOKENS}},
            )
        },
    ),
    # `POST /` answers TGI's compat shape: the response in a one-item list.
    "TGICompatResponse": {
        "type": "array",
        "items": ref("TGIGenerateResponse"),
        "minItems": 1,
        "maxItems": 1,
    },
    "TGIStreamResponse": object_schema(
        {
            "index": {"type": "integer", "minimum": 1},
            "token": _TOKEN,
            "generated_text": nullable(STRING),
            "details": nullable(object_schema({**_END, "input_length": _COUNT})),
        },
        {"top_tokens": _TOKENS},
    ),
    "TGIErrorResponse": {
        **object_schema(
            {
                "error": STRING,
                "error_type": {
                    "type": "string",
                    "enum": ["validation", "overloaded", "generation", "incomplete_generation"],
                },
            }
        ),
        "description": "TGI's error body (the Hugging Face clients raise its error_type).",
    },
}
# Each TGI path: its whole answer, and its server-sent event (None: it has none of the kind).
TGI_PATHS: dict[str, tuple[str | None, str | None]] = {
    "/generate": ("TGIGenerateResponse", None),
    "/generate_stream": (None, "TGIStreamResponse"),
    "/": ("TGICompatResponse", "TGIStreamResponse"),
}
MAX_NUM_BEAMS = bounds.MAX_BEAM_WIDTH


def _tgi_error(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    content = json_content(ref("TGIErrorResponse"))
    response: Schema = {"description": description, "content": content}
    if headers:
        response["headers"] = headers
    return response


def document_tgi_operation(path: str, responses: dict[str, Any]) -> None:
    """A TGI route's answers: its 200, and its 400 and 503 in TGI's error shape."""
    whole, event = TGI_PATHS[path]
    content: dict[str, Schema] = {}
    if whole is not None:
        content[JSON_MEDIA_TYPE] = {"schema": ref(whole)}
    if event is not None:
        content[SSE_MEDIA_TYPE] = {"schema": sse_event_schema(
            event, "TGIErrorResponse", done=False,
            description="Each event: `data: <event JSON>` (the last has generated_text), or an "
            "error; the stream then ends (TGI sends no [DONE]).",
        )}  # fmt: skip
    streams = {"/generate": "never streams", "/generate_stream": "always streams"}
    description = f"The answer ({streams.get(path, 'streamed with `stream: true`')})."
    responses["200"] = {"description": description, "content": content}
    responses["400"] = _tgi_error("Invalid request: the error names the field.")
    responses["503"] = _tgi_error(
        "Overloaded (--max-waiting-requests), shutting down, or the engine is not running.",
        {
            "Retry-After": {
                "description": "Seconds to wait (overload and shutdown; not a dead engine).",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    )


def _set(properties: dict[str, Schema], name: str, schema: Schema) -> None:
    """Replace a property's type, keeping its title and default."""
    kept = {k: v for k, v in properties.get(name, {}).items() if k in ("title", "default")}
    properties[name] = {**schema, **kept}


def document_tgi_requests(schemas: dict[str, Schema], limits: DocumentedLimits) -> None:
    """The TGI body: bounds that need the running server, and the values refused with a 400."""
    if "TGIParameters" not in schemas or "TGIRequest" not in schemas:
        return
    for model in (TGIRequest, TGIParameters):  # refused with a 400 naming what to send instead
        for name in model.refused_fields():
            schemas[model.__name__]["properties"][name] = False
    body = schemas["TGIParameters"]
    properties = body["properties"]
    max_new_tokens: Schema = {"type": "integer", "minimum": 1}
    if limits.max_new_tokens is not None:
        max_new_tokens["maximum"] = limits.max_new_tokens
    _set(properties, "max_new_tokens", nullable(max_new_tokens))
    seed = {"type": "integer", "minimum": 0, "maximum": bounds.MAX_SEED}
    _set(properties, "seed", nullable(seed))
    stop_string = {"type": "string", "minLength": 1, "maxLength": bounds.MAX_STOP_STRING_LEN}
    stop = {"type": "array", "items": stop_string, "maxItems": bounds.MAX_STOP_STRINGS}
    _set(properties, "stop", nullable(stop))
    # Accepted only as the values that change nothing (anything else: a 400 naming the field).
    _set(properties, "best_of", nullable({"type": "integer", "const": 1}))
    _set(properties, "typical_p", nullable({"type": "number", "const": 1.0}))
    _set(properties, "watermark", {"type": "boolean", "const": False})
    grammar = {
        "anyOf": [
            object_schema({"type": {"enum": ["json", "json_schema"]}, "value": {"type": "object"}}),
            object_schema(
                {"type": {"const": "regex"}, "value": {"type": "string", "minLength": 1}}
            ),
            {"type": "null"},
        ],
        "description": "The output matches this JSON schema or regex (400 if it does not compile).",
    }
    _set(properties, "grammar", grammar)
    _set(properties, "adapter_id", {"type": "null", "description": "Not supported (no LoRA)."})
    beams = {"type": "integer", "minimum": 1, "maximum": MAX_NUM_BEAMS}
    _set(properties, "num_beams", nullable(beams))
    room = "the context" if limits.max_sequence_tokens is None else limits.max_sequence_tokens
    body["description"] = (
        "TGI's `parameters`. Rules between fields (a 400 names the field): the input's tokens "
        f"(after truncate) + max_new_tokens <= {room}; decoder_input_details only when not "
        "streaming."
    )
