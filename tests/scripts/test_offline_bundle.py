"""scripts/offline-bundle: the bundle installs and serves with no index, on top of torch.

Building the bundle needs PyPI (as the script does on a user's online machine); installing it
and running the server from it uses no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from support.http_server import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "offline-bundle"


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("offline_bundle", str(SCRIPT))
    spec = importlib.util.spec_from_loader("offline_bundle", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


bundle_script = load_script()


def test_requirements_leave_out_torch_and_triton_only() -> None:
    requirements = bundle_script.runtime_requirements(REPO / "pyproject.toml")
    names = {bundle_script.requirement_name(r) for r in requirements}
    assert "torch" not in names and "triton" not in names
    assert {"fastapi", "uvicorn", "pydantic", "tiktoken", "prometheus-client"} <= names
    assert any(r.startswith("uvicorn[standard]") for r in requirements)  # extras kept


def test_names_and_filters(tmp_path: Path) -> None:
    assert bundle_script.normalize("Typing_Extensions") == "typing-extensions"
    for name in ("fastapi-1.0-py3-none-any.whl", "pydantic_core-2.0-cp312-cp312-x.whl",
                 "numpy-2.0-cp312-cp312-x.whl", "gpt2serve-0.1.0-py3-none-any.whl"):  # fmt: skip
        (tmp_path / name).write_text("")
    assert bundle_script.wheel_project(tmp_path / "pydantic_core-2.0-cp312-cp312-x.whl") == (
        "pydantic-core"
    )
    removed = bundle_script.keep_only(tmp_path, {"fastapi", "pydantic-core"}, {"fastapi"})
    assert sorted(p.name for p in removed) == [
        "fastapi-1.0-py3-none-any.whl", "numpy-2.0-cp312-cp312-x.whl"
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir())[0].startswith("gpt2serve")  # always kept


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle for this interpreter (so it installs here), built by the script itself."""
    out = tmp_path_factory.mktemp("bundle") / "offline-bundle"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--no-build-isolation"],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return out


def test_bundle_contents(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    wheels = [Path(f) for f in manifest["files"] if f.startswith("wheels/")]
    projects = {bundle_script.wheel_project(w) for w in wheels}
    assert {"gpt2serve", "fastapi", "pydantic-core", "uvicorn", "tiktoken", "xgrammar",
            "transformers"} <= projects  # fmt: skip
    assert not projects & {"torch", "triton"} and not any(p.startswith("nvidia") for p in projects)
    assert manifest["excluded"] == ["torch", "triton"]
    assert manifest["total_bytes"] == sum(manifest["files"].values())
    (ranks,) = (bundle / "tiktoken").iterdir()
    assert hashlib.sha256(ranks.read_bytes()).hexdigest() == bundle_script.TIKTOKEN_SHA256


def test_target_install_serves_offline(bundle: Path, tmp_path: Path) -> None:
    """`--target` beside this environment's torch; then a real request, tokenizer included."""
    site = tmp_path / "site"
    wheels = sorted(str(w) for w in (bundle / "wheels").glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site),
         "--quiet", *wheels], check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site), "TIKTOKEN_CACHE_DIR": str(bundle / "tiktoken"),
           "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gpt2serve", "--model", "random:tiny", "--device", "cpu",
         "--port", str(port), "--num-kv-blocks", "64"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        body = wait_and_complete(f"http://127.0.0.1:{port}", server)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["prompt_tokens"] == 2
    code = "import fastapi, gpt2serve; print(fastapi.__file__, gpt2serve.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(site)) for path in where)


def wait_and_complete(url: str, server: subprocess.Popen) -> dict:
    """Wait for /health, then one completion ("Hello world" is 2 GPT-2 tokens)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    response = httpx.post(
        f"{url}/v1/completions", json={"prompt": "Hello world", "max_tokens": 3}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def stand_in_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel that installs only metadata: a node's torch or triton, for pip's resolver."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    wheel_info = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": wheel_info.encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def test_find_links_install_on_top_of_torch(bundle: Path, tmp_path: Path) -> None:
    """The node's pip resolves every dependency from the bundle, torch and triton as installed."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    stand_ins = [
        stand_in_wheel(tmp_path, "torch", "2.11.0"),
        stand_in_wheel(tmp_path, "triton", "3.6.0"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links but the bundle's
    install = [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--disable-pip-version-check",
    ]
    subprocess.run([*install, "--no-deps", *map(str, stand_ins)], check=True, env=env, timeout=120)
    done = subprocess.run(
        [*install, "--find-links", str(bundle / "wheels"), "gpt2serve"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], env=env, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    installed = {bundle_script.normalize(p["name"]): p["version"] for p in json.loads(listed)}
    assert installed["torch"] == "2.11.0" and installed["triton"] == "3.6.0"  # left as they were
    assert {"gpt2serve", "fastapi", "uvicorn", "pydantic-settings", "tiktoken"} <= set(installed)
