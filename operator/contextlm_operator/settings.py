"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, Field

from contextlm.runtime.store import StoreConfig

PREFIX = "CONTEXTLM_"


class OperatorSettings(BaseModel):
    """What every rendered workload shares: image, store, where Jobs run."""

    image: str = Field(default="contextlm/contextlm:0.1.0", description="Runtime image.")
    image_pull_policy: str = Field(default="IfNotPresent")
    command: list[str] = Field(
        default_factory=lambda: ["contextlm"], description="Entry point of the runtime CLI."
    )
    triton_image: str = Field(
        default="tritonserver:trtllm-python-py3",
        description="NVIDIA's Triton image with the TensorRT-LLM backend (set it to the"
        " release in your registry).",
    )
    triton_models_dir: str = Field(
        default="/app/all_models/inflight_batcher_llm",
        description="Where that image keeps the backend's Python models.",
    )
    store: StoreConfig = Field(default_factory=StoreConfig)
    store_secret: str = Field(
        default="contextlm-store",
        description="Secret (in each workload namespace) with accessKey and secretKey for the"
        " artifact store.",
    )
    job_node_selector: dict[str, str] = Field(default_factory=dict)
    job_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    reconcile_interval: float = Field(default=30.0, gt=0)
    job_ttl_seconds: int = Field(default=3600, ge=0)
    metrics_port: int = Field(default=8080)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = env.get(PREFIX + name)
            return value if value not in (None, "") else None

        raw: dict[str, Any] = {}
        for key, name, parse in (
            ("image", "IMAGE", str),
            ("image_pull_policy", "IMAGE_PULL_POLICY", str),
            ("triton_image", "TRITON_IMAGE", str),
            ("triton_models_dir", "TRITON_MODELS_DIR", str),
            ("command", "COMMAND", json.loads),
            ("store_secret", "STORE_SECRET", str),
            ("job_node_selector", "JOB_NODE_SELECTOR", json.loads),
            ("job_tolerations", "JOB_TOLERATIONS", json.loads),
            ("reconcile_interval", "RECONCILE_INTERVAL", float),
            ("job_ttl_seconds", "JOB_TTL_SECONDS", int),
            ("metrics_port", "METRICS_PORT", int),
        ):
            value = get(name)
            if value is not None:
                raw[key] = parse(value)
        store: dict[str, Any] = {}
        for key, name in (
            ("kind", "STORE_KIND"),
            ("path", "STORE_PATH"),
            ("endpoint", "STORE_ENDPOINT"),
            ("bucket", "STORE_BUCKET"),
            ("prefix", "STORE_PREFIX"),
            ("region", "STORE_REGION"),
        ):
            value = get(name)
            if value is not None:
                store[key] = value
        raw["store"] = StoreConfig(**store)
        return cls(**raw)
