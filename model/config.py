"""GPT-2 model configuration and the named sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GPT2Config:
    """Shape of a GPT-2 model; field names follow Hugging Face's `config.json`."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def num_parameters(self) -> int:
        """Parameter count (lm_head tied to wte, so counted once)."""
        e, layers = self.n_embd, self.n_layer
        attn = (3 * e * e + 3 * e) + (e * e + e)
        mlp = (4 * e * e + 4 * e) + (4 * e * e + e)
        per_layer = 4 * e + attn + mlp
        return self.vocab_size * e + self.n_positions * e + layers * per_layer + 2 * e

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> GPT2Config:
        """Build from a parsed HF `config.json` (unknown keys ignored)."""
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"model_type {model_type!r} is not supported (only 'gpt2')")
        activation = data.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function {activation!r} is not supported (gelu_new only)")
        if data.get("n_inner") not in (None, 4 * data.get("n_embd", 768)):
            raise ValueError("n_inner other than 4 * n_embd is not supported")
        if data.get("scale_attn_by_inverse_layer_idx") or not data.get("scale_attn_weights", True):
            raise ValueError("only the standard 1/sqrt(head_dim) attention scaling is supported")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` content for this shape."""
        data = asdict(self)
        data.update(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            activation_function="gelu_new",
            n_ctx=self.n_positions,
            n_inner=None,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.02,
            tie_word_embeddings=True,
        )
        return data


NAMED_CONFIGS: dict[str, GPT2Config] = {
    "tiny": GPT2Config(n_embd=64, n_layer=2, n_head=4),
    "gpt2": GPT2Config(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
}


def named_config(name: str) -> GPT2Config:
    """Look up a named size; raises ValueError listing the known names."""
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        known = ", ".join(NAMED_CONFIGS)
        raise ValueError(f"unknown model size {name!r}; known sizes: {known}") from None
