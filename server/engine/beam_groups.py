"""The engine's beam searches: start a group, route candidates, fork beams, emit the results."""

from __future__ import annotations

from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.core.messages import RequestOutput
from gpt2serve.server.core.request import Request, RequestStatus
from gpt2serve.server.core.scheduler import Scheduler
from gpt2serve.server.core.text_output import ChoiceText
from gpt2serve.server.engine.beam_search import BeamGroup, Hypothesis
from gpt2serve.server.worker.grammar import fork_matcher


class BeamSearches:
    """Every running beam-search request of one engine, by request id and by beam id."""

    def __init__(self, scheduler: Scheduler, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.groups: dict[str, BeamGroup] = {}
        self._group_of_beam: dict[str, str] = {}
        self._queued: dict[str, float] = {}  # root beam id -> arrival, until first scheduled

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.groups

    def start(self, request_id: str, root: Request) -> None:
        """Queue the root beam (the prompt); it forks into `width` beams after its prefill."""
        root.beam_score = 0.0
        self.groups[request_id] = BeamGroup(request_id, root, self.tokenizer, self.max_model_len)
        self._group_of_beam[root.request_id] = request_id
        self._queued[root.request_id] = root.arrival_time
        self.scheduler.add_request(root)

    def take_queue_time(self, beam_id: str, now: float) -> float | None:
        """Seconds a beam search waited before its first step (once), else None."""
        arrival = self._queued.pop(beam_id, None)
        return None if arrival is None else now - arrival

    def abort(self, request_id: str) -> bool:
        """End a beam search and free every beam's blocks; False if it is not one."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return False
        for beam in group.running:
            self._group_of_beam.pop(beam.request_id, None)
            self._queued.pop(beam.request_id, None)
            self.scheduler.abort_request(beam.request_id)
        return True

    def forget_preempted(self, beam_ids: list[str]) -> None:
        """A preempted beam recomputes its K/V and scores its continuations again."""
        for beam_id in beam_ids:
            group_id = self._group_of_beam.get(beam_id)
            if group_id is not None:
                self.groups[group_id].pending.pop(beam_id, None)

    def on_candidates(self, candidates: dict[str, list[tuple[int, float]]]) -> list[RequestOutput]:
        """Record each beam's candidates; advance every group whose beams all reported."""
        touched = []
        for beam_id, scored in candidates.items():
            group_id = self._group_of_beam.get(beam_id)
            if group_id is None:  # aborted while the step ran
                continue
            group = self.groups[group_id]
            group.pending.setdefault(beam_id, scored)
            if group not in touched:
                touched.append(group)
        outputs: list[RequestOutput] = []
        for group in touched:
            if group.ready:
                outputs.extend(self._advance(group))
        return outputs

    def _advance(self, group: BeamGroup) -> list[RequestOutput]:
        chosen = group.advance()
        for beam in group.running:
            self._group_of_beam.pop(beam.request_id, None)
        if group.done:
            for beam in group.running:
                self.scheduler.finish_request(beam.request_id, RequestStatus.FINISHED_STOPPED)
            del self.groups[group.request_id]
            return [self._output(group, i, hyp) for i, hyp in enumerate(group.results())]
        forks = [
            (c.parent, c.parent.fork(group.next_beam_id(), c.token_id, c.score)) for c in chosen
        ]
        for (parent, child), candidate in zip(forks, chosen, strict=True):
            if parent.grammar is not None:  # the child's matcher: the parent's plus its token
                child.grammar = fork_matcher(parent.grammar, candidate.token_id)
        self.scheduler.replace_beams(group.running, forks)
        group.running = [child for _, child in forks]
        for child in group.running:
            self._group_of_beam[child.request_id] = group.request_id
        return []

    def _output(self, group: BeamGroup, index: int, hypothesis: Hypothesis) -> RequestOutput:
        """One returned sequence as a finished choice: text cut at a stop, as vLLM's."""
        params, tokens = group.params, hypothesis.token_ids
        text = ChoiceText(
            self.tokenizer, params.all_stop_strings, params.min_tokens,
            params.include_stop_str_in_output, params.skip_special_tokens,
        )  # fmt: skip
        pieces: list[str] = []
        finish_reason, stop_reason = "length", None
        for position, token in enumerate(tokens):
            last = position == len(tokens) - 1
            if last and (token in params.stop_token_ids or self._is_eos(token, params.ignore_eos)):
                finish_reason = "stop"
                stop_reason = token if token in params.stop_token_ids else None
                if not params.include_stop_str_in_output:
                    text.skip_token()
                    continue
            delta = text.add_token(token)
            pieces.append(delta.text)
            if delta.stop_string is not None:
                finish_reason, stop_reason = "stop", delta.stop_string
                break
        else:
            pieces.append(text.finish())
        return RequestOutput(
            request_id=group.request_id, index=index, text="".join(pieces), token_ids=tokens,
            finished=True, finish_reason=finish_reason, stop_reason=stop_reason,
            num_prompt_tokens=group.prompt_len, num_output_tokens=len(tokens),
            beam_score=hypothesis.score,
        )  # fmt: skip

    def _is_eos(self, token: int, ignore_eos: bool) -> bool:
        return token == self.tokenizer.eos_token_id and not ignore_eos
