"""The grammar engine: xgrammar compiles a `StructuredOutput` and fills token bitmasks.

Why xgrammar (docs/ARCHITECTURE.md, "Structured output"): it is the default of vLLM and SGLang,
runs on CPU with CUDA-agnostic bitmasks, compiles JSON schema / regex / EBNF into a grammar whose
per-token masks are precomputed, and fills a 50,257-token mask in ~0.1 ms.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gpt2serve import kernels
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.core.structured_output import GrammarError, StructuredOutput

if TYPE_CHECKING:  # imported on first use: it takes seconds, and most servers never need it
    import xgrammar as xgr

# JSON as GPT-2 should write it: compact, with a little whitespace allowed between tokens. Any
# amount would let a weak model wander in whitespace until max_tokens.
MAX_JSON_WHITESPACE = 2
# xgrammar's messages start with "[time] /path/file.cc:line: "; the rest is for the client.
_LOCATION = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


class GrammarBackend:
    """Compiles `StructuredOutput` specs for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        import xgrammar as xgr

        vocab = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.vocab_size = tokenizer.vocab_size
        self.info = xgr.TokenizerInfo(
            vocab, vocab_type=xgr.VocabType.RAW, vocab_size=tokenizer.vocab_size,
            stop_token_ids=[tokenizer.eos_token_id],
        )  # fmt: skip
        # One thread: compiles run on the service's own worker, never on the engine's.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar; `GrammarError` naming the field if it cannot be compiled."""
        try:
            return self._compile(spec)
        except (RuntimeError, ValueError, TypeError) as exc:
            message = _LOCATION.sub("", str(exc).strip().splitlines()[0] if str(exc) else "")
            raise GrammarError(f"invalid {spec.param}: {message}", spec.param) from exc

    def _compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        json_options = {"any_whitespace": True, "max_whitespace_cnt": MAX_JSON_WHITESPACE}
        if spec.kind == "json_object":
            return self.compiler.compile_json_schema('{"type": "object"}', **json_options)
        if spec.kind == "json_schema":
            return self.compiler.compile_json_schema(spec.spec, **json_options)
        if spec.kind == "regex":
            return self.compiler.compile_regex(spec.spec)
        if spec.kind == "choice":
            alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choices)
            return self.compiler.compile_grammar(f"root ::= {alternatives}")
        return self.compiler.compile_grammar(spec.spec)


def new_matcher(compiled: xgr.CompiledGrammar) -> xgr.GrammarMatcher:
    """A fresh matcher: one per sequence, advanced with every token it accepts."""
    import xgrammar as xgr

    return xgr.GrammarMatcher(compiled)


def fork_matcher(matcher: xgr.GrammarMatcher, token_id: int) -> xgr.GrammarMatcher:
    """A beam's child: the parent's matcher state plus `token_id`."""
    child = matcher.fork()
    child.accept_token(token_id)
    return child


def apply_grammar_masks(
    logits: torch.Tensor,  # [num_rows, vocab]: modified in place
    matchers: Sequence[xgr.GrammarMatcher | None],  # one per row; None: unconstrained
) -> None:
    """Forbid every token a row's grammar does not allow next (-inf); free for no grammar."""
    rows = [i for i, m in enumerate(matchers) if m is not None and not m.is_terminated()]
    if not rows:
        return
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[-1])  # [rows, words] int32
    for index, row in enumerate(rows):
        matchers[row].fill_next_token_bitmask(bitmask, index)
    device = logits.device
    kernels.apply_token_bitmask(
        logits,
        bitmask.to(device, non_blocking=True),
        torch.tensor(rows, dtype=torch.int64, device=device),
    )
