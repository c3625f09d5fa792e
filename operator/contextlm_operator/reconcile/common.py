"""What every reconciler shares: Job outcomes, pod scheduling problems, status writes."""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException

from contextlm.api import conditions

from .. import kube, metrics

log = logging.getLogger(__name__)

_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def object_lock(body: dict[str, Any]) -> threading.Lock:
    """One reconcile at a time per object (events and timers may overlap)."""
    return _locks[body["metadata"]["uid"]]


@dataclass(frozen=True)
class JobOutcome:
    state: Literal["missing", "pending", "running", "succeeded", "failed"]
    result: dict[str, Any] | None = None
    message: str = ""
    unschedulable: str = ""


def _termination_result(pod: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    for status in pod.get("status", {}).get("containerStatuses", []):
        terminated = status.get("state", {}).get("terminated") or {}
        text = (terminated.get("message") or "").strip()
        for line in reversed(text.splitlines()):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed, text
        if text or terminated:
            return None, text or terminated.get("reason", "")
    return None, ""


def unschedulable_message(pods: list[dict[str, Any]]) -> str:
    """The scheduler's message for the first pod it could not place, if any."""
    for pod in pods:
        for cond in pod.get("status", {}).get("conditions", []):
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond.get("message", "unschedulable"))
    return ""


def job_outcome(namespace: str, name: str) -> JobOutcome:
    job = kube.get("batch/v1", "Job", namespace, name)
    if job is None:
        return JobOutcome("missing")
    pods = kube.list_objects("v1", "Pod", namespace, {"job-name": name})
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
    conds = {
        c["type"]: c for c in job.get("status", {}).get("conditions", []) if c["status"] == "True"
    }
    if "Complete" in conds:
        for pod in reversed(pods):
            if pod.get("status", {}).get("phase") == "Succeeded":
                result, _ = _termination_result(pod)
                return JobOutcome("succeeded", result)
        return JobOutcome("succeeded", None, "job succeeded without a result")
    if "Failed" in conds:
        result, text = (None, "")
        for pod in reversed(pods):
            result, text = _termination_result(pod)
            if result or text:
                break
        message = (result or {}).get("error") or text or conds["Failed"].get("message", "")
        return JobOutcome("failed", result, str(message))
    running = any(p.get("status", {}).get("phase") == "Running" for p in pods)
    return JobOutcome(
        "running" if running else "pending", unschedulable=unschedulable_message(pods)
    )


def ensure_job(manifest: dict[str, Any]) -> None:
    """Create a Job if absent. Jobs are immutable and named by their inputs, so an
    existing one with this name is by construction the same work."""
    meta = manifest["metadata"]
    if kube.get("batch/v1", "Job", meta["namespace"], meta["name"]) is None:
        try:
            kube.apply(manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise


def prune(
    namespace: str, kind: str, api_version: str, selector: dict[str, str], keep: set[str]
) -> None:
    for obj in kube.list_objects(api_version, kind, namespace, selector):
        if obj["metadata"]["name"] not in keep:
            kube.delete(api_version, kind, namespace, obj["metadata"]["name"])


def stored(value: Any) -> Any:
    """What the server keeps of a merge-patched value: a null member removes the key,
    so comparing a desired `{"engineId": None}` with what was stored would find a change
    on every pass and patch status on every timer tick. Lists are replaced whole."""
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items() if v is not None}
    return value


def write_status(
    body: dict[str, Any],
    *,
    fields: dict[str, Any],
    new_conditions: list[dict[str, Any]],
    progressing: str,
    phase: str | None = None,
) -> str:
    """Merge conditions, derive the phase (unless a lifecycle `phase` is given), emit
    Events for conditions that turned False, and patch status only if something
    changed. Returns the phase."""
    current = body.get("status") or {}
    generation = body["metadata"].get("generation", 0)
    merged, turned_false = conditions.merge(
        current.get("conditions", []), new_conditions, generation
    )
    phase = phase or conditions.phase(merged, progressing=progressing)
    desired = {**fields, "conditions": merged, "phase": phase, "observedGeneration": generation}
    changed = {k: v for k, v in desired.items() if current.get(k) != stored(v)}
    if changed:
        kube.patch_status(body, changed)
    for cond in turned_false:
        kube.event(body, type_="Warning", reason=cond["reason"], message=cond["message"])
    ready = any(c["type"] == conditions.READY and c["status"] == "True" for c in merged)
    metrics.record_phase(body, phase, ready=ready)
    return phase


def record_job_outcome(
    body: dict[str, Any],
    component: str,
    outcome: JobOutcome,
    *,
    condition_type: str,
    already_recorded: bool,
) -> None:
    """Count a finished Job the first time its outcome reaches the owner's status, so a
    restarted operator reading the same status counts nothing again. A success is new
    unless the caller has it recorded; a failure is new unless the condition says so."""
    if outcome.state == "succeeded" and not already_recorded:
        metrics.job_finished(body, component, "succeeded")
    elif outcome.state == "failed":
        previous = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
        if previous.get(condition_type, {}).get("reason") != conditions.Reason.JOB_FAILED:
            metrics.job_finished(body, component, "failed")
