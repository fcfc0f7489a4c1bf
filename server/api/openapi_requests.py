"""Request bodies in the OpenAPI document: every bound one field has on a running server."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gpt2serve.server.api.openapi_schemas import (
    MAX_TOKEN_ID_KEY_DIGITS,
    STRING,
    Schema,
    nullable,
    object_schema,
    ref,
)  # fmt: skip
from gpt2serve.server.api.protocol import HF_GENERATE_FIELDS
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core import sampling_params as bounds
from gpt2serve.server.core.structured_output import MAX_CHOICES, MAX_SPEC_CHARS


@dataclass(frozen=True)
class DocumentedLimits:
    """What the document states about a running server (None: not known before startup)."""

    model_name: str
    max_tokens_limit: int | None
    default_max_tokens: int
    max_prompts_per_request: int
    max_sequences_per_request: int  # prompts x n; min of the request and the queue limits
    vocab_size: int | None = None
    max_sequence_tokens: int | None = None  # prompt + output of one sequence

    @classmethod
    def of(cls, settings: ServerSettings, ctx: Any = None) -> DocumentedLimits:
        """From the settings, and the running engine's limits when `ctx` is attached."""
        request_limits = getattr(ctx, "request_limits", None)
        return cls(
            model_name=settings.model_name,
            max_tokens_limit=settings.max_tokens_limit,
            default_max_tokens=settings.default_max_tokens,
            max_prompts_per_request=settings.max_prompts_per_request,
            max_sequences_per_request=min(
                settings.max_sequences_per_request, settings.max_waiting_requests
            ),
            vocab_size=None if request_limits is None else request_limits.vocab_size,
            max_sequence_tokens=(
                None if request_limits is None else request_limits.max_sequence_tokens
            ),
        )

    @property
    def max_new_tokens(self) -> int | None:
        """The largest max_tokens any request may get: the flag, and room for one prompt token."""
        room = None if self.max_sequence_tokens is None else self.max_sequence_tokens - 1
        candidates = [v for v in (self.max_tokens_limit, room) if v is not None]
        return min(candidates) if candidates else None


def normalize_integer_bounds(node: Any) -> None:
    """pydantic writes `maximum: 16.0` for ints; an integer schema's bounds are integers."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = int(value)
        for value in node.values():
            normalize_integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            normalize_integer_bounds(value)


def _set(properties: dict[str, Schema], name: str, schema: Schema) -> None:
    """Replace a property's type, keeping its title, default and description."""
    kept = {k: v for k, v in properties.get(name, {}).items() if k in ("title", "default")}
    properties[name] = {**schema, **kept}


def _token_id(limits: DocumentedLimits) -> Schema:
    schema: Schema = {"type": "integer", "minimum": 0}
    if limits.vocab_size is not None:
        schema["maximum"] = limits.vocab_size - 1
    return schema


def _prompt_token_ids(limits: DocumentedLimits) -> Schema:
    """One prompt as token ids: at least one, at most what a sequence holds."""
    schema: Schema = {"type": "array", "items": _token_id(limits), "minItems": 1}
    if limits.max_sequence_tokens is not None:
        schema["maxItems"] = limits.max_sequence_tokens
    return schema


def document_requests(schemas: dict[str, Schema], limits: DocumentedLimits) -> None:
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        if name in schemas:
            _document_sampling_fields(schemas[name], limits)
    if "CompletionRequest" in schemas:
        _document_completion(schemas["CompletionRequest"], limits)
    if "ChatCompletionRequest" in schemas:
        _document_chat(schemas["ChatCompletionRequest"], limits)
    if "ChatMessage" in schemas:
        properties = schemas["ChatMessage"]["properties"]
        text_part = object_schema({"type": {"const": "text"}, "text": STRING})
        text_part["description"] = "Only text parts are supported."
        _set(
            properties,
            "content",
            {"anyOf": [STRING, {"type": "array", "items": text_part}, {"type": "null"}]},
        )
    if "TokenizeRequest" in schemas:
        _document_tokenize(schemas["TokenizeRequest"], limits)
    if "DetokenizeRequest" in schemas:
        tokens = {"type": "array", "items": _token_id(limits)}
        _set(schemas["DetokenizeRequest"]["properties"], "tokens", tokens)
        _document_model(schemas["DetokenizeRequest"], limits)


def _document_model(body: Schema, limits: DocumentedLimits) -> None:
    _set(
        body["properties"],
        "model",
        {
            "anyOf": [{"type": "string", "enum": [limits.model_name]}, {"type": "null"}],
            "description": "The served model (any other name: 404); absent or null means it.",
        },
    )


