"""Building OpenAI response pieces: token strings, logprobs in both shapes, usage."""

from __future__ import annotations

from typing import Any

from gpt2serve.model.tokenizer import IncrementalDetokenizer, Tokenizer
from gpt2serve.server.core.messages import TokenLogprobs


def token_string(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text, or `bytes:\\xNN` for a token that is not whole UTF-8 (as OpenAI)."""
    raw = tokenizer.token_bytes(token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class LegacyLogprobs:
    """Accumulates the completions API's `logprobs` object for one choice.

    `text_offset[i]` is where token i starts in the choice's text: the length of the text
    decoded from all earlier tokens. Decoded incrementally, as the engine does, so a token
    holding part of a multi-byte character adds nothing until the character completes
    (`len(decode([id]))` would count a U+FFFD per fragment and drift past the text).
    """

    def __init__(self, tokenizer: Tokenizer, text_offset: int = 0) -> None:
        self.tokenizer = tokenizer
        self.offset = text_offset
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, entry: TokenLogprobs) -> None:
        """Append one generated token."""
        self._append(entry.token_id, entry, len(entry.top), self.offset)
        self.offset += len(self.detokenizer.add(entry.token_id))

    def add_prompt(
        self, prompt_ids: list[int], entries: list[TokenLogprobs | None], num_top: int
    ) -> None:
        """Append the echoed prompt, before any generated token: offsets count from 0.

        The first token has nothing before it: its logprob and top logprobs are null (OpenAI).
        Generated tokens keep counting from the offset given at construction (the echoed text).
        """
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        offset = 0
        for token_id, entry in zip(prompt_ids, entries, strict=True):
            self._append(token_id, entry, num_top, offset)
            offset += len(detokenizer.add(token_id))

    def _append(
        self, token_id: int, entry: TokenLogprobs | None, num_top: int, text_offset: int
    ) -> None:
        """One token's four columns; a token with no entry (the first prompt token) is null."""
        self.tokens.append(token_string(self.tokenizer, token_id))
        self.token_logprobs.append(None if entry is None else entry.logprob)
        top = None if entry is None else entry.top[:num_top]
        self.top_logprobs.append(
            None if top is None else {token_string(self.tokenizer, t): lp for t, lp in top}
        )
        self.text_offset.append(text_offset)

    def take(self) -> dict[str, Any]:
        """The object for what was added since the last `take` (streaming) or all of it."""
        result = {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return result


def vllm_prompt_logprobs(
    tokenizer: Tokenizer, entries: list[TokenLogprobs | None], num_top: int
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: per prompt token, {id: {logprob, rank, decoded_token}}.

    Each dict holds the prompt token itself and the `num_top` most likely tokens (so N or
    N + 1 entries); the first prompt token's is None.
    """
    result: list[dict[str, dict[str, Any]] | None] = []
    for entry in entries:
        if entry is None:
            result.append(None)
            continue
        ranked = [(t, lp, rank) for rank, (t, lp) in enumerate(entry.top[:num_top], start=1)]
        ranked.append((entry.token_id, entry.logprob, entry.rank))
        result.append(
            {
                str(t): {"logprob": lp, "rank": rank, "decoded_token": tokenizer.decode([t])}
                for t, lp, rank in ranked
            }
        )
    return result


def chat_logprob_entries(
    tokenizer: Tokenizer, entries: list[TokenLogprobs]
) -> list[dict[str, Any]]:
    """The chat API's `logprobs.content` items."""
    result = []
    for entry in entries:
        top = [
            {
                "token": token_string(tokenizer, t),
                "logprob": lp,
                "bytes": list(tokenizer.token_bytes(t)),
            }
            for t, lp in entry.top
        ]
        result.append(
            {
                "token": token_string(tokenizer, entry.token_id),
                "logprob": entry.logprob,
                "bytes": list(tokenizer.token_bytes(entry.token_id)),
                "top_logprobs": top,
            }
        )
    return result


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
