"""Children of an AlignmentRun: the export, train and evaluate Jobs, in that order.

A run is immutable, so each Job is named after the run and its step: a retry of the
operator finds the same Job and never repeats the work.
"""

from __future__ import annotations

from typing import Any

from contextlm import alignment
from contextlm.alignment import EVALUATE, EXPORT, TRAIN, Paths
from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.api.alignment_run import AlignmentRunSpec
from contextlm.api.contextual_deployment import ContextualDeploymentSpec
from contextlm.runtime.config import FeedbackSource

from ..settings import OperatorSettings
from .common import WORK_DIR, Owner, config_map, job, resources, store_env

EVAL_DIR = "/etc/contextlm-eval"
DSN_ENV = "CONTEXTLM_FEEDBACK_DSN"
POD_PATHS = Paths(work_dir=WORK_DIR, cache_dir=f"{WORK_DIR}/models", evaluation_set=EVAL_DIR)


def job_name(owner: Owner, step: str) -> str:
    return f"{owner.name}-{step}"


def step_config(
    owner: Owner,
    step: str,
    *,
    run: AlignmentRunSpec,
    model: AlignedModelSpec,
    deployment: tuple[str, ContextualDeploymentSpec],
    base_revision: str,
    candidate: str | None,
    retriever_url: str | None,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The step's config (contextlm.alignment), with a pod's paths and the feedback DSN
    from the deployment's Secret (see render_step)."""
    deployment_name, cd = deployment
    feedback = FeedbackSource(
        backend=cd.feedback.store.backend,
        dsn_env=DSN_ENV,
        deployment=f"{owner.namespace}/{deployment_name}",
    )
    config = alignment.step_config(
        step, namespace=owner.namespace, run=owner.name, run_spec=run, model_spec=model,
        deployment=cd, feedback=feedback, base_revision=base_revision, candidate=candidate,
        retriever_url=retriever_url, store=settings.store, paths=POD_PATHS,
    )  # fmt: skip
    dumped: dict[str, Any] = config.model_dump(mode="json")
    return dumped


def render_step(
    owner: Owner,
    step: str,
    config: dict[str, Any],
    *,
    model: AlignedModelSpec,
    deployment: ContextualDeploymentSpec,
    settings: OperatorSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Job) of one step."""
    name = job_name(owner, step)
    env = list(store_env(settings))
    postgres = deployment.feedback.store.postgres
    if step == EXPORT and postgres:
        ref = postgres.secret_ref
        env.append(
            {"name": DSN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    gpus = model.alignment.gpus if step in (TRAIN, EVALUATE) else 0
    manifest = job(
        owner=owner,
        name=name,
        component=step,
        settings=settings,
        args=[step],
        config_map_name=name,
        env=env,
        placement=None,
        resource_spec=resources(model.alignment.resources, gpus=gpus),
        backoff_limit=1,
    )
    dataset = model.alignment.evaluation.dataset
    if step == EVALUATE and dataset:
        pod = manifest["spec"]["template"]["spec"]
        pod["volumes"].append({"name": "evaluation", "configMap": {"name": dataset.name}})
        pod["containers"][0]["volumeMounts"].append(
            {"name": "evaluation", "mountPath": EVAL_DIR, "readOnly": True}
        )
    return config_map(owner, name, step, config), manifest
