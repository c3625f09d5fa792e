"""Children of a Corpus: the sync ConfigMap and Job, and a CronJob for refreshes."""

from __future__ import annotations

from typing import Any

from contextlm.api.corpus import CorpusSpec
from contextlm.runtime.config import SyncConfig

from ..settings import OperatorSettings
from .common import WORK_DIR, Owner, config_map, inputs_hash, job, metadata, store_env

COMPONENT = "sync"
SOURCE_DIR = "/source"
RESYNC_ANNOTATION = "contextlm.io/resync"


def sync_inputs(spec: CorpusSpec, settings: OperatorSettings, resync: str = "") -> str:
    """What a sync depends on; a new value means a new Job (and maybe a new snapshot)."""
    return inputs_hash(spec.source, spec.extraction, settings.store, resync)


def render_sync_config(
    owner: Owner, spec: CorpusSpec, settings: OperatorSettings
) -> dict[str, Any]:
    source_path = None
    if spec.source.pvc:
        source_path = SOURCE_DIR + "/" + spec.source.pvc.path.lstrip("/")
    elif spec.source.config_map:
        source_path = SOURCE_DIR
    config = SyncConfig(
        namespace=owner.namespace,
        corpus=owner.name,
        spec=spec,
        store=settings.store,
        tokenizer=spec.extraction.chunking.tokenizer,
        work_dir=f"{WORK_DIR}/sync",
        source_path=source_path,
    )
    return config.model_dump(mode="json", by_alias=False)


def _source_mounts(spec: CorpusSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for a pvc or configMap source."""
    if spec.source.pvc:
        volume = {
            "name": "source",
            "persistentVolumeClaim": {"claimName": spec.source.pvc.claim_name, "readOnly": True},
        }
    elif spec.source.config_map:
        volume = {"name": "source", "configMap": {"name": spec.source.config_map.name}}
    else:
        return [], []
    return [volume], [{"name": "source", "mountPath": SOURCE_DIR, "readOnly": True}]


def _source_env(spec: CorpusSpec) -> list[dict[str, Any]]:
    s3 = spec.source.s3
    if not s3 or not s3.secret_ref:
        return []
    return [
        {
            "name": f"CONTEXTLM_SOURCE_{var}",
            "valueFrom": {"secretKeyRef": {"name": s3.secret_ref.name, "key": key}},
        }
        for var, key in (("ACCESS_KEY", "accessKey"), ("SECRET_KEY", "secretKey"))
    ]


def config_map_name(owner: Owner, inputs: str) -> str:
    return f"{owner.name}-sync-{inputs}"


def render_sync_config_map(
    owner: Owner, spec: CorpusSpec, settings: OperatorSettings, inputs: str
) -> dict[str, Any]:
    return config_map(
        owner, config_map_name(owner, inputs), COMPONENT, render_sync_config(owner, spec, settings)
    )


def render_sync_job(
    owner: Owner, spec: CorpusSpec, settings: OperatorSettings, inputs: str
) -> dict[str, Any]:
    volumes, mounts = _source_mounts(spec)
    manifest = job(
        owner=owner,
        name=f"{owner.name}-sync-{inputs}",
        component=COMPONENT,
        settings=settings,
        args=["sync"],
        config_map_name=config_map_name(owner, inputs),
        env=[*store_env(settings), *_source_env(spec)],
        placement=None,
        resource_spec={},
        annotations={"contextlm.io/inputs": inputs},
    )
    pod = manifest["spec"]["template"]["spec"]
    pod["volumes"] += volumes
    pod["containers"][0]["volumeMounts"] += mounts
    return manifest


def render_refresh_cronjob(
    owner: Owner, spec: CorpusSpec, settings: OperatorSettings, inputs: str
) -> dict[str, Any] | None:
    """Scheduled re-syncs; the Jobs it starts report like the operator's own."""
    if spec.refresh is None:
        return None
    body = render_sync_job(owner, spec, settings, inputs)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(owner, f"{owner.name}-refresh", COMPONENT),
        "spec": {
            "schedule": spec.refresh.schedule,
            "suspend": spec.refresh.suspend,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": body["metadata"]["labels"]},
                "spec": body["spec"],
            },
        },
    }
