"""Workloads: prompt/output length distributions and request arrival schedules."""

from __future__ import annotations

import random

from gpt2serve.loadtest.client import RequestSpec

GPT2_VOCAB = 50257
# Words for text prompts; repeated to length, so any tokenizer sees ordinary English.
_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "they",
    "this",
    "which",
    "an",
    "be",
    "or",
    "had",
    "are",
    "but",
    "not",
    "were",
    "have",
    "one",
    "all",
    "their",
    "there",
    "been",
    "has",
    "when",
    "who",
    "more",
    "will",
    "would",
    "time",
    "people",
    "year",
    "city",
    "world",
    "house",
    "water",
    "story",
    "music",
    "river",
    "school",
    "family",
    "night",
    "light",
)


def sample_lengths(rng: random.Random, mean: int, range_ratio: float, count: int) -> list[int]:
    """Uniform lengths in [mean*(1-r), mean*(1+r)], at least 1 (vLLM's random dataset)."""
    low = max(1, int(mean * (1 - range_ratio)))
    high = max(low, int(mean * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(count)]


def build_requests(
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    prompt_format: str = "ids",
    seed: int = 0,
    max_context: int = 1024,
) -> list[RequestSpec]:
    """Random-token (or English-word) prompts whose prompt + output fits `max_context`."""
    if input_len + output_len > max_context:
        raise ValueError(
            f"input_len {input_len} + output_len {output_len} exceeds the context {max_context}"
        )
    rng = random.Random(seed)
    inputs = sample_lengths(rng, input_len, range_ratio, num_requests)
    outputs = sample_lengths(rng, output_len, range_ratio, num_requests)
    specs = []
    for n_in, n_out in zip(inputs, outputs, strict=True):
        n_out = min(n_out, max_context - n_in)
        if prompt_format == "ids":
            prompt: list[int] | str = [rng.randrange(GPT2_VOCAB - 1) for _ in range(n_in)]
        else:
            prompt = " ".join(rng.choice(_WORDS) for _ in range(n_in))
        specs.append(RequestSpec(prompt, n_in, n_out))
    return specs


def poisson_delays(rng: random.Random, rate: float, count: int) -> list[float]:
    """Gaps between arrivals of a Poisson process at `rate` requests/s (0 gaps if rate is inf)."""
    if rate == float("inf"):
        return [0.0] * count
    return [rng.expovariate(rate) for _ in range(count)]
