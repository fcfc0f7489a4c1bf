"""`worker/sampler.py` against hand-computed examples: the documented order, logprobs, transfers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch

from gpt2serve import kernels
from gpt2serve.server.core.request import Request
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.worker.sampler import MIN_LOGPROB, Sampler, SamplerOutput

INF = float("inf")
Seen = list[tuple[torch.Tensor, ...]]  # the arguments of each `kernels.sample` call


def make_request(
    prompt: list[int], output: tuple[int, ...] | list[int] = (), eos: int | None = None,
    **params: object,
) -> Request:  # fmt: skip
    request = Request("r", list(prompt), SamplingParams(**params), eos_token_id=eos)
    for token_id in output:
        request.append_output_token(token_id)
    return request


def run(rows: list[list[float]], requests: list[Request]) -> SamplerOutput:
    logits = torch.tensor(rows, dtype=torch.float32)  # [num_seqs, vocab]
    return Sampler(logits.shape[1], torch.device("cpu"))(logits, requests)


@pytest.fixture
def seen_by_kernel(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """What `kernels.sample` receives: the processed logits and the per-row controls."""
    calls: list[tuple[torch.Tensor, ...]] = []
    real_sample = kernels.sample

    def spy(*args: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(a.clone() for a in args))
        return real_sample(*args)

    monkeypatch.setattr(kernels, "sample", spy)
    return calls


def test_bias_then_repetition_then_presence_frequency(seen_by_kernel: Seen) -> None:
    # prompt {0, 1, 5}, output 1 once and 2 twice; logit_bias first, so token 0's -1.0
    # becomes +1.0 and is then *divided* (0.5); penalty-then-bias would give 0.0.
    penalized = make_request(
        [0, 1, 5], [1, 2, 2], temperature=0.0, logit_bias={0: 2.0, 3: -0.5},
        repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25,
    )  # fmt: skip
    untouched = make_request([0, 1, 2, 3, 4], [0, 1], temperature=0.0)
    raw = [[-1.0, 3.0, 4.0, 2.4, 0.2, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]]
    out = run(raw, [penalized, untouched])
    (logits, *_), *_ = seen_by_kernel
    expected = [
        [
            (-1.0 + 2.0) / 2,  # bias, then seen in the prompt: positive, divided
            3.0 / 2 - 0.5 - 0.25 * 1,  # in the output once
            4.0 / 2 - 0.5 - 0.25 * 2,  # twice: presence once, frequency twice
            2.4 - 0.5,  # bias only (unseen)
            0.2,  # untouched
            -1.0 * 2,  # seen in the prompt: negative, multiplied
        ],
        raw[1],  # a row without controls passes through unchanged
    ]
    torch.testing.assert_close(logits, torch.tensor(expected), rtol=0, atol=1e-6)
    assert out.token_ids == [3, 5]
    assert out.logprobs == [None, None]


def test_bans_come_after_penalties(seen_by_kernel: Seen) -> None:
    # Sequence 4 2 4: the bigram (4, 2) exists, so 2 is banned next; min_tokens=2 with one
    # output token bans EOS (5) and the stop id (3).
    request = make_request(
        [4, 2], [4], eos=5, temperature=0.0, no_repeat_ngram_size=2, min_tokens=2,
        stop_token_ids=[3], repetition_penalty=2.0,
    )  # fmt: skip
    out = run([[1.0, 0.5, 9.0, 9.0, 3.0, 9.0]], [request])
    (logits, *_), *_ = seen_by_kernel
    expected = torch.tensor([[1.0, 0.5, -INF, -INF, 3.0 / 2, -INF]])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    assert out.token_ids == [4]


@pytest.mark.parametrize(
    ("penalty", "expected_row"),
    [
        # Presence: a flat 0.5 off every *output* token, however often it appeared.
        ({"presence_penalty": 0.5}, [1.0, 2.0 - 0.5, 3.0 - 0.5, 4.5]),
        # Frequency: 0.5 per occurrence in the output.
        ({"frequency_penalty": 0.5}, [1.0, 2.0 - 0.5 * 3, 3.0 - 0.5 * 1, 4.5]),
        # Negative values reward instead.
        ({"presence_penalty": -1.0}, [1.0, 2.0 + 1.0, 3.0 + 1.0, 4.5]),
        ({"frequency_penalty": -1.0}, [1.0, 2.0 + 3.0, 3.0 + 1.0, 4.5]),
    ],
)
def test_presence_and_frequency_alone(
    seen_by_kernel: Seen,
    penalty: dict[str, float],
    expected_row: list[float],
) -> None:
    # Tokens 0 and 3 are only in the prompt: OpenAI's penalties ignore the prompt.
    request = make_request([0, 3], [1, 1, 2, 1], temperature=0.0, **penalty)
    out = run([[1.0, 2.0, 3.0, 4.5]], [request])
    (logits, *_), *_ = seen_by_kernel
    torch.testing.assert_close(logits, torch.tensor([expected_row]), rtol=0, atol=1e-6)
    assert out.token_ids == [max(range(4), key=lambda t: expected_row[t])]


def test_controls_reach_the_kernel_per_row(seen_by_kernel: Seen) -> None:
    requests = [
        make_request([0], temperature=0.7, top_k=3, top_p=0.9, min_p=0.05, seed=1),
        make_request([0], temperature=0.0, top_k=50, seed=2),  # top_k >= vocab is "off"
    ]
    run([[0.0] * 8, [0.0] * 8], requests)
    ((_, temperature, top_k, top_p, min_p, uniform),) = seen_by_kernel
    assert temperature.tolist() == pytest.approx([0.7, 0.0])
    assert top_k.tolist() == [3, 0]
    assert top_p.tolist() == pytest.approx([0.9, 1.0])
    assert min_p.tolist() == pytest.approx([0.05, 0.0])
    assert uniform.shape == (2,) and uniform[0] != uniform[1]  # each row's own seed


def test_logprobs_come_from_the_unmodified_distribution() -> None:
    raw = [0.1, 0.5, 2.0, -1.0, 0.3]
    request = make_request(
        [2, 1], [2], temperature=0.8, logit_bias={3: 100.0}, repetition_penalty=1.5,
        presence_penalty=1.0, logprobs=2, seed=5,
    )  # fmt: skip
    out = run([raw], [request])
    reference = torch.log_softmax(torch.tensor(raw), dim=-1).tolist()
    assert out.token_ids == [3]  # the bias forces the token...
    (entry,) = out.logprobs
    assert entry.token_id == 3
    assert entry.logprob == pytest.approx(reference[3], abs=1e-6)  # ...not its reported logprob
    assert reference[3] < -3.0
    assert [t for t, _ in entry.top] == [2, 1]  # the raw ranking, not the penalized one
    assert [lp for _, lp in entry.top] == pytest.approx([reference[2], reference[1]], abs=1e-6)


def test_non_finite_logprobs_never_reach_json() -> None:
    nan = float("nan")
    rows = [
        [-INF, -INF, 1.0, 0.0, -INF, -INF],  # impossible tokens: log-prob -inf
        [nan, 1.0, 0.5, 0.0, 0.0, 0.0],  # a NaN poisons the whole log-softmax row
        [-INF] * 6,  # nothing possible at all: NaN everywhere
    ]
    requests = [make_request([0], temperature=0.0, logprobs=5) for _ in rows]
    out = run(rows, requests)
    first, poisoned, empty = out.logprobs
    assert out.token_ids[0] == 2 and out.token_ids[1] == 1
    assert first.logprob == pytest.approx(-math.log(1 + math.exp(-1.0)), abs=1e-6)
    assert [lp for _, lp in first.top][2:] == [MIN_LOGPROB] * 3
    assert poisoned.logprob == MIN_LOGPROB and empty.logprob == MIN_LOGPROB
    assert all(lp == MIN_LOGPROB for entry in (poisoned, empty) for _, lp in entry.top)
    values = [(e.logprob, e.top) for e in out.logprobs]
    json.dumps(values, allow_nan=False)  # raises ValueError on any NaN or infinity


def count_host_transfers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of tensor -> Python conversions made outside `kernels.sample` (kernels' own)."""
    transfers: list[str] = []
    in_kernel = [False]
    for name in ("tolist", "item", "__int__", "__float__", "__bool__", "cpu", "numpy"):
        real: Callable = getattr(torch.Tensor, name)

        def counted(
            self: torch.Tensor, *args: object, _real: Callable = real, _name: str = name,
            **kwargs: object,
        ) -> object:  # fmt: skip
            if not in_kernel[0]:
                transfers.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_sample = kernels.sample

    def sample_uncounted(*args: torch.Tensor) -> torch.Tensor:
        in_kernel[0] = True
        try:
            return real_sample(*args)
        finally:
            in_kernel[0] = False

    monkeypatch.setattr(kernels, "sample", sample_uncounted)
    return transfers


@pytest.mark.parametrize("logprobs", [None, 0, 3])
def test_one_host_transfer_per_step(monkeypatch: pytest.MonkeyPatch, logprobs: int | None) -> None:
    requests = [
        make_request([1, 2], [3], temperature=0.0, logprobs=logprobs, logit_bias={4: 1.0}),
        make_request([1, 2, 1], [2], eos=0, min_tokens=3, no_repeat_ngram_size=2, seed=3),
        make_request([5], [5, 5], repetition_penalty=1.3, logprobs=logprobs, top_p=0.9),
    ]
    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))  # [3, 16]
    sampler = Sampler(16, torch.device("cpu"))
    transfers = count_host_transfers(monkeypatch)
    out = sampler(logits, requests)
    assert transfers == ["tolist"]
    assert len(out.token_ids) == 3 and all(isinstance(t, int) for t in out.token_ids)
    if logprobs is None:
        assert out.logprobs == [None, None, None]
        return
    assert out.logprobs[1] is None and len(out.logprobs[2].top) == logprobs
    assert [e.token_id for e in (out.logprobs[0], out.logprobs[2])] == out.token_ids[::2]
