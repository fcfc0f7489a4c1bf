"""Triton logit bias, penalties and chosen-token logprobs against the torch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from gpt2serve import kernels
from gpt2serve.kernels import reference
from gpt2serve.kernels.logprobs import chosen_logprobs
from gpt2serve.kernels.penalties import add_logit_bias, apply_penalties


def token_lists(num_seqs: int, vocab: int, max_len: int, seed: int) -> torch.Tensor:
    """[num_seqs, max_len] ids with repeats; ragged (row 0 empty), padded with `vocab`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, max(2, vocab // 4), (num_seqs, max_len), generator=gen)  # repeats
    lengths = torch.randint(0, max_len + 1, (num_seqs,), generator=gen)
    lengths[0] = 0
    padding = torch.arange(max_len)[None, :] >= lengths[:, None]  # [num_seqs, max_len]
    return ids.masked_fill(padding, vocab)


def penalty_params(num_seqs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    repetition = 0.5 + 1.5 * torch.rand(num_seqs, generator=gen)
    presence = 2 * torch.rand(num_seqs, generator=gen) - 1
    frequency = 2 * torch.rand(num_seqs, generator=gen) - 1
    repetition[::3], presence[::3], frequency[::3] = 1.0, 0.0, 0.0  # rows that opt out
    return repetition, presence, frequency


@pytest.mark.parametrize(
    ("num_seqs", "vocab", "prompt_len", "output_len"),
    [(1, 50, 7, 3), (5, 97, 33, 0), (9, 1000, 64, 40), (3, 5000, 1, 130)],
)
def test_penalties_match_reference(device, num_seqs, vocab, prompt_len, output_len) -> None:
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(num_seqs, vocab, generator=gen) * 3  # [num_seqs, vocab]
    prompt = token_lists(num_seqs, vocab, prompt_len, seed=1)
    output = token_lists(num_seqs, vocab, output_len, seed=2)
    params = penalty_params(num_seqs, seed=3)
    expected = reference.apply_penalties(logits.clone(), prompt, output, *params)
    moved = [t.to(device) for t in (logits.clone(), prompt, output, *params)]
    actual = apply_penalties(*moved)
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-6, rtol=1e-6)
    assert actual.data_ptr() == moved[0].data_ptr(), "penalties are applied in place"


def test_penalties_hand_computed(device) -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]], device=device)
    prompt = torch.tensor([[0, 1, 5]], device=device)  # 5 = padding (vocab)
    output = torch.tensor([[3, 3, 2, 5]], device=device)
    one = lambda value: torch.tensor([value], device=device)
    out = apply_penalties(logits, prompt, output, one(2.0), one(0.5), one(0.25))
    # token 0 prompt, positive: 2/2; token 1 prompt, negative: -1*2; token 2 once:
    # 0.5/2 - 0.25 - 0.5; token 3 twice: 3/2 - 0.5 - 0.5; token 4 unseen.
    expected = torch.tensor([[1.0, -2.0, -0.5, 0.5, -2.0]])
    torch.testing.assert_close(out.cpu(), expected)


def test_logit_bias_matches_reference_and_skips_other_entries(device) -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 300, generator=gen)
    rows = torch.tensor([0, 0, 2, 3, 3, 3])
    ids = torch.tensor([5, 299, 0, 7, 8, 150])
    values = torch.tensor([100.0, -100.0, 3.5, -0.25, 1.0, 42.0])
    expected = logits.clone()
    reference.add_logit_bias(expected, rows, ids, values)
    actual = logits.clone().to(device)
    add_logit_bias(actual, rows.to(device), ids.to(device), values.to(device))
    torch.testing.assert_close(actual.cpu(), expected)
    changed = (actual.cpu() != logits).nonzero().tolist()
    assert sorted(changed) == sorted(map(list, zip(rows.tolist(), ids.tolist(), strict=True)))


