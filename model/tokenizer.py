"""GPT-2 byte-level BPE via tiktoken, and an incremental detokenizer safe for UTF-8."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import tiktoken

EOS_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenization pattern (the one tiktoken's r50k_base uses).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerLoadError(RuntimeError):
    """The tokenizer data could not be found or read."""


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


class Tokenizer:
    """GPT-2 tokenizer: encode text, decode ids, per-token bytes for streaming."""

    def __init__(self, encoding: tiktoken.Encoding, eos_token_id: int) -> None:
        self.encoding = encoding
        self.eos_token_id = eos_token_id
        self.vocab_size = encoding.n_vocab
        self.special_ids = frozenset(encoding._special_tokens.values())
        # Per-token bytes, cached: the hot path of streaming detokenization.
        self._token_bytes = [encoding.decode_single_token_bytes(i) for i in range(self.vocab_size)]

    @classmethod
    def from_tiktoken(cls) -> Tokenizer:
        """tiktoken's `r50k_base` (GPT-2's vocabulary), downloaded once and then cached."""
        try:
            encoding = tiktoken.get_encoding("r50k_base")
        except Exception as exc:  # network errors surface as many types
            raise TokenizerLoadError(
                "cannot load tiktoken's GPT-2 encoding (r50k_base): no network and no cached "
                "copy; set TIKTOKEN_CACHE_DIR to a directory holding it, or use a model "
                f"directory with vocab.json + merges.txt ({type(exc).__name__}: {exc})"
            ) from exc
        return cls(encoding, encoding.eot_token)

    @classmethod
    def from_files(cls, vocab_json: Path, merges_txt: Path) -> Tokenizer:
        """An HF GPT-2 `vocab.json` (+ `merges.txt`, whose order the vocab ids already encode)."""
        try:
            vocab: dict[str, int] = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
            if not Path(merges_txt).is_file():
                raise FileNotFoundError(merges_txt)
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenizerLoadError(f"cannot read tokenizer files: {exc}") from exc
        decoder = _byte_decoder()
        eos_id = vocab.get(EOS_TOKEN)
        ranks = {
            bytes(decoder[ch] for ch in token): rank
            for token, rank in vocab.items()
            if token != EOS_TOKEN
        }
        specials = {EOS_TOKEN: eos_id} if eos_id is not None else {}
        encoding = tiktoken.Encoding(
            name=f"gpt2-{Path(vocab_json).parent.name}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        return cls(encoding, eos_id if eos_id is not None else len(ranks))

    @classmethod
    def for_model_dir(cls, model_dir: Path | None) -> Tokenizer:
        """vocab.json + merges.txt from the model directory when present, else tiktoken."""
        if model_dir is not None:
            vocab, merges = Path(model_dir) / "vocab.json", Path(model_dir) / "merges.txt"
            if vocab.is_file() and merges.is_file():
                return cls.from_files(vocab, merges)
        return cls.from_tiktoken()

    def encode(self, text: str) -> list[int]:
        """Token ids; `<|endoftext|>` in user text is ordinary text, never the special token."""
        return self.encoding.encode(text, disallowed_special=())

    def decode_bytes(self, token_ids: list[int]) -> bytes:
        """The raw bytes of these tokens."""
        return b"".join(self.token_bytes(t) for t in token_ids)

    def decode(self, token_ids: list[int]) -> str:
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
    (special tokens aside when `skip_special`), because the incremental UTF-8 decoder uses
    the same replacement rules as a one-shot decode.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def add(self, token_id: int) -> str:
        """Feed one token; returns the newly completed text (possibly empty)."""
        if self.skip_special and self.tokenizer.is_special(token_id):
            return ""
        delta = self._decoder.decode(self.tokenizer.token_bytes(token_id))
        self.text += delta
        return delta

    def add_tokens(self, token_ids: list[int]) -> str:
        """Feed several tokens."""
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """Release whatever is held back (an incomplete sequence becomes U+FFFD)."""
        delta = self._decoder.decode(b"", final=True)
        self.text += delta
        return delta
