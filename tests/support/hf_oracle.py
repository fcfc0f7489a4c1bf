"""Hugging Face transformers as the numeric oracle for a model of ours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.weights import save_hf_checkpoint
from gpt2serve.server.core.sampling_params import SamplingParams


def hf_prompt_logprobs(
    model: GPT2LMHeadModel, directory: Path
) -> Callable[[list[int]], torch.Tensor]:
    """Save `model` as an HF checkpoint; returns prompt -> HF log-softmax scoring each token.

    Row i of the result scores prompt token i + 1 given the tokens before it.
    """
    import transformers

    save_hf_checkpoint(model, directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()

    def logprobs(prompt: list[int]) -> torch.Tensor:  # [len(prompt) - 1, vocab]
        with torch.no_grad():
            logits = hf(torch.tensor([prompt])).logits[0].float()  # [len(prompt), vocab]
        return torch.log_softmax(logits, dim=-1)[:-1]

    return logprobs


EOS = 50256


def hf_beam_search(hf, prompt: list[int], params: SamplingParams) -> list[tuple[list[int], float]]:
    """HF's returned sequences (generated part, up to and including EOS) and their scores."""
    extra = {}
    if params.no_repeat_ngram_size:
        extra["no_repeat_ngram_size"] = params.no_repeat_ngram_size
    if params.min_tokens:
        extra["min_new_tokens"] = params.min_tokens
    if params.logit_bias:  # HF's single-token sequence_bias is OpenAI's logit_bias
        extra["sequence_bias"] = {(token,): bias for token, bias in params.logit_bias.items()}
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]), do_sample=False, num_beams=params.beam_width,
            num_return_sequences=params.n, length_penalty=params.length_penalty,
            early_stopping=params.early_stopping, max_new_tokens=params.max_tokens,
            repetition_penalty=params.repetition_penalty, pad_token_id=EOS,
            output_scores=True, return_dict_in_generate=True, **extra,
        )  # fmt: skip
    results = []
    for row, score in zip(out.sequences.tolist(), out.sequences_scores.tolist(), strict=True):
        generated = row[len(prompt) :]
        if EOS in generated:  # HF pads with EOS after a hypothesis that ended on it
            generated = generated[: generated.index(EOS) + 1]
        results.append((generated, score))
    return results
