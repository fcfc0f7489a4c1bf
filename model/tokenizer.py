"""GPT-2 byte-level BPE via tiktoken, and an incremental detokenizer safe for UTF-8."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken

EOS_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenization pattern, as in HF and the original encoder.py. tiktoken's r50k_base
# spells it with possessive quantifiers; the two split every string identically.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerLoadError(RuntimeError):
    """The tokenizer data could not be found, read, or used."""


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-ins back to raw bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def _read_vocab(vocab_json: Path) -> dict[str, int]:
    """vocab.json as {token string: id}, or a TokenizerLoadError saying what is wrong."""
    try:
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerLoadError(f"cannot read {vocab_json}: {exc}") from exc
    if not isinstance(vocab, dict) or EOS_TOKEN not in vocab:
        raise TokenizerLoadError(f"{vocab_json} is not a GPT-2 vocab (no {EOS_TOKEN!r} entry)")
    return vocab


def _check_merges(vocab: dict[str, int], merges_txt: Path) -> None:
    """Refuse merges that tiktoken's rank-based BPE would not reproduce.

    tiktoken merges the adjacent pair whose concatenation has the lowest id, so it agrees with
    HF's merge-list BPE only when each merge yields a distinct token whose id grows with the
    merge's position in merges.txt (true of GPT-2: merge i yields id 256 + i).
    """
    try:
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerLoadError(f"cannot read {merges_txt}: {exc}") from exc
    previous = -1
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("#version"):
            continue
        left, _, right = line.partition(" ")
        token_id = vocab.get(left + right, -1)
        if token_id <= previous:
            raise TokenizerLoadError(
                f"{merges_txt}:{number}: merge {line!r} does not yield a vocab token with an id "
                "above the previous merge's; only GPT-2-style vocabularies are supported"
            )
        previous = token_id


class Tokenizer:
    """GPT-2 tokenizer: encode text, decode ids, per-token bytes for streaming."""

    def __init__(self, encoding: tiktoken.Encoding, eos_token_id: int) -> None:
        self.encoding = encoding
        self.eos_token_id = eos_token_id
        self.vocab_size: int = encoding.n_vocab
        self.special_ids = frozenset(
            encoding.encode_single_token(s) for s in encoding.special_tokens_set
        )
        # Per-token bytes, cached: the hot path of streaming detokenization.
        self._token_bytes = [encoding.decode_single_token_bytes(i) for i in range(self.vocab_size)]

    @classmethod
    def from_tiktoken(cls) -> Tokenizer:
        """tiktoken's `r50k_base` (GPT-2's vocabulary), downloaded once and then cached."""
        try:
            encoding = tiktoken.get_encoding("r50k_base")
        except Exception as exc:  # network and cache failures surface as many types
            raise TokenizerLoadError(
                "cannot load tiktoken's GPT-2 encoding (r50k_base): no network and no cached "
                "copy; set TIKTOKEN_CACHE_DIR to a directory holding it, or use a model "
                f"directory with vocab.json + merges.txt ({type(exc).__name__}: {exc})"
            ) from exc
        return cls(encoding, encoding.eot_token)

    @classmethod
    def from_files(cls, vocab_json: Path, merges_txt: Path) -> Tokenizer:
        """An HF GPT-2 byte-level BPE from `vocab.json` + `merges.txt`."""
        vocab = _read_vocab(vocab_json)
        _check_merges(vocab, merges_txt)
        decoder = _byte_decoder()
        eos_id = vocab[EOS_TOKEN]
        try:
            # GPT-2's ids are its merge ranks, so they serve as tiktoken's ranks unchanged.
            ranks = {
                bytes(decoder[ch] for ch in token): rank
                for token, rank in vocab.items()
                if token != EOS_TOKEN
            }
        except KeyError as exc:
            raise TokenizerLoadError(f"{vocab_json}: not byte-level BPE ({exc!r})") from exc
        if any(bytes([b]) not in ranks for b in range(256)):
            raise TokenizerLoadError(f"{vocab_json}: some of the 256 byte tokens are missing")
        encoding = tiktoken.Encoding(
            name=f"gpt2-{Path(vocab_json).parent.name}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOS_TOKEN: eos_id},
        )
        return cls(encoding, eos_id)

    @classmethod
    def for_model_dir(cls, model_dir: Path | None) -> Tokenizer:
        """vocab.json + merges.txt from the model directory when both are present, else tiktoken."""
        if model_dir is not None:
            vocab, merges = Path(model_dir) / "vocab.json", Path(model_dir) / "merges.txt"
            if vocab.is_file() and merges.is_file():
                return cls.from_files(vocab, merges)
        return cls.from_tiktoken()

    def encode(self, text: str, split_special_tokens: bool = False) -> list[int]:
        """Token ids; `<|endoftext|>` in the text is the special token (50256), as in HF and vLLM,
        unless `split_special_tokens` (HF's name) asks to read it as ordinary text."""
        if split_special_tokens:
            return self.encoding.encode(text, disallowed_special=())
        return self.encoding.encode(text, allowed_special="all")

    def decode_bytes(self, token_ids: Iterable[int]) -> bytes:
        """The raw bytes of these tokens."""
        return b"".join([self.token_bytes(t) for t in token_ids])

    def decode(self, token_ids: Iterable[int]) -> str:
        """Text of these tokens; invalid UTF-8 becomes U+FFFD (as HF does)."""
        return self.decode_bytes(token_ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside [0, {self.vocab_size})")
        return self._token_bytes[token_id]

    def is_special(self, token_id: int) -> bool:
        """Whether the id is a special token (GPT-2: only <|endoftext|>)."""
        return token_id in self.special_ids


class IncrementalDetokenizer:
    """Text as tokens arrive; never emits half a UTF-8 character.

    The concatenation of every `add` plus `flush` equals `tokenizer.decode(ids)` exactly
    (special tokens left out when `skip_special`), because Python's incremental UTF-8 decoder
    holds back an incomplete tail and replaces invalid bytes by the same rules as a one-shot
    `bytes.decode(errors="replace")`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Pieces, joined lazily: `self.text += delta` would copy the whole text every token.
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def add(self, token_id: int) -> str:
        """Feed one token; returns the newly completed text (possibly empty)."""
        if self.skip_special and self.tokenizer.is_special(token_id):
            return ""
        delta = self._decoder.decode(self.tokenizer.token_bytes(token_id))
        if delta:
            self._pieces.append(delta)
        return delta

    def flush(self) -> str:
        """Release whatever is held back (an incomplete sequence becomes U+FFFD)."""
        delta = self._decoder.decode(b"", final=True)
        if delta:
            self._pieces.append(delta)
        return delta
