"""Serving a Deployment and reporting on it, shared by every kind that serves pods."""

from __future__ import annotations

from typing import Any

from contextlm.api.conditions import READY, SERVING, Reason, condition

from .. import kube
from .common import unschedulable_message


def rollout(deployment: dict[str, Any]) -> tuple[bool, int, int]:
    """(rollout complete, ready replicas, desired replicas) of a Deployment."""
    spec, st = deployment.get("spec", {}), deployment.get("status", {})
    desired = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas", 0))
    complete = (
        st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)
        and int(st.get("updatedReplicas", 0)) == desired
        and int(st.get("availableReplicas", 0)) == desired
        and int(st.get("replicas", 0)) == desired
    )
    return complete, ready, desired


def serving_conditions(
    deployment: dict[str, Any], pod_selector: dict[str, str], what: str
) -> tuple[bool, int, list[dict[str, Any]]]:
    """(rolled out, ready replicas, [Serving, Ready]) for a Deployment serving `what`.
    Ready is True only when the pods really are ready; an unschedulable pod is reported
    with the scheduler's message."""
    rolled, ready_replicas, desired = rollout(deployment)
    if rolled and desired > 0:
        serving = condition(
            SERVING, True, Reason.AVAILABLE, f"{ready_replicas}/{desired} replicas serve {what}"
        )
    else:
        namespace = deployment["metadata"]["namespace"]
        blocked = unschedulable_message(kube.list_objects("v1", "Pod", namespace, pod_selector))
        if blocked:
            serving = condition(SERVING, False, Reason.UNSCHEDULABLE, blocked)
        elif desired == 0:
            serving = condition(SERVING, False, Reason.PODS_NOT_READY, "scaled to zero replicas")
        else:
            serving = condition(
                SERVING,
                None,
                Reason.ROLLING_OUT,
                f"{ready_replicas}/{desired} replicas ready for {what}",
            )
    ready = condition(READY, serving["status"] == "True", serving["reason"], serving["message"])
    return rolled, ready_replicas, [serving, ready]


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
