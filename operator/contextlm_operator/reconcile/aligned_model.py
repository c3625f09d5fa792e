"""Reconcile an AlignedModel: serve its target revision (the latest promoted one, or the
base) and report which revision the pods really run."""

from __future__ import annotations

from typing import Any

from contextlm import alignment
from contextlm.api.aligned_model import AlignedModelSpec, Revision
from contextlm.api.conditions import ENGINE_READY, Reason, condition

from .. import kube
from ..render import aligned_model as render
from ..render.common import Owner, labels, selector
from ..settings import OperatorSettings
from .alignment_trigger import maybe_trigger
from .children import apply_hpa
from .common import prune, write_status
from .workloads import selector_string, serving_conditions


def target_revision(spec: AlignedModelSpec, status: dict[str, Any]) -> str:
    """The newest promoted revision in the history, else the base revision."""
    history = [Revision.model_validate(r) for r in status.get("revisions", [])]
    return alignment.serving_revision(history, spec.base.revision)


def reconcile_aligned_model(
    body: dict[str, Any], spec: AlignedModelSpec, settings: OperatorSettings
) -> str:
    owner = Owner.from_body(body)
    status = body.get("status") or {}
    revision = target_revision(spec, status)
    if spec.serving.engine == "tensorrt-llm":
        from .tensorrt import serve_tensorrt

        fields, conds = serve_tensorrt(owner, spec, settings, revision, status)
    else:
        fields, conds = _serve_transformers(owner, spec, settings, revision, status)
    fields.update(maybe_trigger(owner, spec, status, body["metadata"].get("creationTimestamp")))
    ready = next(c for c in conds if c["type"] == "Ready")
    progressing = "Ready" if ready["status"] == "True" else "Deploying"
    return write_status(body, fields=fields, new_conditions=conds, progressing=progressing)


def _serve_transformers(
    owner: Owner,
    spec: AlignedModelSpec,
    settings: OperatorSettings,
    revision: str,
    status: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    component = render.GENERATOR
    config = render.render_generator_config_map(owner, spec, settings, revision)
    kube.apply(config)
    deployment = kube.apply(render.render_generator_deployment(owner, spec, settings, revision))
    kube.apply(render.render_service(owner, component))
    apply_hpa(owner, component, spec.serving.autoscaling)
    keep = {config["metadata"]["name"]}
    if status.get("servingRevision"):
        keep.add(render.generator_config_name(owner, status["servingRevision"], spec))
    prune(owner.namespace, "ConfigMap", "v1", labels(owner, component), keep=keep)
    rolled, ready_replicas, conds = serving_conditions(
        deployment, selector(owner, component), f"revision {revision}"
    )
    fields = {
        "servingRevision": revision if rolled else status.get("servingRevision"),
        "endpoint": render.endpoint(owner, component),
        "replicas": ready_replicas,
        "selector": selector_string(selector(owner, component)),
        "engine": {
            "state": "Ready",
            "engineId": None,
            "message": "transformers loads the revision at start-up; no engine build",
        },
    }
    engine = condition(ENGINE_READY, True, Reason.AVAILABLE, "no engine build needed")
    return fields, [engine, *conds]
