"""GPT-2 over the paged cache against Hugging Face transformers on the same random weights."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from gpt2serve.model.attention import build_attention_metadata
from gpt2serve.model.config import named_config
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.weights import load_model

transformers = pytest.importorskip("transformers")

BLOCK_SIZE = 16
NUM_BLOCKS = 64
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-2 (tiny shape) saved by transformers itself, in safetensors."""
    cfg = named_config("tiny")
    hf_config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
    )
    torch.manual_seed(1234)
    hf_model = transformers.GPT2LMHeadModel(hf_config)
    # Larger-than-default weights make logits spread out, so greedy choices are decisive.
    with torch.no_grad():
        for param in hf_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path_factory.mktemp("hf_tiny")
    hf_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def model(hf_dir: Path) -> GPT2LMHeadModel:
    return load_model(str(hf_dir))


class PagedSequences:
    """Drives our model like the engine would: shuffled block tables, explicit metadata."""

    def __init__(self, model: GPT2LMHeadModel, num_seqs: int, seed: int = 0) -> None:
        self.model = model
        self.kv_cache = model.allocate_kv_cache(NUM_BLOCKS, BLOCK_SIZE)
        free = list(range(1, NUM_BLOCKS))
        random.Random(seed).shuffle(free)
        per_seq = len(free) // num_seqs
        self.block_tables = [free[i * per_seq : (i + 1) * per_seq] for i in range(num_seqs)]
        self.seq_lens = [0] * num_seqs

    @torch.no_grad()
    def step(self, new_tokens: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Feed new tokens for some sequences; returns each one's last-token logits."""
        seq_ids = sorted(new_tokens)
        query_lens = [len(new_tokens[i]) for i in seq_ids]
        for i, q in zip(seq_ids, query_lens, strict=True):
            self.seq_lens[i] += q
        metadata, positions = build_attention_metadata(
            [self.block_tables[i] for i in seq_ids],
            [self.seq_lens[i] for i in seq_ids],
            query_lens,
            BLOCK_SIZE,
        )
        input_ids = torch.tensor([t for i in seq_ids for t in new_tokens[i]])
        last = torch.tensor(query_lens).cumsum(0) - 1
        logits = self.model(input_ids, positions, self.kv_cache, metadata, last)
        return {i: logits[k] for k, i in enumerate(seq_ids)}


def hf_logits(hf_model, token_ids: list[int]) -> torch.Tensor:  # [len, vocab]
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0]


def random_prompt(length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50257, (length,), generator=gen).tolist()


def test_prefill_logits_match_hf(model, hf_model) -> None:
    prompt = random_prompt(37, seed=1)
    seqs = PagedSequences(model, num_seqs=1)
    ours = seqs.step({0: prompt})[0]
    torch.testing.assert_close(ours, hf_logits(hf_model, prompt)[-1], atol=ATOL, rtol=0)


def test_full_prefill_logits_match_hf_at_every_position(model, hf_model) -> None:
    prompt = random_prompt(33, seed=2)
    metadata, positions = build_attention_metadata([[3, 7, 5]], [33], [33], BLOCK_SIZE)
    kv_cache = model.allocate_kv_cache(8, BLOCK_SIZE)
    with torch.no_grad():
        ours = model(torch.tensor(prompt), positions, kv_cache, metadata)
    torch.testing.assert_close(ours, hf_logits(hf_model, prompt), atol=ATOL, rtol=0)


def test_decode_steps_match_hf_and_greedy_is_identical(model, hf_model) -> None:
    prompt = random_prompt(10, seed=3)  # 10 + 32 tokens crosses two block boundaries
    seqs = PagedSequences(model, num_seqs=1)
    logits = seqs.step({0: prompt})[0]
    tokens = list(prompt)
    for _ in range(32):
        reference = hf_logits(hf_model, tokens)[-1]
        torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
        next_token = int(logits.argmax())
        assert next_token == int(reference.argmax())
        tokens.append(next_token)
        logits = seqs.step({0: [next_token]})[0]
    with torch.no_grad():
        hf_greedy = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=50256
        )[0].tolist()
    assert tokens == hf_greedy


def test_ragged_batch_matches_hf(model, hf_model) -> None:
    lengths = [1, 5, 16, 17, 40]
    prompts = [random_prompt(n, seed=10 + n) for n in lengths]
    seqs = PagedSequences(model, num_seqs=len(prompts), seed=7)
    logits = seqs.step(dict(enumerate(prompts)))
    tokens = [list(p) for p in prompts]
    for _ in range(20):
        for i, seq in enumerate(tokens):
            torch.testing.assert_close(logits[i], hf_logits(hf_model, seq)[-1], atol=ATOL, rtol=0)
            seq.append(int(logits[i].argmax()))
        logits = seqs.step({i: [seq[-1]] for i, seq in enumerate(tokens)})


def test_mixed_prefill_and_decode_in_one_batch(model, hf_model) -> None:
    seqs = PagedSequences(model, num_seqs=2, seed=3)
    first = random_prompt(20, seed=20)
    second = random_prompt(31, seed=21)
    token = int(seqs.step({0: first})[0].argmax())
    logits = seqs.step({0: [token], 1: second})  # decode of seq 0 next to prefill of seq 1
    torch.testing.assert_close(
        logits[0], hf_logits(hf_model, [*first, token])[-1], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(logits[1], hf_logits(hf_model, second)[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 16, 25])
def test_chunked_prefill_matches_one_shot(model, chunk: int) -> None:
    prompt = random_prompt(50, seed=30)
    one_shot = PagedSequences(model, num_seqs=1).step({0: prompt})[0]
    seqs = PagedSequences(model, num_seqs=1, seed=5)
    for start in range(0, len(prompt), chunk):
        logits = seqs.step({0: prompt[start : start + chunk]})[0]
    torch.testing.assert_close(logits, one_shot, atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("cpu_attention_kernel", [False, True])
def test_cpu_serving_path_keeps_logits(hf_dir, cpu_attention_kernel: bool) -> None:
    """Packed linears (both row routes) and the C++ decode attention: the plain model's logits."""
    from gpt2serve import kernels
    from gpt2serve.model.cpu_linear import PACKED_FROM_ROWS, optimize_for_cpu

    plain = load_model(str(hf_dir))
    fast = load_model(str(hf_dir))
    assert optimize_for_cpu(fast) == 4 * fast.config.n_layer
    names = {n for n, _ in fast.named_parameters()}
    assert names == {n for n, _ in plain.named_parameters()}
    if cpu_attention_kernel and not kernels.use_cpu_attention_kernel():
        pytest.skip("no C++ toolchain to build the CPU attention kernel")
    try:
        for num_seqs in (PACKED_FROM_ROWS - 2, PACKED_FROM_ROWS + 2):  # both sides of the cutoff
            expected_seqs = PagedSequences(plain, num_seqs=num_seqs, seed=num_seqs)
            actual_seqs = PagedSequences(fast, num_seqs=num_seqs, seed=num_seqs)
            prompts = {i: random_prompt(3 + 17 * i, seed=40 + i) for i in range(num_seqs)}
            for step in range(4):  # the prefill, then three decode steps of the whole batch
                feed = prompts if step == 0 else {i: [100 + step + i] for i in range(num_seqs)}
                expected = expected_seqs.step(feed)
                actual = actual_seqs.step(feed)
                for i in range(num_seqs):
                    torch.testing.assert_close(actual[i], expected[i], atol=1e-4, rtol=0)
    finally:
        kernels.use_cpu_attention_kernel(False)
