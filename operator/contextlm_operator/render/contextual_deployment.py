"""Children of a ContextualDeployment: the feedback-store migration Job, the gateway
Deployment + Service, and the SQLite volume when the embedded store is used."""

from __future__ import annotations

from typing import Any

from contextlm.api.contextual_deployment import ContextualDeploymentSpec
from contextlm.runtime.config import GatewayConfig, MigrateConfig

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

GATEWAY = "gateway"
MIGRATE = "migrate"
PORT = 8080
SQLITE_DIR = "/var/lib/contextlm"
DSN_ENV = "CONTEXTLM_FEEDBACK_DSN"
API_KEY_ENV = "CONTEXTLM_API_KEY"


def _secret_env(spec: ContextualDeploymentSpec) -> list[dict[str, Any]]:
    env = []
    postgres = spec.feedback.store.postgres
    if postgres:
        ref = postgres.secret_ref
        env.append(
            {"name": DSN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    if spec.gateway.auth:
        ref = spec.gateway.auth.secret_ref
        env.append(
            {"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    return env


def migrate_inputs(spec: ContextualDeploymentSpec, settings: OperatorSettings) -> str:
    """A new image (new migrations) or a new database means migrating again."""
    return inputs_hash(settings.image, spec.feedback.store)


def render_migrate(
    owner: Owner, spec: ContextualDeploymentSpec, settings: OperatorSettings, inputs: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Job) running `alembic upgrade head` on the PostgreSQL store."""
    name = f"{owner.name}-migrate-{inputs}"
    config = MigrateConfig(backend="postgres", dsn_env=DSN_ENV)
    manifest = job(
        owner=owner,
        name=name,
        component=MIGRATE,
        settings=settings,
        args=["migrate"],
        config_map_name=name,
        env=_secret_env(spec)[:1],
        placement=None,
        resource_spec={},
        backoff_limit=6,
        annotations={"contextlm.io/inputs": inputs},
    )
    return config_map(owner, name, MIGRATE, config.model_dump(mode="json")), manifest


def render_feedback_volume(owner: Owner) -> dict[str, Any]:
    """The embedded SQLite store's volume: feedback survives a pod restart."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, f"{owner.name}-feedback", GATEWAY),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def gateway_config_name(owner: Owner, config: dict[str, Any]) -> str:
    return f"{owner.name}-gateway-{inputs_hash(config, length=8)}"


def gateway_config(
    owner: Owner,
    spec: ContextualDeploymentSpec,
    settings: OperatorSettings,
    *,
    retriever_url: str,
    generator_url: str,
    generator_grpc: str,
    tokenizer: str,
    model_revision: str,
) -> dict[str, Any]:
    return GatewayConfig(
        namespace=owner.namespace,
        deployment=owner.name,
        spec=spec,
        retriever_url=retriever_url,
        generator_url=generator_url,
        generator_grpc=generator_grpc,
        tokenizer=tokenizer,
        model_revision=model_revision,
        store=settings.store,
        cache_dir=f"{WORK_DIR}/cache",
        feedback_dsn_env=DSN_ENV,
        sqlite_path=f"{SQLITE_DIR}/feedback.db",
        api_key_env=API_KEY_ENV,
        port=PORT,
    ).model_dump(mode="json")


def render_gateway(
    owner: Owner, spec: ContextualDeploymentSpec, settings: OperatorSettings, config: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Deployment) of the gateway; a new config (new index or revision) rolls it."""
    name = gateway_config_name(owner, config)
    sqlite = spec.feedback.store.backend == "sqlite"
    container = {
        "name": GATEWAY,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.command),
        "args": ["gateway", "--config", "/etc/contextlm/config.json"],
        "env": [*store_env(settings), *_secret_env(spec)],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": resources(spec.gateway.resources),
    }
    volumes = []
    if sqlite:
        container["extraMounts"] = [{"name": "feedback", "mountPath": SQLITE_DIR}]
        volumes = [
            {"name": "feedback", "persistentVolumeClaim": {"claimName": f"{owner.name}-feedback"}}
        ]
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(owner, GATEWAY)},
        # One SQLite writer at a time: never two pods on the file during a rollout.
        "strategy": {"type": "Recreate"} if sqlite else {"type": "RollingUpdate"},
        "template": {
            "metadata": {
                "labels": labels(owner, GATEWAY),
                "annotations": {"contextlm.io/config": name},
            },
            "spec": pod_spec(
                container=container,
                config_map_name=name,
                placement=spec.gateway,
                extra_volumes=volumes,
            ),
        },
    }
    if spec.gateway.autoscaling is None:
        deployment_spec["replicas"] = spec.gateway.replicas
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, f"{owner.name}-gateway", GATEWAY),
        "spec": deployment_spec,
    }
    return config_map(owner, name, GATEWAY, config), deployment


def render_gateway_service(owner: Owner) -> dict[str, Any]:
    return service(owner, GATEWAY, {"http": 80})


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}-gateway.{owner.namespace}.svc:80"
