"""Reconcile an AlignmentRun: Pending -> Training (export, train) -> Evaluating ->
Promoted | Rejected | Failed. One run at a time per model; only a passed gate changes
what serves, by adding a promoted revision to the AlignedModel's history."""

from __future__ import annotations

from typing import Any

from contextlm import alignment
from contextlm.alignment import EVALUATE, EXPORT, FINAL, STEPS, TRAIN
from contextlm.api import API_VERSION
from contextlm.api.aligned_model import AlignedModelSpec, Revision
from contextlm.api.alignment_run import AlignmentRunSpec
from contextlm.api.conditions import DEPENDENCIES_READY, SUCCEEDED, Reason, condition, now
from contextlm.api.contextual_deployment import ContextualDeploymentSpec

from .. import kube, metrics
from ..render import alignment_run as render
from ..render.common import Owner
from ..settings import OperatorSettings
from .common import ensure_job, job_outcome, record_job_outcome, write_status


def feedback_deployment(
    namespace: str, model: str, model_spec: AlignedModelSpec
) -> tuple[str, ContextualDeploymentSpec] | None:
    """The ContextualDeployment whose feedback trains `model`."""
    if model_spec.feedback_from:
        body = kube.get(
            API_VERSION, "ContextualDeployment", namespace, model_spec.feedback_from.name
        )
        found = [body] if body else []
    else:
        found = [
            d
            for d in kube.list_objects(API_VERSION, "ContextualDeployment", namespace, {})
            if d["spec"].get("modelRef", {}).get("name") == model
        ]
    if not found:
        return None
    first = min(found, key=lambda d: d["metadata"]["name"])
    return first["metadata"]["name"], ContextualDeploymentSpec.model_validate(first["spec"])


def runs_of(namespace: str, model: str) -> list[dict[str, Any]]:
    return [
        r
        for r in kube.list_objects(API_VERSION, "AlignmentRun", namespace, {})
        if r["spec"].get("modelRef", {}).get("name") == model
    ]


def _order(run: dict[str, Any]) -> tuple[str, str]:
    return run["metadata"].get("creationTimestamp", ""), run["metadata"]["name"]


def reconcile_alignment_run(
    body: dict[str, Any], spec: AlignmentRunSpec, settings: OperatorSettings
) -> str:
    owner = Owner.from_body(body)
    status = body.get("status") or {}
    if status.get("phase") in FINAL:
        return str(status["phase"])
    model_name = spec.model_ref.name

    def pending(reason: str, message: str) -> str:
        conds = [condition(DEPENDENCIES_READY, False, reason, message)]
        return write_status(
            body, fields={}, new_conditions=conds, progressing="Pending", phase="Pending"
        )

    model = kube.get(API_VERSION, "AlignedModel", owner.namespace, model_name)
    if model is None:
        return pending("AlignedModelNotFound", f"AlignedModel {model_name} not found")
    model_spec = AlignedModelSpec.model_validate(model["spec"])
    deployment = feedback_deployment(owner.namespace, model_name, model_spec)
    if deployment is None:
        return pending(
            "NoFeedbackSource", f"no ContextualDeployment serves AlignedModel {model_name}"
        )
    if deployment[1].feedback.store.backend != "postgres":
        return _finish(body, "Failed", Reason.INVALID_SPEC,
                       "training reads feedback from PostgreSQL; the embedded SQLite store lives on"
                       " the gateway's volume", fields={})  # fmt: skip
    earlier = [
        r for r in runs_of(owner.namespace, model_name)
        if (r.get("status") or {}).get("phase") not in FINAL and _order(r) < _order(body)
    ]  # fmt: skip
    if earlier:
        return pending("WaitingForRun", f"AlignmentRun {earlier[0]['metadata']['name']} runs first")

    model_status = model.get("status") or {}
    base = (
        spec.base_revision
        or status.get("baseRevision")
        or model_status.get("servingRevision")
        or model_spec.base.revision
    )
    fields: dict[str, Any] = {"baseRevision": base, "startTime": status.get("startTime") or now()}
    deps = condition(
        DEPENDENCIES_READY, True, Reason.DEPENDENCIES_READY, f"feedback of {deployment[0]}"
    )
    stack = kube.get(
        API_VERSION, "RetrievalStack", owner.namespace, deployment[1].retrieval_ref.name
    )
    retriever_url = ((stack or {}).get("status") or {}).get("endpoint")
    merged = {**status, **fields}
    for step in STEPS:
        if _done(step, merged):
            continue
        config = render.step_config(
            owner, step, run=spec, model=model_spec, deployment=deployment, base_revision=base,
            candidate=merged.get("outputRevision"), retriever_url=retriever_url, settings=settings,
        )  # fmt: skip
        config_map, job = render.render_step(
            owner, step, config, model=model_spec, deployment=deployment[1], settings=settings
        )
        kube.apply(config_map)
        ensure_job(job)
        outcome = job_outcome(owner.namespace, job["metadata"]["name"])
        record_job_outcome(body, step, outcome, condition_type=SUCCEEDED, already_recorded=False)
        phase = "Evaluating" if step == EVALUATE else "Training"
        if outcome.state == "failed" or (outcome.state == "succeeded" and not outcome.result):
            message = f"{step}: {outcome.message or 'the Job finished without a result'}"
            return _finish(
                body, "Failed", Reason.JOB_FAILED, message, fields=fields, model=model_name
            )
        if outcome.state != "succeeded":
            if outcome.unschedulable:
                cond = condition(SUCCEEDED, False, Reason.UNSCHEDULABLE, outcome.unschedulable)
            else:
                cond = condition(SUCCEEDED, None, Reason.JOB_RUNNING, f"{step} is running")
            if step == EVALUATE:
                _set_candidate(model, merged.get("outputRevision"))
            return write_status(body, fields=fields, new_conditions=[deps, cond],
                                progressing=phase, phase=phase)  # fmt: skip
        assert outcome.result is not None
        fields.update(_step_fields(step, outcome.result))
        merged.update(fields)
    return _decide(body, spec, model, merged, fields)


