"""What a request's output must match (JSON schema, regex, choice, grammar): the torch-free spec.

The grammar engine (`worker.grammar`, xgrammar) compiles a spec into token bitmasks; everything
above the worker only sees this description, its cache key and the error it may raise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from gpt2serve.server.core.field_checks import SamplingParamsError

Kind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]
KINDS: tuple[Kind, ...] = ("json_object", "json_schema", "regex", "choice", "grammar")
MAX_SPEC_CHARS = 64 * 1024  # a schema / regex / grammar / the choices together
MAX_CHOICES = 1024


class GrammarError(ValueError):
    """A spec the grammar engine cannot compile (or not in time); `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StructuredOutput:
    """One output constraint. `spec` is canonical text: the schema as sorted JSON, the regex or
    EBNF grammar as given, the choices as a JSON list; `param` is the request field it came from
    (named by any error)."""

    kind: Kind
    spec: str = ""
    param: str = "response_format"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SamplingParamsError(self.param, f"unknown structured output kind {self.kind!r}")
        if len(self.spec) > MAX_SPEC_CHARS:
            raise SamplingParamsError(
                self.param, f"{self.param} is {len(self.spec)} characters; at most {MAX_SPEC_CHARS}"
            )
        if self.kind in ("regex", "grammar") and not self.spec:
            raise SamplingParamsError(self.param, f"{self.param} must not be empty")

    @property
    def key(self) -> tuple[str, str]:
        """The compiled-grammar cache key."""
        return (self.kind, self.spec)

    @classmethod
    def json_schema(cls, schema: object, param: str) -> StructuredOutput:
        """A JSON schema given as an object or as JSON text."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise SamplingParamsError(param, f"{param} is not valid JSON: {exc}") from exc
        if not isinstance(schema, dict | bool):
            raise SamplingParamsError(param, f"{param} must be a JSON schema object")
        return cls("json_schema", json.dumps(schema, sort_keys=True), param)

    @classmethod
    def choice(cls, choices: list[str], param: str) -> StructuredOutput:
        """The output is exactly one of `choices`."""
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise SamplingParamsError(param, f"{param} must be a list of non-empty strings")
        if len(choices) > MAX_CHOICES:
            raise SamplingParamsError(param, f"{param} has {len(choices)} entries; at most 1024")
        return cls("choice", json.dumps(list(dict.fromkeys(choices))), param)

    @property
    def choices(self) -> list[str]:
        """The choices of a `choice` constraint."""
        return list(json.loads(self.spec)) if self.kind == "choice" else []
