"""Children of an AlignedModel served by Triton with TensorRT-LLM.

The engine is built once per (revision, build settings) by a Job on a GPU node: an init
container pulls the revision onto the model cache volume, a second one (NVIDIA's image)
converts and builds the engine there, and the last container pushes the engine to the
store and publishes it. Every Triton replica mounts the same cache volume read-only, so
weights are never downloaded per pod.
"""

from __future__ import annotations

from typing import Any

from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.runtime.artifacts import revision_prefix

from ..settings import OperatorSettings
from . import triton
from .aligned_model import BASE_REVISION, GRPC_PORT, HTTP_PORT, gpu_placement, gpu_request
from .common import (
    Owner,
    config_map,
    container_security,
    inputs_hash,
    job,
    labels,
    metadata,
    pod_spec,
    resources,
    runtime_env,
    selector,
    store_env,
)

ENGINE = "engine"
TRITON = "triton"
METRICS_PORT = 8002
CACHE = "/cache"
REPOSITORY = "/repository"
TRITON_CONFIG = "/etc/triton"


def engine_id(spec: AlignedModelSpec, revision: str) -> str:
    """Content address of an engine: the revision and every build setting."""
    s = spec.serving
    return inputs_hash(
        spec.base, revision, s.dtype, s.quantization, s.max_batch_size,
        s.max_input_length, s.max_output_length, s.tensor_parallel, length=16,
    )  # fmt: skip


def model_source(owner: Owner, spec: AlignedModelSpec, revision: str) -> str:
    """Store prefix of the weights to build from: the base, or a revision's merged
    checkpoint (TensorRT-LLM needs merged weights, not an adapter)."""
    if revision == BASE_REVISION:
        return spec.base.model
    return f"{revision_prefix(owner.namespace, owner.name, revision)}/merged"


def engine_prefix(owner: Owner, engine: str) -> str:
    return f"engines/{owner.namespace}/{owner.name}/{engine}"


def paths(revision: str, engine: str) -> dict[str, str]:
    return {
        "model": f"{CACHE}/models/{revision}",
        "checkpoint": f"{CACHE}/checkpoints/{engine}",
        "engine": f"{CACHE}/engines/{engine}",
    }


def render_cache_volume(owner: Owner, spec: AlignedModelSpec) -> dict[str, Any]:
    cache = spec.serving.cache
    many = spec.serving.replicas > 1 or spec.serving.autoscaling is not None
    pvc: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if many else "ReadWriteOnce"],
        "resources": {"requests": {"storage": str(cache.size)}},
    }
    if cache.storage_class_name:
        pvc["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, f"{owner.name}-cache", ENGINE),
        "spec": pvc,
    }


def _artifact_config(
    settings: OperatorSettings, prefix: str, directory: str, manifest: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "store": settings.store.model_dump(mode="json"),
        "prefix": prefix,
        "directory": directory,
        "manifest": manifest or {},
    }


