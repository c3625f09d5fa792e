"""Prometheus metrics of `contextlm gateway`, on a registry of their own so a test can run
several gateways in one interpreter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# An answer's stages span a millisecond (store) to a minute (long generations on CPU).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# rerank is observed when the retriever reports its timings; prompt is building the prompt.
STAGES = ("retrieve", "rerank", "prompt", "generate", "store")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "contextlm_gateway_requests_total",
            "Requests by route and HTTP status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "contextlm_gateway_stage_duration_seconds",
            "Time an answer or a feedback spent in each stage.",
            ["stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "contextlm_gateway_tokens_total",
            "Tokens sent to (prompt) and produced by (completion) the model.",
            ["kind"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "contextlm_gateway_feedback_total",
            "Feedback stored, by rating (idempotent replays are not counted again).",
            ["rating"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "contextlm_gateway_pending_answers",
            "Answers given while the feedback store was down, waiting to be recorded.",
            registry=self.registry,
        )
        for stage in STAGES:
            self.stage.labels(stage=stage)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind=kind)
        for rating in ("up", "down"):
            self.feedback.labels(rating=rating)

    @contextmanager
    def timed(self, stage: str, into: dict[str, float] | None = None) -> Iterator[None]:
        """Observe a stage's duration; also add it to `into` (a request's own timings)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.stage.labels(stage=stage).observe(elapsed)
            if into is not None:
                into[stage] = into.get(stage, 0.0) + elapsed
