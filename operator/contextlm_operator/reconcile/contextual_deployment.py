"""Reconcile a ContextualDeployment: wait for a serving retriever and model, migrate the
feedback store, roll the gateway, and report endpoint, versions and feedback counts."""

from __future__ import annotations

from typing import Any

from contextlm.api import API_VERSION
from contextlm.api.conditions import (
    DEPENDENCIES_READY,
    READY,
    Reason,
    condition,
)
from contextlm.api.conditions import (
    FEEDBACK_STORE_MIGRATED as MIGRATED,
)
from contextlm.api.contextual_deployment import ContextualDeploymentSpec

from .. import kube
from ..render import aligned_model as model_render
from ..render import contextual_deployment as render
from ..render.common import Owner, labels, selector
from ..settings import OperatorSettings
from .children import apply_hpa
from .common import ensure_job, job_outcome, prune, write_status
from .feedback import feedback_counts, read_secret_key
from .workloads import selector_string, serving_conditions


def _ready(obj: dict[str, Any] | None) -> bool:
    conds = ((obj or {}).get("status") or {}).get("conditions", [])
    return any(c["type"] == READY and c["status"] == "True" for c in conds)


def _dependencies(
    owner: Owner, spec: ContextualDeploymentSpec
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[tuple[str, str]]]:
    stack = kube.get(API_VERSION, "RetrievalStack", owner.namespace, spec.retrieval_ref.name)
    model = kube.get(API_VERSION, "AlignedModel", owner.namespace, spec.model_ref.name)
    problems = []
    if stack is None:
        problems.append(
            ("RetrievalStackNotFound", f"RetrievalStack {spec.retrieval_ref.name} not found")
        )
    elif not _ready(stack) or not (stack.get("status") or {}).get("servingIndexVersion"):
        problems.append(
            ("RetrievalNotReady", f"RetrievalStack {spec.retrieval_ref.name} is not serving yet")
        )
    if model is None:
        problems.append(("AlignedModelNotFound", f"AlignedModel {spec.model_ref.name} not found"))
    elif not _ready(model) or not (model.get("status") or {}).get("servingRevision"):
        problems.append(("ModelNotReady", f"AlignedModel {spec.model_ref.name} is not serving yet"))
    return stack, model, problems


def _budget_problem(spec: ContextualDeploymentSpec, model: dict[str, Any]) -> str | None:
    serving = model["spec"].get("serving", {})
    max_input = int(serving.get("maxInputLength", 4096))
    max_output = int(serving.get("maxOutputLength", 512))
    if spec.prompt.max_context_tokens >= max_input:
        return (
            f"prompt.maxContextTokens ({spec.prompt.max_context_tokens}) must be below the model's"
            f" serving.maxInputLength ({max_input}): the question and template need room too"
        )
    if spec.prompt.max_tokens > max_output:
        return (
            f"prompt.maxTokens ({spec.prompt.max_tokens}) exceeds the model's"
            f" serving.maxOutputLength ({max_output})"
        )
    return None


def _missing_secrets(owner: Owner, spec: ContextualDeploymentSpec) -> list[str]:
    refs = []
    if spec.feedback.store.postgres:
        refs.append(spec.feedback.store.postgres.secret_ref.name)
    if spec.gateway.auth:
        refs.append(spec.gateway.auth.secret_ref.name)
    return [name for name in refs if not kube.secret_exists(owner.namespace, name)]


