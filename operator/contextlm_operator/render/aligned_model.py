"""Children of an AlignedModel.

CPU engine (`transformers`): the generator Deployment + Service (KServe v2 over HTTP
8000 and gRPC 8001, like Triton). GPU engine (`tensorrt-llm`): a cache volume, the
engine-build Job and the Triton Deployment + Service (see `triton.py` for the model
repository it serves).
"""

from __future__ import annotations

from typing import Any

from contextlm.api.aligned_model import AlignedModelSpec, ModelServing
from contextlm.runtime.config import GeneratorConfig

from ..settings import OperatorSettings
from .common import (
    WORK_DIR,
    Owner,
    config_map,
    inputs_hash,
    labels,
    metadata,
    pod_spec,
    resources,
    selector,
    service,
    store_env,
)

GENERATOR = "generator"
HTTP_PORT, GRPC_PORT = 8000, 8001
BASE_REVISION = "base"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_request(serving: ModelServing) -> tuple[str, int]:
    """(extended resource name, count) the serving pods request."""
    if serving.mig_profile:
        return f"nvidia.com/mig-{serving.mig_profile}", 1
    return "nvidia.com/gpu", serving.gpus or 0


def gpu_placement(serving: ModelServing) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Node selector and tolerations for GPU pods: the spec's, plus the GPU product
    label and the toleration of the GPU operator's taint when GPUs are requested."""
    selector_ = dict(serving.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in serving.tolerations]
    _, count = gpu_request(serving)
    if count:
        if serving.gpu_product:
            selector_["nvidia.com/gpu.product"] = serving.gpu_product
        if GPU_TOLERATION not in tolerations:
            tolerations.append(GPU_TOLERATION)
    return selector_, tolerations


def generator_config_name(owner: Owner, revision: str, spec: AlignedModelSpec) -> str:
    return f"{owner.name}-generator-{inputs_hash(revision, spec.base, spec.serving)}"


def render_generator_config_map(
    owner: Owner, spec: AlignedModelSpec, settings: OperatorSettings, revision: str
) -> dict[str, Any]:
    serving = spec.serving
    config = GeneratorConfig(
        model=spec.base.model,
        revision=revision,
        namespace=owner.namespace,
        aligned_model=owner.name,
        store=settings.store,
        cache_dir=f"{WORK_DIR}/models",
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        dtype=serving.dtype if serving.gpus else "auto",
        device="cuda" if serving.gpus else "cpu",
        max_batch_size=serving.max_batch_size,
        max_input_length=serving.max_input_length,
        max_output_length=serving.max_output_length,
    )
    return config_map(
        owner,
        generator_config_name(owner, revision, spec),
        GENERATOR,
        config.model_dump(mode="json"),
    )


def render_generator_deployment(
    owner: Owner, spec: AlignedModelSpec, settings: OperatorSettings, revision: str
) -> dict[str, Any]:
    """The CPU (or single-GPU) generator serving one revision; a new one rolls the pods."""
    serving = spec.serving
    name, count = gpu_request(serving)
    node_selector, tolerations = gpu_placement(serving)
    container = {
        "name": GENERATOR,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.command),
        "args": ["generator", "--config", "/etc/contextlm/config.json"],
        "env": store_env(settings),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "resources": resources(serving.resources, gpus=count, gpu_resource=name),
    }
    pod = pod_spec(
        container=container,
        config_map_name=generator_config_name(owner, revision, spec),
        extra_node_selector=node_selector,
        extra_tolerations=tolerations,
    )
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(owner, GENERATOR)},
        "template": {
            "metadata": {
                "labels": labels(owner, GENERATOR),
                "annotations": {"contextlm.io/revision": revision},
            },
            "spec": pod,
        },
    }
    if serving.autoscaling is None:
        deployment_spec["replicas"] = serving.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            owner,
            f"{owner.name}-{GENERATOR}",
            GENERATOR,
            annotations={"contextlm.io/revision": revision},
        ),
        "spec": deployment_spec,
    }


def render_service(owner: Owner, component: str) -> dict[str, Any]:
    """KServe v2 endpoints on Triton's ports, for either engine."""
    return service(owner, component, {"http": HTTP_PORT, "grpc": GRPC_PORT})


def endpoint(owner: Owner, component: str) -> str:
    return f"http://{owner.name}-{component}.{owner.namespace}.svc:{HTTP_PORT}"


def grpc_endpoint(owner: Owner, component: str) -> str:
    return f"{owner.name}-{component}.{owner.namespace}.svc:{GRPC_PORT}"
