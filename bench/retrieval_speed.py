"""Query latency of hybrid retrieval on BEIR SciFact, three ways over the same index and
model, in one run:

1. `contextlm retriever` over HTTP (index built by `contextlm index`, loaded from the store);
2. the raw library calls in-process on the same files: sentence-transformers `encode`,
   FAISS `search` on the same index.faiss, bm25s `retrieve` on the same BM25 directory,
   and RRF in a few lines of Python;
3. LlamaIndex's hybrid retriever (QueryFusionRetriever, reciprocal rank, over a
   FaissVectorStore holding the same vectors and its bm25s BM25Retriever), run in a
   separate interpreter from a venv so the framework never enters the project's
   environment (see bench/README.md).

At 1 and 16 concurrent clients (16 threads for the in-process ones), p50/p99 per query.

    python bench/retrieval_speed.py [--queries 300] [--requests 480] [--framework-python PY]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    NAMESPACE,
    Retriever,
    add_common_arguments,
    artifact_store,
    load_scifact,
    percentile,
    publish_snapshot,
    run_index,
    spec,
    workdir,
)

DEFAULT_VENV = Path("~/.cache/contextlm/bench-venv/bin/python").expanduser()
CANDIDATES, TOP_K, EF_SEARCH = 100, 10, 128
Run = Callable[[str], list[str]]


# In-process runners (also used by the framework worker) -------------------------------


def raw_runner(index_dir: Path) -> Run:
    import bm25s
    import faiss
    import Stemmer
    from sentence_transformers import SentenceTransformer

    from contextlm.runtime.models import resolve_model

    model = SentenceTransformer(str(resolve_model("all-MiniLM-L6-v2")), device="cpu")
    index = faiss.read_index(str(index_dir / "dense-dense/index.faiss"))
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = EF_SEARCH
    bm25 = bm25s.BM25.load(str(index_dir / "sparse-bm25"), mmap=True)
    k = min(CANDIDATES, index.ntotal)
    stemmer = Stemmer.Stemmer("english")
    ids = [json.loads(line)["chunk_id"] for line in (index_dir / "chunks.jsonl").open()]
    lock = threading.Lock()  # HF fast tokenizers refuse concurrent use from threads

    def run(query: str) -> list[str]:
        with lock:
            vector = model.encode([query], normalize_embeddings=True)
        _, dense = index.search(vector, k)
        tokens = bm25s.tokenize(
            [query], stopwords="en", stemmer=stemmer.stemWords, show_progress=False
        )
        sparse, scores = bm25.retrieve(tokens, k=k, show_progress=False)
        fused: dict[int, float] = {}
        for rank, row in enumerate(dense[0]):
            fused[int(row)] = fused.get(int(row), 0.0) + 1 / (60 + rank + 1)
        for rank, (row, score) in enumerate(zip(sparse[0], scores[0], strict=True)):
            if score > 0:
                fused[int(row)] = fused.get(int(row), 0.0) + 1 / (60 + rank + 1)
        top = sorted(fused, key=lambda r: -fused[r])[:TOP_K]
        return [ids[r] for r in top]

    return run


def llamaindex_runner(index_dir: Path) -> Run:
    import faiss
    import numpy as np
    import Stemmer
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.retrievers.bm25 import BM25Retriever
    from llama_index.vector_stores.faiss import FaissVectorStore

    from contextlm.runtime.models import resolve_model

    vectors = np.load(index_dir / "dense-dense/embeddings.npy")
    chunks = [json.loads(line) for line in (index_dir / "chunks.jsonl").open()]
    nodes = [
        TextNode(id_=c["chunk_id"], text=c["text"], embedding=vectors[i].tolist())
        for i, c in enumerate(chunks)
    ]
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction, hnsw.hnsw.efSearch = 200, EF_SEARCH
    storage = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss_index=hnsw))
    embed = HuggingFaceEmbedding(model_name=str(resolve_model("all-MiniLM-L6-v2")), device="cpu")
    index = VectorStoreIndex(nodes, storage_context=storage, embed_model=embed)
    bm25 = BM25Retriever.from_defaults(
        nodes=nodes,
        similarity_top_k=CANDIDATES,
        stemmer=Stemmer.Stemmer("english"),
        language="english",
    )
    fusion = QueryFusionRetriever(
        [index.as_retriever(similarity_top_k=CANDIDATES), bm25],
        llm=MockLLM(),
        similarity_top_k=TOP_K,
        num_queries=1,
        mode="reciprocal_rerank",
        use_async=False,
    )

    def run(query: str) -> list[str]:
        return [n.node.node_id for n in fusion.retrieve(query)]

    return run


def measure(run: Run, queries: Sequence[str], *, clients: int, requests: int) -> dict[str, Any]:
    for query in queries[:10]:
        run(query)  # warm-up
    work = [queries[i % len(queries)] for i in range(requests)]

    def timed(query: str) -> float:
        start = time.perf_counter()
        run(query)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = list(pool.map(timed, work))
    return summary(latencies, time.perf_counter() - start)


def summary(latencies: Sequence[float], wall: float) -> dict[str, Any]:
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "qps": len(latencies) / wall,
        "n": len(latencies),
    }


# The service, over HTTP ----------------------------------------------------------------


async def measure_http(
    url: str, queries: Sequence[str], *, clients: int, requests: int
) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def one(query: str) -> float:
            start = time.perf_counter()
            async with session.post(url, json={"query": query, "topK": TOP_K}) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            return time.perf_counter() - start

        for query in queries[:10]:
            await one(query)
        work = iter([queries[i % len(queries)] for i in range(requests)])
        latencies: list[float] = []

        async def client() -> None:
            for query in work:
                latencies.append(await one(query))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return summary(latencies, time.perf_counter() - start)


def service_ids(retriever: Retriever, queries: Sequence[str]) -> list[list[str]]:
    return [[r["chunkId"] for r in retriever.retrieve(q, TOP_K)["results"]] for q in queries]


# Main ---------------------------------------------------------------------------------


def worker(kind: str, index_dir: str, queries_file: str, requests: int) -> int:
    """Runs inside another interpreter: one in-process runner, JSON on stdout."""
    queries = json.loads(Path(queries_file).read_text())
    run = (
        llamaindex_runner(Path(index_dir)) if kind == "llamaindex" else raw_runner(Path(index_dir))
    )
    out = {
        "ids": [run(q) for q in queries[:50]],
        "c1": measure(run, queries, clients=1, requests=len(queries)),
        "c16": measure(run, queries, clients=16, requests=requests),
    }
    print("RESULT " + json.dumps(out))
    return 0


def in_subprocess(
    python: str, kind: str, index_dir: Path, queries_file: Path, requests: int
) -> dict[str, Any] | str:
    done = subprocess.run(
        [python, __file__, "--worker", kind, str(index_dir), str(queries_file), str(requests)],
        capture_output=True,
        text=True,
        check=False,
        # The same OpenMP setting as the service's (see contextlm.runtime.embedding).
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    return f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    pairs = list(zip(a, b, strict=False))
    return sum(len(set(x) & set(y)) / max(1, len(x)) for x, y in pairs) / max(1, len(pairs))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--queries", type=int, default=300, help="distinct queries (c=1 runs)")
    parser.add_argument("--requests", type=int, default=480, help="requests at 16 clients")
    parser.add_argument(
        "--framework-python",
        default=str(DEFAULT_VENV),
        help="python of a venv with bench/requirements-framework.txt",
    )
    args = parser.parse_args()

    data = load_scifact(args.data, limit=args.limit)
    queries = [data.queries[q] for q in sorted(data.queries, key=int)][: args.queries]
    stack = spec()
    rows: dict[str, dict[str, Any] | str] = {}
    with workdir(args.work) as work, artifact_store(args.store, work) as (store, where):
        print(
            f"corpus: {len(data.chunks)} abstracts; {len(queries)} queries; store: {where}; "
            f"load average before: {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        snapshot = publish_snapshot(store, data.chunks)
        built, _ = run_index(store, work, snapshot, stack)
        version = built["indexVersion"]
        retriever = Retriever(store, work, version, stack, name="speed")
        try:
            url = retriever.url + "/v1/retrieve"
            rows["contextlm retriever (HTTP)"] = {
                "c1": asyncio.run(measure_http(url, queries, clients=1, requests=len(queries))),
                "c16": asyncio.run(measure_http(url, queries, clients=16, requests=args.requests)),
            }
            ids = service_ids(retriever, queries[:50])
        finally:
            retriever.stop()
        index_dir = work / "retriever-cache/indexes" / version  # the files the service loaded
        queries_file = work / "queries.json"
        queries_file.write_text(json.dumps(queries))
        raw = in_subprocess(sys.executable, "raw", index_dir, queries_file, args.requests)
        rows["raw bm25s + FAISS + s-t encode (in-process)"] = raw
        python = args.framework_python
        if Path(python).exists():
            frame = in_subprocess(python, "llamaindex", index_dir, queries_file, args.requests)
        else:
            frame = f"skipped: no framework venv at {python} (see bench/README.md)"
        rows["LlamaIndex QueryFusionRetriever (in-process)"] = frame

    print(
        f"\nhybrid retrieval (dense HNSW + BM25, RRF, top {TOP_K} of {CANDIDATES} candidates each), "
        f"namespace {NAMESPACE}, index {version}; load average after: {os.getloadavg()[0]:.1f}"
    )
    print(f"{'':46} {'c=1 p50':>9} {'c=1 p99':>9} {'c=16 p50':>9} {'c=16 p99':>9} {'c=16 QPS':>9}")
    for label, row in rows.items():
        if isinstance(row, str):
            print(f"{label:46} {row}")
            continue
        one, many = row["c1"], row["c16"]
        print(
            f"{label:46} {ms(one['p50'])} {ms(one['p99'])} {ms(many['p50'])} {ms(many['p99'])} "
            f"{many['qps']:9.1f}"
        )
    service = rows["contextlm retriever (HTTP)"]
    if isinstance(raw, dict) and isinstance(service, dict):
        for c in ("c1", "c16"):
            ratio = service[c]["p50"] / raw[c]["p50"]
            print(f"service p50 / raw p50 at {c[1:]} client(s): {ratio:.2f}x (goal <= 1.5x)")
        print(f"top-{TOP_K} overlap, service vs raw (50 queries): {overlap(ids, raw['ids']):.3f}")
    if isinstance(frame, dict):
        print(f"top-{TOP_K} overlap, service vs LlamaIndex: {overlap(ids, frame['ids']):.3f}")
    return 0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}ms"


if __name__ == "__main__":
    raise SystemExit(main())