def reconcile_contextual_deployment(
    body: dict[str, Any], spec: ContextualDeploymentSpec, settings: OperatorSettings
) -> str:
    owner = Owner.from_body(body)
    status = body.get("status") or {}
    stack, model, problems = _dependencies(owner, spec)
    if problems:
        reason, message = problems[0]
        message = "; ".join(m for _, m in problems)
        conds = [
            condition(DEPENDENCIES_READY, False, reason, message),
            condition(READY, False, reason, message),
        ]
        return write_status(body, fields={}, new_conditions=conds, progressing="Pending")
    assert stack is not None and model is not None
    deps = condition(
        DEPENDENCIES_READY, True, Reason.DEPENDENCIES_READY, "retrieval and model serve"
    )
    invalid = _budget_problem(spec, model)
    missing = _missing_secrets(owner, spec)
    if invalid or missing:
        reason = Reason.INVALID_SPEC if invalid else Reason.SECRET_NOT_FOUND
        message = invalid or f"Secret(s) {', '.join(missing)} named in the spec do not exist"
        return write_status(
            body,
            fields={},
            new_conditions=[deps, condition(READY, False, reason, message)],
            progressing="Pending",
        )

    migrated = _migrate(owner, spec, settings)
    if migrated["status"] != "True":
        ready = condition(READY, False, migrated["reason"], migrated["message"])
        return write_status(
            body, fields={}, new_conditions=[deps, migrated, ready], progressing="Migrating"
        )

    stack_status, model_status = stack["status"], model["status"]
    index_version = stack_status["servingIndexVersion"]
    revision = model_status["servingRevision"]
    component = (
        "triton"
        if model["spec"].get("serving", {}).get("engine") == "tensorrt-llm"
        else model_render.GENERATOR
    )
    model_owner = Owner.from_body(model)
    config = render.gateway_config(
        owner,
        spec,
        settings,
        retriever_url=stack_status["endpoint"],
        generator_url=model_render.endpoint(model_owner, component),
        generator_grpc=model_render.grpc_endpoint(model_owner, component),
        tokenizer=model["spec"]["base"]["model"],
        model_revision=revision,
    )
    if spec.feedback.store.backend == "sqlite":
        kube.apply(render.render_feedback_volume(owner))
    config_map, deployment = render.render_gateway(owner, spec, settings, config)
    kube.apply(config_map)
    applied = kube.apply(deployment)
    kube.apply(render.render_gateway_service(owner))
    apply_hpa(owner, render.GATEWAY, spec.gateway.autoscaling)
    prune(
        owner.namespace,
        "ConfigMap",
        "v1",
        labels(owner, render.GATEWAY),
        keep={config_map["metadata"]["name"]},
    )

    rolled, ready_replicas, conds = serving_conditions(
        applied, selector(owner, render.GATEWAY), f"index {index_version} with revision {revision}"
    )
    fields: dict[str, Any] = {
        "endpoint": render.endpoint(owner),
        "indexVersion": index_version if rolled else status.get("indexVersion"),
        "modelRevision": revision if rolled else status.get("modelRevision"),
        "replicas": ready_replicas,
        "selector": selector_string(selector(owner, render.GATEWAY)),
    }
    counts = _counts(owner, spec)
    if counts is not None:
        fields["feedback"] = counts
    return write_status(
        body, fields=fields, new_conditions=[deps, migrated, *conds], progressing="Deploying"
    )


def _migrate(
    owner: Owner, spec: ContextualDeploymentSpec, settings: OperatorSettings
) -> dict[str, Any]:
    if spec.feedback.store.backend != "postgres":
        return condition(
            MIGRATED, True, "EmbeddedStore", "SQLite is migrated by the gateway at start-up"
        )
    inputs = render.migrate_inputs(spec, settings)
    config_map, job = render.render_migrate(owner, spec, settings, inputs)
    kube.apply(config_map)
    ensure_job(job)
    prune(
        owner.namespace,
        "ConfigMap",
        "v1",
        labels(owner, render.MIGRATE),
        keep={config_map["metadata"]["name"]},
    )
    outcome = job_outcome(owner.namespace, job["metadata"]["name"])
    if outcome.state == "succeeded":
        return condition(MIGRATED, True, "Migrated", "feedback store schema is at head")
    if outcome.state == "failed":
        return condition(MIGRATED, False, Reason.JOB_FAILED, outcome.message or "migration failed")
    return condition(MIGRATED, None, Reason.JOB_RUNNING, "migrating the feedback store")


def _counts(owner: Owner, spec: ContextualDeploymentSpec) -> dict[str, int] | None:
    postgres = spec.feedback.store.postgres
    if postgres is None:
        return None
    dsn = read_secret_key(owner.namespace, postgres.secret_ref)
    return feedback_counts(owner.namespace, owner.name, dsn) if dsn else None
