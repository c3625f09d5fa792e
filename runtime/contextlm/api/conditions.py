"""Condition types, reasons and the phase derived from them.

Types are positive (`Ready`, `Synced`, `IndexBuilt`, `Serving`, `DependenciesReady`, ...);
reasons are the CamelCase constants below, the only place they are spelled. The operator
and the embedded system (`contextlm up`, `status`, `align`) both write status with these,
so a resource reads the same in a cluster and on a laptop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

READY = "Ready"
SYNCED = "Synced"
INDEX_BUILT = "IndexBuilt"
SERVING = "Serving"
DEPENDENCIES_READY = "DependenciesReady"
ENGINE_READY = "EngineReady"
FEEDBACK_STORE_MIGRATED = "FeedbackStoreMigrated"
SUCCEEDED = "Succeeded"  # an AlignmentRun's outcome


class Reason:
    # progress
    RECONCILING = "Reconciling"
    JOB_RUNNING = "JobRunning"
    JOB_PENDING = "JobPending"
    ROLLING_OUT = "RollingOut"
    # success
    SNAPSHOT_PUBLISHED = "SnapshotPublished"
    INDEX_PUBLISHED = "IndexPublished"
    AVAILABLE = "Available"
    DEPENDENCIES_READY = "DependenciesReady"
    # failure
    JOB_FAILED = "JobFailed"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    BAD_CREDENTIALS = "BadCredentials"
    INVALID_CONFIG = "InvalidConfig"
    SECRET_NOT_FOUND = "SecretNotFound"
    CORPUS_NOT_FOUND = "CorpusNotFound"
    CORPUS_NOT_READY = "CorpusNotReady"
    UNSCHEDULABLE = "Unschedulable"
    INVALID_SPEC = "InvalidSpec"
    PODS_NOT_READY = "PodsNotReady"
    # an AlignmentRun's gate
    GATE_PASSED = "GatePassed"
    GATE_FAILED = "GateFailed"
    DRY_RUN = "DryRun"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(ctype: str, ok: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    """A condition without timestamps; `merge` adds them."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": ctype, "status": status, "reason": reason, "message": message[:32000]}


def merge(
    old: list[dict[str, Any]], new: list[dict[str, Any]], generation: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """New conditions list (lastTransitionTime kept unless status changed) and the
    conditions that just turned False (each deserves an Event)."""
    previous = {c["type"]: c for c in old}
    merged, turned_false = [], []
    for cond in new:
        before = previous.get(cond["type"])
        changed = before is None or before.get("status") != cond["status"]
        stamp = now() if changed or not before else before.get("lastTransitionTime", now())
        merged.append({**cond, "lastTransitionTime": stamp, "observedGeneration": generation})
        if cond["status"] == "False" and (
            changed or before.get("reason") != cond["reason"]  # type: ignore[union-attr]
        ):
            turned_false.append(cond)
    return merged, turned_false


def phase(conditions: list[dict[str, Any]], *, progressing: str = "Pending") -> str:
    """The display phase: Ready, Failed (a condition is False for a failure reason),
    or the given progressing word."""
    by_type = {c["type"]: c for c in conditions}
    if by_type.get(READY, {}).get("status") == "True":
        return "Ready"
    if any(c["status"] == "False" and c["reason"] in FAILURE_REASONS for c in conditions):
        return "Failed"
    if any(c["status"] == "False" and c["reason"] in WAITING_REASONS for c in conditions):
        return "Waiting"
    return progressing


FAILURE_REASONS = {
    Reason.JOB_FAILED,
    Reason.SOURCE_UNAVAILABLE,
    Reason.BAD_CREDENTIALS,
    Reason.INVALID_CONFIG,
    Reason.SECRET_NOT_FOUND,
    Reason.INVALID_SPEC,
    Reason.UNSCHEDULABLE,
}
WAITING_REASONS = {Reason.CORPUS_NOT_FOUND, Reason.CORPUS_NOT_READY}
