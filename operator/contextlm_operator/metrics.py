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

RESOURCE_READY = Gauge(
    "contextlm_operator_resource_ready",
    "1 while a resource's Ready condition is True, else 0.",
    ["kind", "resource_namespace", "resource_name"],
)
JOBS_FINISHED = Counter(
    "contextlm_operator_jobs_finished_total",
    "Jobs whose outcome the operator recorded in an owner's status, by component and outcome.",
    ["kind", "resource_namespace", "resource_name", "component", "outcome"],
)
ALIGNMENT_RUNS = Counter(
    "contextlm_operator_alignment_runs_total",
    "AlignmentRuns that reached a final phase, by outcome (promoted, rejected, failed).",
    ["resource_namespace", "model", "outcome"],
)
ALIGNMENT_SCORE = Gauge(
    "contextlm_operator_alignment_score",
    "The gate metric of the latest decided AlignmentRun of a model, for each side.",
    ["resource_namespace", "model", "side"],
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


def record_phase(body: dict[str, Any], phase: str, *, ready: bool) -> None:
    meta = body["metadata"]
    key = (body["kind"], f"{meta['namespace']}/{meta['name']}")
    RESOURCE_READY.labels(body["kind"], meta["namespace"], meta["name"]).set(1 if ready else 0)
    with _lock:
        if _phases.get(key) != phase:
            _phases[key] = phase
            _refresh()


def forget(body: dict[str, Any]) -> None:
    meta = body["metadata"]
    key = (body["kind"], f"{meta['namespace']}/{meta['name']}")
    try:
        RESOURCE_READY.remove(body["kind"], meta["namespace"], meta["name"])
    except KeyError:
        pass
    with _lock:
        if _phases.pop(key, None) is not None:
            _refresh()


def job_finished(body: dict[str, Any], component: str, outcome: str) -> None:
    """Count a Job's outcome once: callers call this only when status first records it."""
    meta = body["metadata"]
    JOBS_FINISHED.labels(body["kind"], meta["namespace"], meta["name"], component, outcome).inc()
