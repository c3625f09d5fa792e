"""Prometheus metrics of the runtime processes, one class per process, each on its own
registry so a test can run several in one interpreter."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Query latency is milliseconds to a second on CPU; rerank and cold starts reach further.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STAGES = ("queue", "embed", "dense", "sparse", "fuse", "rerank", "total")


class RetrieverMetrics:
    """`contextlm retriever`: latency by stage, requests by status code, the index served."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.duration = Histogram(
            "contextlm_retriever_request_duration_seconds",
            "Time a retrieve request spent in each stage (queue: waiting for a batch; "
            "total: end to end in the service).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "contextlm_retriever_requests_total",
            "Retrieve requests by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "contextlm_retriever_batch_size",
            "Requests answered together in one batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.index_info = Gauge(
            "contextlm_retriever_index_info",
            "The index version served (value 1).",
            ["namespace", "stack", "index_version", "snapshot_id"],
            registry=self.registry,
        )
        self.index_chunks = Gauge(
            "contextlm_retriever_index_chunks",
            "Chunks in the index served.",
            registry=self.registry,
        )
        for stage in STAGES:
            self.duration.labels(stage=stage)

    def observe(self, stage: str, seconds: float) -> None:
        self.duration.labels(stage=stage).observe(seconds)
