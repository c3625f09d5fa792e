"""Reconcile a Corpus: keep its sync Job (and refresh CronJob) in place and report the
latest published snapshot."""

from __future__ import annotations

from typing import Any

from contextlm.api.conditions import READY, SYNCED, Reason, condition, now
from contextlm.api.corpus import CorpusSpec

from .. import kube
from ..render import corpus as render
from ..render.common import Owner, labels
from ..settings import OperatorSettings
from .common import (
    JobOutcome,
    ensure_job,
    job_outcome,
    prune,
    record_job_outcome,
    write_status,
)


def reconcile_corpus(body: dict[str, Any], spec: CorpusSpec, settings: OperatorSettings) -> str:
    owner = Owner.from_body(body)
    status = body.get("status") or {}
    missing = _missing_secret(owner, spec)
    if missing:
        message = f"Secret {missing} named in spec.source.s3.secretRef does not exist"
        return write_status(
            body,
            fields={},
            new_conditions=[
                condition(SYNCED, False, Reason.SECRET_NOT_FOUND, message),
                _ready(status, message),
            ],
            progressing="Pending",
        )
    resync = body["metadata"].get("annotations", {}).get(render.RESYNC_ANNOTATION, "")
    inputs = render.sync_inputs(spec, settings, resync)
    kube.apply(render.render_sync_config_map(owner, spec, settings, inputs))
    _apply_refresh(owner, spec, settings, inputs)
    prune(
        owner.namespace,
        "ConfigMap",
        "v1",
        labels(owner, render.COMPONENT),
        keep={render.config_map_name(owner, inputs)},
    )

    fields: dict[str, Any] = {}
    if status.get("syncInputs") == inputs:
        synced = condition(SYNCED, True, Reason.SNAPSHOT_PUBLISHED, _summary(status))
    else:
        job = render.render_sync_job(owner, spec, settings, inputs)
        ensure_job(job)
        outcome = job_outcome(owner.namespace, job["metadata"]["name"])
        record_job_outcome(
            body, render.COMPONENT, outcome, condition_type=SYNCED, already_recorded=False
        )
        synced, fields = _from_outcome(outcome, inputs)
    fields.update(_latest_refresh(owner, status))
    merged = {**status, **fields}
    ready = _ready(merged, synced["message"])
    progressing = "Syncing" if synced["status"] != "True" else "Ready"
    return write_status(
        body, fields=fields, new_conditions=[synced, ready], progressing=progressing
    )


def _missing_secret(owner: Owner, spec: CorpusSpec) -> str | None:
    s3 = spec.source.s3
    if s3 and s3.secret_ref and not kube.secret_exists(owner.namespace, s3.secret_ref.name):
        return s3.secret_ref.name
    return None


def _apply_refresh(owner: Owner, spec: CorpusSpec, settings: OperatorSettings, inputs: str) -> None:
    cron = render.render_refresh_cronjob(owner, spec, settings, inputs)
    if cron is None:
        kube.delete("batch/v1", "CronJob", owner.namespace, f"{owner.name}-refresh")
    else:
        kube.apply(cron)


def _snapshot_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "snapshotId": result["snapshotId"],
        "documents": result.get("documents"),
        "chunks": result.get("chunks"),
        "failedCount": result.get("failed", 0),
        "failedDocuments": [
            {"uri": str(f.get("uri", ""))[:2048], "reason": str(f.get("reason", ""))[:1024]}
            for f in result.get("failedDocuments", [])[:50]
        ],
        "lastSyncTime": now(),
    }


def _from_outcome(outcome: JobOutcome, inputs: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if outcome.state == "succeeded" and outcome.result and "snapshotId" in outcome.result:
        fields = {**_snapshot_fields(outcome.result), "syncInputs": inputs}
        return condition(SYNCED, True, Reason.SNAPSHOT_PUBLISHED, _summary(fields)), fields
    if outcome.state in ("succeeded", "failed"):
        reason = (outcome.result or {}).get("reason") or Reason.JOB_FAILED
        if reason not in (
            Reason.SOURCE_UNAVAILABLE,
            Reason.BAD_CREDENTIALS,
            Reason.INVALID_CONFIG,
            Reason.SECRET_NOT_FOUND,
        ):
            reason = Reason.JOB_FAILED
        message = outcome.message or "the sync Job failed without a result"
        return condition(SYNCED, False, reason, message), {}
    if outcome.unschedulable:
        return condition(SYNCED, False, Reason.UNSCHEDULABLE, outcome.unschedulable), {}
    word = Reason.JOB_RUNNING if outcome.state == "running" else Reason.JOB_PENDING
    return condition(SYNCED, None, word, "the sync Job is " + outcome.state), {}


def _latest_refresh(owner: Owner, status: dict[str, Any]) -> dict[str, Any]:
    """A scheduled sync that finished after the last one we reported wins."""
    jobs = [
        j
        for j in kube.list_objects(
            "batch/v1", "Job", owner.namespace, labels(owner, render.COMPONENT)
        )
        if any(r.get("kind") == "CronJob" for r in j["metadata"].get("ownerReferences", []))
        and j.get("status", {}).get("completionTime")
    ]
    if not jobs:
        return {}
    latest = max(jobs, key=lambda j: j["status"]["completionTime"])
    if latest["status"]["completionTime"] <= (status.get("lastSyncTime") or ""):
        return {}
    outcome = job_outcome(owner.namespace, latest["metadata"]["name"])
    if outcome.state == "succeeded" and outcome.result and "snapshotId" in outcome.result:
        return _snapshot_fields(outcome.result)
    return {}


def _summary(fields: dict[str, Any]) -> str:
    return (
        f"snapshot {fields.get('snapshotId')}: {fields.get('documents')} documents,"
        f" {fields.get('chunks')} chunks, {fields.get('failedCount') or 0} failed"
    )


def _ready(status: dict[str, Any], detail: str) -> dict[str, Any]:
    if status.get("snapshotId"):
        return condition(
            READY, True, Reason.SNAPSHOT_PUBLISHED, f"serving snapshot {status['snapshotId']}"
        )
    return condition(READY, False, Reason.JOB_PENDING, detail or "no snapshot published yet")
