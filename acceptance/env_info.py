"""Step `environment`: GPU, memory, driver, CUDA, torch, Triton, Python, and the tokenizer."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _driver() -> str:
    """The NVIDIA driver version, from nvidia-smi."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (no nvidia-smi)"
    return done.stdout.strip().splitlines()[0]


def _gpu() -> Iterator[Measurement]:
    import torch

    if not torch.cuda.is_available():
        yield Measurement("GPU", "none (CPU dry run)")
        return
    props = torch.cuda.get_device_properties(0)
    memory_gib = props.total_memory / 2**30
    capability = f"sm_{props.major}{props.minor}"
    name = f"{props.name}, {memory_gib:.1f} GiB, {capability}, {props.multi_processor_count} SMs"
    yield Measurement(
        "GPU", name, numbers={"name": props.name, "memory_gib": memory_gib,
                              "capability": f"{props.major}.{props.minor}"},
    )  # fmt: skip
    yield Measurement("driver", _driver())
    yield Measurement("CUDA (torch's)", str(torch.version.cuda))


def _tokenizer() -> Measurement:
    """The GPT-2 tokenizer loads (offline nodes need TIKTOKEN_CACHE_DIR: see README)."""
    from gpt2serve.model.tokenizer import Tokenizer

    cache = os.environ.get("TIKTOKEN_CACHE_DIR", "tiktoken's default cache")
    ids = Tokenizer.from_tiktoken().encode("Hello world")
    ok = ids == [15496, 995]
    return Measurement("GPT-2 tokenizer", f"{ids} from {cache}", "[15496, 995]", ok)


def run(ctx: StepContext) -> Iterator[Measurement]:
    """Versions first (they explain every other result), then the devices."""
    import torch

    yield Measurement("Python", platform.python_version())
    yield Measurement("torch", torch.__version__, numbers={"torch": torch.__version__})
    yield Measurement("Triton", _version("triton"), numbers={"triton": _version("triton")})
    yield Measurement("transformers", _version("transformers"))
    yield Measurement("gpt2serve", _version("gpt2serve"))
    yield Measurement("CPU cores", str(os.cpu_count()))
    yield from _gpu()
    yield _tokenizer()
