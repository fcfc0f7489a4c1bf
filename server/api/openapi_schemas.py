"""Schema building blocks of the OpenAPI document: responses, SSE events, errors."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

# What /metrics answers (prometheus_client's exposition format 0.0.4), byte for byte.
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SSE_MEDIA_TYPE = "text/event-stream"
JSON_MEDIA_TYPE = "application/json"
# Digits the server reads as a logit_bias key (`field_checks._TOKEN_ID_KEY`).
MAX_TOKEN_ID_KEY_DIGITS = 18


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def object_schema(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


STRING: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_NUMBER: Schema = {"type": "number"}

ERROR_RESPONSE: Schema = {
    **object_schema(
        {
            "error": object_schema(
                {
                    "message": STRING,
                    "type": STRING,
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "integer", "null"]},
                }
            )
        }
    ),
    "title": "ErrorResponse",
    "description": "The OpenAI error envelope.",
}

_USAGE: Schema = object_schema(
    {"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT}
)
_FINISH_REASON: Schema = nullable({"type": "string", "enum": ["stop", "length", "abort"]})
# A stop string, or the stop token id that ended the choice.
_STOP_REASON: Schema = {"type": ["integer", "string", "null"]}
_LEGACY_LOGPROBS: Schema = object_schema(
    {
        "tokens": {"type": "array", "items": STRING},
        "token_logprobs": {"type": "array", "items": {"type": ["number", "null"]}},
        "top_logprobs": {
            "type": "array",
            "items": nullable({"type": "object", "additionalProperties": _NUMBER}),
        },
        "text_offset": {"type": "array", "items": _COUNT},
    }
)
# vLLM's `prompt_logprobs`: per prompt token (the first has none), token id -> its numbers.
_PROMPT_LOGPROBS: Schema = {
    "type": "array",
    "items": nullable(
        {
            "type": "object",
            "additionalProperties": object_schema(
                {
                    "logprob": _NUMBER,
                    "rank": {"type": "integer", "minimum": 1},
                    "decoded_token": STRING,
                }
            ),
        }
    ),
}
_BYTES: Schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}
_TOP_LOGPROB: Schema = object_schema({"token": STRING, "logprob": _NUMBER, "bytes": _BYTES})
_CHAT_LOGPROBS: Schema = nullable(
    object_schema(
        {
            "content": {
                "type": "array",
                "items": object_schema(
                    {
                        **_TOP_LOGPROB["properties"],
                        "top_logprobs": {"type": "array", "items": _TOP_LOGPROB},
                    }
                ),
            }
        }
    )
)


def _response_base(obj: str) -> dict[str, Schema]:
    return {"id": STRING, "object": {"const": obj}, "created": _INT, "model": STRING}


_COMPLETION_CHOICE = object_schema(
    {
        "index": _COUNT,
        "text": STRING,
        "logprobs": nullable(_LEGACY_LOGPROBS),
        "finish_reason": _FINISH_REASON,
        "stop_reason": _STOP_REASON,
    },
    {"prompt_logprobs": _PROMPT_LOGPROBS},
)
_CHAT_CHOICE = object_schema(
    {
        "index": _COUNT,
        "message": object_schema({"role": {"const": "assistant"}, "content": STRING}),
        "logprobs": _CHAT_LOGPROBS,
        "finish_reason": _FINISH_REASON,
        "stop_reason": _STOP_REASON,
    }
)
_CHAT_CHUNK_CHOICE = object_schema(
    {
        "index": _COUNT,
        "delta": {
            "type": "object",
            "properties": {"role": {"const": "assistant"}, "content": STRING},
            "additionalProperties": False,
        },
        "logprobs": _CHAT_LOGPROBS,
        "finish_reason": _FINISH_REASON,
        "stop_reason": _STOP_REASON,
    }
)


def _response(obj: str, choice: Schema) -> Schema:
    """A whole (non-streamed) completion or chat response."""
    choices = {"type": "array", "items": choice}
    return object_schema({**_response_base(obj), "choices": choices, "usage": ref("Usage")})


def _chunk(obj: str, choice: Schema) -> Schema:
    """One streamed chunk; with stream_options.include_usage every chunk carries `usage` (null
    until the last, which has no choices)."""
    choices = {"type": "array", "items": choice}
    return object_schema({**_response_base(obj), "choices": choices},
                         {"usage": nullable(ref("Usage"))})  # fmt: skip


RESPONSE_SCHEMAS: dict[str, Schema] = {
    "ErrorResponse": ERROR_RESPONSE,
    "Usage": _USAGE,
    "CompletionResponse": _response("text_completion", _COMPLETION_CHOICE),
    "CompletionChunk": _chunk("text_completion", _COMPLETION_CHOICE),  # a chunk's choice: same
    "ChatCompletionResponse": _response("chat.completion", _CHAT_CHOICE),
    "ChatCompletionChunk": _chunk("chat.completion.chunk", _CHAT_CHUNK_CHOICE),
    "Model": object_schema(
        {
            "id": STRING,
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": STRING,
            "root": STRING,
            "max_model_len": _COUNT,
        }
    ),
    "ModelList": object_schema(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}
    ),
    # vLLM's answer, the HF tokenizer config; lm-eval reads eos/bos/pad_token and chat_template.
    "TokenizerInfo": object_schema(
        {
            "tokenizer_class": STRING,
            "eos_token": STRING,
            "bos_token": STRING,
            "pad_token": {"type": ["string", "null"]},
            "chat_template": STRING,
            "model_max_length": _COUNT,
        },
        {
            "unk_token": STRING,
            "add_bos_token": {"type": "boolean"},
            "add_prefix_space": {"type": "boolean"},
            "bos_token_id": _COUNT,
            "eos_token_id": _COUNT,
            "vocab_size": _COUNT,
        },
    ),
    "TokenizeResponse": object_schema(
        {"tokens": {"type": "array", "items": _COUNT}, "count": _COUNT, "max_model_len": _COUNT}
    ),
    "DetokenizeResponse": object_schema({"prompt": STRING}),
    "VersionResponse": object_schema({"version": STRING}),
    "HealthFailure": object_schema({"status": {"const": "unhealthy"}}),
}

# The 200 body of each route, by path (GET or POST: one method per path here).
OK_SCHEMAS = {
    "/v1/models": "ModelList",
    "/v1/models/{model_id}": "Model",
    "/tokenizer_info": "TokenizerInfo",
    "/version": "VersionResponse",
    "/tokenize": "TokenizeResponse",
    "/detokenize": "DetokenizeResponse",
}
# The generation routes: their whole response, and one chunk of a streamed one.
GENERATION_RESPONSES = {
    "/v1/completions": ("CompletionResponse", "CompletionChunk"),
    "/v1/chat/completions": ("ChatCompletionResponse", "ChatCompletionChunk"),
}


def sse_event_schema(
    chunk: str,
    error: str = "ErrorResponse",
    done: bool = True,
    description: str = "Each event: `data: <chunk JSON>`, an error envelope, then `data: [DONE]`.",
) -> Schema:
    """One server-sent event (`schema` of a text/event-stream entry describes each event).

    Its `data` is a JSON chunk, a JSON `error` body (a failure after the 200 went out), or, with
    `done`, the final `[DONE]`.
    """
    json_data = {"contentMediaType": JSON_MEDIA_TYPE,
                 "contentSchema": {"anyOf": [ref(chunk), ref(error)]}}  # fmt: skip
    data = {"type": "string", "if": {"const": "[DONE]"}, "else": json_data} if done else {
        "type": "string", **json_data}  # fmt: skip
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": data},
        "description": description,
    }


def json_content(schema: Schema) -> dict[str, Schema]:
    return {JSON_MEDIA_TYPE: {"schema": schema}}


def error_schema(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": json_content(ref("ErrorResponse"))}
    if headers:
        response["headers"] = headers
    return response
