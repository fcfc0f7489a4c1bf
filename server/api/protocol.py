"""Pydantic models of the OpenAI request bodies; unknown fields are ignored, not rejected.

Every numeric bound comes from `core.sampling_params`, so the OpenAPI schema shows the limits
`SamplingParams` enforces; rules that need code (stop strings, logit_bias entries)
live there only.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.structured_fields import StructuredFields
from gpt2serve.server.core import sampling_params as bounds
from gpt2serve.server.core.field_checks import Bound
from gpt2serve.server.core.sampling_params import SamplingParams, SamplingParamsError


def _number_only(value: Any) -> Any:
    """JSON numbers only: `true` or "2" is not a number (pydantic's lax mode would take them)."""
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    return value


def early_stopping_value(value: Any) -> Any:
    """HF's early_stopping: true, false or "never" (a union's errors would name its branches)."""
    if value is not None and not bounds.is_early_stopping_value(value):
        raise ValueError(f'must be true, false or "never", got {value!r}')
    return value


# Outside the union and after any Field, so the JSON schema keeps its bounds as they were.
NUMBER = BeforeValidator(_number_only)
Int = Annotated[int, NUMBER]
NonNegInt = Annotated[int, Field(ge=0), NUMBER]
StopTokenIds = Annotated[list[NonNegInt], Field(max_length=bounds.MAX_STOP_TOKEN_IDS)]


def bounded(bound: Bound, default: Any = None) -> Any:
    """A pydantic `Field` with `default` that enforces `bound`."""
    return Field(default, **bound.constraints())


# Hugging Face `generate` names that would change the result if honoured: refused, naming what
# to send instead (README, "Coming from Hugging Face"). Everything else unknown is ignored.
HF_GENERATE_FIELDS = {
    "do_sample": "temperature (0 is greedy; do_sample=false is temperature=0)",
    "max_new_tokens": "max_tokens",
    "max_length": "max_tokens (it counts new tokens only; the prompt is not included)",
    "min_new_tokens": "min_tokens",
    "min_length": "min_tokens (it counts new tokens only)",
    "num_return_sequences": "n",
    "eos_token_id": "stop_token_ids",
    "typical_p": "top_p or min_p (typical sampling is not supported)",
    "num_beams": "use_beam_search: true with best_of (the beam width; n = how many to return)",
    "num_beam_groups": "nothing: group (diverse) beam search is not supported",
    "diversity_penalty": "nothing: group (diverse) beam search is not supported",
    "epsilon_cutoff": "min_p",
    "eta_cutoff": "min_p",
    "penalty_alpha": "nothing: contrastive search is not supported",
    "return_full_text": "echo",
}
_logged_unknown_fields: set[str] = set()
MAX_LOGGED_UNKNOWN_FIELDS = 256
logger = logging.getLogger(__name__)


def log_unknown_once(key: object, seen: set[str], what: str) -> None:
    """A WARNING the first time an ignored name arrives (`seen` remembers it)."""
    # Bounded: a client inventing names must not grow the set (or the log) forever.
    if len(seen) < MAX_LOGGED_UNKNOWN_FIELDS and (
        isinstance(key, str) and len(key) <= 64 and key not in seen
    ):
        seen.add(key)
        logger.warning("ignoring unknown %s %r (logged once per name)", what, key)


class OpenAIModel(BaseModel):
    """Base: unknown fields are ignored as vLLM does."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIModel):
    """`stream_options` of a streamed request."""

    include_usage: StrictBool = False


class SamplingFields(StructuredFields, OpenAIModel):
    """Fields shared by completions and chat, including vLLM's extra sampling controls."""

    @model_validator(mode="before")
    @classmethod
    def _screen_unknown_fields(cls, data: Any) -> Any:
        """A Hugging Face generate field is a 400; any other unknown one is logged once."""
        if not isinstance(data, dict):
            return data
        unknown = [key for key in data if key not in cls.model_fields]
        for key in unknown:
            if key in HF_GENERATE_FIELDS:
                raise APIError(
                    400,
                    f"{key} is a Hugging Face generate parameter this API does not take; "
                    f"send {HF_GENERATE_FIELDS[key]} instead",
                    key,
                )
            log_unknown_once(key, _logged_unknown_fields, "request field")
        return data

    model: str | None = None
    n: Annotated[int, NUMBER] = bounded(bounds.N, 1)
    temperature: Annotated[float | None, NUMBER] = bounded(bounds.TEMPERATURE)
    top_p: Annotated[float | None, NUMBER] = bounded(bounds.TOP_P)
    top_k: Annotated[int | None, NUMBER] = bounded(bounds.TOP_K)
    min_p: Annotated[float | None, NUMBER] = bounded(bounds.MIN_P)
    repetition_penalty: Annotated[float | None, NUMBER] = bounded(bounds.REPETITION_PENALTY)
    presence_penalty: Annotated[float | None, NUMBER] = bounded(bounds.PRESENCE_PENALTY)
    frequency_penalty: Annotated[float | None, NUMBER] = bounded(bounds.FREQUENCY_PENALTY)
    no_repeat_ngram_size: Annotated[int | None, NUMBER] = bounded(bounds.NO_REPEAT_NGRAM_SIZE)
    min_tokens: Annotated[int, NUMBER] = bounded(bounds.MIN_TOKENS, 0)
    # Checked by SamplingParams: a union's errors would name the wrong branch.
    stop: str | list[str] | None = None
    stop_token_ids: StopTokenIds | None = None
    ignore_eos: StrictBool = False
    seed: Annotated[int | None, NUMBER] = bounded(bounds.SEED)
    # Entries and keys: SamplingParams checks them.
    logit_bias: dict[str, Annotated[float, NUMBER]] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extensions: a matched stop string or stop token stays in the text only if asked;
    # special tokens (<|endoftext|>) are left out of the text unless skip_special_tokens=false.
    # spaces_between_special_tokens is accepted and, as with vLLM's fast GPT-2 tokenizer,
    # changes nothing. split_special_tokens=true reads "<|endoftext|>" in prompt text as text.
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    spaces_between_special_tokens: StrictBool = True
    split_special_tokens: StrictBool = False
    # vLLM's beam search: best_of beams (default n), the n best returned, HF's scoring rules.
    use_beam_search: StrictBool = False
    best_of: Annotated[int | None, NUMBER] = bounded(bounds.BEST_OF)
    length_penalty: Annotated[float | None, NUMBER] = bounded(bounds.LENGTH_PENALTY)
    early_stopping: Annotated[
        StrictBool | Literal["never"] | None, BeforeValidator(early_stopping_value)
    ] = None

    @model_validator(mode="after")
    def _check_rules_that_need_code(self) -> SamplingFields:
        """Stop strings and logit_bias entries: checked while the body is validated.

        The rules live in `SamplingParams` (one place); running them here makes them part of
        body validation, before a prompt is tokenized or anything else runs. `APIError` is not
        a ValueError, so pydantic lets it through to the handler, which keeps its `param`.
        """
        try:
            self.sampling_params(max_tokens=max(self.min_tokens, 1), logprobs=None)
        except SamplingParamsError as exc:
            raise APIError(400, str(exc), exc.param) from exc
        return self

    def sampling_params(
        self,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        turn_stop: list[str] | None = None,
        compiled_grammar: object | None = None,
    ) -> SamplingParams:
        """The engine's `SamplingParams` for this body (raises SamplingParamsError);
        `compiled_grammar` is the grammar engine's form of `structured_output()`."""
        given = {
            name: getattr(self, name)
            for name in (
                "temperature",
                "top_p",
                "top_k",
                "min_p",
                "repetition_penalty",
                "presence_penalty",
                "frequency_penalty",
                "no_repeat_ngram_size",
                "length_penalty",
                "early_stopping",
            )
            if getattr(self, name) is not None
        }
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            seed=self.seed,
            n=self.n,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias=dict(self.logit_bias or {}),  # string keys: SamplingParams checks them
            include_stop_str_in_output=self.include_stop_str_in_output,
            turn_stop=list(turn_stop or []),
            skip_special_tokens=self.skip_special_tokens,
            use_beam_search=self.use_beam_search,
            best_of=self.best_of,
            structured_output=self.structured_output(),
            compiled_grammar=compiled_grammar,
            **given,
        )

    @property
    def num_sequences(self) -> int:
        """Sequences one prompt runs: the beams of a beam search, else the n choices."""
        return (self.best_of or self.n) if self.use_beam_search else self.n

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """`POST /v1/completions` body."""

    prompt: str | list[str] | list[Int] | list[list[Int]]
    # 0 only with echo or prompt_logprobs (scoring a prompt); SamplingParams says so.
    max_tokens: Annotated[int | None, NUMBER] = bounded(bounds.MAX_TOKENS, 16)
    echo: StrictBool = False
    logprobs: Annotated[int | None, NUMBER] = bounded(bounds.LOGPROBS)
    prompt_logprobs: Annotated[int | None, NUMBER] = bounded(bounds.LOGPROBS)  # vLLM's extension
    suffix: str | None = None


class ChatMessage(OpenAIModel):
    """One chat message; content may be a string or a list of text parts."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text, joining text parts; non-text parts are an error."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            pieces.append(part["text"])
        return "".join(pieces)


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions` body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int | None, NUMBER] = bounded(bounds.MAX_NEW_TOKENS)
    max_completion_tokens: Annotated[int | None, NUMBER] = bounded(bounds.MAX_NEW_TOKENS)
    logprobs: StrictBool = False
    top_logprobs: Annotated[int | None, NUMBER] = bounded(bounds.LOGPROBS)
    add_generation_prompt: StrictBool = True


class TokenizeRequest(OpenAIModel):
    """`POST /tokenize` body: a prompt or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: StrictBool = True


class DetokenizeRequest(OpenAIModel):
    """`POST /detokenize` body."""

    model: str | None = None
    tokens: list[NonNegInt]
