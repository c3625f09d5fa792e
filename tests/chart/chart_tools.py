"""Render the Helm chart with the real `helm` binary (the one `e2e/cluster/build kubectl`
unpacks into ~/.cache/contextlm/bin/current) and hand the manifests to tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "contextlm"
CACHE = Path(os.environ.get("CONTEXTLM_CACHE", Path.home() / ".cache" / "contextlm"))
RELEASE = "contextlm"
NAMESPACE = "contextlm-system"
# Runbook links are rendered from this in the tests so expected annotations stay stable.
RUNBOOK = "https://docs.example/sre.md"

# The values a production install with everything switched on uses in the tests.
FULL: dict[str, Any] = {
    "replicaCount": 2,
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True},
    },
    "prometheusRule": {"enabled": True, "runbookBaseUrl": RUNBOOK},
    "grafanaDashboard": {"enabled": True},
}
NAMESPACED: dict[str, Any] = {**FULL, "watchNamespaces": ["team-a", "team-b"]}


class ToolMissing(AssertionError):
    """A binary the chart tests need is missing; the message says how to get it."""


def helm_binary() -> Path:
    path = CACHE / "bin" / "current" / "helm"
    if not path.exists():
        raise ToolMissing(
            f"{path} is missing: run `e2e/cluster/build kubectl` (helm comes with it)"
        )
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; with check=True a failure raises with helm's own message."""
    result = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def values_file(values: Mapping[str, Any], directory: Path) -> Path:
    text = yaml.safe_dump(dict(values))
    path = directory / f"values-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    path.write_text(text)
    return path


def template_args(
    values: Mapping[str, Any] | None,
    directory: Path,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra: Iterable[str] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    if values:
        args += ["--values", str(values_file(values, directory))]
    return args


def render(
    values: Mapping[str, Any] | None,
    directory: Path,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` the chart and return its manifests, parsed."""
    args = template_args(values, directory, release=release, namespace=namespace, extra=extra)
    text = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def rule_groups(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The PrometheusRule's groups: exactly what a Prometheus rules file holds."""
    groups: list[dict[str, Any]] = one(docs, "PrometheusRule")["spec"]["groups"]
    return groups
