"""Continuous batching: a per-step token budget, chunked prefill, preemption by recompute."""

from __future__ import annotations

from collections import deque

from gpt2serve.server.core.block_manager import BlockManager
from gpt2serve.server.core.messages import ScheduledRequest, SchedulerOutput
from gpt2serve.server.core.request import Request, RequestStatus, is_finished


class Scheduler:
    """vLLM-v1-style scheduling: prefill, chunked prefill and decode are one code path."""

    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 2048,
    ) -> None:
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions_total = 0

    @property
    def num_running(self) -> int:
        """Requests in the running batch."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Requests waiting (new or preempted)."""
        return len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        """Whether anything is waiting or running."""
        return bool(self.waiting or self.running)

    def add_request(self, request: Request) -> None:
        """Queue a new request at the back; ValueError for a duplicate id or a used request.

        Whether it can ever fit (context, whole KV cache) was checked once, before the engine
        accepted it (`core.request_limits`): the scheduler does not check it again.
        """
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} already exists")
        if request.status != RequestStatus.WAITING or request.num_output_tokens:
            raise ValueError(f"request {request.request_id!r} is not a new request")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> bool:
        """End a request in any state and free its blocks; False for an unknown id."""
        return self.finish_request(request_id, RequestStatus.FINISHED_ABORTED)

    def finish_request(self, request_id: str, status: RequestStatus) -> bool:
        """End a request with `status` (e.g. a stop string matched); frees its blocks."""
        if not is_finished(status):
            raise ValueError(f"{status!r} is not a finished status")
        request = self.requests.pop(request_id, None)
        if request is None:
            return False
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        self.block_manager.free(request)
        return True

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts within the budgets."""
        output = SchedulerOutput()
        budget = self.max_num_batched_tokens
        budget = self._schedule_running(output, budget)
        if not output.preempted_request_ids:
            self._admit_waiting(output, budget)
        if output.is_empty and self.waiting and self.running:
            self._unblock_waiting(output)
        output.num_batched_tokens = sum(s.num_new_tokens for s in output.scheduled)
        output.block_copies = self.block_manager.take_copies()
        return output

    def _unblock_waiting(self, output: SchedulerOutput) -> None:
        """Nothing ran: every running request is a beam waiting for its group's other beams,
        which wait for blocks those beams hold. Preempt the idle beams behind the queue's head,
        so the head (a preempted sibling, or the oldest request) gets their blocks."""
        head = self.waiting.popleft()
        for request in reversed(self.running):
            self._preempt(request, output)
        self.running.clear()
        self.waiting.appendleft(head)
        self._admit_waiting(output, self.max_num_batched_tokens)

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:  # nothing left to compute (cannot happen after update(); be safe)
                index += 1
                continue
            while not self.block_manager.allocate(request, num_new):
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim, output)
                if victim is request:
                    return budget
            output.scheduled.append(self._entry(request, num_new))
            budget -= num_new
            index += 1
        return budget

    def _admit_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            # Cached blocks skip compute, and with it the logits of their positions: a request
            # that wants prompt logprobs computes its whole prompt (as vLLM), uncounted.
            use_cache = not request.needs_prompt_logprobs
            computed = (
                self.block_manager.get_computed_blocks(request.all_token_ids) if use_cache else []
            )
            num_cached = len(computed) * self.block_manager.block_size
            num_new = min(request.num_tokens - num_cached, budget)
            if not self.block_manager.allocate(request, num_new, computed):
                break
            if use_cache:
                self.block_manager.record_prefix_query(request.num_tokens, num_cached)
            self.waiting.popleft()
            request.num_computed_tokens = num_cached
            if request.status == RequestStatus.WAITING:  # first admission, not a resume
                request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            output.scheduled.append(self._entry(request, num_new))
            budget -= num_new

    def _entry(self, request: Request, num_new: int) -> ScheduledRequest:
        computed = request.num_computed_tokens
        # max_tokens=0 (scoring the prompt) never samples; update() finishes it instead.
        sample = computed + num_new == request.num_tokens and request.sampling_params.max_tokens > 0
        return ScheduledRequest(request, num_new, computed, sample)

    def replace_beams(self, parents: list[Request], forks: list[tuple[Request, Request]]) -> None:
        """A beam group's step: each (parent, child) fork's child takes the parents' places.

        Children share their parent's blocks (copied on write when they append); the parents
        are dropped, so a block only they held is freed.
        """
        parent_ids = {p.request_id for p in parents}
        positions = [i for i, r in enumerate(self.running) if r.request_id in parent_ids]
        if len(positions) != len(parents):
            raise ValueError("every parent beam must be running")
        for parent, child in forks:
            if parent.request_id not in parent_ids or child.request_id in self.requests:
                raise ValueError(f"bad beam fork {parent.request_id!r} -> {child.request_id!r}")
            self.block_manager.fork(parent, child)
            self.requests[child.request_id] = child
        for parent in parents:
            del self.requests[parent.request_id]
            parent.status = RequestStatus.FINISHED_ABORTED
            self.block_manager.free(parent)
        kept = [r for r in self.running if r.request_id not in parent_ids]
        children = [child for _, child in forks]
        self.running = kept[: positions[0]] + children + kept[positions[0] :]

    def _preempt(self, request: Request, output: SchedulerOutput) -> None:
        """Free the request's blocks and requeue it at the head; its output is kept."""
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)
        output.preempted_request_ids.append(request.request_id)
        # Victims come from the tail, behind the request being scheduled, so none was scheduled
        # this step: its hashed blocks all hold K/V that an earlier step really wrote.
        assert all(s.request is not request for s in output.scheduled)

    def update(self, output: SchedulerOutput, sampled_token_ids: list[int]) -> list[Request]:
        """Advance progress, append sampled tokens, apply stops; returns requests with news.

        News is a new token, or the end of a max_tokens=0 request whose prompt is computed.
        """
        sampling = output.sampling_requests
        if len(sampling) != len(sampled_token_ids):
            raise ValueError(
                f"{len(sampled_token_ids)} tokens for {len(sampling)} sampling requests"
            )
        updated = []
        for scheduled in output.scheduled:
            request = scheduled.request
            if request.is_finished:
                continue
            request.num_computed_tokens += scheduled.num_new_tokens
            if request.prompt_only_done:
                self.finish_request(request.request_id, RequestStatus.FINISHED_LENGTH)
                updated.append(request)
        for scheduled, token_id in zip(sampling, sampled_token_ids, strict=True):
            request = scheduled.request
            # Aborted while the step ran: drop its token. A beam's continuation is chosen by
            # its group (`replace_beams`), not appended here.
            if request.is_finished or request.is_beam:
                continue
            request.append_output_token(token_id)
            status = request.check_stop()
            if status is not None:
                self.finish_request(request.request_id, status)
            updated.append(request)
        return updated
