"""One beam-search request: Hugging Face `generate(num_beams=...)`'s bookkeeping over our beams.

The worker scores each beam's continuations (`Sampler.beam_candidates`); once every running beam
of the group has its candidates, `BeamGroup.advance` does what HF's vectorised `_beam_search`
does in one loop iteration — same tensor operations, same float32 arithmetic, same top-k calls —
so the sequences and scores match HF's token for token. The engine then forks the chosen
beams in the scheduler (sharing KV blocks, copy-on-write) and drops the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.core.request import Request

NEG = -1.0e9  # HF's "never pick this" score


@dataclass
class Hypothesis:
    """A finished (or, at the very end, best remaining) sequence and its length-penalised score."""

    token_ids: list[int]
    score: float


@dataclass
class _Candidate:
    parent: Request
    token_id: int
    score: float  # the parent's beam score + this token's processed logprob (float32)

    @property
    def token_ids(self) -> list[int]:
        return [*self.parent.output_token_ids, self.token_id]


class BeamGroup:
    """The state of one beam search between steps: running beams, finished pool, stop rules."""

    def __init__(
        self, request_id: str, root: Request, tokenizer: Tokenizer, max_model_len: int
    ) -> None:
        params = root.sampling_params
        self.request_id = request_id
        self.params = params
        self.tokenizer = tokenizer
        self.width = params.beam_width
        self.prompt_len = root.num_prompt_tokens
        # HF's max_length: the prompt plus max_new_tokens, within the model's context.
        self.max_length = min(self.prompt_len + params.max_tokens, max_model_len)
        self.running: list[Request] = [root]
        self.pending: dict[str, list[tuple[int, float]]] = {}
        self.pool = [Hypothesis([], NEG) for _ in range(self.width)]
        self.pool_scores = torch.full((1, self.width), NEG)  # [1, width] float32
        self.pool_finished = torch.zeros((1, self.width), dtype=torch.bool)  # [1, width]
        self.improvable = torch.ones((1, 1), dtype=torch.bool)  # HF's "heuristic unsatisfied"
        self.top_mask = torch.arange(2 * self.width) < self.width  # [2 * width]
        self.num_forks = 0
        self.done = False

    @property
    def ready(self) -> bool:
        """Whether every running beam has scored its continuations."""
        return all(beam.request_id in self.pending for beam in self.running)

    def advance(self) -> list[_Candidate]:
        """One HF beam-search iteration; returns the beams to run next (empty once done)."""
        candidates = self._top_candidates()
        cur_len = self.prompt_len + self.running[0].num_output_tokens
        scores = torch.tensor([[c.score for c in candidates]], dtype=torch.float32)  # [1, 2w]
        hits = torch.tensor([[self._hits_stop(c) for c in candidates]])  # [1, 2w] bool
        running_scores = scores + hits.to(torch.float32) * NEG
        next_indices = torch.topk(running_scores, k=self.width)[1]  # [1, w]
        next_scores = running_scores.gather(1, next_indices)  # [1, w], best first
        self._update_pool(candidates, scores, hits, cur_len)
        self._update_improvable(next_scores, cur_len + 1)
        self.pending.clear()
        still_open = not (bool(self.pool_finished.all()) and self.params.early_stopping is True)
        self.done = not (bool(self.improvable.any()) and still_open and not bool(hits.all()))
        if self.done:
            return []
        chosen = [candidates[i] for i in next_indices[0].tolist()]
        for candidate, score in zip(chosen, next_scores[0].tolist(), strict=True):
            candidate.score = score
        return chosen

    def _top_candidates(self) -> list[_Candidate]:
        """The best 2 x width continuations over all beams, in HF's flattened top-k order."""
        vocab = self.tokenizer.vocab_size
        ranked = sorted(
            (
                (-score, index * vocab + token, _Candidate(beam, token, score))
                for index, beam in enumerate(self.running)
                for token, score in self.pending[beam.request_id]
            ),
            key=lambda item: (item[0], item[1]),
        )
        return [candidate for _, _, candidate in ranked[: 2 * self.width]]

    def _hits_stop(self, candidate: _Candidate) -> bool:
        """HF's stopping criteria on the sequence this candidate would make."""
        params, token = self.params, candidate.token_id
        length = self.prompt_len + candidate.parent.num_output_tokens + 1
        if length >= self.max_length or token in params.stop_token_ids:
            return True
        if token == self.tokenizer.eos_token_id and not params.ignore_eos:
            return True
        stops = params.all_stop_strings
        return bool(stops) and any(s in self.tokenizer.decode(candidate.token_ids) for s in stops)

    def _update_pool(
        self, candidates: list[_Candidate], scores: torch.Tensor, hits: torch.Tensor, cur_len: int
    ) -> None:
        """HF's `_update_finished_beams`: keep the best `width` finished hypotheses."""
        just_finished = hits & self.top_mask[None, :]  # [1, 2w]
        penalised = scores / ((cur_len + 1 - self.prompt_len) ** self.params.length_penalty)
        pool_full = torch.all(self.pool_finished, dim=-1, keepdim=True) & (
            self.params.early_stopping is True
        )
        penalised += pool_full.to(torch.float32) * NEG
        penalised += (~self.improvable).to(torch.float32) * NEG
        penalised += (~just_finished) * NEG
        merged_scores = torch.cat((self.pool_scores, penalised), dim=1)  # [1, 3w]
        merged_finished = torch.cat((self.pool_finished, just_finished), dim=1)  # [1, 3w]
        keep = torch.topk(merged_scores, k=self.width)[1]  # [1, w]
        merged = self.pool + [Hypothesis(c.token_ids, 0.0) for c in candidates]
        self.pool_scores = merged_scores.gather(1, keep)
        self.pool_finished = merged_finished.gather(1, keep)
        self.pool = [
            Hypothesis(merged[i].token_ids, score)
            for i, score in zip(keep[0].tolist(), self.pool_scores[0].tolist(), strict=True)
        ]

    def _update_improvable(self, running_scores: torch.Tensor, cur_len: int) -> None:
        """HF's `_check_early_stop_heuristic`: can a running beam still beat the worst kept?"""
        params = self.params
        if params.early_stopping == "never" and params.length_penalty > 0.0:
            best_length = self.max_length - self.prompt_len
        else:
            best_length = cur_len - self.prompt_len
        best_running = running_scores[:, :1] / (best_length**params.length_penalty)
        worst_kept = torch.where(
            self.pool_finished, torch.min(self.pool_scores, dim=1, keepdim=True)[0], NEG
        )
        self.improvable = self.improvable & torch.any(
            best_running > worst_kept, dim=-1, keepdim=True
        )

    def next_beam_id(self) -> str:
        """A fresh internal request id for a forked beam."""
        self.num_forks += 1
        return f"{self.request_id}#beam{self.num_forks}"

    def results(self) -> list[Hypothesis]:
        """The `n` best hypotheses, best first (HF's `sequences[:num_return_sequences]`)."""
        return self.pool[: self.params.n]
