"""Helpers for driving the synchronous engine in tests."""

from __future__ import annotations

import time

import torch

from gpt2serve.server.core.messages import RequestOutput, SchedulerOutput
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import Engine


def run_to_completion(
    engine: Engine, requests: dict[str, tuple[list[int], SamplingParams]], max_steps: int = 10_000
) -> dict[str, list[RequestOutput]]:
    """Submit all requests at once and step until every one finished; outputs per request id."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, engine.request_limits.check(prompt, params))
    outputs: dict[str, list[RequestOutput]] = {rid: [] for rid in requests}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return outputs
        for output in engine.step():
            outputs[output.request_id].append(output)
    raise AssertionError("requests did not finish")


def tokens_of(outputs: list[RequestOutput], index: int = 0) -> list[int]:
    return [t for o in outputs if o.index == index for t in o.token_ids]


def text_of(outputs: list[RequestOutput], index: int = 0) -> str:
    return "".join(o.text for o in outputs if o.index == index)


def random_prompt(length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50000, (length,), generator=gen).tolist()


def record_schedules(engine: Engine) -> list[SchedulerOutput]:
    """Every `SchedulerOutput` the engine runs from now on."""
    recorded: list[SchedulerOutput] = []
    schedule = engine.scheduler.schedule

    def recording() -> SchedulerOutput:
        recorded.append(schedule())
        return recorded[-1]

    engine.scheduler.schedule = recording  # type: ignore[method-assign]
    return recorded


def slow_steps(engine: Engine, seconds: float) -> None:
    """Make every engine step take at least `seconds`, so timing-dependent tests are not."""
    real_execute = engine.runner.execute

    def execute(scheduler_output):
        time.sleep(seconds)
        return real_execute(scheduler_output)

    engine.runner.execute = execute


def all_blocks_free(engine: Engine) -> bool:
    """Nothing running or waiting, and every KV block back on the free list."""
    manager = engine.block_manager
    return (
        not engine.has_unfinished_requests()
        and manager.num_free_blocks == manager.num_usable_blocks
    )
