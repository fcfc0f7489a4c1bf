"""The synchronous engine: admit requests, step the model, produce per-choice output deltas."""

from __future__ import annotations

import dataclasses
import enum
import random
import time
from dataclasses import dataclass

from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.core.block_manager import BlockManager
from gpt2serve.server.core.messages import (
    PromptLogprobsChunk,
    RequestOutput,
    SchedulerOutput,
    StepStats,
    TokenLogprobs,
)
from gpt2serve.server.core.request import Request, RequestStatus
from gpt2serve.server.core.request_limits import CheckedRequest, InvalidRequestError, RequestLimits
from gpt2serve.server.core.sampling_params import SamplingParams, choice_seed
from gpt2serve.server.core.scheduler import Scheduler
from gpt2serve.server.core.structured_output import GrammarError
from gpt2serve.server.core.text_output import ChoiceText, TextDelta
from gpt2serve.server.engine.beam_groups import BeamSearches
from gpt2serve.server.engine.grammars import GrammarService, advance_matchers
from gpt2serve.server.worker.grammar import new_matcher
from gpt2serve.server.worker.model_runner import ModelRunner


class DecodeMode(enum.Enum):
    """How pure-decode steps run."""

    AUTO = "auto"  # padded static buffers + CUDA graphs on a GPU, eager on CPU
    EAGER = "eager"  # always the eager path (`--enforce-eager`)
    PADDED = "padded"  # the static-buffer path even on CPU, eagerly (tests the graph inputs)


@dataclass
class EngineConfig:
    """Capacity and execution settings of the engine."""

    block_size: int = 16
    num_blocks: int = 1024
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 1024
    enable_prefix_caching: bool = True
    decode_mode: DecodeMode = DecodeMode.AUTO


@dataclass
class _Choice:
    """Engine-side state of one of a request's `n` choices."""

    parent_id: str
    index: int
    text: ChoiceText
    arrival_time: float
    queued: bool = True
    # Prompt logprobs gathered over the prefill's chunks (entry 0 is None); handed over, then
    # dropped, with the choice's first output.
    prompt_logprobs: list[TokenLogprobs | None] | None = None


