"""Per-choice text state: incremental detokenization and stop strings with hold-back."""

from __future__ import annotations

from dataclasses import dataclass

from gpt2serve.model.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class TextDelta:
    """Text released by one token, and the stop string that ended the choice, if any."""

    text: str
    stop_string: str | None = None


class ChoiceText:
    """Turns one choice's tokens into text deltas; never releases part of a stop string.

    Invariant: released text contains no stop string, and the held-back tail is the longest
    suffix of the unreleased text that could still grow into one.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: list[str],
        min_tokens: int,
        include_stop: bool = False,
        skip_special: bool = True,
    ) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special=skip_special)
        self.stop = stop
        self.min_tokens = min_tokens
        self.include_stop = include_stop  # vLLM's include_stop_str_in_output
        self.held = ""
        self.num_tokens = 0

    def add_token(self, token_id: int) -> TextDelta:
        """Feed one token; stop strings count only once `min_tokens` tokens exist (as vLLM)."""
        self.num_tokens += 1
        self.held += self.detokenizer.add(token_id)
        if not self.stop or self.num_tokens < self.min_tokens:
            return self._release(len(self.held))
        match_at, matched = self._first_stop_match()
        if matched is not None:
            delta = self.held[: match_at + (len(matched) if self.include_stop else 0)]
            self.held = ""
            return TextDelta(delta, stop_string=matched)
        return self._release(len(self.held) - self._partial_match_len())

    def skip_token(self) -> None:
        """A token whose text is left out (a matched stop token): counted, not decoded."""
        self.num_tokens += 1

    def finish(self) -> str:
        """The choice ended for another reason: release everything held back."""
        tail = self.held + self.detokenizer.flush()
        self.held = ""
        return tail

    def _release(self, upto: int) -> TextDelta:
        delta, self.held = self.held[:upto], self.held[upto:]
        return TextDelta(delta)

    def _first_stop_match(self) -> tuple[int, str | None]:
        best_at, best = len(self.held) + 1, None
        for stop in self.stop:
            at = self.held.find(stop)
            if at != -1 and at < best_at:
                best_at, best = at, stop
        return best_at, best

    def _partial_match_len(self) -> int:
        """Length of the longest suffix of held text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.held)), longest, -1):
                if self.held.endswith(stop[:size]):
                    longest = size
                    break
        return longest