def _document_sampling_fields(body: Schema, limits: DocumentedLimits) -> None:
    properties = body["properties"]
    _document_model(body, limits)
    for name in HF_GENERATE_FIELDS:  # refused with a 400 naming the field to send instead
        properties[name] = False
    n_max = min(int(bounds.N.high or 1), limits.max_sequences_per_request)
    properties["n"]["maximum"] = n_max
    min_tokens: Schema = {"type": "integer", "minimum": 0}
    if limits.max_new_tokens is not None:
        min_tokens["maximum"] = limits.max_new_tokens
    _set(properties, "min_tokens", min_tokens)
    stop_string = {"type": "string", "minLength": 1, "maxLength": bounds.MAX_STOP_STRING_LEN}
    _set(
        properties,
        "stop",
        {
            "anyOf": [
                stop_string,
                {"type": "array", "items": stop_string, "maxItems": bounds.MAX_STOP_STRINGS},
                {"type": "null"},
            ]
        },
    )
    _set(
        properties,
        "stop_token_ids",
        nullable(
            {"type": "array", "items": _token_id(limits), "maxItems": bounds.MAX_STOP_TOKEN_IDS}
        ),
    )
    _set(
        properties, "seed", nullable({"type": "integer", "minimum": 0, "maximum": bounds.MAX_SEED})
    )
    _document_beam_search(properties)
    _document_structured_output(properties)
    _set(
        properties,
        "logit_bias",
        nullable(
            {
                "type": "object",
                "maxProperties": bounds.MAX_LOGIT_BIAS,
                "propertyNames": {"pattern": token_id_key_pattern(limits.vocab_size)},
                "additionalProperties": {
                    "type": "number",
                    "minimum": bounds.LOGIT_BIAS_VALUE.low,
                    "maximum": bounds.LOGIT_BIAS_VALUE.high,
                },
            }
        ),
    )


def _document_beam_search(properties: dict[str, Any]) -> None:
    best_of = {"type": "integer", "minimum": 1, "maximum": bounds.MAX_BEAM_WIDTH}
    best_of["description"] = (
        "With use_beam_search: the beam width (>= n; default n). Without: must equal n."
    )
    _set(properties, "best_of", nullable(best_of))
    _set(
        properties,
        "early_stopping",
        {
            "anyOf": [{"type": "boolean"}, {"const": "never"}, {"type": "null"}],
            "description": "Beam search only (Hugging Face's semantics).",
        },
    )
    properties["use_beam_search"]["description"] = (
        "vLLM's beam search: temperature, top_p, top_k, min_p and logprobs must be left out; "
        "length_penalty and early_stopping apply only with it."
    )


def _document_structured_output(properties: dict[str, Any]) -> None:
    text = {"type": "string", "minLength": 1, "maxLength": MAX_SPEC_CHARS}
    choices = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
               "maxItems": MAX_CHOICES}  # fmt: skip
    json_schema = {"anyOf": [{"type": "object"}, {"type": "string"}]}
    boolean = {"type": "boolean"}
    named = object_schema(
        {"schema": {"type": "object"}},
        {"name": nullable(STRING), "description": nullable(STRING), "strict": nullable(boolean)},
    )
    formats = [
        object_schema({"type": {"enum": ["text", "json_object"]}}),
        object_schema({"type": {"const": "json_schema"}, "json_schema": named}),
    ]
    one = "At most one of response_format, guided_* and structured_outputs per request; the "
    one += "schema, regex or grammar must compile (400 naming the field otherwise)."
    _set(properties, "response_format", nullable({"anyOf": formats, "description": one}))
    _set(properties, "guided_json", nullable(json_schema))
    _set(properties, "guided_regex", nullable(text))
    _set(properties, "guided_grammar", nullable({**text, "description": "EBNF (xgrammar)"}))
    _set(properties, "guided_choice", nullable(choices))
    fields = {"json": json_schema, "regex": text, "choice": choices, "grammar": text,
              "json_object": boolean}  # fmt: skip
    outputs = object_schema({}, {name: nullable(schema) for name, schema in fields.items()})
    _set(properties, "structured_outputs", nullable(outputs))


def _max_tokens(limits: DocumentedLimits, minimum: int) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum}
    if limits.max_new_tokens is not None:
        schema["maximum"] = limits.max_new_tokens
    return schema