class Engine:
    """Continuous batching over one model: `add_request`, `abort_request`, `step`."""

    def __init__(self, model: GPT2LMHeadModel, tokenizer: Tokenizer, config: EngineConfig) -> None:
        if config.max_model_len > model.config.n_positions:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds the model's "
                f"{model.config.n_positions} positions"
            )
        if not isinstance(config.decode_mode, DecodeMode):
            raise TypeError(f"decode_mode must be a DecodeMode, got {config.decode_mode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.block_manager = BlockManager(
            config.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.request_limits = RequestLimits(
            vocab_size=model.config.vocab_size,
            max_model_len=config.max_model_len,
            num_cache_tokens=self.block_manager.num_usable_blocks * config.block_size,
        )
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
        )
        on_gpu = model.transformer.wte.weight.device.type == "cuda"
        padded = config.decode_mode == DecodeMode.PADDED or (
            config.decode_mode == DecodeMode.AUTO and on_gpu
        )
        self.runner = ModelRunner(
            model, config.num_blocks, config.block_size, config.max_num_seqs, padded_decode=padded
        )
        self._choices: dict[str, _Choice] = {}
        self._children: dict[str, list[str]] = {}
        self.beam_searches = BeamSearches(self.scheduler, tokenizer, config.max_model_len)
        self.grammars = GrammarService(tokenizer)
        self.last_step_stats = StepStats()

    def add_request(
        self, request_id: str, request: CheckedRequest, arrival_time: float | None = None
    ) -> None:
        """Queue a request (checked by `request_limits.check`) as `n` choices sharing its prompt."""
        if request_id in self._children or request_id in self.beam_searches:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        prompt_token_ids, params = request.prompt_token_ids, request.params
        arrival = time.monotonic() if arrival_time is None else arrival_time
        grammar = self._compiled_grammar(params)
        if params.is_beam_search:
            root = Request(
                f"{request_id}#beam0", list(prompt_token_ids), params, arrival_time=arrival,
                eos_token_id=self.tokenizer.eos_token_id, max_model_len=self.config.max_model_len,
            )  # fmt: skip
            root.grammar = None if grammar is None else new_matcher(grammar)
            self.beam_searches.start(request_id, root)
            return
        child_ids = []
        for index in range(params.n):
            # Siblings must differ, and a seeded request must still reproduce: a hash of
            # (seed, index), so choice 1 of seed 42 is not choice 0 of seed 43.
            seed = (
                random.getrandbits(62) if params.seed is None else choice_seed(params.seed, index)
            )
            child_params = dataclasses.replace(params, seed=seed)
            child_id = request_id if params.n == 1 else f"{request_id}#{index}"
            child = Request(
                child_id,
                list(prompt_token_ids),
                child_params,
                arrival_time=arrival,
                eos_token_id=self.tokenizer.eos_token_id,
                max_model_len=self.config.max_model_len,
            )
            child.grammar = None if grammar is None else new_matcher(grammar)
            self._choices[child_id] = _Choice(
                request_id,
                index,
                ChoiceText(
                    self.tokenizer,
                    params.all_stop_strings,
                    params.min_tokens,
                    params.include_stop_str_in_output,
                    params.skip_special_tokens,
                ),
                arrival,
                prompt_logprobs=None if params.prompt_logprobs is None else [None],
            )
            self.scheduler.add_request(child)
            child_ids.append(child_id)
        self._children[request_id] = child_ids

    def abort_request(self, request_id: str) -> None:
        """Drop a request (all its choices) wherever it is; its blocks are freed now."""
        if self.beam_searches.abort(request_id):
            return
        for child_id in self._children.pop(request_id, []):
            self.scheduler.abort_request(child_id)
            self._choices.pop(child_id, None)

    def has_unfinished_requests(self) -> bool:
        """Whether any request is waiting or running."""
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, and turn the new tokens into output deltas."""
        scheduler_output = self.scheduler.schedule()
        self.beam_searches.forget_preempted(scheduler_output.preempted_request_ids)
        self.last_step_stats = self._step_stats(scheduler_output)
        if scheduler_output.is_empty:
            return []
        runner_output = self.runner.execute(scheduler_output)
        logprobs_by_id = {
            s.request.request_id: lp
            for s, lp in zip(
                scheduler_output.sampling_requests, runner_output.logprobs, strict=True
            )
        }
        self._gather_prompt_logprobs(runner_output.prompt_logprobs)
        updated = self.scheduler.update(scheduler_output, runner_output.sampled_token_ids)
        advance_matchers(updated, self.scheduler)
        outputs = [self._make_output(r, logprobs_by_id.get(r.request_id)) for r in updated]
        return outputs + self.beam_searches.on_candidates(runner_output.beam_candidates)

    def _compiled_grammar(self, params: SamplingParams) -> object | None:
        """The request's compiled grammar: as the HTTP side compiled it, else compiled now."""
        if params.structured_output is None:
            return None
        if params.compiled_grammar is not None:
            return params.compiled_grammar
        try:
            return self.grammars.compile_now(params.structured_output)
        except GrammarError as exc:
            raise InvalidRequestError(str(exc), exc.param) from exc

    def _gather_prompt_logprobs(self, chunks: dict[str, PromptLogprobsChunk]) -> None:
        """Append each request's newly scored prompt tokens to what earlier chunks scored."""
        for request_id, chunk in chunks.items():
            choice = self._choices.get(request_id)
            if choice is None or choice.prompt_logprobs is None:  # aborted during the step
                continue
            gathered = choice.prompt_logprobs
            if chunk.first_target > len(gathered):
                raise RuntimeError(f"prompt logprobs of {request_id!r} skipped a position")
            # A prefill preempted midway recomputes positions it already scored: keep the first.
            gathered.extend(chunk.entries[len(gathered) - chunk.first_target :])

    def _step_stats(self, scheduler_output: SchedulerOutput) -> StepStats:
        """This step's token count, and the queue time of each choice scheduled the first time."""
        now = time.monotonic()
        queue_times = []
        for scheduled in scheduler_output.scheduled:
            choice = self._choices.get(scheduled.request.request_id)
            if choice is not None and choice.queued:
                choice.queued = False
                queue_times.append(now - choice.arrival_time)
            elif choice is None:
                waited = self.beam_searches.take_queue_time(scheduled.request.request_id, now)
                queue_times.extend([] if waited is None else [waited])
        return StepStats(scheduler_output.num_batched_tokens, queue_times)

    def _make_output(self, request: Request, logprobs: TokenLogprobs | None) -> RequestOutput:
        choice = self._choices[request.request_id]
        prompt_logprobs, choice.prompt_logprobs = choice.prompt_logprobs, None
        if not request.output_token_ids:  # max_tokens=0: finished once the prompt was computed
            self._forget(request.request_id, choice.parent_id)
            return self._output(choice, request, "", [], None, prompt_logprobs)
        token_id = request.output_token_ids[-1]
        if self._drops_stop_token_text(request):
            choice.text.skip_token()
            delta = TextDelta("")
        else:
            delta = choice.text.add_token(token_id)
        text = delta.text
        if delta.stop_string is not None and not request.is_finished:
            request.stop_reason = delta.stop_string
            self.scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED)
        elif delta.stop_string is not None:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = delta.stop_string
        elif request.is_finished:
            text += choice.text.finish()
        if request.is_finished:
            self._forget(request.request_id, choice.parent_id)
        return self._output(choice, request, text, [token_id], logprobs, prompt_logprobs)

    @staticmethod
    def _drops_stop_token_text(request: Request) -> bool:
        """The token that stopped the request (a `stop_token_ids` match, or EOS) is not text,
        as in vLLM, unless `include_stop_str_in_output` asks for it."""
        if not request.is_finished or request.sampling_params.include_stop_str_in_output:
            return False
        if isinstance(request.stop_reason, int):
            return True
        ended_on_eos = request.output_token_ids[-1] == request.eos_token_id
        return request.finish_reason == "stop" and request.stop_reason is None and ended_on_eos

    def _output(
        self,
        choice: _Choice,
        request: Request,
        text: str,
        token_ids: list[int],
        logprobs: TokenLogprobs | None,
        prompt_logprobs: list[TokenLogprobs | None] | None,
    ) -> RequestOutput:
        return RequestOutput(
            request_id=choice.parent_id,
            index=choice.index,
            text=text,
            token_ids=token_ids,
            finished=request.is_finished,
            finish_reason=request.finish_reason,
            stop_reason=request.stop_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            logprobs=[logprobs] if logprobs is not None else None,
            prompt_logprobs=prompt_logprobs,
        )

    def _forget(self, child_id: str, parent_id: str) -> None:
        self._choices.pop(child_id, None)
        siblings = self._children.get(parent_id)
        if siblings is not None and all(c not in self._choices for c in siblings):
            del self._children[parent_id]
