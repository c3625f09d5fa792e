"""Children of an AlignmentRun: the export, train and evaluate Jobs, in that order.

A run is immutable, so each Job is named after the run and its step: a retry of the
operator finds the same Job and never repeats the work.
"""

from __future__ import annotations

from typing import Any

from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.api.alignment_run import AlignmentRunSpec
from contextlm.api.contextual_deployment import ContextualDeploymentSpec
from contextlm.runtime.config import EvaluateConfig, ExportConfig, FeedbackSource, TrainConfig

from ..settings import OperatorSettings
from .common import WORK_DIR, Owner, config_map, job, resources, store_env

EXPORT, TRAIN, EVALUATE = "export", "train", "evaluate"
STEPS = (EXPORT, TRAIN, EVALUATE)
EVAL_DIR = "/etc/contextlm-eval"
DSN_ENV = "CONTEXTLM_FEEDBACK_DSN"


def job_name(owner: Owner, step: str) -> str:
    return f"{owner.name}-{step}"


def _alignment(model: AlignedModelSpec, run: AlignmentRunSpec) -> Any:
    alignment = model.alignment.model_copy(deep=True)
    if run.method:
        alignment.method = run.method
    return alignment


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
    name = run.model_ref.name
    alignment = _alignment(model, run)
    common = {
        "namespace": owner.namespace,
        "model": name,
        "run": owner.name,
        "store": settings.store,
    }
    if step == EXPORT:
        deployment_name, cd = deployment
        config: Any = ExportConfig(
            **common,
            feedback=FeedbackSource(
                backend=cd.feedback.store.backend,
                dsn_env=DSN_ENV,
                deployment=f"{owner.namespace}/{deployment_name}",
            ),
            since=run.feedback_window.since,
            until=run.feedback_window.until,
            since_last_run=run.feedback_window.since is None,
            held_out_fraction=model.alignment.evaluation.held_out_fraction,
        )
    elif step == TRAIN:
        config = TrainConfig(
            **common,
            base_model=model.base.model,
            base_revision=base_revision,
            alignment=alignment,
            max_steps=run.max_steps,
            merge=model.serving.engine == "tensorrt-llm",
            max_length=min(model.serving.max_input_length + model.serving.max_output_length, 4096),
            work_dir=f"{WORK_DIR}/train",
            cache_dir=f"{WORK_DIR}/models",
        )
    else:
        assert candidate is not None
        config = EvaluateConfig(
            **common,
            base_model=model.base.model,
            candidate_revision=candidate,
            baseline_revision=base_revision,
            alignment=alignment,
            evaluation_set=EVAL_DIR if model.alignment.evaluation.dataset else None,
            retriever_url=retriever_url if model.alignment.evaluation.dataset else None,
            prompt=deployment[1].prompt,
            cache_dir=f"{WORK_DIR}/models",
        )
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