def _done(step: str, status: dict[str, Any]) -> bool:
    key = {EXPORT: "dataset", TRAIN: "outputRevision", EVALUATE: "gate"}[step]
    return bool(status.get(key))


def _get(result: dict[str, Any], *names: str, default: Any = 0) -> Any:
    for name in names:
        if name in result:
            return result[name]
    return default


def _step_fields(step: str, result: dict[str, Any]) -> dict[str, Any]:
    if step == EXPORT:
        counts = result["dataset"]  # `contextlm export`'s result line (Counts.status())
        return {
            "dataset": {
                "desirable": int(counts["desirable"]),
                "undesirable": int(counts["undesirable"]),
                "pairs": int(counts["pairs"]),
                "heldOut": int(counts["heldOut"]),
                "duplicatesDropped": int(counts["duplicatesDropped"]),
            }
        }
    if step == TRAIN:
        return {
            "outputRevision": str(result["revision"]),
            "trainLoss": _get(result, "trainLoss", "train_loss", default=None),
            "steps": _get(result, "steps", default=None),
        }
    return {
        "gate": {
            "metric": result["metric"],
            "candidateScore": float(result["candidateScore"]),
            "baselineScore": float(result["baselineScore"]),
            "minImprovement": float(result["minImprovement"]),
            "decision": result["decision"],
        }
    }


def _set_candidate(model: dict[str, Any], revision: str | None) -> None:
    if revision and (model.get("status") or {}).get("candidateRevision") != revision:
        kube.patch_status(model, {"candidateRevision": revision})


def _decide(
    body: dict[str, Any],
    spec: AlignmentRunSpec,
    model: dict[str, Any],
    status: dict[str, Any],
    fields: dict[str, Any],
) -> str:
    verdict = alignment.decide(
        status["gate"], run=body["metadata"]["name"], run_spec=spec,
        base_revision=status.get("baseRevision"), output_revision=status["outputRevision"],
        created=now(),
    )  # fmt: skip
    history = [Revision.model_validate(r) for r in (model.get("status") or {}).get("revisions", [])]
    revisions = alignment.with_revision(history, verdict.revision)
    kube.patch_status(
        model,
        {
            "revisions": [
                r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in revisions
            ],
            "candidateRevision": None,
        },
    )
    ns, name = body["metadata"]["namespace"], spec.model_ref.name
    metrics.ALIGNMENT_SCORE.labels(ns, name, "candidate").set(verdict.gate.candidate_score)
    metrics.ALIGNMENT_SCORE.labels(ns, name, "baseline").set(verdict.gate.baseline_score)
    return _finish(body, verdict.phase, verdict.reason, verdict.message, fields=fields, model=name)


def _finish(
    body: dict[str, Any],
    phase: str,
    reason: str,
    message: str,
    *,
    fields: dict[str, Any],
    model: str | None = None,
) -> str:
    ok = phase != "Failed"
    fields = {**fields, "completionTime": now()}
    metrics.ALIGNMENT_RUNS.labels(body["metadata"]["namespace"], model or "", phase.lower()).inc()
    return write_status(
        body,
        fields=fields,
        new_conditions=[condition(SUCCEEDED, ok, reason, message)],
        progressing=phase,
        phase=phase,
    )
