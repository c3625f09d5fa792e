"""The configuration of each runtime component: one pydantic model each.

The operator renders these as JSON into a ConfigMap and points the container at it with
`--config` (or the `CONTEXTLM_CONFIG` environment variable holding the JSON itself); a
developer writes the same JSON by hand to run a component without Kubernetes.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field

from ..api.aligned_model import Alignment
from ..api.contextual_deployment import ContextualDeploymentSpec, PromptSpec
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


class GatewayConfig(BaseModel):
    """`contextlm gateway`: one ContextualDeployment's HTTP endpoint."""

    namespace: str = Field(default="default")
    deployment: str = Field(description="ContextualDeployment name.")
    spec: ContextualDeploymentSpec
    retriever_url: str = Field(description="Base URL of the retriever (http://host:port).")
    generator_url: str = Field(
        description="KServe v2 HTTP endpoint of the generator (http://host:port or host:port)."
    )
    generator_grpc: str | None = Field(
        default=None,
        description="KServe v2 gRPC endpoint (host:port) used for streaming; without it a"
        " stream is answered from one non-streaming call.",
    )
    model_name: str = Field(default="ensemble", description="Triton model to infer on.")
    tokenizer: str = Field(
        description="The served model's tokenizer (a directory, models/<name> in the store or"
        " a packaged name): prompt budgets are counted in its tokens."
    )
    chat_template: bool = Field(
        default=True,
        description="Render the prompt with the tokenizer's chat template when it has one"
        " (Triton's ensemble takes raw text and applies none).",
    )
    model_revision: str = Field(default="base", description="Model revision served.")
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Artifact store a models/ tokenizer is in."
    )
    cache_dir: str = Field(default="/tmp/contextlm-gateway")
    feedback_dsn_env: str = Field(
        default="CONTEXTLM_FEEDBACK_DSN",
        description="Environment variable holding the PostgreSQL DSN (from the Secret).",
    )
    sqlite_path: str = Field(
        default="/var/lib/contextlm/feedback.db", description="SQLite store file (backend sqlite)."
    )
    store_pool_size: int = Field(default=8, ge=1, le=100, description="Store connections.")
    api_key_env: str = Field(
        default="CONTEXTLM_API_KEY",
        description="Environment variable holding the API key; unset or empty: no auth.",
    )
    host: str = Field(default="0.0.0.0")
    port: int = Field(default=8080, ge=1, le=65535)
    request_timeout_s: float = Field(default=120.0, gt=0, description="Per upstream call.")
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="How often feedback past retention is purged."
    )

    @property
    def deployment_key(self) -> str:
        return f"{self.namespace}/{self.deployment}"


class MigrateConfig(BaseModel):
    """`contextlm migrate`: upgrade the feedback store's schema to the latest revision."""

    backend: Literal["postgres", "sqlite"] = Field(default="postgres")
    dsn_env: str = Field(default="CONTEXTLM_FEEDBACK_DSN", description="Variable with the DSN.")
    sqlite_path: str = Field(default="/var/lib/contextlm/feedback.db")
    wait_s: float = Field(
        default=60.0, ge=0, description="How long to wait for the database to accept connections."
    )