def _document_completion(body: Schema, limits: DocumentedLimits) -> None:
    properties = body["properties"]
    num_prompts = min(limits.max_prompts_per_request, limits.max_sequences_per_request)
    prompt_text = {"type": "string", "minLength": 1}
    _set(
        properties,
        "prompt",
        {
            "anyOf": [
                prompt_text,
                {"type": "array", "items": prompt_text, "minItems": 1, "maxItems": num_prompts},
                _prompt_token_ids(limits),
                {
                    "type": "array",
                    "items": _prompt_token_ids(limits),
                    "minItems": 1,
                    "maxItems": num_prompts,
                },
            ],
            "description": f"Text, token ids, or a list of up to {num_prompts} of either.",
        },
    )
    _set(properties, "max_tokens", nullable(_max_tokens(limits, int(bounds.MAX_TOKENS.low))))
    # 0 generates nothing: it only scores the prompt (echo or prompt_logprobs).
    body["if"] = {"properties": {"max_tokens": {"const": 0}}, "required": ["max_tokens"]}
    body["then"] = {
        "anyOf": [
            {"properties": {"echo": {"const": True}}, "required": ["echo"]},
            {
                "properties": {"prompt_logprobs": {"type": "integer"}},
                "required": ["prompt_logprobs"],
            },
        ]
    }
    _set(properties, "suffix", {"type": "null", "description": "Not supported."})
    body["description"] = _cross_field_rules(
        "`POST /v1/completions` body.",
        "min_tokens <= max_tokens; prompts x n (x best_of with beam search) <= "
        f"{limits.max_sequences_per_request}; each prompt's tokens + max_tokens",
        limits,
    )


def _document_chat(body: Schema, limits: DocumentedLimits) -> None:
    properties = body["properties"]
    new_tokens = int(bounds.MAX_NEW_TOKENS.low)
    _set(properties, "max_completion_tokens", nullable(_max_tokens(limits, new_tokens)))
    # max_completion_tokens, when given, wins: max_tokens is then ignored (not bounded).
    _set(properties, "max_tokens", nullable({"type": "integer", "minimum": new_tokens}))
    body["if"] = {
        "properties": {"max_completion_tokens": {"type": "integer"}},
        "required": ["max_completion_tokens"],
    }
    body["else"] = {"properties": {"max_tokens": nullable(_max_tokens(limits, new_tokens))}}
    body["description"] = _cross_field_rules(
        "`POST /v1/chat/completions` body.",
        "min_tokens <= max_completion_tokens or max_tokens; the rendered prompt's tokens + "
        "max_tokens",
        limits,
    )


def _cross_field_rules(title: str, rules: str, limits: DocumentedLimits) -> str:
    room = "the context" if limits.max_sequence_tokens is None else limits.max_sequence_tokens
    return f"{title} Rules between fields (a 400 names the field): {rules} <= {room}."


def _document_tokenize(body: Schema, limits: DocumentedLimits) -> None:
    _document_model(body, limits)
    messages = {"type": "array", "items": ref("ChatMessage"), "minItems": 1}
    _set(body["properties"], "messages", nullable(messages))
    # Exactly one of prompt and messages.
    body["oneOf"] = [
        {
            "required": ["prompt"],
            "properties": {"prompt": STRING, "messages": {"type": "null"}},
        },
        {
            "required": ["messages"],
            "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}},
        },
    ]


# -- logit_bias keys --------------------------------------------------------------------------


def token_id_key_pattern(vocab_size: int | None) -> str:
    """A regex for the logit_bias keys the server accepts: token ids as up to 18 digits.

    `field_checks` reads `-?[0-9]{1,18}` as an int, which must be >= 0 (so `-0` passes) and,
    once the vocabulary is known, below its size. Leading zeros count towards the 18 digits.
    """
    if vocab_size is None:
        return f"^(?:-0{{1,{MAX_TOKEN_ID_KEY_DIGITS}}}|[0-9]{{1,{MAX_TOKEN_ID_KEY_DIGITS}}})$"
    largest = str(vocab_size - 1)
    alternatives = [f"-0{{1,{MAX_TOKEN_ID_KEY_DIGITS}}}"]
    for length in range(1, len(largest) + 1):
        if length < len(largest):
            numbers = "[0-9]" if length == 1 else f"[1-9][0-9]{{{length - 1}}}"
        else:
            numbers = "|".join(_numbers_up_to(largest))
        zeros = MAX_TOKEN_ID_KEY_DIGITS - length
        alternatives.append(f"0{{0,{zeros}}}(?:{numbers})")
    return "^(?:" + "|".join(alternatives) + ")$"


def _numbers_up_to(largest: str) -> list[str]:
    """Regexes for the numbers of `len(largest)` digits (no leading zero) up to `largest`."""
    alternatives = []
    for i, digit in enumerate(largest):
        low = 1 if i == 0 and len(largest) > 1 else 0
        if int(digit) > low:
            rest = len(largest) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            alternatives.append(f"{re.escape(largest[:i])}[{low}-{int(digit) - 1}]{tail}")
    alternatives.append(largest)
    return alternatives
