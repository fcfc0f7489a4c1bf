"""Output constraints for structured-output tests: JSON schemas, regexes and choices that a
random-weight model can only satisfy through the constraint (bounded, so it also finishes).

xgrammar does not enforce `uniqueItems`, and its JSON strings admit raw control characters
(parse with `json.loads(text, strict=False)`), as in vLLM and SGLang, which use it too.
"""

from __future__ import annotations

NAME = {"type": "string", "maxLength": 12}
SCHEMAS: list[dict] = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0,
     "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
     "score": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["label", "score"]},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1,
     "maxItems": 4},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {
     "type": "integer", "minimum": 1, "maximum": 999}, "email": {"type": "string",
     "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}}, "required": ["id", "email"],
     "additionalProperties": False}}, "required": ["user"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": NAME, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
     "qty": {"type": "integer", "minimum": 1, "maximum": 50}}, "required": ["code", "qty"]},
    {"type": "object", "properties": {"date": {"type": "string", "pattern":
     "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}, "done": {"type": "boolean"}, "note": {"type": "null"}},
     "required": ["date", "done", "note"], "additionalProperties": False},
    {"enum": ["red", "green", "blue", 7, None]},
    {"type": "object", "properties": {"point": {"type": "array", "prefixItems": [{"type":
     "integer", "minimum": -5, "maximum": 5}, {"type": "integer", "minimum": -5, "maximum": 5}],
     "items": False, "minItems": 2}}, "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"kind": {"const": "event"}, "level": {"type": "integer",
     "enum": [1, 2, 3]}, "tags": {"type": "array", "items": {"enum": ["a", "b"]},
     "maxItems": 2}}, "required": ["kind", "level", "tags"],
     "additionalProperties": False},
]  # fmt: skip
REGEXES = [r"\d{3}-\d{4}", r"[A-Z][a-z]{2,6}( [A-Z][a-z]{2,6})?", r"(yes|no|maybe)",
           r"0x[0-9a-f]{4}", r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)"]  # fmt: skip
CHOICES = [["positive", "negative", "neutral"], ["A", "B", "C", "D"], ["cat", "dog", "a b c"]]
