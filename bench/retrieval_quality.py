"""Retrieval quality on BEIR SciFact through the real path: the corpus as a published
snapshot in the artifact store, `contextlm index`, and queries over HTTP to
`contextlm retriever`, for BM25 alone, dense alone, hybrid (RRF and weighted) and hybrid
plus a reranker (see below). Printed next to the published test-split figures as context.

    python bench/retrieval_quality.py [--queries N] [--store auto|s3|local] [--data DIR]

Uses the *train* judgments (809 queries): the test judgments are held out.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Retriever,
    SciFact,
    add_common_arguments,
    artifact_store,
    load_scifact,
    ndcg_at,
    publish_snapshot,
    recall_at,
    run_index,
    spec,
    workdir,
)

# Published nDCG@10 on the SciFact *test* split (from the data set's README).
PUBLISHED = {
    "bm25": "0.665 BEIR / 0.665-0.679 Anserini / 0.687 bm25s (MTEB)",
    "dense": "0.645 all-MiniLM-L6-v2 (MTEB paper)",
}
DENSE = {"name": "dense", "dense": {"index": {"type": "hnsw"}}}
SPARSE = {"name": "bm25", "sparse": {"bm25": {}}}


def systems(reranker: str | None) -> list[tuple[str, str, Any]]:
    rows = [
        (
            "BM25 (bm25s, k1=1.5 b=0.75, stemmed)",
            "bm25",
            spec(retrievers=[{**DENSE, "weight": 0.0}, {**SPARSE, "weight": 1.0}]),
        ),
        (
            "dense (all-MiniLM-L6-v2, HNSW)",
            "dense",
            spec(retrievers=[{**DENSE, "weight": 1.0}, {**SPARSE, "weight": 0.0}]),
        ),
        (
            "hybrid, RRF k=60",
            "",
            spec(retrievers=[{**DENSE, "weight": 1.0}, {**SPARSE, "weight": 1.0}]),
        ),
        (
            "hybrid, weighted min-max 0.5/0.5",
            "",
            spec(
                retrievers=[{**DENSE, "weight": 0.5}, {**SPARSE, "weight": 0.5}],
                fusion={"method": "weighted", "candidates": 100},
            ),
        ),
    ]
    if reranker:
        rows.append(
            (
                "hybrid RRF + rerank top 10, UNTRAINED head",
                "",
                spec(
                    retrievers=[{**DENSE, "weight": 1.0}, {**SPARSE, "weight": 1.0}],
                    reranker={"model": reranker, "topN": 10, "batchSize": 10},
                ),
            )
        )
    return rows


def evaluate(retriever: Retriever, data: SciFact, qids: list[str]) -> tuple[float, float, float]:
    def ranked(qid: str) -> list[str]:
        answer = retriever.retrieve(data.queries[qid], top_k=10)
        return [r["docId"] for r in answer["results"]]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip(qids, pool.map(ranked, qids), strict=True))
    seconds = time.perf_counter() - start
    ndcg = sum(ndcg_at(runs[q], data.qrels[q]) for q in qids) / len(qids)
    recall = sum(recall_at(runs[q], data.qrels[q]) for q in qids) / len(qids)
    return ndcg, recall, seconds


def untrained_cross_encoder(target: Path) -> str:
    """No trained cross-encoder ships in an installed package, and nothing may be
    downloaded: this is MiniLM with a randomly initialised (seeded) scoring head. It
    exercises the reranking path and its cost; its ranking is noise by construction."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from contextlm.runtime.models import resolve_model

    torch.manual_seed(0)
    source = str(resolve_model("all-MiniLM-L6-v2"))
    BertForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return str(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--queries", type=int, default=0, help="first N train queries (0: all)")
    parser.add_argument(
        "--untrained-rerank",
        type=int,
        default=0,
        metavar="N",
        help="also run the rerank path with an untrained head on the first N queries (its cost)",
    )
    args = parser.parse_args()

    data = load_scifact(args.data, limit=args.limit)
    qids = sorted(data.qrels, key=int)[: args.queries or None]
    with workdir(args.work) as work, artifact_store(args.store, work) as (store, where):
        print(f"corpus: {len(data.chunks)} abstracts; {len(qids)} train queries; store: {where}")
        snapshot = publish_snapshot(store, data.chunks)
        built, seconds = run_index(store, work, snapshot, spec(retrievers=[DENSE, SPARSE]))
        print(
            f"contextlm index: version {built['indexVersion']}, {built['chunks']} chunks in "
            f"{seconds:.0f}s"
        )
        reranker = untrained_cross_encoder(work / "ce") if args.untrained_rerank else None
        rows = []
        for label, published, stack in systems(reranker):
            retriever = Retriever(store, work, built["indexVersion"], stack, name=label[:5])
            subset = qids[: args.untrained_rerank] if "rerank" in label else qids
            try:
                ndcg, recall, took = evaluate(retriever, data, subset)
            finally:
                retriever.stop()
            if subset is not qids:
                label += f" [{len(subset)} q]"
            rows.append((label, ndcg, recall, took, PUBLISHED.get(published, "-")))
            print(f"  measured {label}: nDCG@10 {ndcg:.4f} in {took:.0f}s", flush=True)

    print()
    print(
        f"BEIR SciFact, train judgments ({len(qids)} queries), over HTTP through "
        "contextlm retriever"
    )
    print(f"{'system':46} {'nDCG@10':>8} {'R@10':>7}  published test nDCG@10 (context)")
    for label, ndcg, recall, _, published in rows:
        print(f"{label:46} {ndcg:8.4f} {recall:7.4f}  {published}")
    print(
        "hybrid + reranker: not measured. No trained cross-encoder is shipped by an installed "
        "package and nothing may be downloaded;"
    )
    print(
        "  the rerank path is exercised by the tests with an untrained head (and by "
        "--untrained-rerank N here, for its cost only: its ranking is noise by construction)."
    )
    best_single = max(rows[0][1], rows[1][1])
    hybrid = rows[2][1]
    verdict = "beats" if hybrid > best_single else "does NOT beat"
    print(f"hybrid RRF {hybrid:.4f} {verdict} the best single retriever {best_single:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
