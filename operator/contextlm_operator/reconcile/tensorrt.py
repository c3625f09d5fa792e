"""Serve an AlignedModel with Triton + TensorRT-LLM: build the engine of the target
revision, then roll Triton to it. The serving revision changes only once Triton runs
the new engine; a failed build leaves the old one serving."""

from __future__ import annotations

from typing import Any

from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.api.conditions import ENGINE_READY, Reason, condition

from .. import kube
from ..render import aligned_model as model_render
from ..render import tensorrt as render
from ..render.common import Owner, labels, selector
from ..settings import OperatorSettings
from .children import apply_hpa
from .common import ensure_job, job_outcome, prune, record_job_outcome
from .workloads import selector_string, serving_conditions


def serve_tensorrt(
    owner: Owner,
    spec: AlignedModelSpec,
    settings: OperatorSettings,
    revision: str,
    status: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kube.apply(render.render_cache_volume(owner, spec))
    engine = render.engine_id(spec, revision)
    current = status.get("engine") or {}
    fields: dict[str, Any] = {}
    if current.get("engineId") == engine and current.get("state") == "Ready":
        built = condition(ENGINE_READY, True, Reason.AVAILABLE, f"engine {engine}")
    else:
        built, fields = _build(owner, spec, settings, revision, engine, status)
    serving_engine: str | None
    serving_revision: str | None
    if built["status"] == "True":
        serving_engine, serving_revision = engine, revision
    else:  # keep serving what Triton runs now while the new engine builds
        serving_engine, serving_revision = _deployed(owner)
    conds = [built]
    if serving_engine is None:
        conds.append(condition("Ready", False, built["reason"], built["message"]))
        return fields, conds
    served: str = serving_revision or revision
    repository, files = render.repository_config_map(owner, spec, served, serving_engine)
    kube.apply(repository)
    deployment = kube.apply(
        render.render_triton_deployment(
            owner, spec, settings, revision=served, engine=serving_engine,
            repository=repository, files=files,
        )
    )  # fmt: skip
    kube.apply(model_render.render_service(owner, render.TRITON))
    apply_hpa(owner, render.TRITON, spec.serving.autoscaling)
    prune(
        owner.namespace,
        "ConfigMap",
        "v1",
        labels(owner, render.TRITON),
        keep={repository["metadata"]["name"]},
    )
    rolled, ready_replicas, serve_conds = serving_conditions(
        deployment,
        selector(owner, render.TRITON),
        f"revision {served} (engine {serving_engine})",
    )
    fields.update(
        servingRevision=served if rolled else status.get("servingRevision"),
        endpoint=model_render.endpoint(owner, render.TRITON),
        replicas=ready_replicas,
        selector=selector_string(selector(owner, render.TRITON)),
    )
    return fields, [*conds, *serve_conds]


def _deployed(owner: Owner) -> tuple[str | None, str | None]:
    """(engine, revision) the Triton Deployment runs now, read from its pod template."""
    deployment = kube.get("apps/v1", "Deployment", owner.namespace, f"{owner.name}-{render.TRITON}")
    notes = ((deployment or {}).get("spec", {}).get("template", {}).get("metadata", {})
             .get("annotations", {}))  # fmt: skip
    return notes.get("contextlm.io/engine-id"), notes.get("contextlm.io/revision")


def _build(
    owner: Owner,
    spec: AlignedModelSpec,
    settings: OperatorSettings,
    revision: str,
    engine: str,
    status: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    config_maps, job = render.render_engine_build(owner, spec, settings, revision)
    for cm in config_maps:
        kube.apply(cm)
    ensure_job(job)
    outcome = job_outcome(owner.namespace, job["metadata"]["name"])
    body = {
        "kind": "AlignedModel",
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "status": status,
    }
    record_job_outcome(
        body, render.ENGINE, outcome, condition_type=ENGINE_READY, already_recorded=False
    )
    if outcome.state == "succeeded":
        state = {"state": "Ready", "engineId": engine, "message": f"built for revision {revision}"}
        return condition(ENGINE_READY, True, Reason.AVAILABLE, f"engine {engine}"), {
            "engine": state
        }
    if outcome.state == "failed":
        message = outcome.message or "the engine build failed"
        state = {"state": "Failed", "engineId": engine, "message": message[:4096]}
        return condition(ENGINE_READY, False, Reason.JOB_FAILED, message), {"engine": state}
    if outcome.unschedulable:
        state = {"state": "Pending", "engineId": engine, "message": outcome.unschedulable[:4096]}
        return condition(ENGINE_READY, False, Reason.UNSCHEDULABLE, outcome.unschedulable), {
            "engine": state
        }
    state = {
        "state": "Building",
        "engineId": engine,
        "message": f"building for revision {revision}",
    }
    return condition(ENGINE_READY, None, Reason.JOB_RUNNING, state["message"]), {"engine": state}
