"""`contextlm index`: build, exact search, idempotent rebuild, incremental re-embedding,
HNSW and IVF-PQ, and the CLI's result line and exit codes. Real model, real FAISS and
bm25s, a real local artifact store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from retrieval_helpers import (
    NAMESPACE,
    STACK,
    corpus_chunks,
    index_config,
    publish_snapshot,
    stack_spec,
)

from contextlm.api.retrieval_stack import DenseIndex
from contextlm.runtime.artifacts import Chunk, content_hash, index_prefix
from contextlm.runtime.embedding import Embedder
from contextlm.runtime.index import build, build_faiss
from contextlm.runtime.models import resolve_model
from contextlm.runtime.search import Bm25Tokenizer, load_faiss
from contextlm.runtime.store import LocalStore, StoreConfig


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(resolve_model("all-MiniLM-L6-v2"), device="cpu")


@pytest.fixture
def store(tmp_path: Path) -> tuple[StoreConfig, LocalStore]:
    config = StoreConfig(kind="local", path=str(tmp_path / "store"))
    return config, LocalStore(config.path)


def download(store: LocalStore, version: str, target: Path) -> Path:
    store.download_dir(index_prefix(NAMESPACE, STACK, version), target)
    return target


def test_encoding_reports_progress_after_each_batch(embedder: Embedder) -> None:
    """The index Job logs `embedded i/N chunks` from these calls; `contextlm up` draws
    its embedding bar from that line."""
    calls: list[tuple[int, int]] = []
    texts = [f"passage number {i} about returns" for i in range(130)]
    vectors = embedder.encode(texts, batch_size=64, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(64, 130), (128, 130), (130, 130)]
    assert np.allclose(vectors, embedder.encode(texts, batch_size=64))


def test_embeddings_match_sentence_transformers(embedder: Embedder) -> None:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pytest.fail("the reference needs sentence-transformers: pip install sentence-transformers")
    texts = [c.text for c in corpus_chunks()] + ["short", "word " * 400]
    ours = embedder.encode(texts, batch_size=4)
    reference = SentenceTransformer(str(embedder.path), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    assert ours.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_build_publishes_and_finds_the_right_chunks(
    tmp_path: Path, store: tuple[StoreConfig, LocalStore], embedder: Embedder
) -> None:
    faiss = load_faiss()

    store_config, local = store
    chunks = corpus_chunks()
    snapshot = publish_snapshot(local, chunks)
    result = build(index_config(store_config, tmp_path / "work", snapshot, stack_spec()))
    assert result["chunks"] == len(chunks) == 12
    assert (result["embedded"], result["reused"], result["existing"]) == (12, 0, False)
    manifest = local.manifest(index_prefix(NAMESPACE, STACK, result["indexVersion"]))
    assert manifest is not None and manifest["snapshot_id"] == snapshot
    assert [r["name"] for r in manifest["retrievers"]] == ["dense", "bm25"]

    files = download(local, result["indexVersion"], tmp_path / "copy")
    index = faiss.read_index(str(files / "dense-dense/index.faiss"))
    assert index.ntotal == 12
    hashes = (files / "dense-dense/content_hashes.txt").read_text().split()
    assert hashes == [c.content_hash for c in chunks]

    # Semantic: no shared content word with the right chunk ("insulin ... glucose").
    vector = embedder.encode(["treatment that reduces sugar levels for diabetics"])
    _, rows = index.search(vector, 3)
    assert chunks[rows[0][0]].text.startswith("Insulin")
    vector = embedder.encode(["which planet is biggest"])
    _, rows = index.search(vector, 1)
    assert chunks[rows[0][0]].text.startswith("Jupiter")

    # Lexical, through bm25s loaded with mmap as the retriever loads it.
    import bm25s  # type: ignore[import-untyped]

    bm25 = bm25s.BM25.load(str(files / "sparse-bm25"), mmap=True)
    rows, scores = bm25.retrieve(Bm25Tokenizer().words(["laminated butter"]), k=2)
    assert chunks[rows[0][0]].text.startswith("Croissant") and scores[0][1] == 0.0


def test_rebuild_is_idempotent_and_query_time_fields_do_not_change_the_version(
    tmp_path: Path, store: tuple[StoreConfig, LocalStore]
) -> None:
    store_config, local = store
    snapshot = publish_snapshot(local, corpus_chunks())
    first = build(index_config(store_config, tmp_path / "a", snapshot, stack_spec()))
    again = build(index_config(store_config, tmp_path / "b", snapshot, stack_spec()))
    assert again["indexVersion"] == first["indexVersion"]
    assert (again["existing"], again["embedded"]) == (True, 0)

    retuned = stack_spec(
        retrievers=[
            {"name": "dense", "weight": 0.3, "dense": {"index": {"type": "flat"}, "batchSize": 8}},
            {"name": "bm25", "weight": 0.9, "sparse": {"bm25": {"k1": 1.2, "b": 0.75}}},
        ]
    )
    same = build(index_config(store_config, tmp_path / "c", snapshot, retuned))
    assert same["indexVersion"] == first["indexVersion"]
    reshaped = stack_spec(
        retrievers=[
            {"name": "dense", "dense": {"index": {"type": "flat"}}},
            {"name": "bm25", "sparse": {"bm25": {"k1": 0.9, "b": 0.4}}},
        ]
    )
    other = build(index_config(store_config, tmp_path / "d", snapshot, reshaped))
    assert other["indexVersion"] != first["indexVersion"]


def test_incremental_reindex_embeds_only_new_content(
    tmp_path: Path, store: tuple[StoreConfig, LocalStore]
) -> None:
    store_config, local = store
    chunks = corpus_chunks()
    first = build(
        index_config(store_config, tmp_path / "a", publish_snapshot(local, chunks), stack_spec())
    )

    changed = list(chunks)
    text = "Saturn has bright rings made of ice and rock."
    changed[6] = chunks[6].model_copy(update={"text": text, "content_hash": content_hash(text)})
    extra = "Mercury is the planet closest to the Sun."
    changed.append(
        Chunk(
            chunk_id="new-0",
            doc_id="planets.md",
            uri="s3://corpus/planets.md",
            position=0,
            text=extra,
            content_hash=content_hash(extra),
        )
    )
    snapshot = publish_snapshot(local, changed)
    second = build(
        index_config(
            store_config, tmp_path / "b", snapshot, stack_spec(), previous=first["indexVersion"]
        )
    )
    assert second["indexVersion"] != first["indexVersion"]
    assert (second["chunks"], second["embedded"], second["reused"]) == (13, 2, 11)

    # Reused vectors are the vectors a full build computes.
    full = build(
        index_config(
            StoreConfig(kind="local", path=str(tmp_path / "other")),
            tmp_path / "c",
            publish_snapshot(LocalStore(tmp_path / "other"), changed),
            stack_spec(),
        )
    )
    assert (full["embedded"], full["reused"]) == (13, 0)
    incremental = np.load(
        download(local, second["indexVersion"], tmp_path / "x") / "dense-dense/embeddings.npy"
    )
    other = LocalStore(tmp_path / "other")
    reference = np.load(
        download(other, full["indexVersion"], tmp_path / "y") / "dense-dense/embeddings.npy"
    )
    np.testing.assert_allclose(incremental, reference, atol=1e-5)


def test_two_dense_retrievers_on_one_model_embed_once(
    tmp_path: Path, store: tuple[StoreConfig, LocalStore]
) -> None:
    store_config, local = store
    spec = stack_spec(
        retrievers=[
            {"name": "exact", "dense": {"index": {"type": "flat"}}},
            {"name": "graph", "dense": {"index": {"type": "hnsw", "hnswM": 8}}},
        ]
    )
    result = build(
        index_config(store_config, tmp_path / "w", publish_snapshot(local, corpus_chunks()), spec)
    )
    assert (result["embedded"], result["reused"]) == (12, 0)


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray[Any, Any]:
    matrix = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    unit: np.ndarray[Any, Any] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit


def self_recall(index: Any, matrix: np.ndarray[Any, Any], k: int = 1) -> float:
    _, rows = index.search(matrix[:200], k)
    return float(np.mean([i in rows[i] for i in range(200)]))


def test_hnsw_builds_with_its_parameters_and_finds_neighbours() -> None:
    matrix = unit_vectors(3000, 64)
    index, effective = build_faiss(
        matrix, DenseIndex(type="hnsw", hnsw_m=16, ef_construction=100, ef_search=64)
    )
    assert effective == {"type": "hnsw", "hnswM": 16, "efConstruction": 100}
    assert index.hnsw.efSearch == 64 and index.ntotal == 3000
    assert self_recall(index, matrix) >= 0.98


def test_ivfpq_trains_and_shrinks_cells_when_vectors_are_few() -> None:
    matrix = unit_vectors(4000, 64)
    index, effective = build_faiss(matrix, DenseIndex(type="ivfpq", nlist=32, nprobe=32, pq_m=16))
    assert effective == {"type": "ivfpq", "nlist": 32, "pqM": 16, "bits": 8}
    assert index.is_trained and index.ntotal == 4000
    assert self_recall(index, matrix, k=10) >= 0.9

    few = unit_vectors(300, 48)
    index, effective = build_faiss(few, DenseIndex(type="ivfpq", nlist=256, pq_m=20))
    # 300 // 39 = 7 cells; pqM must divide 48, so 20 becomes 16; 2**8 <= 300 codes.
    assert effective == {"type": "ivfpq", "nlist": 7, "pqM": 16, "bits": 8}
    assert self_recall(index, few, k=10) >= 0.8

    tiny = unit_vectors(10, 48)
    index, effective = build_faiss(tiny, DenseIndex(type="ivfpq"))
    assert effective == {"type": "flat", "requested": "ivfpq"}
    _, rows = index.search(tiny, 1)
    assert rows[:, 0].tolist() == list(range(10))


def test_ivfpq_through_a_real_build(
    tmp_path: Path, store: tuple[StoreConfig, LocalStore], embedder: Embedder
) -> None:
    faiss = load_faiss()

    store_config, local = store
    filler: dict[str, tuple[str, list[str]]] = {
        f"note-{i}.md": (
            "misc",
            [f"Inventory note {i}: shelf {i % 17} holds {i * 7} boxes of item {i}."],
        )
        for i in range(300)
    }
    chunks = corpus_chunks() + corpus_chunks(filler)
    spec = stack_spec(
        retrievers=[
            {"name": "pq", "dense": {"index": {"type": "ivfpq", "nlist": 8, "nprobe": 8, "pqM": 8}}}
        ]
    )
    result = build(
        index_config(store_config, tmp_path / "w", publish_snapshot(local, chunks), spec)
    )
    manifest = local.manifest(index_prefix(NAMESPACE, STACK, result["indexVersion"]))
    assert manifest is not None
    assert manifest["retrievers"][0]["index"] == {"type": "ivfpq", "nlist": 8, "pqM": 8, "bits": 8}
    files = download(local, result["indexVersion"], tmp_path / "copy")
    index = faiss.read_index(str(files / "dense-pq/index.faiss"))
    index.nprobe = 8
    _, rows = index.search(embedder.encode(["which planet is biggest"]), 3)
    assert any(chunks[r].text.startswith("Jupiter") for r in rows[0])


def run_cli(config_path: Path, termination_log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "contextlm.cli",
            "index",
            "--config",
            str(config_path),
            "--termination-log",
            str(termination_log),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_prints_the_result_line_and_exits_2_on_a_missing_snapshot(
    tmp_path: Path, store: tuple[StoreConfig, LocalStore]
) -> None:
    store_config, local = store
    snapshot = publish_snapshot(local, corpus_chunks())
    config = tmp_path / "index.json"
    config.write_text(
        index_config(store_config, tmp_path / "w", snapshot, stack_spec()).model_dump_json(
            by_alias=True
        )
    )
    done = run_cli(config, tmp_path / "ok.log")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["chunks"] == 12 and line["embedded"] == 12 and line["reused"] == 0
    assert json.loads((tmp_path / "ok.log").read_text()) == line

    unpublished = publish_snapshot(local, corpus_chunks()[:3], publish=False)
    config.write_text(
        index_config(store_config, tmp_path / "w", unpublished, stack_spec()).model_dump_json(
            by_alias=True
        )
    )
    done = run_cli(config, tmp_path / "missing.log")
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stdout.strip().splitlines()[-1])
    assert error["error"] == "SnapshotNotFound" and unpublished in error["reason"]
    assert json.loads((tmp_path / "missing.log").read_text()) == error
