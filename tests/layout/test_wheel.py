"""The built wheel holds one top-level package, `gpt2serve`, with every module and both commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support.import_rules import package_modules

REPO = Path(__file__).resolve().parents[2]


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` of a clean copy of the sources (the build writes into its tree)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for top in ("src", "server", "model", "kernels", "loadtest", "benchmarks", "acceptance"):
        shutil.copytree(REPO / top, source / top, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the test extra brings setuptools and wheel, and CI may be offline.
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source), cwd=source)
    (built,) = dist.glob("gpt2serve-*.whl")
    return built


def test_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in names} == {"gpt2serve", dist_info}
    top_level = zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode()
    assert top_level.split() == ["gpt2serve"]


def test_every_module_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module, path in package_modules(REPO).items():
        in_wheel = module.replace(".", "/") + ("/__init__.py" if path.stem == "__init__" else ".py")
        assert in_wheel in names, f"{module} ({path.relative_to(REPO)}) is missing"
    assert not [n for n in names if "__pycache__" in n or "/tests/" in n]


def test_kernel_sources_are_in_the_wheel(wheel: Path) -> None:
    """The CPU kernel is compiled on the user's machine from the C++ file shipped beside it."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in sorted((REPO / "kernels" / "csrc").glob("*.cpp")):
        assert f"gpt2serve/kernels/csrc/{source.name}" in names
    assert "gpt2serve/kernels/csrc/cpu_attention.cpp" in names


def test_console_scripts(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "gpt2serve = gpt2serve.server.cli:main" in text
    assert "gpt2serve-loadtest = gpt2serve.loadtest.__main__:main" in text


def test_installed_wheel_runs_from_the_repository_root(wheel: Path, tmp_path: Path) -> None:
    """`pip install .` then `python -m gpt2serve` in a clone: no repo folder shadows the package."""
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args: str, program: str = sys.executable) -> str:
        done = subprocess.run(
            [program, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    imports = "import gpt2serve.server.api.app as a, gpt2serve.kernels as k"
    where = run("-c", f"{imports}; print(a.__file__, k.__file__)")
    assert all(path.startswith(str(target)) for path in where.split())
    source = run("-c", "from gpt2serve.kernels import cpu_attention as c; print(c.SOURCE_PATH)")
    assert source.startswith(str(target)) and Path(source.strip()).is_file()
    assert "usage: gpt2serve" in run("-m", "gpt2serve", "--help")
    assert "--concurrency" in run("-m", "gpt2serve.loadtest", "--help")
    assert "usage: gpt2serve" in run("--help", program=str(target / "bin" / "gpt2serve"))
    assert "--concurrency" in run("--help", program=str(target / "bin" / "gpt2serve-loadtest"))
