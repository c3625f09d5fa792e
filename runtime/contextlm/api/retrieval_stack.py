"""RetrievalStack: indexes built from a Corpus and the hybrid retrieval service over them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import (
    Autoscaling,
    LocalObjectReference,
    Model,
    Placement,
    ResourceRequirements,
    Rule,
    ScaledStatus,
    unique,
)

RETRIEVER_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class DenseIndex(Model):
    """The FAISS index and its parameters."""

    type: Literal["flat", "hnsw", "ivfpq"] = Field(
        default="hnsw",
        description="flat: exact; hnsw: graph, fast and accurate; ivfpq: compressed, for"
        " large corpora.",
    )
    hnsw_m: int = Field(default=32, ge=4, le=128, description="HNSW links per node.")
    ef_construction: int = Field(default=200, ge=8, le=2048, description="HNSW build depth.")
    ef_search: int = Field(default=128, ge=8, le=2048, description="HNSW search depth.")
    nlist: int = Field(default=256, ge=1, le=65536, description="IVF cells.")
    nprobe: int = Field(default=16, ge=1, le=65536, description="IVF cells searched.")
    pq_m: int = Field(default=16, ge=1, le=256, description="PQ sub-quantizers.")


class DenseRetriever(Model):
    """Embedding similarity search."""

    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        min_length=1,
        max_length=512,
        description="Embedding model: a name cached in the image or a path in the artifact"
        " store (models/<name>).",
    )
    index: DenseIndex = Field(default_factory=DenseIndex, description="Index structure.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Embedding batch size.")
    max_query_tokens: int = Field(
        default=128, ge=8, le=8192, description="Queries are truncated to this many tokens."
    )


class Bm25(Model):
    """Okapi BM25 parameters."""

    k1: float = Field(default=1.5, ge=0.0, le=3.0, description="Term-frequency saturation.")
    b: float = Field(default=0.75, ge=0.0, le=1.0, description="Length normalisation.")
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = Field(
        default="lucene", description="BM25 variant."
    )


class SparseRetriever(Model):
    """Lexical search."""

    bm25: Bm25 = Field(default_factory=Bm25, description="BM25 parameters.")


class Retriever(Model):
    """One retriever of the stack: dense or sparse, with its weight in fusion."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.dense) != has(self.sparse)",
            message="exactly one of dense or sparse must be set",
            check=lambda s: (s.dense is None) != (s.sparse is None),
        ),
    )

    name: str = Field(
        min_length=1, max_length=32, pattern=RETRIEVER_NAME, description="Retriever name."
    )
    weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Weight in fusion, in [0, 1].")
    dense: DenseRetriever | None = Field(default=None, description="Dense retriever.")
    sparse: SparseRetriever | None = Field(default=None, description="Sparse retriever.")


class Fusion(Model):
    """How the retrievers' ranked lists become one."""

    method: Literal["rrf", "weighted"] = Field(
        default="rrf",
        description="rrf: reciprocal rank fusion; weighted: weighted sum of normalised scores.",
    )
    rrf_k: int = Field(default=60, ge=1, le=1000, description="RRF constant k.")
    candidates: int = Field(
        default=50, ge=1, le=1000, description="Candidates taken from each retriever."
    )


class Reranker(Model):
    """Cross-encoder reranking of the fused candidates."""

    model: str = Field(
        min_length=1,
        max_length=512,
        description="Cross-encoder: a cached name or a path in the artifact store.",
    )
    top_n: int = Field(default=20, ge=1, le=200, description="Fused candidates reranked.")
    batch_size: int = Field(default=32, ge=1, le=1024, description="Reranker batch size.")


class RetrievalServing(Placement):
    """The retriever Deployment."""

    replicas: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Replicas; ignored while autoscaling is set (the autoscaler owns them).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Per-replica resources."
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Autoscale on CPU.")


class IndexBuild(Placement):
    """The index-build Job."""

    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Job resources."
    )
    gpus: int = Field(default=0, ge=0, le=8, description="nvidia.com/gpu to request for embedding.")
    backoff_limit: int = Field(default=2, ge=0, le=10, description="Retries of a failed build.")


class RetrievalStackSpec(Model):
    """The retrievers, how they are fused and reranked, and how they are served."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.reranker) || self.reranker.topN >= self.topK",
            message="reranker.topN must be at least topK",
            field="reranker.topN",
            check=lambda s: s.reranker is None or s.reranker.top_n >= s.top_k,
        ),
        Rule(
            cel="self.retrievers.exists(r, r.weight > 0.0)",
            message="at least one retriever must have a weight above 0",
            field="retrievers",
            check=lambda s: any(r.weight > 0 for r in s.retrievers),
        ),
        unique("retrievers", "name"),
    )

    corpus_ref: LocalObjectReference = Field(description="The Corpus to index.")
    retrievers: list[Retriever] = Field(
        min_length=1,
        max_length=8,
        description="Retrievers whose results are fused; names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    fusion: Fusion = Field(default_factory=Fusion, description="Fusion of the retrievers.")
    reranker: Reranker | None = Field(default=None, description="Optional reranking.")
    top_k: int = Field(default=10, ge=1, le=100, description="Chunks returned per query.")
    serving: RetrievalServing = Field(
        default_factory=RetrievalServing, description="The retrieval service."
    )
    index_build: IndexBuild = Field(default_factory=IndexBuild, description="The index Job.")


class RetrievalStackStatus(ScaledStatus):
    """Index versions built and served."""

    built_index_version: str | None = Field(
        default=None, max_length=128, description="Latest index version built."
    )
    serving_index_version: str | None = Field(
        default=None, max_length=128, description="Index version the service has loaded."
    )
    snapshot_id: str | None = Field(
        default=None, max_length=128, description="Corpus snapshot the built index covers."
    )
    chunks_indexed: int | None = Field(default=None, ge=0, description="Chunks in the index.")
    index_inputs: str | None = Field(
        default=None,
        max_length=64,
        description="Hash of the inputs of the last finished index build.",
    )
    endpoint: str | None = Field(
        default=None, max_length=512, description="In-cluster URL of the retrieval service."
    )
