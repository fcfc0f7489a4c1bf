"""GPT-2 tokenizer: known ids, round trips, file-based vocab, streaming detokenization."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tiktoken

from gpt2serve.model.tokenizer import IncrementalDetokenizer, Tokenizer, TokenizerLoadError

REPO_ROOT = Path(__file__).resolve().parents[2]
# CI clones the repo anywhere, with shared/ beside it.
HF_DIR = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
needs_hf_files = pytest.mark.skipif(
    not (HF_DIR / "vocab.json").is_file(), reason=f"{HF_DIR} (vocab.json + merges.txt) missing"
)

CORPUS = (
    "Hello world! The quick brown fox jumps over the lazy dog. 1234567890 3.14159 -42 1e-9\n"
    "Ünïcödé àccents, naïve café, Ærøskøbing, Zürich; emoji 🤗🚀👍🏽👨‍👩‍👧 and CJK 日本語の文章 "
    "한국어 中文. Ελληνικά, русский, עברית, العربية, हिन्दी.\n"
    "\tTabs, multiple   spaces,\r\nwindows newlines;\n\n\n"
    "code: def f(x):\n    return x ** 2  # ok\n"
    "Contractions: don't, I'll, we've, they're, she'd, it's, I'm. <|endoftext|> is plain text.\n"
    "Math: ∑ᵢ xᵢ² ≤ ∞; arrows → ← ⇒; quotes “smart” ‘single’ — dash – en.\n"
    'JSON {"a": [1, 2.5, null], "b": "x\\ny"} <html><br/></html> https://example.com/?q=1&r=2 '
    "trailing spaces   \n   \n"
)
MULTIBYTE = "emoji 🤗 and 日本語 and 👍🏽! Ærø → ∞"


def test_known_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode(" the") == [262]
    assert tokenizer.eos_token_id == 50256 and tokenizer.vocab_size == 50257
    assert tokenizer.is_special(50256) and not tokenizer.is_special(262)
    assert tokenizer.token_bytes(262) == b" the"
    assert tokenizer.decode_bytes([15496, 995]) == b"Hello world"


@pytest.mark.parametrize(
    "text",
    [
        CORPUS,
        *CORPUS.splitlines(keepends=True),
        "",
        " ",
        "\n\n\n",
        "\t\t x",
        "🤗",
        "日本語",
        MULTIBYTE,
    ],
)
def test_round_trip(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_endoftext_in_text_is_the_special_token_as_in_hf(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("<|endoftext|>") == [50256]  # HF GPT2TokenizerFast: [50256]
    assert tokenizer.encode("a <|endoftext|> b").count(50256) == 1
    as_text = tokenizer.encode("a <|endoftext|> b", split_special_tokens=True)
    assert 50256 not in as_text and tokenizer.decode(as_text) == "a <|endoftext|> b"
    assert tokenizer.decode([50256]) == "<|endoftext|>"


def test_decode_replaces_invalid_utf8_like_hf(tokenizer: Tokenizer) -> None:
    halves = [i for i in tokenizer.encode("🤗") if not _is_whole_utf8(tokenizer.token_bytes(i))]
    assert halves
    assert tokenizer.decode(halves[:1]) == tokenizer.token_bytes(halves[0]).decode(
        "utf-8", errors="replace"
    )
    assert "\ufffd" in tokenizer.decode(halves[:1])


def test_out_of_range_id_is_an_error(tokenizer: Tokenizer) -> None:
    for bad in (50257, -1, 10**9):
        with pytest.raises(ValueError, match="outside"):
            tokenizer.decode([bad])
        with pytest.raises(ValueError, match="outside"):
            tokenizer.token_bytes(bad)
        with pytest.raises(ValueError, match="outside"):
            IncrementalDetokenizer(tokenizer).add(bad)


def test_offline_without_cache_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> tiktoken.Encoding:
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerLoadError, match="TIKTOKEN_CACHE_DIR"):
        Tokenizer.from_tiktoken()


def test_model_dir_without_tokenizer_files_uses_tiktoken(tmp_path: Path) -> None:
    assert Tokenizer.for_model_dir(None).encode("Hello world") == [15496, 995]
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing: not a usable pair
    assert Tokenizer.for_model_dir(tmp_path).encode("Hello world") == [15496, 995]


@pytest.fixture(scope="module")
def hf_tokenizer() -> Tokenizer:
    return Tokenizer.from_files(HF_DIR / "vocab.json", HF_DIR / "merges.txt")


@needs_hf_files
def test_vocab_and_merges_files_match_tiktoken(
    tokenizer: Tokenizer, hf_tokenizer: Tokenizer
) -> None:
    assert hf_tokenizer.eos_token_id == 50256 and hf_tokenizer.vocab_size == 50257
    assert hf_tokenizer.special_ids == tokenizer.special_ids
    samples = [CORPUS, *CORPUS.split(" "), " " * 40 + "x", "\n\n x", "a  \t\n b", "12345678901"]
    rng = random.Random(1)
    samples += ["".join(rng.choice(CORPUS) for _ in range(60)) for _ in range(50)]
    for text in samples:
        assert hf_tokenizer.encode(text) == tokenizer.encode(text), repr(text)
    assert hf_tokenizer._token_bytes == tokenizer._token_bytes
    assert Tokenizer.for_model_dir(HF_DIR).encode(CORPUS) == tokenizer.encode(CORPUS)


@needs_hf_files
def test_bad_tokenizer_files_are_load_errors(tmp_path: Path) -> None:
    vocab = json.loads((HF_DIR / "vocab.json").read_text(encoding="utf-8"))
    merges = (HF_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    good_vocab, good_merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    good_vocab.write_text(json.dumps(vocab), encoding="utf-8")
    # Swapped merges: tiktoken's rank order would no longer be HF's merge order.
    good_merges.write_text("\n".join([merges[0], merges[2], merges[1], *merges[3:]]))
    with pytest.raises(TokenizerLoadError, match="merge"):
        Tokenizer.from_files(good_vocab, good_merges)
    no_eos = tmp_path / "no_eos.json"
    no_eos.write_text(json.dumps({k: v for k, v in vocab.items() if k != "<|endoftext|>"}))
    with pytest.raises(TokenizerLoadError, match="endoftext"):
        Tokenizer.from_files(no_eos, HF_DIR / "merges.txt")
    with pytest.raises(TokenizerLoadError, match="cannot read"):
        Tokenizer.from_files(tmp_path / "absent.json", HF_DIR / "merges.txt")


def test_incremental_never_emits_half_a_character(tokenizer: Tokenizer) -> None:
    for text in (MULTIBYTE, "🤗", "日本語", CORPUS):
        ids = tokenizer.encode(text, split_special_tokens=True)  # the text back, exactly
        detok = IncrementalDetokenizer(tokenizer)
        deltas = []
        for k, token_id in enumerate(ids, start=1):
            deltas.append(detok.add(token_id))
            # Exactly the complete characters so far: nothing held too long, nothing split.
            assert detok.text.encode() == _complete_prefix(tokenizer.decode_bytes(ids[:k]))
        assert all("\ufffd" not in d for d in deltas)
        assert "".join(deltas) + detok.flush() == text == detok.text
    partial = [
        i for i in tokenizer.encode(MULTIBYTE) if not _is_whole_utf8(tokenizer.token_bytes(i))
    ]
    assert partial, "the sample must contain tokens that split a character"


@pytest.mark.parametrize("pool", ["all", "partial"])
def test_incremental_equals_one_shot_on_random_ids(tokenizer: Tokenizer, pool: str) -> None:
    # "partial": only tokens that are not valid UTF-8 alone, so sequences are held, completed,
    # and proven invalid in every way the decoder can meet.
    ids_pool = list(range(tokenizer.vocab_size))
    if pool == "partial":
        ids_pool = [i for i in ids_pool if not _is_whole_utf8(tokenizer.token_bytes(i))]
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice(ids_pool) for _ in range(rng.randint(1, 30))]
        detok = IncrementalDetokenizer(tokenizer)
        streamed, k = "", 0
        while k < len(ids):  # one token at a time, collecting text at random chunk ends
            step = rng.randint(1, 4)
            streamed += add_all(detok, ids[k : k + step])
            k += step
        streamed += detok.flush()
        expected = tokenizer.decode([i for i in ids if not tokenizer.is_special(i)])
        assert streamed == expected == detok.text


def test_incremental_flush_releases_held_bytes(tokenizer: Tokenizer) -> None:
    first = tokenizer.encode("🤗")[0]
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add(first) == "" and detok.text == ""
    assert detok.flush() == tokenizer.decode([first]) and "\ufffd" in detok.text


def test_incremental_skips_eos(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    assert add_all(detok, [15496, 50256, 995]) == "Hello world"
    keep = IncrementalDetokenizer(tokenizer, skip_special=False)
    assert add_all(keep, [15496, 50256]) == "Hello<|endoftext|>"


def add_all(detok: IncrementalDetokenizer, token_ids: list[int]) -> str:
    """Feed tokens one by one; the text they completed."""
    return "".join(detok.add(t) for t in token_ids)


def _is_whole_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _complete_prefix(raw: bytes) -> bytes:
    """The longest prefix of valid UTF-8 `raw` that ends on a character boundary."""
    for cut in range(4):
        head = raw[: len(raw) - cut]
        if _is_whole_utf8(head):
            return head
    raise AssertionError(f"not a truncated valid UTF-8 string: {raw!r}")
