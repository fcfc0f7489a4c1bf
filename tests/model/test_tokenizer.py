"""GPT-2 tokenizer: known ids, round trips, file-based vocab, streaming detokenization."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from model.tokenizer import IncrementalDetokenizer, Tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CORPUS = (
    "Hello world! The quick brown fox jumps over the lazy dog. 1234567890 3.14159\n"
    "Ünïcödé àccents, naïve café; emoji 🤗🚀👍🏽 and CJK 日本語の文章 한국어 中文.\n"
    "\tTabs, multiple   spaces,\r\nwindows newlines; code: def f(x):\n    return x ** 2  # ok\n"
    "Contractions: don't, I'll, we've, they're, she'd. <|endoftext|> is plain text here.\n"
    "Math: ∑ᵢ xᵢ² ≤ ∞; arrows → ← ⇒; quotes “smart” ‘single’ — dash – en.\n"
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_tiktoken()


def test_known_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode(" the") == [262]
    assert tokenizer.eos_token_id == 50256 and tokenizer.vocab_size == 50257
    assert tokenizer.is_special(50256) and not tokenizer.is_special(262)


def test_round_trip(tokenizer: Tokenizer) -> None:
    for line in [*CORPUS.splitlines(keepends=True), CORPUS, "", " ", "\n\n\n", "🤗"]:
        assert tokenizer.decode(tokenizer.encode(line)) == line


def test_endoftext_in_user_text_is_not_special(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<|endoftext|>")
    assert 50256 not in ids and tokenizer.decode(ids) == "<|endoftext|>"


@pytest.mark.skipif(
    not (SHARED / "gpt2-tokenizer").is_dir(), reason="shared/gpt2-tokenizer missing"
)
def test_vocab_and_merges_files_match_tiktoken(tokenizer: Tokenizer) -> None:
    folder = SHARED / "gpt2-tokenizer"
    from_files = Tokenizer.from_files(folder / "vocab.json", folder / "merges.txt")
    assert from_files.eos_token_id == 50256
    assert from_files.encode(CORPUS) == tokenizer.encode(CORPUS)
    assert Tokenizer.for_model_dir(folder).encode(CORPUS) == tokenizer.encode(CORPUS)


def test_out_of_range_id_is_an_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([50257])
    with pytest.raises(ValueError, match="outside"):
        tokenizer.token_bytes(-1)


def test_incremental_never_emits_half_a_character(tokenizer: Tokenizer) -> None:
    text = "emoji 🤗 and 日本語 and 👍🏽!"
    ids = tokenizer.encode(text)
    partial = [i for i in ids if not _is_whole_utf8(tokenizer.token_bytes(i))]
    assert partial, "the sample must contain tokens that split a character"
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.flush() == text == detok.text


def test_incremental_equals_one_shot_on_random_ids(tokenizer: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(50256) for _ in range(rng.randint(1, 30))]
        detok = IncrementalDetokenizer(tokenizer)
        streamed = "".join(detok.add(i) for i in ids) + detok.flush()
        assert streamed == tokenizer.decode(ids)


def test_incremental_skips_eos(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add_tokens([15496, 50256, 995]) == "Hello world"
    keep = IncrementalDetokenizer(tokenizer, skip_special=False)
    assert keep.add_tokens([15496, 50256]) == "Hello<|endoftext|>"


def _is_whole_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