def render_engine_build(
    owner: Owner, spec: AlignedModelSpec, settings: OperatorSettings, revision: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """([ConfigMaps], Job) building the engine of `revision`."""
    engine = engine_id(spec, revision)
    where = paths(revision, engine)
    name = f"{owner.name}-engine-{engine[:10]}"
    pull = config_map(
        owner, f"{name}-pull", ENGINE,
        _artifact_config(settings, model_source(owner, spec, revision), where["model"]),
    )  # fmt: skip
    push = config_map(
        owner, f"{name}-push", ENGINE,
        _artifact_config(
            settings, engine_prefix(owner, engine), where["engine"],
            {"engine_id": engine, "revision": revision, "model": owner.name},
        ),
    )  # fmt: skip
    gpu_name, count = gpu_request(spec.serving)
    node_selector, tolerations = gpu_placement(spec.serving)
    manifest = job(
        owner=owner,
        name=name,
        component=ENGINE,
        settings=settings,
        args=["artifact", "push"],
        config_map_name=push["metadata"]["name"],
        env=store_env(settings),
        placement=None,
        resource_spec=resources(spec.serving.resources, gpus=count, gpu_resource=gpu_name),
        annotations={"contextlm.io/engine-id": engine, "contextlm.io/revision": revision},
    )
    pod = manifest["spec"]["template"]["spec"]
    pod["nodeSelector"] = node_selector or None
    pod["tolerations"] = tolerations or None
    pod = {k: v for k, v in pod.items() if v is not None}
    manifest["spec"]["template"]["spec"] = pod
    # The push container only uploads: it needs no GPU; the build step does.
    build_resources = pod["containers"][0].pop("resources")
    pod["containers"][0]["resources"] = resources(spec.serving.resources)
    cache_mount = {"name": "cache", "mountPath": CACHE}
    pod["containers"][0]["volumeMounts"].append(cache_mount)
    pod["volumes"] += [
        {"name": "cache", "persistentVolumeClaim": {"claimName": f"{owner.name}-cache"}},
        {"name": "pull", "configMap": {"name": pull["metadata"]["name"]}},
        {
            "name": "shm",
            "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.serving.shared_memory)},
        },
    ]
    script = triton.engine_build_script(
        triton.engine_build_commands(
            spec, model_dir=where["model"], checkpoint_dir=where["checkpoint"],
            engine_dir=where["engine"],
        )
    )  # fmt: skip
    pod["initContainers"] = [
        {
            "name": "pull",
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": list(settings.command),
            "args": ["artifact", "pull", "--config", "/etc/pull/config.json"],
            "env": [*runtime_env(), *store_env(settings)],
            "volumeMounts": [
                cache_mount,
                {"name": "pull", "mountPath": "/etc/pull", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            "securityContext": container_security(),
        },
        {
            "name": "build",
            "image": settings.triton_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["bash", "-c", script],
            "resources": build_resources,
            "volumeMounts": [
                cache_mount,
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "shm", "mountPath": "/dev/shm"},
            ],
            "securityContext": container_security(),
        },
    ]
    return [pull, push], manifest


def repository_config_map(
    owner: Owner, spec: AlignedModelSpec, revision: str, engine: str
) -> tuple[dict[str, Any], dict[str, str]]:
    where = paths(revision, engine)
    files = triton.render_model_repository(
        spec, engine_dir=where["engine"], tokenizer_dir=where["model"]
    )
    data = {triton.config_map_key(path): text for path, text in files.items()}
    cm = config_map(owner, f"{owner.name}-triton-{engine[:10]}", TRITON, {})
    cm["data"] = data
    return cm, files


def render_triton_deployment(
    owner: Owner,
    spec: AlignedModelSpec,
    settings: OperatorSettings,
    *,
    revision: str,
    engine: str,
    repository: dict[str, Any],
    files: dict[str, str],
) -> dict[str, Any]:
    serving = spec.serving
    gpu_name, count = gpu_request(serving)
    node_selector, tolerations = gpu_placement(serving)
    argv, extra_env = triton.triton_command(
        spec, repository=REPOSITORY, http_port=HTTP_PORT, grpc_port=GRPC_PORT,
        metrics_port=METRICS_PORT,
    )  # fmt: skip
    container = {
        "name": TRITON,
        "image": settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": argv[:1],
        "args": argv[1:],
        "env": [{"name": k, "value": v} for k, v in sorted(extra_env.items())],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 90,
        },
        "resources": resources(serving.resources, gpus=count, gpu_resource=gpu_name),
        "extraMounts": [
            {"name": "cache", "mountPath": CACHE, "readOnly": True},
            {"name": "repository", "mountPath": REPOSITORY},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    setup = triton.repository_setup_script(
        files, config_dir=TRITON_CONFIG, repository=REPOSITORY,
        image_models=settings.triton_models_dir,
    )  # fmt: skip
    pod = pod_spec(
        container=container,
        config_map_name=repository["metadata"]["name"],
        extra_node_selector=node_selector,
        extra_tolerations=tolerations,
        extra_volumes=[
            {
                "name": "cache",
                "persistentVolumeClaim": {"claimName": f"{owner.name}-cache", "readOnly": True},
            },
            {"name": "repository", "emptyDir": {}},
            {
                "name": "shm",
                "emptyDir": {"medium": "Memory", "sizeLimit": str(serving.shared_memory)},
            },
        ],
    )
    pod["containers"][0]["volumeMounts"][0]["mountPath"] = TRITON_CONFIG
    pod["initContainers"] = [
        {
            "name": "repository",
            "image": settings.triton_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["sh", "-c", setup],
            "volumeMounts": [
                {"name": "config", "mountPath": TRITON_CONFIG, "readOnly": True},
                {"name": "repository", "mountPath": REPOSITORY},
            ],
            "securityContext": container_security(),
        }
    ]
    spec_: dict[str, Any] = {
        "selector": {"matchLabels": selector(owner, TRITON)},
        "template": {
            "metadata": {
                "labels": labels(owner, TRITON),
                "annotations": {
                    "contextlm.io/revision": revision,
                    "contextlm.io/engine-id": engine,
                },
            },
            "spec": pod,
        },
    }
    if serving.autoscaling is None:
        spec_["replicas"] = serving.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            owner, f"{owner.name}-{TRITON}", TRITON, annotations={"contextlm.io/revision": revision}
        ),
        "spec": spec_,
    }
