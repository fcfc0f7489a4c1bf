"""The request fields that constrain output: OpenAI's `response_format`, vLLM's `guided_*` and
`structured_outputs`, read into one `StructuredOutput` (at most one constraint per request)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from gpt2serve.server.core.field_checks import SamplingParamsError
from gpt2serve.server.core.structured_output import StructuredOutput


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: OpenAI's named schema (`strict` is always honoured)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(BaseModel):
    """vLLM's newer `structured_outputs` object (one of its fields)."""

    model_config = ConfigDict(extra="ignore")

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: StrictBool | None = None


class StructuredFields(BaseModel):
    """Mixed into the completions and chat bodies."""

    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # vLLM's; there is one backend here (xgrammar)
    structured_outputs: StructuredOutputsParams | None = None

    def structured_output(self) -> StructuredOutput | None:
        """The one constraint this body asks for; SamplingParamsError naming a second one."""
        found = [spec for spec in self._specs() if spec is not None]
        if len(found) > 1:
            raise SamplingParamsError(
                found[1].param,
                f"{found[0].param} and {found[1].param} both constrain the output; send one",
            )
        return found[0] if found else None

    def _specs(self) -> list[StructuredOutput | None]:
        guided = _specs_of("guided_", self.guided_json, self.guided_regex, self.guided_choice,
                           self.guided_grammar)  # fmt: skip
        outputs = self.structured_outputs or StructuredOutputsParams()
        nested = _specs_of("structured_outputs.", outputs.json_, outputs.regex, outputs.choice,
                           outputs.grammar)  # fmt: skip
        if outputs.json_object:
            nested.append(StructuredOutput("json_object", "", "structured_outputs.json_object"))
        return [_from_response_format(self.response_format), *guided, *nested]


def _from_response_format(response_format: ResponseFormat | None) -> StructuredOutput | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput("json_object", "", "response_format")
    param = "response_format.json_schema"
    fmt = response_format.json_schema
    if fmt is None or fmt.json_schema is None:
        raise SamplingParamsError(param, f"{param}.schema is required for type json_schema")
    return StructuredOutput.json_schema(fmt.json_schema, f"{param}.schema")


def _specs_of(
    prefix: str, schema: object, regex: str | None, choice: list[str] | None, grammar: str | None
) -> list[StructuredOutput]:
    """vLLM's four kinds, as `guided_*` or `structured_outputs.*` name them."""
    specs = []
    if schema is not None:
        specs.append(StructuredOutput.json_schema(schema, f"{prefix}json"))
    if regex is not None:
        specs.append(StructuredOutput("regex", regex, f"{prefix}regex"))
    if choice is not None:
        specs.append(StructuredOutput.choice(choice, f"{prefix}choice"))
    if grammar is not None:
        specs.append(StructuredOutput("grammar", grammar, f"{prefix}grammar"))
    return specs
