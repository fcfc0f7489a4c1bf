"""Load GPT-2 weights: an HF checkpoint directory, a hub id, or `random:<size>`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gpt2serve.model.config import GPT2Config, named_config
from gpt2serve.model.gpt2 import GPT2LMHeadModel

RANDOM_PREFIX = "random:"
# HF's GPT-2 stores these projections as Conv1D ([in, out]); nn.Linear wants [out, in].
_CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# Buffers and tied weights present in some checkpoints that carry no parameters of their own.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_HUB_FILES = ["config.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the file or tensor at fault."""


def load_model(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> GPT2LMHeadModel:
    """Load `spec` (HF directory, hub id or `random:<size>`) onto `device` in `dtype`."""
    if spec.startswith(RANDOM_PREFIX):
        return random_model(named_config(spec[len(RANDOM_PREFIX) :]), device, dtype, seed)
    model_dir = resolve_model_dir(spec)
    config = load_config(model_dir)
    state_dict = convert_hf_state_dict(read_checkpoint(model_dir), config)
    model = _empty_model(config, device, dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(state_dict[name])
    return model.eval()


def resolve_model_dir(spec: str) -> Path:
    """A local directory as is; otherwise a hub id downloaded (or found in the HF cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model directory {spec!r} does not exist")
    return _download_from_hub(spec)


def _download_from_hub(repo_id: str) -> Path:
    """Fetch config, tokenizer files and safetensors (else .bin) weights of a hub repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=[*_HUB_FILES, "*.safetensors*"]))
        if not _has_weights(path):
            path = Path(snapshot_download(repo_id, allow_patterns=[*_HUB_FILES, "*.bin*"]))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"cannot load {repo_id!r}: the Hugging Face hub is unreachable and the model is "
            f"not in the local HF cache; download it once with network access, or pass a "
            f"local checkpoint directory ({exc.__class__.__name__})"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {repo_id!r} from the Hugging Face hub: {exc}") from exc
    return path


def _has_weights(model_dir: Path) -> bool:
    return any(model_dir.glob("*.safetensors")) or (model_dir / "pytorch_model.bin").is_file()


def load_config(model_dir: Path) -> GPT2Config:
    """Parse `config.json` of an HF GPT-2 directory."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} is missing: not a Hugging Face GPT-2 directory")
    try:
        return GPT2Config.from_hf_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} is not a valid GPT-2 config: {exc}") from exc


def read_checkpoint(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory's safetensors file(s), else of `pytorch_model.bin`."""
    safetensor_files = sorted(model_dir.glob("*.safetensors"))
    if safetensor_files:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        tensors: dict[str, torch.Tensor] = {}
        for file in safetensor_files:
            try:
                tensors.update(load_file(str(file)))
            except (SafetensorError, OSError) as exc:
                raise ModelLoadError(f"cannot read weights file {file}: {exc}") from exc
        return tensors
    bin_file = model_dir / "pytorch_model.bin"
    if not bin_file.is_file():
        raise ModelLoadError(
            f"no weights in {model_dir}: expected model.safetensors or pytorch_model.bin"
        )
    try:
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt pickle/zip
        raise ModelLoadError(f"cannot read weights file {bin_file}: {exc}") from exc


def convert_hf_state_dict(
    hf_tensors: dict[str, torch.Tensor], config: GPT2Config
) -> dict[str, torch.Tensor]:
    """Map HF names and layouts onto ours, checking every tensor's presence and shape."""
    expected = {
        name: p.shape for name, p in _empty_model(config, "meta", torch.float32).named_parameters()
    }
    converted: dict[str, torch.Tensor] = {}
    for raw_name, tensor in hf_tensors.items():
        if raw_name.endswith(_IGNORED_SUFFIXES) or raw_name == "lm_head.weight":
            continue
        name = raw_name if raw_name.startswith("transformer.") else f"transformer.{raw_name}"
        if name not in expected:
            raise ModelLoadError(f"unexpected tensor {raw_name!r} in checkpoint")
        is_conv1d = name.endswith(_CONV1D_SUFFIXES)
        want = tuple(expected[name])
        want_in_file = want[::-1] if is_conv1d else want
        if tuple(tensor.shape) != want_in_file:
            raise ModelLoadError(
                f"tensor {raw_name!r} has shape {tuple(tensor.shape)}, "
                f"expected {want_in_file} for this config"
            )
        converted[name] = tensor.t() if is_conv1d else tensor
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ModelLoadError(f"checkpoint is missing tensors: {', '.join(missing[:5])}")
    return converted


def random_model(
    config: GPT2Config,
    device: str | torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    init_device: str | torch.device = "cpu",
) -> GPT2LMHeadModel:
    """A seeded random model with GPT-2's initialisation (std 0.02, scaled residual projections).

    The numbers are drawn on `init_device`: the CPU by default, so a seed gives the same weights
    on every device; drawing on the GPU is many times faster for the large shapes (gpt2-xl takes
    about 20 s on a CPU core) but gives other weights than the CPU would.
    """
    model = _empty_model(config, init_device, torch.float32)
    generator = torch.Generator(device=init_device).manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("c_proj.weight"):
                param.normal_(0.0, residual_std, generator=generator)
            elif "ln_" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.to(device=device, dtype=dtype).eval()


def save_hf_checkpoint(model: GPT2LMHeadModel, model_dir: Path) -> None:
    """Write `config.json` + `model.safetensors` in Hugging Face's GPT-2 layout."""
    from safetensors.torch import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, param in model.named_parameters():
        tensor = param.detach().float().cpu()
        if name.endswith(_CONV1D_SUFFIXES):
            tensor = tensor.t()
        tensors[name] = tensor.contiguous()
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))


def _empty_model(
    config: GPT2Config, device: str | torch.device, dtype: torch.dtype
) -> GPT2LMHeadModel:
    """A model with uninitialised parameters (no wasted random init before loading)."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    if torch.device(device).type == "meta":
        return model.to(dtype=dtype)
    return model.to_empty(device=device).to(dtype=dtype)
