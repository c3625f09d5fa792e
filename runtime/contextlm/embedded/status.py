"""Status of the embedded system, in the shapes and words the operator writes.

Each resource's status is its kind's Status model from `contextlm.api`, and conditions
are merged and phases derived by `contextlm.api.conditions`, the same code the operator
writes status with: `contextlm status` prints what `kubectl get -o yaml` would show.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ..api import Condition
from ..api.common import StatusBase
from ..api.conditions import (
    DEPENDENCIES_READY,
    ENGINE_READY,
    INDEX_BUILT,
    READY,
    SERVING,
    SUCCEEDED,
    SYNCED,
    Reason,
    condition,
    merge,
    now,
    phase,
)
from ..api.conditions import FEEDBACK_STORE_MIGRATED as MIGRATED

__all__ = [
    "DEPENDENCIES_READY", "ENGINE_READY", "INDEX_BUILT", "MIGRATED", "READY", "SERVING",
    "SUCCEEDED", "SYNCED", "Reason", "is_ready", "now", "set_conditions",
]  # fmt: skip

S = TypeVar("S", bound=StatusBase)
GENERATION = 1  # resources read from files have one generation


def set_conditions(
    status: S, new: list[tuple[str, bool | None, str, str]], *, progressing: str = "Pending"
) -> S:
    """`status` with `new` (type, ok, reason, message) merged in as the operator merges
    them (lastTransitionTime moves only when a condition's status changes) and the phase
    the operator would derive from them."""
    old = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in status.conditions]
    updates = [condition(ctype, ok, reason, message) for ctype, ok, reason, message in new]
    changed, _ = merge(old, updates, GENERATION)
    by_type: dict[str, dict[str, Any]] = {c["type"]: c for c in old}
    by_type.update({c["type"]: c for c in changed})
    status.conditions = [Condition.model_validate(c) for c in by_type.values()]
    status.observed_generation = GENERATION
    status.phase = phase(list(by_type.values()), progressing=progressing)
    return status


def is_ready(status: StatusBase) -> bool:
    return any(c.type == READY and c.status == "True" for c in status.conditions)
