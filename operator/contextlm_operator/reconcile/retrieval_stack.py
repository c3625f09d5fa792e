"""Reconcile a RetrievalStack: wait for its corpus, build the index version for the
corpus snapshot, and roll the retriever to it once it is built."""

from __future__ import annotations

from typing import Any

from contextlm.api import API_VERSION
from contextlm.api.conditions import DEPENDENCIES_READY, INDEX_BUILT, READY, Reason, condition
from contextlm.api.retrieval_stack import RetrievalStackSpec

from .. import kube
from ..render import retrieval_stack as render
from ..render.common import Owner, labels, selector
from ..settings import OperatorSettings
from .children import apply_hpa
from .common import ensure_job, job_outcome, prune, record_job_outcome, write_status
from .workloads import selector_string, serving_conditions


def reconcile_retrieval_stack(
    body: dict[str, Any], spec: RetrievalStackSpec, settings: OperatorSettings
) -> str:
    owner = Owner.from_body(body)
    status = body.get("status") or {}
    corpus_name = spec.corpus_ref.name
    corpus = kube.get(API_VERSION, "Corpus", owner.namespace, corpus_name)
    snapshot = ((corpus or {}).get("status") or {}).get("snapshotId")
    if corpus is None or not snapshot:
        reason = Reason.CORPUS_NOT_FOUND if corpus is None else Reason.CORPUS_NOT_READY
        message = (
            f"Corpus {corpus_name} not found in namespace {owner.namespace}"
            if corpus is None
            else f"Corpus {corpus_name} has no published snapshot yet"
        )
        deps = condition(DEPENDENCIES_READY, False, reason, message)
        serving = status.get("servingIndexVersion")
        if serving:  # keep serving the index that is loaded
            conds = [deps, *_serve(owner, spec, settings, serving, status)[1]]
        else:
            conds = [deps, condition(READY, False, reason, message)]
        return write_status(body, fields={}, new_conditions=conds, progressing="Pending")

    deps = condition(DEPENDENCIES_READY, True, Reason.DEPENDENCIES_READY, f"snapshot {snapshot}")
    fields: dict[str, Any] = {}
    inputs = render.index_inputs(spec, snapshot, settings)
    built = status.get("builtIndexVersion")
    keep_config = set()
    if status.get("indexInputs") == inputs and built:
        index = condition(INDEX_BUILT, True, Reason.INDEX_PUBLISHED, f"index {built}")
    else:
        index, fields = _build(body, owner, spec, settings, snapshot, built, inputs)
        built = fields.get("builtIndexVersion", built)
        keep_config.add(f"{owner.name}-index-{inputs}")
    prune(owner.namespace, "ConfigMap", "v1", labels(owner, render.INDEX), keep=keep_config)

    conds = [deps, index]
    if built:
        serve_fields, serve_conds = _serve(owner, spec, settings, built, status)
        fields.update(serve_fields)
        conds += serve_conds
    else:
        conds.append(condition(READY, False, index["reason"], "no index version built yet"))
    ready = next(c for c in conds if c["type"] == READY)
    progressing = "Ready" if ready["status"] == "True" else "Indexing"
    return write_status(body, fields=fields, new_conditions=conds, progressing=progressing)


def _build(
    body: dict[str, Any],
    owner: Owner,
    spec: RetrievalStackSpec,
    settings: OperatorSettings,
    snapshot: str,
    previous: str | None,
    inputs: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    kube.apply(
        render.render_index_config_map(
            owner,
            spec,
            settings,
            corpus=spec.corpus_ref.name,
            snapshot_id=snapshot,
            previous_version=previous,
            inputs=inputs,
        )
    )
    job = render.render_index_job(owner, spec, settings, inputs)
    ensure_job(job)
    outcome = job_outcome(owner.namespace, job["metadata"]["name"])
    record_job_outcome(
        body, render.INDEX, outcome, condition_type=INDEX_BUILT, already_recorded=False
    )
    if outcome.state == "succeeded" and outcome.result and "indexVersion" in outcome.result:
        version = outcome.result["indexVersion"]
        fields = {
            "builtIndexVersion": version,
            "snapshotId": snapshot,
            "chunksIndexed": outcome.result.get("chunks"),
            "indexInputs": inputs,
        }
        message = (
            f"index {version}: {outcome.result.get('chunks')} chunks,"
            f" {outcome.result.get('embedded')} embedded, {outcome.result.get('reused')} reused"
        )
        return condition(INDEX_BUILT, True, Reason.INDEX_PUBLISHED, message), fields
    if outcome.state in ("succeeded", "failed"):
        message = outcome.message or "the index Job failed without a result"
        return condition(INDEX_BUILT, False, Reason.JOB_FAILED, message), {}
    if outcome.unschedulable:
        return condition(INDEX_BUILT, False, Reason.UNSCHEDULABLE, outcome.unschedulable), {}
    word = Reason.JOB_RUNNING if outcome.state == "running" else Reason.JOB_PENDING
    return condition(INDEX_BUILT, None, word, f"building the index for snapshot {snapshot}"), {}


def _serve(
    owner: Owner,
    spec: RetrievalStackSpec,
    settings: OperatorSettings,
    version: str,
    status: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kube.apply(render.render_retriever_config_map(owner, spec, settings, version))
    deployment = kube.apply(render.render_retriever_deployment(owner, spec, settings, version))
    kube.apply(render.render_retriever_service(owner))
    apply_hpa(owner, render.RETRIEVER, spec.serving.autoscaling)
    keep = {render.retriever_config_name(owner, version)}
    if status.get("servingIndexVersion"):
        keep.add(render.retriever_config_name(owner, status["servingIndexVersion"]))
    prune(owner.namespace, "ConfigMap", "v1", labels(owner, render.RETRIEVER), keep=keep)

    rolled, ready_replicas, conds = serving_conditions(
        deployment, selector(owner, render.RETRIEVER), f"index {version}"
    )
    fields = {
        "servingIndexVersion": version if rolled else status.get("servingIndexVersion"),
        "endpoint": render.endpoint(owner),
        "replicas": ready_replicas,
        "selector": selector_string(selector(owner, render.RETRIEVER)),
    }
    return fields, conds
