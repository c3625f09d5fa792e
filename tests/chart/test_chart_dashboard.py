"""The Grafana dashboard: valid dashboard JSON, every query parsed by promtool, every
metric it (and every alert) names exported by the operator or a runtime component."""

from __future__ import annotations

import inspect
import json
import re
from itertools import combinations
from pathlib import Path
from typing import Any

from chart_tools import CHART, FULL, by_kind, render, rule_groups
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_tools import check_expressions, grafana_to_promql

DASHBOARD = CHART / "files" / "dashboards" / "contextlm.json"
PANEL_TYPES = {"row", "stat", "timeseries", "table", "bargauge", "gauge", "text", "heatmap"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}
# Metrics the dashboard and the alerts use that no process exports yet. Each is asked of
# its owner (operator: docs/sre.md "Metrics"; gateway: its metrics class). The test below
# fails once one is exported, so this list only ever shrinks.
PENDING = {
    "contextlm_gateway_requests_total",
    "contextlm_gateway_stage_duration_seconds",
    "contextlm_gateway_tokens_total",
    "contextlm_gateway_feedback_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
METRIC = re.compile(r"\b((?:contextlm|process|python)_[a-z0-9_]+|up)\b")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def targets(dash: dict[str, Any]) -> dict[str, str]:
    """'panel title / refId' -> expression."""
    return {
        f"{p['title']} / {t['refId']}": t["expr"]
        for p in panels(dash)
        for t in p.get("targets", [])
    }


def variable_queries(dash: dict[str, Any]) -> dict[str, str]:
    """The metric selector inside each `label_values(selector, label)` variable query."""
    out = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, f"variable {var['name']}: unexpected query {query}"
            out[f"variable {var['name']}"] = match.group(1)
    return out


def exported_metrics() -> set[str]:
    """Series names the operator's and the runtime's metric classes expose."""
    import contextlm.runtime.metrics as runtime_metrics
    import contextlm_operator.metrics  # noqa: F401  (registers on the default registry)

    registries: list[CollectorRegistry] = [DEFAULT_REGISTRY]
    for _, cls in inspect.getmembers(runtime_metrics, inspect.isclass):
        if cls.__module__ == runtime_metrics.__name__ and cls.__name__.endswith("Metrics"):
            registry = getattr(cls(), "registry", None)
            assert isinstance(registry, CollectorRegistry), f"{cls.__name__} has no registry"
            registries.append(registry)
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + s for s in HISTOGRAM_SUFFIXES)
    return names


def used_metrics(expressions: list[str]) -> set[str]:
    """Metric names in PromQL; a pending histogram's series count as the histogram."""
    names = set()
    for name in (m for expr in expressions for m in METRIC.findall(expr)):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in PENDING:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_dashboard_is_valid_grafana_json() -> None:
    dash = dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["title"] and dash["uid"] and len(dash["uid"]) <= 40
    assert dash["time"]["from"] and dash["time"]["to"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    boxes = []
    for panel in panels(dash):
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"], panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        boxes.append((panel["title"], grid))
        if panel["type"] == "row":
            assert grid["w"] == 24 and grid["h"] == 1
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
    for (a, ga), (b, gb) in combinations(boxes, 2):
        overlap_x = ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
        overlap_y = ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]
        assert not (overlap_x and overlap_y), f"panels {a!r} and {b!r} overlap"


def test_dashboard_covers_what_sres_watch() -> None:
    titles = " | ".join(p["title"].lower() for p in panels(dashboard()))
    for topic in (
        "operator replicas up",
        "reconcile",
        "by kind and phase",
        "retrieval latency",
        "gateway latency",
        "tokens",
        "feedback by rating",
        "alignmentruns",
        "scores",
    ):
        assert topic in titles, topic


def test_dashboard_variables_are_defined() -> None:
    dash = dashboard()
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in defined
    text = json.dumps(dash["panels"]) + json.dumps(variable_queries(dash))
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used - defined - BUILTIN_VARIABLES == set()


def test_every_dashboard_query_parses() -> None:
    dash = dashboard()
    exprs = {**targets(dash), **variable_queries(dash)}
    check_expressions({key: grafana_to_promql(expr) for key, expr in exprs.items()})


def test_every_metric_used_is_exported_or_pending(tmp_path: Path) -> None:
    dash = dashboard()
    rules = rule_groups(render(FULL, tmp_path))
    expressions = [*targets(dash).values(), *variable_queries(dash).values()]
    expressions += [r["expr"] for g in rules for r in g["rules"]]
    exported = exported_metrics() | {"up"}
    unknown = used_metrics(expressions) - exported - PENDING
    assert unknown == set(), f"queries name metrics nothing exports: {sorted(unknown)}"
    done = PENDING & exported
    assert done == set(), f"now exported, remove from PENDING and docs/sre.md: {sorted(done)}"


def test_configmap_carries_the_file(tmp_path: Path) -> None:
    docs = render(FULL, tmp_path)
    (configmap,) = [d for d in by_kind(docs, "ConfigMap") if "contextlm.json" in d["data"]]
    assert json.loads(configmap["data"]["contextlm.json"]) == dashboard()
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
