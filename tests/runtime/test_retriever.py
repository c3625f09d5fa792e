"""`contextlm retriever` as a real process on 127.0.0.1, over an index built by
`contextlm index` into a local artifact store: readiness, attribution, topK, filters,
bad input, concurrent (batched) requests, reranking and metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from retrieval_helpers import (
    NAMESPACE,
    STACK,
    RetrieverProcess,
    corpus_chunks,
    index_config,
    publish_snapshot,
    stack_spec,
    tiny_cross_encoder,
)

from contextlm.api.retrieval_stack import RetrievalStackSpec
from contextlm.runtime.config import RetrieverConfig
from contextlm.runtime.index import build
from contextlm.runtime.store import LocalStore, StoreConfig

pytestmark = pytest.mark.integration


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = StoreConfig(kind="local", path=str(root / "store"))
        snapshot = publish_snapshot(LocalStore(self.store.path), corpus_chunks())
        self.spec = stack_spec()
        self.version: str = build(index_config(self.store, root / "work", snapshot, self.spec))[
            "indexVersion"
        ]

    def retriever(self, name: str, spec: RetrievalStackSpec | None = None) -> RetrieverProcess:
        work = self.root / name
        work.mkdir()
        config = RetrieverConfig(
            namespace=NAMESPACE,
            stack=STACK,
            index_version=self.version,
            spec=spec or self.spec,
            store=self.store,
            cache_dir=str(work / "cache"),
            device="cpu",
        )
        return RetrieverProcess(config, work)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("retriever"))


@pytest.fixture(scope="module")
def service(built: Built) -> Iterator[RetrieverProcess]:
    process = built.retriever("plain")
    try:
        process.wait_listening()
        # The index loads after the port opens: for a moment the service is up but not ready.
        status, body = process.get("/readyz")
        assert (status, body["ready"]) == (503, False), body
        status, body = process.post({"query": "planets"})
        assert (status, body["error"]) == (503, "NotReady")
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def reranking(built: Built) -> Iterator[RetrieverProcess]:
    model = tiny_cross_encoder(built.root / "cross-encoder")
    spec = stack_spec(
        fusion={"method": "weighted", "candidates": 10},
        reranker={"model": str(model), "topN": 4, "batchSize": 3},
        topK=3,
        retrievers=[
            {"name": "dense", "weight": 0.7, "dense": {"index": {"type": "flat"}}},
            {"name": "bm25", "weight": 0.3, "sparse": {"bm25": {"k1": 1.2, "b": 0.75}}},
        ],
    )
    process = built.retriever("rerank", spec)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_ready_after_loading(service: RetrieverProcess, built: Built) -> None:
    status, body = service.get("/readyz")
    assert status == 200 and body["ready"] is True and built.version in body["reason"]
    assert service.get("/healthz")[0] == 200


def test_results_are_attributed_and_scored_by_each_retriever(
    service: RetrieverProcess, built: Built
) -> None:
    status, body = service.post({"query": "which planet is the largest gas giant"})
    assert status == 200, body
    assert body["indexVersion"] == built.version
    assert set(body["timings"]) == {"embed", "dense", "sparse", "fuse"}
    assert all(0 < seconds < 30 for seconds in body["timings"].values())
    results = body["results"]
    assert len(results) == 5  # the stack's topK
    top = results[0]
    assert top["docId"] == "astronomy.md" and top["text"].startswith("Jupiter")
    assert top["uri"] == "s3://corpus/astronomy.md" and top["heading"] == "Astronomy"
    assert top["metadata"] == {"topic": "science", "doc": "astronomy.md"}
    assert re.fullmatch(r"[0-9a-f]{8}-0", top["chunkId"])
    # Both retrievers ranked it first; the fused score is RRF's 1/61 + 1/61.
    assert top["retrievers"]["dense"]["rank"] == 1 and top["retrievers"]["bm25"]["rank"] == 1
    assert 0.3 < top["retrievers"]["dense"]["score"] <= 1.0
    assert top["retrievers"]["bm25"]["score"] > 0
    assert top["fusedScore"] == pytest.approx(2 / 61) and top["score"] == top["fusedScore"]
    assert top["rerankScore"] is None
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    fused = [r["fusedScore"] for r in results]
    assert fused == sorted(fused, reverse=True)
    # A chunk without the query's words is found by the dense retriever alone.
    lexical_only = [r for r in results if "bm25" not in r["retrievers"]]
    assert lexical_only and all("dense" in r["retrievers"] for r in lexical_only)


def test_semantic_match_without_shared_words(service: RetrieverProcess) -> None:
    status, body = service.post({"query": "treatment that reduces sugar levels for diabetics"})
    assert status == 200
    assert body["results"][0]["text"].startswith("Insulin")


def test_top_k_is_honoured(service: RetrieverProcess) -> None:
    assert len(service.post({"query": "bread", "topK": 2})[1]["results"]) == 2
    # More than the stack's topK, up to every chunk (dense returns all 12).
    assert len(service.post({"query": "bread", "topK": 12})[1]["results"]) == 12
    assert len(service.post({"query": "bread", "topK": 50})[1]["results"]) == 12


def test_metadata_filters(service: RetrieverProcess) -> None:
    status, body = service.post(
        {"query": "largest planet", "filter": {"topic": "food"}, "topK": 10}
    )
    assert status == 200
    assert {r["docId"] for r in body["results"]} == {"baking.md"}
    assert len(body["results"]) == 3
    status, body = service.post(
        {"query": "infection", "filter": {"topic": "science", "doc": "medicine.md"}}
    )
    assert {r["docId"] for r in body["results"]} == {"medicine.md"}
    assert body["results"][0]["text"].startswith(("Penicillin", "Vaccines"))
    status, body = service.post({"query": "planet", "filter": {"topic": "none-such"}})
    assert (status, body["results"]) == (200, [])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[]", "body"),
        (json.dumps({}).encode(), "query: Field required"),
        (json.dumps({"query": "   "}).encode(), "query is blank"),
        (json.dumps({"query": "x", "topK": 0}).encode(), "topK"),
        (json.dumps({"query": "x", "topK": "5"}).encode(), "topK"),
        (json.dumps({"query": "x", "topK": 5000}).encode(), "topK"),
        (json.dumps({"query": "x", "filter": {"topic": 3}}).encode(), "filter.topic"),
        (json.dumps({"query": "x", "filter": ["topic"]}).encode(), "filter"),
        (json.dumps({"query": "x", "limit": 3}).encode(), "limit: Extra inputs"),
    ],
)
def test_bad_requests_get_400_with_a_reason(
    service: RetrieverProcess, payload: bytes, reason: str
) -> None:
    status, body = service.post(raw=payload)
    assert status == 400, body
    assert body["error"] == "BadRequest" and reason in body["reason"], body


def test_concurrent_requests_are_answered_each_with_its_own_results(
    service: RetrieverProcess,
) -> None:
    queries = [
        ({"query": "largest planet"}, "Jupiter"),
        ({"query": "sourdough starter yeast"}, "Sourdough"),
        ({"query": "container restarted when probe fails"}, "The kubelet"),
        ({"query": "first antibiotic"}, "Penicillin"),
        ({"query": "planet", "filter": {"topic": "food"}}, None),
    ] * 4
    expected = {json.dumps(q): service.post(q)[1] for q, _ in queries}
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        answers = list(pool.map(lambda q: service.post(q[0]), queries))
    for (query, first), (status, body) in zip(queries, answers, strict=True):
        assert status == 200
        alone = expected[json.dumps(query)]["results"]
        # Batched with others, a query gets the same chunks; padding in a shared
        # embedding batch moves float scores only in the last digits.
        assert [r["chunkId"] for r in body["results"]] == [r["chunkId"] for r in alone]
        assert [r["fusedScore"] for r in body["results"]] == [r["fusedScore"] for r in alone]
        for got, want in zip(body["results"], alone, strict=True):
            for name, score in want["retrievers"].items():
                assert got["retrievers"][name]["score"] == pytest.approx(score["score"], abs=1e-5)
        if first:
            assert body["results"][0]["text"].startswith(first)
    _, metrics = service.get("/metrics")
    batches = metric(metrics, "contextlm_retriever_batch_size_count")
    assert batches < metric(metrics, 'contextlm_retriever_requests_total{code="200"}')


def test_reranker_runs_and_orders_the_head(reranking: RetrieverProcess) -> None:
    status, body = reranking.post({"query": "baking bread in an oven"})
    assert status == 200, body
    results = body["results"]
    assert len(results) == 3 and body["timings"]["rerank"] > 0
    for result in results:
        assert 0.0 < result["rerankScore"] < 1.0
        assert result["score"] == result["rerankScore"]
        assert result["fusedScore"] <= 1.0  # weighted fusion of normalised scores
    scores = [r["rerankScore"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # topK beyond the reranked head: the rest follow in fused order, without a rerank score.
    status, body = reranking.post({"query": "baking bread in an oven", "topK": 8})
    tail = body["results"][4:]
    assert len(body["results"]) == 8 and all(r["rerankScore"] is None for r in tail)
    assert [r["fusedScore"] for r in tail] == sorted((r["fusedScore"] for r in tail), reverse=True)
    _, text = reranking.get("/metrics")
    assert metric(text, 'contextlm_retriever_request_duration_seconds_count{stage="rerank"}') >= 2


def test_metrics_are_exposed(service: RetrieverProcess, built: Built) -> None:
    service.post({"query": "telescope"})
    service.post(raw=b"nope")
    status, text = service.get("/metrics")
    assert status == 200
    for stage in ("embed", "dense", "sparse", "fuse", "total"):
        count = f'contextlm_retriever_request_duration_seconds_count{{stage="{stage}"}}'
        assert metric(text, count) >= 1, stage
    assert metric(text, 'contextlm_retriever_requests_total{code="200"}') >= 1
    assert metric(text, 'contextlm_retriever_requests_total{code="400"}') >= 1
    info = rf'contextlm_retriever_index_info\{{[^}}]*index_version="{built.version}"[^}}]*\}} 1\.0'
    assert re.search(info, text), text
    assert metric(text, "contextlm_retriever_index_chunks") == 12


def test_a_missing_index_version_exits_with_a_reason(built: Built, tmp_path: Path) -> None:
    config = RetrieverConfig(
        stack=STACK,
        index_version="0000000000000000",
        spec=built.spec,
        store=built.store,
        cache_dir=str(tmp_path / "cache"),
    )
    process = RetrieverProcess(config, tmp_path)
    try:
        assert process.process.wait(timeout=120) == 1
    finally:
        process.stop()
    reason = json.loads((tmp_path / "termination-log").read_text())
    assert reason["error"] == "LookupError" and "0000000000000000" in reason["reason"]


def metric(text: Any, name: str) -> float:
    for line in str(text).splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"{name} not in metrics:\n{text}")
