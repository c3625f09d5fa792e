"""Scrapes of real metrics: `promtool check metrics` on the operator's /metrics and the
retriever's, and a real Prometheus (Debian's package) on loopback that scrapes both with
the chart's ServiceMonitor and PodMonitor translated to static configs, evaluates the
chart's rules and answers the dashboard's operator queries."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chart_tools import FULL, NAMESPACE, one, render, rule_groups
from prometheus_tools import Prometheus, check_metrics, grafana_to_promql, run_prometheus
from servers import free_port
from test_chart_alerts import REQUIRED
from test_chart_dashboard import PENDING, dashboard, targets, used_metrics

HERE = Path(__file__).resolve().parent
SCRAPE_INTERVAL = "1s"  # the chart's 30s, shortened so the test does not wait


@dataclass(frozen=True)
class Endpoints:
    operator: str
    retriever: str


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


@pytest.fixture(scope="module")
def endpoints() -> Iterator[Endpoints]:
    operator_port, retriever_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "metrics_server.py"),
            f"--operator-port={operator_port}",
            f"--retriever-port={retriever_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    urls = Endpoints(f"127.0.0.1:{operator_port}", f"127.0.0.1:{retriever_port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"http://{urls.operator}/healthz")
                _get(f"http://{urls.retriever}/metrics")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = (
                        proc.communicate(timeout=5)[0].decode() if proc.poll() is not None else ""
                    )
                    raise AssertionError(f"metrics server did not start:\n{output}") from None
                time.sleep(0.2)
        yield urls
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_operator_metrics_pass_promtool(endpoints: Endpoints) -> None:
    text = _get(f"http://{endpoints.operator}/metrics")
    assert "contextlm_operator_reconciles_total" in text
    check_metrics(text)


def test_retriever_metrics_pass_promtool(endpoints: Endpoints) -> None:
    text = _get(f"http://{endpoints.retriever}/metrics")
    assert "contextlm_retriever_request_duration_seconds_bucket" in text
    check_metrics(text)


def test_check_metrics_rejects_a_badly_named_counter() -> None:
    bad = "# HELP contextlm_bad_count A counter\n# TYPE contextlm_bad_count counter\ncontextlm_bad_count 1\n"
    with pytest.raises(AssertionError, match="_total"):
        check_metrics(bad)


def service_monitor_as_static(docs: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """The scrape job prometheus-operator generates for the chart's ServiceMonitor, as a
    static config: job is the Service's name, the target labels are the ones its
    relabelling sets from Kubernetes service discovery (docs/sre.md, "Scrape
    configuration")."""
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    name = service["metadata"]["name"]
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    return {
        "job_name": name,
        "metrics_path": endpoint["path"],
        "scheme": endpoint["scheme"],
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "static_configs": [
            {
                "targets": [target],
                "labels": {
                    "namespace": service["metadata"]["namespace"],
                    "service": name,
                    "pod": f"{name.removesuffix('-metrics')}-7d4b9c-x2x9k",
                    "container": "operator",
                    "endpoint": endpoint["port"],
                },
            }
        ],
    }


def pod_monitor_as_static(docs: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """The PodMonitor's scrape job for one retriever pod: the relabellings copy the pod
    labels app.kubernetes.io/instance and app.kubernetes.io/component to resource and
    component; job is <PodMonitor namespace>/<PodMonitor name>."""
    monitor = one(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    pod_labels = {
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance": "support-retrieval",
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": "retriever",
    }
    labels = {
        "namespace": "support",
        "pod": "support-retrieval-retriever-5c9d-abcde",
        "container": "retriever",
        "endpoint": endpoint["port"],
    }
    for relabel in endpoint["relabelings"]:
        (source,) = relabel["sourceLabels"]
        labels[relabel["targetLabel"]] = pod_labels[source]
    meta = monitor["metadata"]
    return {
        "job_name": f"{meta['namespace']}/{meta['name']}",
        "metrics_path": endpoint["path"],
        "scheme": endpoint["scheme"],
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "static_configs": [{"targets": [target], "labels": labels}],
    }


@pytest.fixture(scope="module")
def prometheus(
    endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    docs = render(FULL, tmp_path_factory.mktemp("scrape"))
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            service_monitor_as_static(docs, endpoints.operator),
            pod_monitor_as_static(docs, endpoints.retriever),
        ],
    }
    with run_prometheus(config, rule_groups(docs)) as server:
        yield server


@pytest.mark.integration
def test_prometheus_sees_the_operator_series(prometheus: Prometheus) -> None:
    selector = f'job="contextlm-metrics", namespace="{NAMESPACE}"'
    (up,) = prometheus.wait_for(f"up{{{selector}}} == 1")
    assert up["metric"]["endpoint"] == "metrics" and up["metric"]["service"] == "contextlm-metrics"
    reconciles = prometheus.wait_for(f"contextlm_operator_reconciles_total{{{selector}}}")
    assert {(r["metric"]["kind"], r["metric"]["outcome"]) for r in reconciles} >= {
        ("Corpus", "success"),
        ("RetrievalStack", "error"),
    }
    phases = prometheus.wait_for(f"contextlm_operator_resources{{{selector}}}")
    assert {(r["metric"]["kind"], r["metric"]["phase"], r["value"][1]) for r in phases} == {
        ("Corpus", "Ready", "1"),
        ("RetrievalStack", "Pending", "1"),
        ("AlignmentRun", "Training", "1"),
    }
    prometheus.wait_for(f"contextlm_operator_reconcile_duration_seconds_bucket{{{selector}}}")
    prometheus.wait_for(f"process_resident_memory_bytes{{{selector}}}")


@pytest.mark.integration
def test_prometheus_sees_the_retriever_series_with_resource_labels(prometheus: Prometheus) -> None:
    series = prometheus.wait_for(
        'contextlm_retriever_requests_total{namespace="support", resource="support-retrieval",'
        ' component="retriever"}'
    )
    assert {s["metric"]["code"] for s in series} == {"200", "500"}
    prometheus.wait_for('contextlm_retriever_request_duration_seconds_bucket{stage="total"}')


@pytest.mark.integration
def test_rules_evaluate_cleanly_and_a_healthy_operator_raises_nothing(
    prometheus: Prometheus,
) -> None:
    prometheus.wait_for('up{job="contextlm-metrics"} == 1')
    deadline = time.monotonic() + 60
    while True:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, f"rules not evaluated: {rules}"
        time.sleep(0.5)
    assert {r["name"] for r in rules} == REQUIRED
    for rule in rules:
        assert rule["health"] == "ok", rule
    # Before the first scrape `up` is absent, so ContextlmOperatorDown starts pending; it
    # must clear once the operator is scraped, long before its 5 minutes.
    deadline = time.monotonic() + 30
    while True:
        alerts = prometheus.api("alerts")["alerts"]
        if "ContextlmOperatorDown" not in {a["labels"]["alertname"] for a in alerts}:
            break
        assert time.monotonic() < deadline, f"ContextlmOperatorDown stays: {alerts}"
        time.sleep(0.5)
    assert not [a for a in alerts if a["state"] == "firing"], alerts


@pytest.mark.integration
def test_dashboard_queries_answer_from_real_scrapes(prometheus: Prometheus) -> None:
    """Every dashboard query over metrics that exist today runs without error, and the
    operator and retriever panels return data: label names and selectors are right."""
    prometheus.wait_for('up{job="contextlm-metrics"} == 1')
    time.sleep(3)  # a few scrapes, so rate() has two samples
    must_answer = {
        "Operator replicas up / A",
        "Reconcile errors (10m) / A",
        "Operator memory / A",
        "Reconciles by kind and outcome / A",
        "Reconcile duration by kind / B",
        "Resources by kind and phase / A",
        "AlignmentRuns by phase / A",
        "Retriever requests by status code / A",
    }
    for key, expr in targets(dashboard()).items():
        if used_metrics([expr]) & PENDING:
            continue
        result = prometheus.query(grafana_to_promql(expr))
        if key in must_answer:
            assert result, f"dashboard panel {key!r} has no data: {expr}"
