"""Pydantic models of Hugging Face TGI's native request body (`/generate`, `/generate_stream`, `/`).

The names are TGI's (what `huggingface_hub.InferenceClient.text_generation` sends); every numeric
bound comes from `core.sampling_params`, as for the OpenAI bodies, so ranges and messages match.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.protocol import (
    NUMBER,
    bounded,
    early_stopping_value,
    log_unknown_once,
)
from gpt2serve.server.core import sampling_params as bounds
from gpt2serve.server.core.sampling_params import SamplingParams, SamplingParamsError
from gpt2serve.server.core.structured_output import StructuredOutput

# TGI's default `max_new_tokens` (lowered to the room the prompt leaves and --max-tokens-limit).
DEFAULT_MAX_NEW_TOKENS = 100

# Names a client might send in `parameters` that TGI does not take, and that would change the
# result if honoured: refused, naming what to send instead. Any other unknown name is ignored
# (as TGI does) and logged once.
TGI_REFUSED_FIELDS = {
    "max_tokens": "max_new_tokens",
    "max_length": "max_new_tokens (it counts new tokens only)",
    "min_new_tokens": "nothing: a minimum length is not supported here (/v1/completions has "
    "min_tokens)",
    "min_length": "nothing: a minimum length is not supported here",
    "min_tokens": "nothing: a minimum length is not supported here",
    "n": "one request per sequence (/v1/completions has n)",
    "num_return_sequences": "one request per sequence (/v1/completions has n)",
    "stop_sequences": "stop",
    "eos_token_id": "stop (strings)",
    "stop_token_ids": "stop (strings)",
    "logprobs": "details=true (and top_n_tokens)",
    "top_logprobs": "details=true with top_n_tokens",
    "echo": "return_full_text",
    "min_p": "top_p or top_k",
    "epsilon_cutoff": "top_p or top_k",
    "eta_cutoff": "top_p or top_k",
    "presence_penalty": "frequency_penalty or repetition_penalty",
    "logit_bias": "nothing: logit_bias is not supported here (/v1/completions has it)",
    "penalty_alpha": "nothing: contrastive search is not supported",
    "use_beam_search": "num_beams",
    "num_beam_groups": "nothing: group beam search is not supported",
    "diversity_penalty": "nothing: group beam search is not supported",
}
_logged_unknown_fields: set[str] = set()


def tgi_error_body(message: str, error_type: str) -> dict[str, str]:
    """TGI's error body, which the Hugging Face clients turn into their typed errors."""
    return {"error": message, "error_type": error_type}


def _log_unknown_once(key: object) -> None:
    log_unknown_once(key, _logged_unknown_fields, "TGI request field")


class TGIModel(BaseModel):
    """Base: unknown fields are ignored (and logged once), as TGI ignores them."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def refused_fields(cls) -> dict[str, str]:
        """Unknown names refused with a 400, each with what to send instead."""
        return {}

    @model_validator(mode="before")
    @classmethod
    def _screen_unknown_fields(cls, data: Any) -> Any:
        """A name from `refused_fields` is a 400; any other unknown one is logged once."""
        if not isinstance(data, dict):
            return data
        refused = cls.refused_fields()
        for key in data:
            if key in cls.model_fields:
                continue
            if key in refused:
                raise APIError(400, f"{key} is not taken here; send {refused[key]} instead", key)
            _log_unknown_once(key)
        return data


class TGIGrammar(BaseModel):
    """TGI's `grammar`: `{"type": "json" | "json_schema", "value": <schema>}` or
    `{"type": "regex", "value": "<regex>"}`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["json", "json_schema", "regex"]
    value: Any


