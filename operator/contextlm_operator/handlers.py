"""kopf registrations: thin, they only route to the reconcilers.

Every kind is reconciled from its watch events (creation, any change, the initial
listing on start-up) and from a timer, so drift in a child is repaired within one
timer period. Handlers return None so nothing lands in `status.<handler>`, and the
event handlers keep no progress annotations on the objects (GitOps tools see no drift).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from contextlm.api import (
    GROUP,
    VERSION,
    AlignedModelSpec,
    AlignmentRunSpec,
    ContextualDeploymentSpec,
    CorpusSpec,
    RetrievalStackSpec,
    conditions,
)
from contextlm.api.validation import field_errors

from . import kube, metrics
from .reconcile.aligned_model import reconcile_aligned_model
from .reconcile.alignment_run import reconcile_alignment_run
from .reconcile.common import object_lock, write_status
from .reconcile.contextual_deployment import reconcile_contextual_deployment
from .reconcile.corpus import reconcile_corpus
from .reconcile.retrieval_stack import reconcile_retrieval_stack
from .settings import OperatorSettings

log = logging.getLogger(__name__)
SETTINGS = OperatorSettings.from_env()

Reconciler = Callable[[dict[str, Any], Any, OperatorSettings], str]


def run(kind: str, spec_model: type[BaseModel], reconciler: Reconciler, body: Any) -> None:
    """Reconcile one object; any failure becomes a condition and a metric, never a crash."""
    obj = dict(body)
    if obj["metadata"].get("deletionTimestamp"):
        return
    started = time.perf_counter()
    outcome = "success"
    with object_lock(obj):
        fresh = kube.get(
            obj["apiVersion"], kind, obj["metadata"]["namespace"], obj["metadata"]["name"]
        )
        if fresh is None:
            return
        try:
            spec = spec_model.model_validate(fresh.get("spec", {}))
        except ValidationError as exc:
            outcome = "invalid"
            message = "; ".join(str(e) for e in field_errors(exc))
            write_status(
                fresh,
                fields={},
                new_conditions=[
                    conditions.condition(
                        conditions.READY, False, conditions.Reason.INVALID_SPEC, message
                    )
                ],
                progressing="Pending",
            )
            return
        try:
            reconciler(fresh, spec, SETTINGS)
        except Exception as exc:
            if isinstance(exc, ApiException) and _going_away(exc):
                # Its namespace is being deleted: nothing is left to do, and no error.
                log.info("%s %s/%s is going away: %s", kind, *_names(obj), exc.reason)
                return
            outcome = "error"
            log.exception("reconcile of %s %s/%s failed", kind, *_names(obj))
            raise kopf.TemporaryError(
                "reconcile failed; retrying", delay=SETTINGS.reconcile_interval
            ) from None
        finally:
            metrics.RECONCILES.labels(kind=kind, outcome=outcome).inc()
            metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - started)


def _names(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _going_away(exc: ApiException) -> bool:
    return exc.status == 404 or (exc.status == 403 and "NamespaceTerminating" in str(exc.body))


def _register(kind: str, plural: str, spec_model: type[BaseModel], reconciler: Reconciler) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"reconcile-{plural}")
    def on_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            metrics.forget(dict(body))
            return
        run(kind, spec_model, reconciler, body)

    @kopf.timer(GROUP, VERSION, plural, id=f"resync-{plural}", interval=SETTINGS.reconcile_interval)
    def on_timer(body: kopf.Body, **_: Any) -> None:
        run(kind, spec_model, reconciler, body)


_register("Corpus", "corpora", CorpusSpec, reconcile_corpus)
_register("RetrievalStack", "retrievalstacks", RetrievalStackSpec, reconcile_retrieval_stack)
_register("AlignedModel", "alignedmodels", AlignedModelSpec, reconcile_aligned_model)
_register("AlignmentRun", "alignmentruns", AlignmentRunSpec, reconcile_alignment_run)
_register(
    "ContextualDeployment",
    "contextualdeployments",
    ContextualDeploymentSpec,
    reconcile_contextual_deployment,
)


@kopf.on.delete(
    GROUP, VERSION, "corpora", when=lambda spec, **_: spec.get("artifactPolicy") == "Delete"
)
def delete_corpus_artifacts(body: kopf.Body, **_: Any) -> None:
    """Remove the snapshots from the store: only when the Corpus asks for it."""
    from contextlm.runtime.artifacts import snapshot_prefix
    from contextlm.runtime.store import open_store

    meta = body["metadata"]
    removed = open_store(SETTINGS.store).delete_prefix(
        snapshot_prefix(meta["namespace"], meta["name"]) + "/"
    )
    log.info(
        "deleted %d snapshot objects of corpus %s/%s", removed, meta["namespace"], meta["name"]
    )
