"""The layer rules of docs/ARCHITECTURE.md as data, and an AST checker that enforces them.

Each part of gpt2serve lists the parts of gpt2serve it may import and the outside packages it
must not; a module belongs to the longest part name that prefixes it. Only the code is read
(imports inside functions and `TYPE_CHECKING` blocks count too); nothing is imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import tomllib

# The names the repository's folders had before they became one package: nothing may use them.
GHOST_PACKAGES = ("server", "model", "kernels", "loadtest", "benchmarks", "acceptance")
WEB = ("fastapi", "starlette", "uvicorn")


@dataclass(frozen=True)
class Layer:
    """What one part may import of gpt2serve, and which outside packages it must not."""

    may_import: tuple[str, ...]
    banned: tuple[str, ...] = ()


G = "gpt2serve"
S = "gpt2serve.server"
LAYERS: dict[str, Layer] = {
    G: Layer((G,)),  # the package root: its command starts the server
    f"{G}.kernels": Layer((f"{G}.kernels",), WEB),
    f"{G}.model": Layer((f"{G}.model", f"{G}.kernels"), WEB),
    f"{G}.loadtest": Layer((f"{G}.loadtest",), ("torch", "triton")),
    f"{G}.benchmarks": Layer((G,)),
    f"{G}.acceptance": Layer((G,)),
    S: Layer((S,)),  # server/__init__.py
    f"{S}.config": Layer(()),
    f"{S}.cli": Layer((f"{S}.cli", f"{S}.config", f"{S}.api", f"{S}.engine")),
    f"{S}.core": Layer((f"{S}.core", f"{G}.model.tokenizer"), ("torch", "triton", *WEB)),
    f"{S}.worker": Layer((f"{S}.core", f"{S}.worker", f"{G}.model", f"{G}.kernels"), WEB),
    f"{S}.engine": Layer(
        (f"{S}.core", f"{S}.worker", f"{S}.engine", f"{S}.config", f"{G}.model", f"{G}.kernels"),
        WEB,
    ),
    f"{S}.api": Layer(
        (f"{S}.core", f"{S}.engine", f"{S}.api", f"{S}.config", f"{G}.model.tokenizer"),
        ("torch", "triton"),
    ),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str:
    """The most specific part that `module` belongs to."""
    owners = [part for part in LAYERS if _within(module, part)]
    if not owners:
        raise ValueError(f"{module} belongs to no layer of the import rules")
    return max(owners, key=len)


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`; `from x import y` gives x.y."""
    names: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import mod` may name a submodule: judge pkg.mod, which is within pkg.
            names.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return names


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import of `source` (the text of `module`) that breaks its layer's rules."""
    layer = LAYERS[layer_of(module)]
    found = []
    for line, name in imported_names(source, module, is_package):
        where = f"{module}:{line} imports {name}"
        top = name.split(".")[0]
        if top in GHOST_PACKAGES:
            found.append(f"{where}: the package is gpt2serve.{top}")
        elif top == G and not any(_within(name, allowed) for allowed in layer.may_import):
            found.append(f"{where}: {layer_of(module)} may import only {layer.may_import}")
        elif top in layer.banned:
            found.append(f"{where}: {layer_of(module)} must not import {top}")
    return found


def package_modules(repo: Path) -> dict[str, Path]:
    """Every module of the package, by dotted name, from pyproject.toml's folder mapping."""
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    package_dir: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in package_dir.items():
        root = repo / folder
        for path in root.rglob("*.py"):
            relative = path.relative_to(root).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def check_tree(repo: Path) -> list[str]:
    """All violations in the repository's package."""
    found = []
    for module, path in sorted(package_modules(repo).items()):
        found.extend(violations(path.read_text(), module, path.name == "__init__.py"))
    return found