class TGIParameters(TGIModel):
    """`parameters`: TGI's generation controls, plus `no_repeat_ngram_size` and beam search."""

    @classmethod
    def refused_fields(cls) -> dict[str, str]:
        """Names from other APIs that would change the result: `TGI_REFUSED_FIELDS`."""
        return TGI_REFUSED_FIELDS

    adapter_id: str | None = None
    best_of: Annotated[int | None, NUMBER] = Field(None, ge=1)
    decoder_input_details: StrictBool = False
    details: StrictBool = False
    do_sample: StrictBool | None = None
    frequency_penalty: Annotated[float | None, NUMBER] = bounded(bounds.FREQUENCY_PENALTY)
    grammar: TGIGrammar | None = None
    max_new_tokens: Annotated[int | None, NUMBER] = bounded(
        bounds.MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS
    )
    repetition_penalty: Annotated[float | None, NUMBER] = bounded(bounds.REPETITION_PENALTY)
    return_full_text: StrictBool | None = None
    seed: Annotated[int | None, NUMBER] = bounded(bounds.SEED)
    # Checked by SamplingParams (count, emptiness, length), as on the OpenAI routes.
    stop: list[str] | None = None
    temperature: Annotated[float | None, NUMBER] = bounded(bounds.TEMPERATURE)
    top_k: Annotated[int | None, NUMBER] = bounded(bounds.TOP_K)
    top_n_tokens: Annotated[int | None, NUMBER] = bounded(bounds.LOGPROBS)
    top_p: Annotated[float | None, NUMBER] = bounded(bounds.TOP_P)
    truncate: Annotated[int | None, NUMBER] = Field(None, ge=1)
    typical_p: Annotated[float | None, NUMBER] = None
    watermark: StrictBool = False
    no_repeat_ngram_size: Annotated[int | None, NUMBER] = bounded(bounds.NO_REPEAT_NGRAM_SIZE)
    # Beam search (Hugging Face's names): see `beam_search_fields`.
    num_beams: Annotated[int | None, NUMBER] = bounded(bounds.BEST_OF)
    length_penalty: Annotated[float | None, NUMBER] = bounded(bounds.LENGTH_PENALTY)
    early_stopping: Annotated[  # HF's three values
        StrictBool | Literal["never"] | None, BeforeValidator(early_stopping_value)
    ] = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> TGIParameters:
        """Values this server cannot honour are a 400 naming the field, never ignored."""
        refusals = {
            "best_of": (self.best_of not in (None, 1), "best_of > 1 is not supported (send 1)"),
            "typical_p": (
                self.typical_p not in (None, 1.0),
                "typical_p is not supported (typical sampling); leave it unset or 1.0, or use "
                "top_p or top_k",
            ),
            "watermark": (self.watermark, "watermark is not supported"),
            "adapter_id": (self.adapter_id is not None, "adapter_id is not supported (no LoRA)"),
        }
        for param, (refused, message) in refusals.items():
            if refused:
                raise APIError(400, message, param)
        try:  # the rules only SamplingParams knows (stop strings), before any tokenizing
            self.sampling_params(max_tokens=1, logprobs=None)
        except SamplingParamsError as exc:
            raise APIError(400, str(exc), exc.param) from exc
        return self

    @property
    def uses_beams(self) -> bool:
        """Whether this is a beam search (num_beams > 1)."""
        return self.num_beams is not None and self.num_beams > 1

    @property
    def samples(self) -> bool:
        """Whether to sample: `do_sample` when given, else TGI's rule (any warper set)."""
        if self.temperature == 0.0:
            return False  # greedy here, as on /v1/completions (TGI refuses 0)
        if self.do_sample is not None:
            return self.do_sample  # false is greedy, whatever temperature says
        return (
            self.temperature not in (None, 1.0)
            or self.top_k not in (None, -1, 0)
            or self.top_p not in (None, 1.0)
        )

    def sampling_params(
        self,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        seed: int | None = None,
        compiled_grammar: object | None = None,
    ) -> SamplingParams:
        """The engine's `SamplingParams` (raises SamplingParamsError); `seed` when sampling."""
        penalties = ("repetition_penalty", "frequency_penalty", "no_repeat_ngram_size")
        controls = {n: getattr(self, n) for n in penalties if getattr(self, n) is not None}
        if self.samples:
            controls["temperature"] = 1.0 if self.temperature is None else self.temperature
            controls.update(
                {n: getattr(self, n) for n in ("top_k", "top_p") if getattr(self, n) is not None}
            )
        else:
            controls["temperature"] = 0.0
        return SamplingParams(
            max_tokens=max_tokens,
            stop=list(self.stop or []),
            seed=seed if self.samples else None,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            # TGI's generated text ends with the stop sequence that ended it.
            include_stop_str_in_output=True,
            structured_output=self.structured_output(),
            compiled_grammar=compiled_grammar,
            **controls,
            **beam_search_fields(self),
        )

    def structured_output(self) -> StructuredOutput | None:
        """TGI's `grammar` as the engine's output constraint."""
        grammar = self.grammar
        if grammar is None:
            return None
        if grammar.type == "regex":
            if not isinstance(grammar.value, str):
                raise SamplingParamsError("grammar", "grammar.value must be a regex string")
            return StructuredOutput("regex", grammar.value, "grammar")
        value = grammar.value
        if grammar.type == "json_schema" and isinstance(value, dict) and "schema" in value:
            value = value["schema"]  # OpenAI's named-schema shape
        return StructuredOutput.json_schema(value, "grammar")


def beam_search_fields(parameters: TGIParameters) -> dict[str, Any]:
    """The beam-search part of `SamplingParams`: HF's num_beams is the width, one sequence
    (the best) is returned. length_penalty and early_stopping are taken at their no-op values
    without beams (HF's own example passes length_penalty=1.0); others need num_beams > 1."""
    fields: dict[str, Any] = {
        name: getattr(parameters, name)
        for name in ("length_penalty", "early_stopping")
        if getattr(parameters, name) is not None
    }
    if not parameters.uses_beams:
        return fields
    if parameters.do_sample:
        raise APIError(400, "num_beams > 1 with do_sample (beam sampling) is not supported; "
                       "send do_sample: false or num_beams: 1", "num_beams")  # fmt: skip
    return {**fields, "use_beam_search": True, "best_of": parameters.num_beams, "n": 1}


class TGIRequest(TGIModel):
    """The body of `POST /generate`, `/generate_stream` and `/` (which streams if `stream`)."""

    @classmethod
    def refused_fields(cls) -> dict[str, str]:
        """A generation control beside `inputs` (a flat body) belongs in `parameters`."""
        return {name: f"parameters.{name}" for name in TGIParameters.model_fields}

    inputs: str = Field(min_length=1)
    parameters: TGIParameters | None = None
    stream: StrictBool = False
