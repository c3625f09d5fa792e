"""What every child shares: names, labels, owner references and a hardened pod."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from contextlm.api.common import Autoscaling, Placement, ResourceRequirements

from ..settings import OperatorSettings

MANAGER = "contextlm-operator"
CONFIG_DIR = "/etc/contextlm"
WORK_DIR = "/scratch"  # not /work: e2e runs pods on a host whose checkout may live there
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class Owner:
    """The custom resource a child belongs to."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(body["apiVersion"], body["kind"], meta["name"], meta["namespace"], meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def inputs_hash(*inputs: Any, length: int = 10) -> str:
    """A short hash of everything a Job depends on: same inputs, same name."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "contextlm",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGER,
        "contextlm.io/kind": owner.kind.lower(),
    }


def selector(owner: Owner, component: str) -> dict[str, str]:
    """The labels that identify a component's pods (immutable Deployment selector)."""
    return {
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "contextlm.io/kind": owner.kind.lower(),
    }


def metadata(owner: Owner, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner.reference()],
        **extra,
    }


def config_map(owner: Owner, name: str, component: str, config: dict[str, Any]) -> dict[str, Any]:
    """The component's configuration; content-addressed names make it immutable."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, name, component),
        "immutable": True,
        "data": {"config.json": json.dumps(config, indent=2, sort_keys=True)},
    }


def runtime_env() -> list[dict[str, Any]]:
    """Environment every runtime container gets: caches on the writable scratch volume,
    and no hub downloads (models come from the store or the image)."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def store_env(settings: OperatorSettings) -> list[dict[str, Any]]:
    """Artifact-store credentials from the store Secret; absent for a local store."""
    if settings.store.kind != "s3":
        return []
    return [
        {
            "name": settings.store.access_key_env,
            "valueFrom": {"secretKeyRef": {"name": settings.store_secret, "key": "accessKey"}},
        },
        {
            "name": settings.store.secret_key_env,
            "valueFrom": {"secretKeyRef": {"name": settings.store_secret, "key": "secretKey"}},
        },
    ]


def resources(
    spec: ResourceRequirements, gpus: int = 0, gpu_resource: str = "nvidia.com/gpu"
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.requests:
        out["requests"] = {k: str(v) for k, v in spec.requests.items()}
    if spec.limits:
        out["limits"] = {k: str(v) for k, v in spec.limits.items()}
    if gpus:
        out.setdefault("limits", {})[gpu_resource] = str(gpus)
        out.setdefault("requests", {})[gpu_resource] = str(gpus)
    return out


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_spec(
    *,
    container: dict[str, Any],
    config_map_name: str,
    placement: Placement | None = None,
    extra_node_selector: dict[str, str] | None = None,
    extra_tolerations: list[dict[str, Any]] | None = None,
    restart_policy: str = "Always",
    extra_volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A hardened pod: non-root, read-only root, no token, scratch space on /tmp and /work."""
    node_selector = {
        **(placement.node_selector if placement else {}),
        **(extra_node_selector or {}),
    }
    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True)
        for t in (placement.tolerations if placement else [])
    ] + list(extra_tolerations or [])
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "work", "mountPath": WORK_DIR},
        *container.pop("extraMounts", []),
    ]
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": restart_policy,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {**container, "volumeMounts": mounts, "securityContext": container_security()}
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": config_map_name}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "work", "emptyDir": {}},
            *(extra_volumes or []),
        ],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def job(
    *,
    owner: Owner,
    name: str,
    component: str,
    settings: OperatorSettings,
    args: list[str],
    config_map_name: str,
    env: list[dict[str, Any]],
    placement: Placement | None,
    resource_spec: dict[str, Any],
    backoff_limit: int = 2,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A run-to-completion component; its result is the container's termination message.
    The operator's Job placement (e2e steers Jobs to its executor node) applies to CPU
    Jobs only: a Job that requests GPUs goes where GPUs are."""
    gpu = any("nvidia.com/" in k for k in resource_spec.get("limits", {}))
    container = {
        "name": component,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.command),
        "args": [
            *args,
            "--config",
            f"{CONFIG_DIR}/config.json",
            "--termination-log",
            TERMINATION_LOG,
        ],
        "env": env,
        "resources": resource_spec,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    template_meta = {"labels": labels(owner, component)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, name, component, annotations=annotations or {}),
        "spec": {
            "backoffLimit": backoff_limit,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "template": {
                "metadata": template_meta,
                "spec": pod_spec(
                    container=container,
                    config_map_name=config_map_name,
                    placement=placement,
                    extra_node_selector=None if gpu else settings.job_node_selector,
                    extra_tolerations=None if gpu else settings.job_tolerations,
                    restart_policy="Never",
                ),
            },
        },
    }


def hpa(owner: Owner, component: str, scaling: Autoscaling) -> dict[str, Any]:
    """A CPU HorizontalPodAutoscaler on the component's Deployment, which then leaves
    replicas out of what it applies (the autoscaler owns them)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, f"{owner.name}-{component}", component),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": f"{owner.name}-{component}",
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def service(owner: Owner, component: str, ports: dict[str, int]) -> dict[str, Any]:
    """The component's Service `<resource>-<component>`: each named port to the
    container port of the same name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, f"{owner.name}-{component}", component),
        "spec": {
            "selector": selector(owner, component),
            "ports": [{"name": n, "port": p, "targetPort": n} for n, p in ports.items()],
        },
    }
