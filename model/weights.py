"""Load GPT-2 weights: an HF checkpoint directory, a hub id, or `random:<size>`."""

from __future__ import annotations

import json
import math
import os
import stat
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
    files = weights_files(model_dir)
    source = files[0] if len(files) == 1 else model_dir
    state_dict = convert_hf_state_dict(read_checkpoint(model_dir, files), config, source)
    model = _empty_model(config, device, dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(state_dict[name])
    return model.eval()


def resolve_model_dir(spec: str) -> Path:
    """A local directory as is; otherwise a hub id downloaded (or found in the HF cache)."""
    path = Path(spec).expanduser()
    if _is_local_dir(path):
        _list_dir(path)  # an unreadable directory is reported here, not as "no weights"
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model directory {str(path)!r} not found: it does not exist")
    return _download_from_hub(spec)


def _is_local_dir(path: Path) -> bool:
    """Whether `path` is a directory; a permission error is reported, never taken as absence."""
    try:
        mode = path.stat().st_mode
    except PermissionError as exc:
        raise _read_error(path, exc, "model directory and its parents", "access") from exc
    except (OSError, ValueError):  # absent, a dangling link, a name too long: not local
        return False
    if not stat.S_ISDIR(mode):
        raise ModelLoadError(f"model path {path} is a file, not a checkpoint directory")
    return True


def _list_dir(model_dir: Path) -> list[str]:
    """The directory's entries, sorted; unreadable is a ModelLoadError."""
    try:
        return sorted(os.listdir(model_dir))
    except OSError as exc:
        raise _read_error(model_dir, exc, "model directory", action="list") from exc


def _download_from_hub(repo_id: str) -> Path:
    """Fetch config, tokenizer files and safetensors (else .bin) weights of a hub repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    failed = f"{repo_id!r} is neither a local directory nor downloadable from the Hugging Face hub"
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=[*_HUB_FILES, "*.safetensors*"]))
        if not _has_weights(path):
            path = Path(snapshot_download(repo_id, allow_patterns=[*_HUB_FILES, "*.bin*"]))
    except LocalEntryNotFoundError as exc:
        said = _one_line(exc.__cause__ or exc)
        raise ModelLoadError(
            f"{failed}: the hub is unreachable ({said}) and the model is not in the local HF "
            f"cache; download it once with network access, or pass a local checkpoint directory"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{failed}: {_one_line(exc)}") from exc
    return path


def _has_weights(model_dir: Path) -> bool:
    return any(model_dir.glob("*.safetensors")) or (model_dir / "pytorch_model.bin").is_file()


def load_config(model_dir: Path) -> GPT2Config:
    """Parse `config.json` of an HF GPT-2 directory."""
    config_path = model_dir / "config.json"
    try:
        text = config_path.read_text()
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{config_path} not found: {model_dir} is not a Hugging Face GPT-2 directory"
        ) from exc
    except OSError as exc:
        raise _read_error(config_path, exc, "config") from exc
    try:
        return GPT2Config.from_hf_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} is not a valid GPT-2 config: {exc}") from exc


def weights_files(model_dir: Path) -> list[Path]:
    """The directory's safetensors file(s), else its `pytorch_model.bin`."""
    names = [name for name in _list_dir(model_dir) if not name.startswith(".")]
    safetensors = [model_dir / name for name in names if name.endswith(".safetensors")]
    if safetensors:
        return safetensors
    if "pytorch_model.bin" in names:
        return [model_dir / "pytorch_model.bin"]
    raise ModelLoadError(
        f"weights not found in {model_dir}: looked for *.safetensors and pytorch_model.bin"
    )


def read_checkpoint(model_dir: Path, files: list[Path] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the directory's weights files (`weights_files` unless given)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in weights_files(model_dir) if files is None else files:
        tensors.update(read_weights_file(file))
    return tensors


def read_weights_file(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors or `.bin` file; any failure is a ModelLoadError."""
    try:
        # safetensors reports a file it may not open as "No such file or directory": open it
        # here first, so the real errno (EACCES) reaches the message.
        os.close(os.open(file, os.O_RDONLY))
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise _read_error(file, exc, "weights file") from exc
    except Exception as exc:  # safetensors and torch raise many types for a corrupt file
        raise ModelLoadError(f"could not read weights from {file}: {_load_reason(exc)}") from exc


def _read_error(path: Path, exc: OSError, what: str, action: str = "read") -> ModelLoadError:
    """The ModelLoadError for an OSError met while opening or reading `path` (a `what`)."""
    if isinstance(exc, PermissionError):
        uid = f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "its user"
        return ModelLoadError(
            f"permission denied: cannot {action} {path} (the server runs as {uid}); "
            f"make the {what} readable by that user"
        )
    if isinstance(exc, FileNotFoundError):
        return ModelLoadError(f"{what} not found: {path}")
    noun = "weights" if what == "weights file" else what
    return ModelLoadError(f"could not {action} {noun} from {path}: {_one_line(exc)}")


def _load_reason(exc: BaseException) -> str:
    """Why a weights file did not load, in one line (torch's long advice left out)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch.load(weights_only=True) on a non-checkpoint
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n", 1)[0]
        return f"not a PyTorch checkpoint ({detail})"
    return _one_line(exc)


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """`exc`'s message on one line, cut at `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def convert_hf_state_dict(
    hf_tensors: dict[str, torch.Tensor], config: GPT2Config, source: Path | str = "checkpoint"
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
            raise ModelLoadError(f"unexpected tensor {raw_name!r} in {source}")
        is_conv1d = name.endswith(_CONV1D_SUFFIXES)
        want = tuple(expected[name])
        want_in_file = want[::-1] if is_conv1d else want
        if tuple(tensor.shape) != want_in_file:
            raise ModelLoadError(
                f"wrong shape for tensor {raw_name!r} in {source}: found {tuple(tensor.shape)}, "
                f"expected {want_in_file} for config.json (n_embd={config.n_embd}, "
                f"n_positions={config.n_positions}, vocab_size={config.vocab_size})"
            )
        converted[name] = tensor.t() if is_conv1d else tensor
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ModelLoadError(f"{source} is missing tensors: {', '.join(missing[:5])}")
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
