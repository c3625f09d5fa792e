"""Search over one index version: its on-disk format, the dense and sparse searchers, and
the engine that runs a batch of queries through every retriever, fusion and reranking.

`contextlm index` writes the format and `contextlm retriever` serves through `Engine`;
both import the names below so the two sides cannot drift. The engine is synchronous and
batch-oriented: the HTTP service hands it whatever requests queued while the previous
batch ran, so query embedding and FAISS search are done once per batch, not per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..api.retrieval_stack import DenseRetriever, RetrievalStackSpec
from .artifacts import Chunk, IndexManifest
from .fusion import Fused, Hit, fuse

log = logging.getLogger(__name__)

CHUNKS = "chunks.jsonl"
FAISS_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
HASHES_FILE = "content_hashes.txt"
# Tokenisation of BM25 text, recorded in each sparse retriever's manifest entry so that a
# later change here cannot silently mismatch an index built before it.
BM25_TOKENIZER = {"lower": True, "stopwords": "en", "stemmer": "english"}
# Filtered dense queries whose allowed rows number at most this are scored exactly
# against the stored embeddings: faster than a filtered graph walk, and never short.
EXACT_FILTER_ROWS = 20_000

Mask = npt.NDArray[np.bool_]
Observe = Callable[[str, float], None]


def load_faiss() -> Any:
    """FAISS, imported on first use; typed loosely because its SWIG stubs miss most of
    the index-specific attributes (hnsw, nprobe, search parameters)."""
    import faiss

    return faiss


def load_bm25s() -> Any:
    """bm25s, imported on first use (it ships no type information)."""
    import bm25s  # type: ignore[import-untyped]

    return bm25s


def dense_dir(name: str) -> str:
    return f"dense-{name}"


def sparse_dir(name: str) -> str:
    return f"sparse-{name}"


def read_chunks(path: Path) -> Iterator[Chunk]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield Chunk.model_validate_json(line)


class Bm25Tokenizer:
    """Lower-case words, English stop words removed, Snowball-stemmed (as Lucene's
    English analyzer does, and as the published bm25s SciFact figure was measured)."""

    def __init__(self) -> None:
        try:
            import Stemmer  # type: ignore[import-not-found]
        except ImportError as exc:  # pragma: no cover - depends on the image
            raise RuntimeError("BM25 needs PyStemmer: pip install PyStemmer") from exc
        self._stemmer = Stemmer.Stemmer(BM25_TOKENIZER["stemmer"])

    def words(self, texts: Sequence[str]) -> list[list[str]]:
        bm25s = load_bm25s()

        tokens: list[list[str]] = bm25s.tokenize(
            list(texts),
            stopwords=BM25_TOKENIZER["stopwords"],
            stemmer=self._stemmer.stemWords,
            return_ids=False,
            show_progress=False,
        )
        return tokens


@dataclass
class Query:
    """One request as the engine sees it."""

    text: str
    top_k: int
    filter: dict[str, str] = field(default_factory=dict)


class DenseSearcher:
    def __init__(self, directory: Path, spec: DenseRetriever, embedder: Any) -> None:
        faiss = load_faiss()

        self.spec = spec
        self.embedder = embedder
        self.index: Any = faiss.read_index(str(directory / FAISS_FILE))
        self.vectors = np.load(directory / EMBEDDINGS_FILE, mmap_mode="r")
        # Query-time parameters come from the serving spec, not the file: changing
        # them needs no rebuild.
        if spec.index.type == "hnsw":
            self.index.hnsw.efSearch = spec.index.ef_search
        elif spec.index.type == "ivfpq":
            self.index.nprobe = min(spec.index.nprobe, self.index.nlist)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors: npt.NDArray[np.float32] = self.embedder.encode(
            texts, batch_size=self.spec.batch_size, max_length=self.spec.max_query_tokens
        )
        return vectors

    def search(
        self, vectors: npt.NDArray[np.float32], k: int, masks: Sequence[Mask | None]
    ) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in masks]
        k = min(k, int(self.index.ntotal))
        plain = [i for i, m in enumerate(masks) if m is None]
        if plain and k > 0:
            scores, rows = self.index.search(np.ascontiguousarray(vectors[plain]), k)
            for i, s, r in zip(plain, scores, rows, strict=True):
                out[i] = [
                    Hit(int(row), float(sc)) for sc, row in zip(s, r, strict=True) if row >= 0
                ]
        for i, mask in enumerate(masks):
            if mask is not None:
                out[i] = self._filtered(vectors[i], k, mask)
        return out

    def _filtered(self, vector: npt.NDArray[np.float32], k: int, mask: Mask) -> list[Hit]:
        faiss = load_faiss()

        allowed = np.flatnonzero(mask)
        if allowed.size == 0 or k == 0:
            return []
        if allowed.size <= EXACT_FILTER_ROWS:
            scores = np.asarray(self.vectors[allowed]) @ vector
            top = np.argsort(-scores, kind="stable")[:k]
            return [Hit(int(allowed[j]), float(scores[j])) for j in top]
        selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
        params: Any
        if self.spec.index.type == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.spec.index.ef_search)
        elif self.spec.index.type == "ivfpq":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, rows = self.index.search(vector[None, :], k, params=params)
        return [Hit(int(r), float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]


class SparseSearcher:
    def __init__(self, directory: Path, tokenizer: Bm25Tokenizer) -> None:
        bm25s = load_bm25s()

        self.tokenizer = tokenizer
        self.bm25: Any = bm25s.BM25.load(str(directory), mmap=True, show_progress=False)
        self.size = int(self.bm25.scores["num_docs"])

    def search(self, texts: Sequence[str], k: int, masks: Sequence[Mask | None]) -> list[list[Hit]]:
        k = min(k, self.size)
        if k == 0:
            return [[] for _ in texts]
        tokens = self.tokenizer.words(texts)
        out: list[list[Hit]] = []
        for words, mask in zip(tokens, masks, strict=True):
            weights = None if mask is None else mask.astype(np.float32)
            rows, scores = self.bm25.retrieve(
                [words], k=k, show_progress=False, weight_mask=weights
            )
            # A zero BM25 score means no query term occurs in the chunk: not a match.
            out.append(
                [Hit(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if s > 0]
            )
        return out


class LoadedIndex:
    """An index version on local disk: chunks, metadata filters, one searcher per retriever."""

    def __init__(
        self,
        directory: Path,
        *,
        manifest: IndexManifest,
        spec: RetrievalStackSpec,
        embedder_for: Callable[[str, str], Any],
    ) -> None:
        self.manifest = manifest
        self.spec = spec
        self.chunks = list(read_chunks(directory / CHUNKS))
        self._by_key: dict[tuple[str, str], npt.NDArray[np.int64]] = _inverted(self.chunks)
        built = {entry["name"]: entry for entry in manifest.retrievers}
        self.dense: dict[str, DenseSearcher] = {}
        self.sparse: dict[str, SparseSearcher] = {}
        tokenizer: Bm25Tokenizer | None = None
        for retriever in spec.retrievers:
            entry = built.get(retriever.name)
            if entry is None:
                raise ValueError(
                    f"retriever {retriever.name!r} is not in index {manifest.index_version}"
                )
            if retriever.weight <= 0:
                continue  # a weight of 0 switches a retriever off without a rebuild
            if retriever.dense is not None:
                embedder = embedder_for(retriever.dense.embedding_model, entry["modelFingerprint"])
                path = directory / dense_dir(retriever.name)
                self.dense[retriever.name] = DenseSearcher(path, retriever.dense, embedder)
            else:
                tokenizer = tokenizer or Bm25Tokenizer()
                path = directory / sparse_dir(retriever.name)
                self.sparse[retriever.name] = SparseSearcher(path, tokenizer)

    def mask(self, where: Mapping[str, str]) -> Mask | None:
        """Rows whose metadata has every key = value of `where`; None when unfiltered."""
        if not where:
            return None
        mask = np.zeros(len(self.chunks), dtype=np.bool_)
        rows: npt.NDArray[np.int64] | None = None
        for key, value in where.items():
            matching = self._by_key.get((key, value), np.empty(0, dtype=np.int64))
            rows = matching if rows is None else np.intersect1d(rows, matching)
        if rows is not None:
            mask[rows] = True
        return mask


def _inverted(chunks: Sequence[Chunk]) -> dict[tuple[str, str], npt.NDArray[np.int64]]:
    lists: dict[tuple[str, str], list[int]] = {}
    for row, chunk in enumerate(chunks):
        for item in chunk.metadata.items():
            lists.setdefault(item, []).append(row)
    return {key: np.asarray(rows, dtype=np.int64) for key, rows in lists.items()}


class Engine:
    """Runs batches of queries through every retriever, fusion and the reranker."""

    def __init__(self, index: LoadedIndex, *, reranker: Any = None) -> None:
        self.index = index
        self.spec = index.spec
        self.reranker = reranker
        self.weights = {r.name: r.weight for r in self.spec.retrievers}

    def retrieve(
        self, queries: Sequence[Query], observe: Observe | None = None
    ) -> list[dict[str, Any]]:
        stages: dict[str, float] = {}
        timer = _stage_timer(observe, len(queries), stages)
        masks = [self.index.mask(q.filter) for q in queries]
        texts = [q.text for q in queries]
        k = max([self.spec.fusion.candidates, *(q.top_k for q in queries)])
        ranked: list[dict[str, list[Hit]]] = [{} for _ in queries]
        embedded: dict[tuple[int, int], npt.NDArray[np.float32]] = {}
        for name, searcher in self.index.dense.items():
            # Dense retrievers on one model (say flat and HNSW) share the query vectors.
            key = (id(searcher.embedder), searcher.spec.max_query_tokens)
            if key not in embedded:
                with timer("embed"):
                    embedded[key] = searcher.embed(texts)
            with timer("dense"):
                for i, hits in enumerate(searcher.search(embedded[key], k, masks)):
                    ranked[i][name] = hits
        for name, sparse in self.index.sparse.items():
            with timer("sparse"):
                for i, hits in enumerate(sparse.search(texts, k, masks)):
                    ranked[i][name] = hits
        with timer("fuse"):
            fused = [
                self._fuse(r, max(q.top_k, self.spec.fusion.candidates))
                for r, q in zip(ranked, queries, strict=True)
            ]
        rerank: list[dict[int, float]] = [{} for _ in queries]
        if self.reranker is not None and self.spec.reranker is not None:
            with timer("rerank"):
                rerank = self._rerank(queries, fused)
        answers = [
            self._response(f, r, q.top_k) for f, r, q in zip(fused, rerank, queries, strict=True)
        ]
        for answer in answers:
            answer["timings"] = dict(stages)  # seconds per stage, for the caller's tracing
        return answers

    def _fuse(self, ranked: dict[str, list[Hit]], k: int) -> list[Fused]:
        # Each retriever contributes at most `candidates` (or topK, if larger) hits.
        trimmed = {name: hits[:k] for name, hits in ranked.items()}
        fusion = self.spec.fusion
        return fuse(trimmed, weights=self.weights, method=fusion.method, rrf_k=fusion.rrf_k)

    def _rerank(self, queries: Sequence[Query], fused: list[list[Fused]]) -> list[dict[int, float]]:
        assert self.spec.reranker is not None
        top_n = self.spec.reranker.top_n
        keys = [(i, f.row) for i, entries in enumerate(fused) for f in entries[:top_n]]
        pairs = [(queries[i].text, self.index.chunks[row].text) for i, row in keys]
        scores = self.reranker.score(pairs, batch_size=self.spec.reranker.batch_size)
        out: list[dict[int, float]] = [{} for _ in queries]
        for (i, row), score in zip(keys, scores, strict=True):
            out[i][row] = score
        return out

    def _response(self, fused: list[Fused], rerank: dict[int, float], top_k: int) -> dict[str, Any]:
        head = sorted((f for f in fused if f.row in rerank), key=lambda f: (-rerank[f.row], f.row))
        ordered = head + [f for f in fused if f.row not in rerank]
        results = [
            self._result(rank, f, rerank.get(f.row))
            for rank, f in enumerate(ordered[:top_k], start=1)
        ]
        return {"indexVersion": self.index.manifest.index_version, "results": results}

    def _result(self, rank: int, fused: Fused, rerank: float | None) -> dict[str, Any]:
        chunk = self.index.chunks[fused.row]
        return {
            "rank": rank,
            "score": rerank if rerank is not None else fused.score,
            "fusedScore": fused.score,
            "rerankScore": rerank,
            "retrievers": {
                name: {"score": c.score, "rank": c.rank} for name, c in fused.sources.items()
            },
            "chunkId": chunk.chunk_id,
            "docId": chunk.doc_id,
            "uri": chunk.uri,
            "heading": chunk.heading,
            "text": chunk.text,
            "metadata": chunk.metadata,
        }


def _stage_timer(
    observe: Observe | None, count: int, stages: dict[str, float]
) -> Callable[[str], Any]:
    """Times a stage once per batch, adds it to `stages`, and reports it once for each
    query in the batch: the latency each request experienced in that stage."""

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        stages[stage] = stages.get(stage, 0.0) + elapsed
        if observe is not None:
            for _ in range(count):
                observe(stage, elapsed)

    return timed
