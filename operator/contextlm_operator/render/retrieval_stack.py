"""Children of a RetrievalStack: the index Job and the retriever Deployment + Service."""

from __future__ import annotations

from typing import Any

from contextlm.api.retrieval_stack import RetrievalStackSpec
from contextlm.runtime.config import IndexConfig, RetrieverConfig

from ..settings import OperatorSettings
from .common import (
    WORK_DIR,
    Owner,
    config_map,
    inputs_hash,
    job,
    labels,
    metadata,
    pod_spec,
    resources,
    selector,
    service,
    store_env,
)

INDEX = "index"
RETRIEVER = "retriever"
PORT = 8080


def index_inputs(spec: RetrievalStackSpec, snapshot_id: str, settings: OperatorSettings) -> str:
    """The index depends on the snapshot and on how it is indexed, not on serving."""
    return inputs_hash(snapshot_id, spec.retrievers, spec.reranker, settings.store)


def render_index_config_map(
    owner: Owner,
    spec: RetrievalStackSpec,
    settings: OperatorSettings,
    *,
    corpus: str,
    snapshot_id: str,
    previous_version: str | None,
    inputs: str,
) -> dict[str, Any]:
    config = IndexConfig(
        namespace=owner.namespace,
        stack=owner.name,
        corpus=corpus,
        snapshot_id=snapshot_id,
        spec=spec,
        store=settings.store,
        previous_version=previous_version,
        work_dir=f"{WORK_DIR}/index",
    )
    return config_map(owner, f"{owner.name}-index-{inputs}", INDEX, config.model_dump(mode="json"))


def render_index_job(
    owner: Owner, spec: RetrievalStackSpec, settings: OperatorSettings, inputs: str
) -> dict[str, Any]:
    build = spec.index_build
    return job(
        owner=owner,
        name=f"{owner.name}-index-{inputs}",
        component=INDEX,
        settings=settings,
        args=["index"],
        config_map_name=f"{owner.name}-index-{inputs}",
        env=store_env(settings),
        placement=build,
        resource_spec=resources(build.resources, gpus=build.gpus),
        backoff_limit=build.backoff_limit,
        annotations={"contextlm.io/inputs": inputs},
    )


def retriever_config_name(owner: Owner, index_version: str) -> str:
    return f"{owner.name}-retriever-{inputs_hash(index_version, length=8)}"


def render_retriever_config_map(
    owner: Owner, spec: RetrievalStackSpec, settings: OperatorSettings, index_version: str
) -> dict[str, Any]:
    config = RetrieverConfig(
        namespace=owner.namespace,
        stack=owner.name,
        index_version=index_version,
        spec=spec,
        store=settings.store,
        port=PORT,
        cache_dir=f"{WORK_DIR}/cache",
    )
    return config_map(
        owner,
        retriever_config_name(owner, index_version),
        RETRIEVER,
        config.model_dump(mode="json"),
    )


def render_retriever_deployment(
    owner: Owner, spec: RetrievalStackSpec, settings: OperatorSettings, index_version: str
) -> dict[str, Any]:
    """The retriever serving one index version; a new version rolls the pods."""
    serving = spec.serving
    container = {
        "name": RETRIEVER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.command),
        "args": ["retriever", "--config", "/etc/contextlm/config.json"],
        "env": store_env(settings),
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": resources(serving.resources),
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(owner, RETRIEVER)},
        "template": {
            "metadata": {
                "labels": labels(owner, RETRIEVER),
                "annotations": {"contextlm.io/index-version": index_version},
            },
            "spec": pod_spec(
                container=container,
                config_map_name=retriever_config_name(owner, index_version),
                placement=serving,
            ),
        },
    }
    if serving.autoscaling is None:
        # Sent only when no autoscaler owns the count (server-side apply ownership).
        deployment_spec["replicas"] = serving.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            owner,
            f"{owner.name}-retriever",
            RETRIEVER,
            annotations={"contextlm.io/index-version": index_version},
        ),
        "spec": deployment_spec,
    }


def render_retriever_service(owner: Owner) -> dict[str, Any]:
    return service(owner, RETRIEVER, {"http": 80})


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}-retriever.{owner.namespace}.svc:80"
