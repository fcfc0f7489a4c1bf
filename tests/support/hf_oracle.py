"""Hugging Face transformers as the numeric oracle for a model of ours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.weights import save_hf_checkpoint


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
