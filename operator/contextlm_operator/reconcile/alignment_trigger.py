"""The AlignedModel's trigger: open an AlignmentRun once enough new feedback arrived,
or at a scheduled time when any new feedback arrived.

The run is named after the start of its feedback window, so a repeated reconcile opens
the same run, never a second one; no run opens while another of the model is active.
A schedule fires at most once per scheduled time: it is due when its latest time (UTC)
is later than the start of the last run (or the model's creation, before any run).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from contextlm.api import API_VERSION
from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.api.common import parse_time

from .. import kube
from ..conditions import now
from ..render.common import Owner, inputs_hash, labels
from .alignment_run import FINAL, _order, feedback_deployment, runs_of
from .feedback import feedback_counts, read_secret_key


def last_scheduled(schedule: str, at: datetime) -> datetime:
    """The latest time at or before `at` that the cron schedule names (UTC)."""
    from croniter import croniter

    # get_prev is strictly before its start: start a second later to include `at` itself.
    latest: datetime = croniter(schedule, at + timedelta(seconds=1)).get_prev(datetime)
    return latest


def schedule_due(schedule: str | None, *, last_start: datetime, at: datetime) -> bool:
    """Whether a scheduled time passed since `last_start`."""
    return schedule is not None and last_scheduled(schedule, at) > last_start


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
    trigger = spec.alignment.trigger
    started = last["metadata"]["creationTimestamp"] if last is not None else created
    scheduled = (
        fresh > 0
        and started is not None
        and schedule_due(trigger.schedule, last_start=parse_time(started), at=parse_time(now()))
    )
    if (fresh >= trigger.min_feedback or scheduled) and not active:
        # To the microsecond: the next window starts here, and a row recorded later in the
        # same second must not be left for a run of its own.
        until = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        window = {"until": until, **({"since": since} if since else {})}
        run: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "AlignmentRun",
            "metadata": {
                "name": f"{owner.name}-{inputs_hash(since or 'start', length=8)}",
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
