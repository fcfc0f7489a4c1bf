"""`SamplingParams` and the one table of request bounds that the HTTP schema also reads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gpt2serve.server.core.field_checks import (
    Bound,
    SamplingParamsError,
    check,
    check_bool,
    check_int,
    check_range,
    check_stop_strings,
    check_token_id_list,
    normalized_logit_bias,
)
from gpt2serve.server.core.structured_output import StructuredOutput

__all__ = ["SamplingParams", "SamplingParamsError"]

# Every bound of a request, written once. `api.protocol` puts them into the OpenAPI schema;
# `SamplingParams` enforces them for every caller, HTTP or not.
MAX_TOKENS = Bound(0)  # 0 only scores a prompt (echo / prompt_logprobs)
MAX_NEW_TOKENS = Bound(1)  # a request that generates
MIN_TOKENS = Bound(0)
TEMPERATURE = Bound(0.0, 2.0)
TOP_P = Bound(0.0, 1.0, low_open=True)
TOP_K = Bound(-1)  # -1 and 0 both mean off
MIN_P = Bound(0.0, 1.0)
REPETITION_PENALTY = Bound(0.0, 2.0, low_open=True)
PRESENCE_PENALTY = Bound(-2.0, 2.0)
FREQUENCY_PENALTY = Bound(-2.0, 2.0)
NO_REPEAT_NGRAM_SIZE = Bound(0)
N = Bound(1, 16)
MAX_LOGPROBS = 20
LOGPROBS = Bound(0, MAX_LOGPROBS)  # logprobs, top_logprobs and prompt_logprobs alike
# Any int64 (choice i > 0 draws with `choice_seed(seed, i)`, a 62-bit hash).
MAX_SEED = 2**63 - 1
SEED = Bound(0, MAX_SEED)
LOGIT_BIAS_VALUE = Bound(-100.0, 100.0)
MAX_LOGIT_BIAS = 1024
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_LEN = 256
MAX_STOP_TOKEN_IDS = 64
# Beam search (vLLM's `use_beam_search`; `best_of` is the width, `n` how many are returned).
MAX_BEAM_WIDTH = 16
BEST_OF = Bound(1, MAX_BEAM_WIDTH)
LENGTH_PENALTY = Bound(-10.0, 10.0)


def is_early_stopping_value(value: object) -> bool:
    """True, False or "never" (1 and 0 are not booleans here)."""
    return isinstance(value, bool) or value == "never"


def choice_seed(seed: int, index: int) -> int:
    """The seed choice `index` of a seeded request samples with: a 62-bit hash of both.

    Mixing, not `seed + index`: choice 1 of seed 42 must not repeat choice 0 of seed 43.
    Choice 0 keeps the request's own seed, so n=1 results do not change with this scheme.
    """
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


@dataclass
class SamplingParams:
    """How to generate: limits, stop conditions and the sampling controls, validated."""

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    # Logprobs of every prompt token after the first, with this many alternatives (vLLM's field;
    # echo + logprobs asks for them too). Such a request takes no prefix-cache hits.
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # vLLM's output controls: a matched stop string / stop token's text is left out unless
    # asked for; special tokens (GPT-2: <|endoftext|>) are left out of the text by default.
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # The chat template's end-of-turn strings: stop like `stop`, outside the client's limit.
    turn_stop: list[str] = field(default_factory=list)
    # Beam search as Hugging Face `generate(num_beams=best_of, num_return_sequences=n,
    # length_penalty=..., early_stopping=...)` does it; best_of None means n beams.
    use_beam_search: bool = False
    best_of: int | None = None
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # Constrained decoding: what the output must match, and (set by whoever compiled it off the
    # engine's step path) the grammar engine's compiled form, opaque here.
    structured_output: StructuredOutput | None = None
    compiled_grammar: object | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Normalize the spellings the API allows before validating one canonical form.
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.top_k == -1:
            self.top_k = 0
        self._validate_lengths()
        check_range("temperature", self.temperature, TEMPERATURE)
        check_range("top_p", self.top_p, TOP_P)
        check_int("top_k", self.top_k, TOP_K)
        check_range("min_p", self.min_p, MIN_P)
        check_range("repetition_penalty", self.repetition_penalty, REPETITION_PENALTY)
        check_range("presence_penalty", self.presence_penalty, PRESENCE_PENALTY)
        check_range("frequency_penalty", self.frequency_penalty, FREQUENCY_PENALTY)
        check_stop_strings(self.stop, MAX_STOP_STRINGS, MAX_STOP_STRING_LEN)
        check_stop_strings(self.turn_stop, MAX_STOP_STRINGS, MAX_STOP_STRING_LEN)
        check_token_id_list("stop_token_ids", self.stop_token_ids, MAX_STOP_TOKEN_IDS)
        check_bool("ignore_eos", self.ignore_eos)
        check_bool("include_stop_str_in_output", self.include_stop_str_in_output)
        check_bool("skip_special_tokens", self.skip_special_tokens)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, NO_REPEAT_NGRAM_SIZE)
        self._validate_seed()
        if self.logprobs is not None:
            check_int("logprobs", self.logprobs, LOGPROBS)
        if self.prompt_logprobs is not None:
            check_int("prompt_logprobs", self.prompt_logprobs, LOGPROBS)
        self.logit_bias = normalized_logit_bias(self.logit_bias, MAX_LOGIT_BIAS, LOGIT_BIAS_VALUE)
        self._validate_beam_search()

    def _validate_beam_search(self) -> None:
        check_bool("use_beam_search", self.use_beam_search)
        check_range("length_penalty", self.length_penalty, LENGTH_PENALTY)
        check(
            is_early_stopping_value(self.early_stopping),
            "early_stopping",
            f'early_stopping must be true, false or "never", got {self.early_stopping!r}',
        )
        if self.best_of is not None:
            check_int("best_of", self.best_of, BEST_OF)
            check(self.best_of >= self.n, "best_of", f"best_of ({self.best_of}) must be >= n")
        if not self.use_beam_search:
            for name, default in (("length_penalty", 1.0), ("early_stopping", False)):
                check(
                    getattr(self, name) == default,
                    name,
                    f"{name} applies to beam search only: send use_beam_search: true with it",
                )
            check(
                self.best_of in (None, self.n),
                "best_of",
                "best_of other than n needs use_beam_search: true (it is the beam width)",
            )
            return
        # Hugging Face beam search without do_sample: nothing is drawn, so a sampling control
        # would be silently ignored; refuse it instead.
        for name, off in (("temperature", (0.0, 1.0)), ("top_p", (1.0,)), ("top_k", (0,)),
                          ("min_p", (0.0,))):  # fmt: skip
            check(
                getattr(self, name) in off,
                name,
                f"beam search does not sample: {name} must be left out with use_beam_search",
            )
        for name in ("logprobs", "prompt_logprobs"):
            check(getattr(self, name) is None, name, f"{name} is not supported with beam search")
        self.temperature = 0.0  # one beam is greedy search, as Hugging Face's num_beams=1

    @property
    def beam_width(self) -> int:
        """Beams searched: best_of, else n."""
        return self.best_of or self.n

    @property
    def is_beam_search(self) -> bool:
        """Whether the engine runs a beam group (one beam is plain greedy search, as in HF)."""
        return self.use_beam_search and self.beam_width > 1

    def _validate_lengths(self) -> None:
        # Scoring a prompt (lm-eval's echo + max_tokens=0) generates nothing: the request
        # finishes once its prompt is computed. Without prompt logprobs 0 would do no work.
        check_int("max_tokens", self.max_tokens, MAX_TOKENS)
        check(
            self.max_tokens >= MAX_NEW_TOKENS.low or self.prompt_logprobs is not None,
            "max_tokens",
            "max_tokens must be >= 1, got 0 (0 only scores the prompt: echo or prompt_logprobs)",
        )
        check_int("min_tokens", self.min_tokens, MIN_TOKENS)
        check(
            self.min_tokens <= self.max_tokens,
            "min_tokens",
            f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
        )
        check_int("n", self.n, N)

    def _validate_seed(self) -> None:
        if self.seed is None:
            return
        check_int("seed", self.seed, SEED)

    @property
    def all_stop_strings(self) -> list[str]:
        """The client's stop strings, then the chat template's turn stops (no repeats)."""
        return self.stop + [s for s in self.turn_stop if s not in self.stop]

    @property
    def greedy(self) -> bool:
        """Whether sampling reduces to argmax."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        """Whether any repetition/presence/frequency penalty is active."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
