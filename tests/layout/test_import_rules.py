"""The layers import one way, and the check that says so fails on a deliberate violation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.import_rules import LAYERS, check_tree, layer_of, package_modules, violations

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_follows_the_rules() -> None:
    assert check_tree(REPO) == []


def test_every_module_is_covered_and_the_layers_exist() -> None:
    modules = package_modules(REPO)
    assert len(modules) > 50
    layers = {layer_of(m) for m in modules}
    for part in ("core", "worker", "engine", "api"):
        assert f"gpt2serve.server.{part}" in layers
    assert set(LAYERS) - layers <= set(), (
        f"rules for parts that do not exist: {set(LAYERS) - layers}"
    )


def test_the_tree_check_fails_on_a_planted_violation(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "gpt2serve.server" = "server" }\n'
    )
    core = tmp_path / "server" / "core"
    core.mkdir(parents=True)
    (tmp_path / "server" / "__init__.py").write_text('"""Server."""\n')
    (core / "__init__.py").write_text('"""Core."""\n')
    (core / "clean.py").write_text("import dataclasses\n")
    (core / "bad.py").write_text('"""Bad."""\n\nimport torch\n')
    assert check_tree(tmp_path) == [
        "gpt2serve.server.core.bad:3 imports torch: gpt2serve.server.core must not import torch"
    ]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("gpt2serve.server.core.fake", "import torch"),
        ("gpt2serve.server.core.fake", "from fastapi import FastAPI"),
        ("gpt2serve.server.core.fake", "from gpt2serve.server.worker.sampler import Sampler"),
        ("gpt2serve.server.core.fake", "from ..engine import engine"),  # relative, still caught
        ("gpt2serve.server.core.fake", "from gpt2serve.model.gpt2 import GPT2LMHeadModel"),
        ("gpt2serve.server.core.fake", "def f():\n    from starlette import requests\n"),
        ("gpt2serve.server.api.fake", "import torch.nn.functional as F"),
        ("gpt2serve.server.api.fake", "from gpt2serve.server.worker import sampler"),
        ("gpt2serve.server.api.fake", "from gpt2serve import kernels"),
        ("gpt2serve.server.worker.fake", "from gpt2serve.server.engine.engine import Engine"),
        ("gpt2serve.server.engine.fake", "from gpt2serve.server.api.metrics import Metrics"),
        ("gpt2serve.server.engine.fake", "import uvicorn"),
        ("gpt2serve.kernels.fake", "from gpt2serve.model.config import GPT2Config"),
        ("gpt2serve.model.fake", "from gpt2serve.server.core import request"),
        ("gpt2serve.loadtest.fake", "from gpt2serve.server.api import protocol"),
        ("gpt2serve.loadtest.fake", "import torch"),
        ("gpt2serve.server.config", "from gpt2serve.server.api import app"),
        ("gpt2serve.server.engine.fake", "from server.core.request import Request"),  # ghost
        ("gpt2serve.benchmarks.fake", "import kernels"),  # the old top-level name
    ],
)
def test_a_deliberate_violation_is_caught(module: str, source: str) -> None:
    found = violations(source, module)
    assert len(found) == 1, found
    assert module in found[0]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("gpt2serve.server.core.fake", "from gpt2serve.model.tokenizer import Tokenizer"),
        ("gpt2serve.server.core.fake", "from . import request"),
        ("gpt2serve.server.api.fake", "from gpt2serve.server.engine.async_engine import X"),
        ("gpt2serve.server.api.fake", "from gpt2serve.server.core.messages import RequestOutput"),
        ("gpt2serve.server.worker.fake", "import torch\nfrom gpt2serve import kernels"),
        ("gpt2serve.server.engine.fake", "from gpt2serve.server.config import ServerSettings"),
        ("gpt2serve.benchmarks.fake", "from gpt2serve.server.engine.engine import Engine"),
    ],
)
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_core_loads_neither_torch_nor_fastapi() -> None:
    """Transitively, in a fresh interpreter: the whole of core and what it imports."""
    core = sorted(m for m in package_modules(REPO) if m.startswith("gpt2serve.server.core"))
    script = "; ".join([*(f"import {m}" for m in core), "import sys", "print(sorted(sys.modules))"])
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    for heavy in ("torch", "triton", "fastapi", "starlette", "pydantic"):
        assert f"'{heavy}'" not in loaded, heavy
