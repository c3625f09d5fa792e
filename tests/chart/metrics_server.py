"""A process exposing real contextlm metrics for the scrape tests, without a cluster.

    python tests/chart/metrics_server.py --operator-port P1 --retriever-port P2

Port P1 is the operator's own probe server (`contextlm_operator.main.serve_probes`: the
/metrics and /healthz the chart's ServiceMonitor and liveness probe use), after the
operator's metric functions recorded what a few reconciles record. Port P2 serves the
retriever's metrics class (`contextlm.runtime.metrics.RetrieverMetrics`) with a few
observations, as a retriever pod exposes it on its `http` port; the retriever service
itself needs an index and is exercised by tests/runtime/. Runs until terminated.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from prometheus_client import start_http_server


def record_operator_activity() -> None:
    from contextlm_operator import metrics

    for kind, namespace, name, phase in (
        ("Corpus", "support", "handbook", "Ready"),
        ("RetrievalStack", "support", "support-retrieval", "Pending"),
        ("AlignmentRun", "support", "run-1", "Training"),
    ):
        body = {"kind": kind, "metadata": {"namespace": namespace, "name": name}}
        metrics.record_phase(body, phase, ready=phase == "Ready")
        metrics.RECONCILES.labels(kind=kind, outcome="success").inc(3)
        metrics.RECONCILE_DURATION.labels(kind=kind).observe(0.02)
    metrics.RECONCILES.labels(kind="RetrievalStack", outcome="error").inc()
    corpus = {"kind": "Corpus", "metadata": {"namespace": "support", "name": "handbook"}}
    metrics.job_finished(corpus, "sync", "succeeded")
    metrics.ALIGNMENT_RUNS.labels("support", "support-llm", "promoted").inc()
    metrics.ALIGNMENT_SCORE.labels("support", "support-llm", "candidate").set(0.71)
    metrics.ALIGNMENT_SCORE.labels("support", "support-llm", "baseline").set(0.64)


def serve_retriever_metrics(port: int) -> None:
    from contextlm.runtime.metrics import RetrieverMetrics

    retriever = RetrieverMetrics()
    for stage, seconds in (("embed", 0.004), ("dense", 0.002), ("sparse", 0.001), ("total", 0.01)):
        retriever.observe(stage, seconds)
    retriever.requests.labels(code="200").inc(20)
    retriever.requests.labels(code="500").inc()
    retriever.index_chunks.set(42)
    start_http_server(port, addr="127.0.0.1", registry=retriever.registry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--operator-port", type=int, required=True)
    parser.add_argument("--retriever-port", type=int, required=True)
    args = parser.parse_args()

    from contextlm_operator.main import serve_probes

    record_operator_activity()
    serve_probes("127.0.0.1", args.operator_port)
    serve_retriever_metrics(args.retriever_port)

    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    stop.wait()


if __name__ == "__main__":
    main()
