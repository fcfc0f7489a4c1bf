"""AsyncEngine: streaming from the engine thread, cancellation, and engine death."""

from __future__ import annotations

import asyncio

import pytest

from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.async_engine import AsyncEngine, EngineDeadError
from support.engine_driver import random_prompt


@pytest.fixture
def async_engine(make_engine):
    engine = AsyncEngine(make_engine(num_blocks=64))
    engine.start()
    yield engine
    engine.shutdown()


async def collect(engine: AsyncEngine, prompt: list[int], params: SamplingParams):
    checked = engine.engine.request_limits.check(prompt, params)
    return [out async for out in engine.generate(checked)]


def test_concurrent_generate_streams_every_token(async_engine) -> None:
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)

    async def main():
        return await asyncio.gather(
            *(collect(async_engine, random_prompt(5 + i, i), params) for i in range(8))
        )

    results = asyncio.run(main())
    for outputs in results:
        assert [len(o.token_ids) for o in outputs] == [1] * 10
        assert outputs[-1].finished and outputs[-1].finish_reason == "length"
        assert not any(o.finished for o in outputs[:-1])


def test_n_choices_arrive_on_one_stream(async_engine) -> None:
    params = SamplingParams(max_tokens=4, n=3, seed=1, ignore_eos=True)
    outputs = asyncio.run(collect(async_engine, random_prompt(6, 1), params))
    assert sorted({o.index for o in outputs}) == [0, 1, 2]
    assert sum(o.finished for o in outputs) == 3


def test_leaving_the_stream_aborts_and_frees_blocks(async_engine) -> None:
    params = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)

    async def main():
        checked = async_engine.engine.request_limits.check(random_prompt(30, 2), params)
        stream = async_engine.generate(checked)
        count = 0
        async for _ in stream:
            count += 1
            if count == 3:
                break
        await stream.aclose()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not async_engine.engine.has_unfinished_requests():
                break

    asyncio.run(main())
    manager = async_engine.engine.block_manager
    assert not async_engine.engine.has_unfinished_requests()
    assert manager.num_free_blocks == manager.num_usable_blocks


def test_engine_death_fails_in_flight_requests(make_engine) -> None:
    engine = make_engine(num_blocks=64)
    async_engine = AsyncEngine(engine)
    async_engine.start()
    calls = {"n": 0}
    real_execute = engine.runner.execute

    def failing_execute(scheduler_output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated CUDA failure")
        return real_execute(scheduler_output)

    engine.runner.execute = failing_execute
    params = SamplingParams(max_tokens=50, ignore_eos=True)

    async def main():
        return await asyncio.gather(
            *(collect(async_engine, random_prompt(5, i), params) for i in range(3)),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert all(isinstance(r, EngineDeadError) for r in results)
    assert "RuntimeError" in str(results[0])
    assert not async_engine.is_alive

    async def after_death():
        return await collect(async_engine, random_prompt(5, 9), params)

    with pytest.raises(EngineDeadError):
        asyncio.run(after_death())
    async_engine.shutdown()
