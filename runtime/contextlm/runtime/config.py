"""The configuration of each runtime component: one pydantic model each.

The operator renders these as JSON into a ConfigMap and points the container at it with
`--config` (or the `CONTEXTLM_CONFIG` environment variable holding the JSON itself); a
developer writes the same JSON by hand to run a component without Kubernetes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field

from ..api.corpus import CorpusSpec
from ..api.retrieval_stack import RetrievalStackSpec
from .store import StoreConfig

CONFIG_ENV = "CONTEXTLM_CONFIG"
T = TypeVar("T", bound=BaseModel)


class SyncConfig(BaseModel):
    """`contextlm sync`: fetch, extract and chunk a corpus into a snapshot."""

    namespace: str = Field(default="default")
    corpus: str = Field(description="Corpus name.")
    spec: CorpusSpec
    store: StoreConfig = Field(default_factory=StoreConfig)
    tokenizer: str = Field(
        default="all-MiniLM-L6-v2", description="Tokenizer chunk sizes are counted in."
    )
    work_dir: str = Field(default="/tmp/contextlm-sync", description="Scratch space.")
    source_path: str | None = Field(
        default=None, description="Where a pvc or configMap source is mounted."
    )


class IndexConfig(BaseModel):
    """`contextlm index`: embed and index a snapshot into a new index version."""

    namespace: str = Field(default="default")
    stack: str = Field(description="RetrievalStack name.")
    corpus: str = Field(description="Corpus name.")
    snapshot_id: str = Field(description="Snapshot to index.")
    spec: RetrievalStackSpec
    store: StoreConfig = Field(default_factory=StoreConfig)
    previous_version: str | None = Field(
        default=None, description="Index version whose embeddings may be reused."
    )
    work_dir: str = Field(default="/tmp/contextlm-index")
    device: str = Field(default="auto", description="auto, cpu or cuda.")


class RetrieverConfig(BaseModel):
    """`contextlm retriever`: serve one index version over HTTP."""

    namespace: str = Field(default="default")
    stack: str
    index_version: str
    spec: RetrievalStackSpec
    store: StoreConfig = Field(default_factory=StoreConfig)
    host: str = Field(default="0.0.0.0")
    port: int = Field(default=8080, ge=1, le=65535)
    cache_dir: str = Field(default="/tmp/contextlm-retriever")
    device: str = Field(default="auto")


def load_config(model: type[T], path: str | None) -> T:
    """Read a component's config from `path`, or from $CONTEXTLM_CONFIG (JSON)."""
    if path:
        return model.model_validate_json(Path(path).read_text())
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise SystemExit(f"no configuration: pass --config FILE or set {CONFIG_ENV}")
    return model.model_validate_json(raw)