class GeneratorConfig(BaseModel):
    """`contextlm generator`: a causal LM served over the KServe v2 / Triton protocol.

    It mirrors the TensorRT-LLM ensemble's interface (`text_input` in, `text_output`
    out) so a client drives the CPU generator and Triton on GPUs with the same code.
    """

    model: str = Field(
        description="Model to load: models/<name> in the store, a local directory, a local"
        " .gguf file or a packaged name (see contextlm.runtime.models)."
    )
    revision: str = Field(
        default="base",
        description="Revision served: `base` (the model as named), or, with `alignedModel`,"
        " a revision that `contextlm train` published under"
        " revisions/<namespace>/<alignedModel>/<revision>/ (loaded with its adapter merged).",
    )
    namespace: str = Field(default="default", description="Namespace of the AlignedModel.")
    aligned_model: str | None = Field(
        default=None,
        description="AlignedModel whose trained revisions `revision` names; empty: `revision`"
        " is only a label.",
    )
    adapter: str | None = Field(
        default=None,
        description="Optional PEFT LoRA adapter (a directory or models/<name> in the store)"
        " merged into the weights at load time (for adapters made outside contextlm).",
    )
    store: StoreConfig = Field(default_factory=StoreConfig)
    cache_dir: str = Field(
        default="/tmp/contextlm-models",
        description="Where store models are downloaded and GGUF weights are converted once.",
    )
    host: str = Field(default="0.0.0.0")
    http_port: int = Field(default=8000, ge=0, le=65535, description="KServe v2 HTTP + /metrics.")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="KServe v2 gRPC; 0: off.")
    model_name: str = Field(
        default="ensemble",
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
        description="Name the model is served under (TensorRT-LLM's ensemble is `ensemble`).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: float32 on CPU, the checkpoint's dtype on CUDA."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    max_batch_size: int = Field(default=8, ge=1, le=1024, description="Prompts per request.")
    max_input_length: int = Field(default=4096, ge=1, description="Longest prompt in tokens.")
    max_output_length: int = Field(default=512, ge=1, description="Largest max_tokens accepted.")
    max_queue_size: int = Field(
        default=64, ge=1, description="Requests waiting for the model before new ones get 503."
    )
    decoupled: bool = Field(
        default=False,
        description="Report and behave like Triton with a decoupled model (TensorRT-LLM with"
        " streaming on): unary infer is refused, only the gRPC stream and generate answer.",
    )
    chat_template: bool = Field(
        default=False,
        description="Wrap text_input as one user turn in the tokenizer's chat template. Off by"
        " default: like Triton's ensemble, the client sends the finished prompt.",
    )
    add_special_tokens: bool = Field(
        default=True, description="Let the tokenizer add BOS etc. (TensorRT-LLM's default)."
    )
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads.")


# Alignment jobs (`contextlm export`, `train`, `evaluate`) ----------------------------


class FeedbackSource(BaseModel):
    """The feedback store an export reads: one ContextualDeployment's rows."""

    backend: Literal["postgres", "sqlite"] = Field(default="postgres")
    dsn_env: str = Field(default="CONTEXTLM_FEEDBACK_DSN", description="Variable with the DSN.")
    sqlite_path: str = Field(default="/var/lib/contextlm/feedback.db")
    deployment: str = Field(description="`namespace/name` of the ContextualDeployment.")


class ExportConfig(BaseModel):
    """`contextlm export`: a window of feedback as training and held-out JSONL."""

    namespace: str = Field(default="default")
    model: str = Field(description="AlignedModel name.")
    run: str = Field(description="AlignmentRun name: the dataset goes under its prefix.")
    feedback: FeedbackSource
    since: datetime | None = Field(
        default=None, description="Feedback at or after this time; empty: see sinceLastRun."
    )
    until: datetime | None = Field(
        default=None, description="Feedback before this time; empty: the export's start."
    )
    since_last_run: bool = Field(
        default=True,
        description="Without `since`, start where the model's latest exported window ended.",
    )
    held_out_fraction: float = Field(default=0.2, ge=0.0, le=0.5)
    store: StoreConfig = Field(default_factory=StoreConfig)


class TrainConfig(BaseModel):
    """`contextlm train`: LoRA alignment of a model revision on an exported dataset."""

    namespace: str = Field(default="default")
    model: str = Field(description="AlignedModel name.")
    run: str = Field(description="AlignmentRun name.")
    base_model: str = Field(
        description="The AlignedModel's base model: models/<name> in the store, a local"
        " directory or a packaged name."
    )
    base_revision: str = Field(
        default="base", description="Revision to train from: `base` or a revision id."
    )
    alignment: Alignment = Field(default_factory=Alignment)
    max_steps: int | None = Field(default=None, ge=1, description="Overrides alignment.maxSteps.")
    dataset_prefix: str | None = Field(
        default=None, description="Exported dataset; empty: the run's own (see `export`)."
    )
    merge: bool = Field(
        default=False,
        description="Also write merged weights (merged/): TensorRT-LLM engines are built from them.",
    )
    max_length: int = Field(default=1024, ge=16, description="Prompt+completion tokens kept.")
    gradient_checkpointing: bool = Field(default=False)
    seed: int = Field(default=0)
    device: str = Field(default="auto", description="auto, cpu or cuda.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads.")
    store: StoreConfig = Field(default_factory=StoreConfig)
    cache_dir: str = Field(default="/tmp/contextlm-models")
    work_dir: str = Field(default="/tmp/contextlm-train")
    metrics_file: str | None = Field(
        default=None,
        description="Prometheus text file rewritten at every logged step (node-exporter"
        " textfile collector format); progress also goes to the log.",
    )


class EvaluateConfig(BaseModel):
    """`contextlm evaluate`: score a candidate revision against the serving one and decide."""

    namespace: str = Field(default="default")
    model: str = Field(description="AlignedModel name.")
    run: str = Field(description="AlignmentRun name.")
    base_model: str = Field(description="The AlignedModel's base model (see TrainConfig).")
    candidate_revision: str = Field(description="The revision the run trained.")
    baseline_revision: str = Field(default="base", description="The serving revision.")
    reference_revision: str | None = Field(
        default=None,
        description="π_ref of the implicit reward; empty: the candidate's parent.",
    )
    alignment: Alignment = Field(default_factory=Alignment)
    dataset_prefix: str | None = Field(
        default=None, description="Exported dataset; empty: the run's own."
    )
    evaluation_set: str | None = Field(
        default=None,
        description="File (or directory of the mounted ConfigMap) holding the evaluation set"
        " as JSON lines: {question, referenceAnswer?, relevantDocIds?}.",
    )
    retriever_url: str | None = Field(
        default=None, description="Retriever the evaluation set's questions are asked of."
    )
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    top_k: int | None = Field(default=None, ge=1, le=1000, description="Chunks retrieved.")
    chat_template: bool = Field(default=True, description="As the gateway renders prompts.")
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    max_held_out: int = Field(default=2000, ge=1, description="Held-out items scored at most.")
    max_length: int = Field(default=1024, ge=16)
    batch_size: int = Field(default=8, ge=1)
    device: str = Field(default="auto")
    threads: int | None = Field(default=None, ge=1)
    store: StoreConfig = Field(default_factory=StoreConfig)
    cache_dir: str = Field(default="/tmp/contextlm-models")