def test_empty_inputs_are_no_ops(device) -> None:
    logits = torch.randn(2, 30).to(device)
    before = logits.clone()
    empty_ids = torch.zeros(2, 0, dtype=torch.int64, device=device)
    ones, zeros = torch.ones(2, device=device), torch.zeros(2, device=device)
    apply_penalties(logits, empty_ids, empty_ids, 3 * ones, ones, ones)
    assert torch.equal(logits, before), "nothing seen: no penalty applies"
    none = torch.zeros(0, dtype=torch.int64, device=device)
    add_logit_bias(logits, none, none, torch.zeros(0, device=device))
    assert torch.equal(logits, before)
    assert chosen_logprobs(logits[:0], none).shape == (0,)
    assert apply_penalties(logits[:0], empty_ids[:0], empty_ids[:0], *(t[:0] for t in
                           (ones, zeros, zeros))).shape == (0, 30)  # fmt: skip


@pytest.mark.parametrize(("num_seqs", "vocab"), [(1, 10), (7, 333), (3, 9000)])
def test_chosen_logprobs_match_reference(device, num_seqs, vocab) -> None:
    gen = torch.Generator().manual_seed(num_seqs)
    logits = torch.randn(num_seqs, vocab, generator=gen) * 5
    logits[0, : vocab // 2] = float("-inf")  # banned tokens: excluded, never NaN
    token_ids = torch.randint(vocab // 2, vocab, (num_seqs,), generator=gen)
    expected = reference.chosen_logprobs(logits, token_ids)
    actual = chosen_logprobs(logits.to(device), token_ids.to(device)).cpu()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert bool((actual <= 0).all())


def test_chosen_logprobs_half_precision_and_banned_choice(device) -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]], dtype=torch.float16)
    out = chosen_logprobs(logits.to(device), torch.tensor([3, 2][:1], device=device)).cpu()
    assert out[0] == float("-inf"), "a banned token has logprob -inf, not NaN"
    out = chosen_logprobs(logits.to(device), torch.tensor([2], device=device)).cpu()
    expected = torch.log_softmax(logits.float(), dim=-1)[0, 2]
    torch.testing.assert_close(out[0], expected, atol=1e-3, rtol=1e-3)


def test_launchers_reject_bad_inputs(device) -> None:
    logits = torch.randn(3, 20, device=device)
    ids = torch.zeros(3, 2, dtype=torch.int64, device=device)
    ones = torch.ones(3, device=device)
    with pytest.raises(ValueError, match="presence_penalty"):
        apply_penalties(logits, ids, ids, ones, ones[:2], ones)
    with pytest.raises(ValueError, match="output_token_ids"):
        apply_penalties(logits, ids, ids[:2], ones, ones, ones)
    with pytest.raises(ValueError, match="float32"):
        apply_penalties(logits.half(), ids, ids, ones, ones, ones)
    with pytest.raises(ValueError, match="bias_values"):
        add_logit_bias(logits, ids[:, 0], ids[:, 0], ones[:2])
    with pytest.raises(ValueError, match="token_ids"):
        chosen_logprobs(logits, ids[:2, 0])


def test_dispatch_keeps_cpu_tensors_on_the_reference() -> None:
    logits = torch.randn(2, 11)
    tokens = torch.tensor([1, 10])
    assert not kernels.triton_enabled(logits.device)
    torch.testing.assert_close(
        kernels.chosen_logprobs(logits, tokens), reference.chosen_logprobs(logits, tokens)
    )


@pytest.mark.gpu
def test_gpu_penalties_and_logprobs_at_gpt2_vocab() -> None:
    num_seqs, vocab = 256, 50257
    logits = torch.randn(num_seqs, vocab) * 4
    prompt = token_lists(num_seqs, vocab, 128, seed=5)
    output = token_lists(num_seqs, vocab, 128, seed=6)
    params = penalty_params(num_seqs, seed=7)
    expected = reference.apply_penalties(logits.clone(), prompt, output, *params)
    cuda = [t.cuda() for t in (logits.clone(), prompt, output, *params)]
    torch.testing.assert_close(kernels.apply_penalties(*cuda).cpu(), expected)
    tokens = torch.randint(0, vocab, (num_seqs,))
    torch.testing.assert_close(
        kernels.chosen_logprobs(logits.cuda(), tokens.cuda()).cpu(),
        reference.chosen_logprobs(logits, tokens),
        atol=1e-5,
        rtol=1e-5,
    )
