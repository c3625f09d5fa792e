"""Status of the embedded system, in the shapes and words the operator writes.

Each resource's status is its kind's Status model from `contextlm.api`, so `contextlm
status` prints what `kubectl get -o yaml` would show in a cluster: the same condition
types, reasons and phases. The reason strings and the phase rule mirror
`contextlm_operator.conditions`; the runtime may not import the operator, so the few
used here are spelled again below and a test compares them with the operator's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, TypeVar

from ..api import Condition
from ..api.common import StatusBase

READY = "Ready"
SYNCED = "Synced"
INDEX_BUILT = "IndexBuilt"
SERVING = "Serving"
DEPENDENCIES_READY = "DependenciesReady"
ENGINE_READY = "EngineReady"
MIGRATED = "FeedbackStoreMigrated"
SUCCEEDED = "Succeeded"


class Reason:
    """The operator's reasons (contextlm_operator.conditions.Reason) used embedded."""

    JOB_RUNNING = "JobRunning"
    JOB_PENDING = "JobPending"
    ROLLING_OUT = "RollingOut"
    SNAPSHOT_PUBLISHED = "SnapshotPublished"
    INDEX_PUBLISHED = "IndexPublished"
    AVAILABLE = "Available"
    DEPENDENCIES_READY = "DependenciesReady"
    JOB_FAILED = "JobFailed"
    INVALID_CONFIG = "InvalidConfig"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    CORPUS_NOT_READY = "CorpusNotReady"
    PODS_NOT_READY = "PodsNotReady"


FAILURE_REASONS = {Reason.JOB_FAILED, Reason.SOURCE_UNAVAILABLE, Reason.INVALID_CONFIG}
WAITING_REASONS = {Reason.CORPUS_NOT_READY}
S = TypeVar("S", bound=StatusBase)
Truth = Literal["True", "False", "Unknown"]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_conditions(
    status: S, new: list[tuple[str, bool | None, str, str]], *, progressing: str = "Pending"
) -> S:
    """`status` with `new` (type, ok, reason, message) merged in as the operator merges
    them: lastTransitionTime moves only when a condition's status changes. The phase is
    derived from the conditions unless the status is a run's (which sets its own)."""
    previous = {c.type: c for c in status.conditions}
    merged = {c.type: c for c in status.conditions}
    for ctype, ok, reason, message in new:
        truth: Truth = "Unknown" if ok is None else ("True" if ok else "False")
        before = previous.get(ctype)
        stamp = (
            before.last_transition_time if before is not None and before.status == truth else now()
        )
        merged[ctype] = Condition(
            type=ctype, status=truth, reason=reason, message=message[:32000],
            last_transition_time=stamp, observed_generation=1,
        )  # fmt: skip
    status.conditions = list(merged.values())
    status.observed_generation = 1
    status.phase = phase(status.conditions, progressing=progressing)
    return status


def phase(conditions: list[Condition], *, progressing: str) -> str:
    """Ready, Failed, Waiting or the progressing word: the operator's rule."""
    by_type = {c.type: c for c in conditions}
    if READY in by_type and by_type[READY].status == "True":
        return "Ready"
    if any(c.status == "False" and c.reason in FAILURE_REASONS for c in conditions):
        return "Failed"
    if any(c.status == "False" and c.reason in WAITING_REASONS for c in conditions):
        return "Waiting"
    return progressing


def is_ready(status: StatusBase) -> bool:
    return any(c.type == READY and c.status == "True" for c in status.conditions)
