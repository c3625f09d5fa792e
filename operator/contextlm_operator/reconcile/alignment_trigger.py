"""The AlignedModel's trigger: open an AlignmentRun once enough new feedback arrived,
or at a scheduled time when any new feedback arrived.

When it fires is `contextlm.alignment.check_trigger` (shared with `contextlm align`).
The run is named after the start of its feedback window, so a repeated reconcile opens
the same run, never a second one; no run opens while another of the model is active.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from contextlm import alignment
from contextlm.alignment import FINAL
from contextlm.api import API_VERSION
from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.api.common import parse_time

from .. import kube
from ..render.common import Owner, labels
from .alignment_run import _order, feedback_deployment, runs_of
from .feedback import feedback_counts, read_secret_key


def maybe_trigger(
    owner: Owner, spec: AlignedModelSpec, status: dict[str, Any], created: str | None = None
) -> dict[str, Any]:
    """Status fields to report (new feedback since the last run); opens a run when due."""
    if not spec.alignment.enabled:
        return {}
    deployment = feedback_deployment(owner.namespace, owner.name, spec)
    if deployment is None or deployment[1].feedback.store.postgres is None:
        return {}
    runs = runs_of(owner.namespace, owner.name)
    last = max(runs, key=_order) if runs else None
    since = None
    if last is not None:
        window = last["spec"].get("feedbackWindow") or {}
        since = window.get("until") or last["metadata"]["creationTimestamp"]
    dsn = read_secret_key(owner.namespace, deployment[1].feedback.store.postgres.secret_ref)
    counts = (
        feedback_counts(
            owner.namespace, deployment[0], dsn, since=parse_time(since) if since else None
        )
        if dsn
        else None
    )
    if counts is None:
        return {}
    fresh = counts["up"] + counts["down"]
    active = any((r.get("status") or {}).get("phase") not in FINAL for r in runs)
    started = last["metadata"]["creationTimestamp"] if last is not None else created
    check = alignment.check_trigger(
        spec.alignment, fresh=fresh, last_start=started, at=datetime.now(UTC)
    )
    if check.due and not active:
        window = {"until": alignment.window_until(), **({"since": since} if since else {})}
        run: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "AlignmentRun",
            "metadata": {
                "name": alignment.run_name(owner.name, since),
                "namespace": owner.namespace,
                "labels": labels(owner, "alignment"),
            },
            "spec": {
                "modelRef": {"name": owner.name},
                "feedbackWindow": window,
                "baseRevision": status.get("servingRevision") or spec.base.revision,
            },
        }
        if kube.get(API_VERSION, "AlignmentRun", owner.namespace, run["metadata"]["name"]) is None:
            kube.apply(run)
    return {"feedbackSinceLastRun": fresh}
