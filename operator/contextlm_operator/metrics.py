"""The operator's Prometheus metrics (one module per process, STYLE.md 12)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "contextlm_operator_reconciles_total",
    "Reconciles by kind and outcome (success, error).",
    ["kind", "outcome"],
)
RECONCILE_DURATION = Histogram(
    "contextlm_operator_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RESOURCES = Gauge(
    "contextlm_operator_resources",
    "contextlm resources by kind and phase.",
    ["kind", "phase"],
)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _refresh() -> None:
    counts: dict[tuple[str, str], int] = {}
    for (kind, _), phase in _phases.items():
        counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
    RESOURCES.clear()
    for (kind, phase), count in counts.items():
        RESOURCES.labels(kind=kind, phase=phase).set(count)


def record_phase(body: dict[str, Any], phase: str) -> None:
    key = (body["kind"], f"{body['metadata']['namespace']}/{body['metadata']['name']}")
    with _lock:
        if _phases.get(key) != phase:
            _phases[key] = phase
            _refresh()


def forget(body: dict[str, Any]) -> None:
    key = (body["kind"], f"{body['metadata']['namespace']}/{body['metadata']['name']}")
    with _lock:
        if _phases.pop(key, None) is not None:
            _refresh()
