"""`contextlm index`: embed a corpus snapshot and build its dense and BM25 indexes into a
new, immutable index version in the artifact store.

The version id is a content hash of the snapshot id, the index-shaping part of each
retriever's spec and the fingerprint of each embedding model, so a retried Job finds its
own finished work and returns at once, and a change to anything that alters the files
yields a new version. Given `previous_version`, chunks whose content hash was already
embedded with the same model reuse that vector: re-indexing after a small corpus change
costs a small embedding pass.

Exit status: 0 built (or already built); 2 for failures a retry cannot fix (snapshot
missing or unpublished, unknown model, empty snapshot); 1 for anything else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..api.retrieval_stack import Bm25, DenseIndex, Retriever
from .artifacts import (
    Chunk,
    IndexManifest,
    content_hash,
    index_prefix,
    snapshot_prefix,
    stable_json,
)
from .config import IndexConfig, load_config
from .models import ModelNotFound, resolve_model
from .search import (
    BM25_TOKENIZER,
    CHUNKS,
    EMBEDDINGS_FILE,
    FAISS_FILE,
    HASHES_FILE,
    Bm25Tokenizer,
    dense_dir,
    load_bm25s,
    load_faiss,
    read_chunks,
    sparse_dir,
)
from .store import ArtifactStore, StoreError, open_store

log = logging.getLogger("contextlm.index")

# Bumped whenever the files of an index version change shape, so that no build of one
# release is mistaken for a build of another.
FORMAT = "1"
# Spec fields that only matter at query time or to speed: changing them needs no rebuild.
QUERY_TIME_FIELDS = {"weight", "batchSize", "maxQueryTokens", "efSearch", "nprobe"}
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
Vectors = npt.NDArray[np.float32]


class PermanentError(RuntimeError):
    """A failure that retrying the Job cannot fix."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error


@dataclass
class Model:
    name: str
    path: Path
    fingerprint: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        help="also write the one-line JSON result here (Kubernetes reads it into the pod status)",
    )


def run(args: argparse.Namespace) -> int:
    from .embedding import passive_openmp

    passive_openmp()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    path = getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)
    config = load_config(IndexConfig, args.config)
    try:
        result = build(config)
    except PermanentError as exc:
        return report({"error": exc.error, "reason": str(exc)}, path, code=2)
    except (StoreError, OSError, RuntimeError, ValueError) as exc:
        log.exception("index build failed")
        return report({"error": type(exc).__name__, "reason": str(exc)}, path, code=1)
    return report(result, path, code=0)


def report(result: dict[str, Any], termination_log: str, *, code: int) -> int:
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    try:
        with open(termination_log, "w") as handle:
            handle.write(line + "\n")
    except OSError:
        pass  # not in a pod, or the path is read-only: stdout has it
    return code


def build(config: IndexConfig) -> dict[str, Any]:
    """Build (or find) the index version for `config`; the one-line result as a dict."""
    store = open_store(config.store)
    work = Path(config.work_dir).expanduser()
    chunks = fetch_snapshot(store, config, work / "snapshot")
    models = resolve_models(config, store, work / "models")
    version = index_version(config, models)
    prefix = index_prefix(config.namespace, config.stack, version)
    existing = store.manifest(prefix)
    if existing is not None:
        log.info("index %s already built, nothing to do", version)
        return result_line(IndexManifest.model_validate(existing), existing=True)

    out = work / "build" / version
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(work / "snapshot" / CHUNKS, out / CHUNKS)
    previous = previous_vectors(store, config, models, work / "previous")
    entries: list[dict[str, Any]] = []
    vectors: dict[str, tuple[Vectors, int, int]] = {}
    for retriever in config.spec.retrievers:
        if retriever.dense is not None:
            model = models[retriever.dense.embedding_model]
            if model.fingerprint not in vectors:
                vectors[model.fingerprint] = embed_chunks(
                    chunks,
                    model,
                    previous.get(model.fingerprint, {}),
                    batch_size=retriever.dense.batch_size,
                    device=config.device,
                )
            entries.append(write_dense(out, retriever, model, chunks, vectors[model.fingerprint]))
        else:
            entries.append(write_sparse(out, retriever, chunks))

    store.upload_dir(prefix, out)
    manifest = IndexManifest(
        index_version=version,
        snapshot_id=config.snapshot_id,
        stack=config.stack,
        namespace=config.namespace,
        chunks=len(chunks),
        retrievers=entries,
        embedded=sum(e for _, e, _ in vectors.values()),
        reused=sum(r for _, _, r in vectors.values()),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    store.publish(prefix, manifest.model_dump())
    shutil.rmtree(out, ignore_errors=True)
    log.info("published index %s (%d chunks)", version, len(chunks))
    return result_line(manifest, existing=False)


def result_line(manifest: IndexManifest, *, existing: bool) -> dict[str, Any]:
    return {
        "indexVersion": manifest.index_version,
        "snapshotId": manifest.snapshot_id,
        "chunks": manifest.chunks,
        "embedded": 0 if existing else manifest.embedded,
        "reused": manifest.reused,
        "existing": existing,
    }


# Inputs --------------------------------------------------------------------------


def fetch_snapshot(store: ArtifactStore, config: IndexConfig, directory: Path) -> list[Chunk]:
    prefix = snapshot_prefix(config.namespace, config.corpus, config.snapshot_id)
    if store.manifest(prefix) is None:
        raise PermanentError(
            "SnapshotNotFound",
            f"snapshot {config.snapshot_id} of corpus {config.namespace}/{config.corpus} is "
            f"missing or unpublished (no {prefix}/manifest.json)",
        )
    directory.mkdir(parents=True, exist_ok=True)
    store.get_file(f"{prefix}/{CHUNKS}", directory / CHUNKS)
    chunks = list(read_chunks(directory / CHUNKS))
    if not chunks:
        raise PermanentError("EmptySnapshot", f"snapshot {config.snapshot_id} has no chunks")
    return chunks


def resolve_models(config: IndexConfig, store: ArtifactStore, cache: Path) -> dict[str, Model]:
    from .embedding import model_fingerprint

    models: dict[str, Model] = {}
    for retriever in config.spec.retrievers:
        if retriever.dense is None or retriever.dense.embedding_model in models:
            continue
        name = retriever.dense.embedding_model
        try:
            path = resolve_model(name, store=store, cache_dir=cache)
        except ModelNotFound as exc:
            raise PermanentError("ModelNotFound", str(exc)) from exc
        models[name] = Model(name=name, path=path, fingerprint=model_fingerprint(path))
    return models


def index_version(config: IndexConfig, models: dict[str, Model]) -> str:
    specs = [_index_shaping(r) for r in config.spec.retrievers]
    fingerprints = sorted(m.fingerprint for m in models.values())
    return content_hash(FORMAT, config.snapshot_id, stable_json(specs), *fingerprints)


def _index_shaping(retriever: Retriever) -> Any:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in QUERY_TIME_FIELDS}
        return value

    return strip(retriever.model_dump(mode="json", by_alias=True))


def previous_vectors(
    store: ArtifactStore, config: IndexConfig, models: dict[str, Model], directory: Path
) -> dict[str, dict[str, Vectors]]:
    """Embeddings of the previous version, keyed by model fingerprint, then content hash."""
    if not config.previous_version:
        return {}
    prefix = index_prefix(config.namespace, config.stack, config.previous_version)
    manifest = store.manifest(prefix)
    if manifest is None:
        log.warning("previous index %s not found: embedding everything", config.previous_version)
        return {}
    wanted = {m.fingerprint for m in models.values()}
    found: dict[str, dict[str, Vectors]] = {}
    for entry in manifest.get("retrievers", []):
        fingerprint = entry.get("modelFingerprint")
        if entry.get("kind") != "dense" or fingerprint not in wanted or fingerprint in found:
            continue
        local = directory / entry["name"]
        remote = f"{prefix}/{dense_dir(entry['name'])}"
        for name in (EMBEDDINGS_FILE, HASHES_FILE):
            store.get_file(f"{remote}/{name}", local / name)
        hashes = (local / HASHES_FILE).read_text().split()
        matrix = np.load(local / EMBEDDINGS_FILE)
        found[fingerprint] = {h: matrix[i] for i, h in enumerate(hashes)}
        log.info("reusing %d embeddings of index %s", len(hashes), config.previous_version)
    return found


# Dense ---------------------------------------------------------------------------


def embed_chunks(
    chunks: list[Chunk], model: Model, known: dict[str, Vectors], *, batch_size: int, device: str
) -> tuple[Vectors, int, int]:
    """(vectors in chunk order, chunks embedded now, chunks whose vector was reused)."""
    from .embedding import Embedder

    todo: dict[str, str] = {}
    for chunk in chunks:
        if chunk.content_hash not in known:
            todo.setdefault(chunk.content_hash, chunk.text)
    fresh: dict[str, Vectors] = {}
    if todo:
        embedder = Embedder(model.path, device=device)
        log.info(
            "embedding %d new chunk texts with %s on %s", len(todo), model.name, embedder.device
        )
        matrix = embedder.encode(
            list(todo.values()), batch_size=batch_size, progress=_progress_log()
        )
        fresh = dict(zip(todo, matrix, strict=True))
    dimension = len(next(iter(fresh.values()) if fresh else iter(known.values())))
    out = np.zeros((len(chunks), dimension), dtype=np.float32)
    reused = 0
    for row, chunk in enumerate(chunks):
        vector = known.get(chunk.content_hash)
        if vector is None:
            vector = fresh[chunk.content_hash]
        else:
            reused += 1
        out[row] = vector
    return out, len(chunks) - reused, reused


def write_dense(
    out: Path,
    retriever: Retriever,
    model: Model,
    chunks: list[Chunk],
    vectors: tuple[Vectors, int, int],
) -> dict[str, Any]:
    faiss = load_faiss()

    assert retriever.dense is not None
    matrix, embedded, reused = vectors
    directory = out / dense_dir(retriever.name)
    directory.mkdir()
    index, effective = build_faiss(matrix, retriever.dense.index)
    faiss.write_index(index, str(directory / FAISS_FILE))
    np.save(directory / EMBEDDINGS_FILE, matrix)
    (directory / HASHES_FILE).write_text("".join(c.content_hash + "\n" for c in chunks))
    return {
        "name": retriever.name,
        "kind": "dense",
        "embeddingModel": model.name,
        "modelFingerprint": model.fingerprint,
        "dimension": int(matrix.shape[1]),
        "index": effective,
        "embedded": embedded,
        "reused": reused,
    }


def build_faiss(matrix: Vectors, params: DenseIndex) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index over unit vectors (so scores are cosine similarities),
    and the parameters it was really built with."""
    faiss = load_faiss()

    dim = matrix.shape[1]
    index: Any
    if params.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        index.add(matrix)
        return index, {
            "type": "hnsw",
            "hnswM": params.hnsw_m,
            "efConstruction": params.ef_construction,
        }
    if params.type == "ivfpq":
        built = _ivfpq(matrix, params)
        if built is not None:
            return built
    index = faiss.IndexFlatIP(dim)
    index.add(matrix)
    return index, {"type": "flat", "requested": params.type}


def _ivfpq(matrix: Vectors, params: DenseIndex) -> tuple[Any, dict[str, Any]] | None:
    faiss = load_faiss()

    count, dim = matrix.shape
    # k-means wants about 39 points per centroid; PQ codebooks need at least 2**bits points.
    nlist = max(1, min(params.nlist, count // 39))
    bits = min(8, int(math.log2(count))) if count > 1 else 0
    pq_m = max(m for m in range(1, min(params.pq_m, dim) + 1) if dim % m == 0)
    if bits < 4:
        log.warning("ivfpq over %d vectors is too small to train: building flat instead", count)
        return None
    if (nlist, bits, pq_m) != (params.nlist, 8, params.pq_m):
        log.warning(
            "ivfpq over %d vectors of dim %d: using nlist=%d (asked %d), pqM=%d (asked %d), "
            "%d bits per code",
            count,
            dim,
            nlist,
            params.nlist,
            pq_m,
            params.pq_m,
            bits,
        )
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, bits, faiss.METRIC_INNER_PRODUCT)
    index.train(matrix)
    index.add(matrix)
    index.nprobe = min(params.nprobe, nlist)
    return index, {"type": "ivfpq", "nlist": nlist, "pqM": pq_m, "bits": bits}


# Sparse --------------------------------------------------------------------------


def write_sparse(out: Path, retriever: Retriever, chunks: list[Chunk]) -> dict[str, Any]:
    bm25s = load_bm25s()

    assert retriever.sparse is not None
    params: Bm25 = retriever.sparse.bm25
    words = Bm25Tokenizer().words([c.text for c in chunks])
    bm25 = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
    bm25.index(words, show_progress=False)
    directory = out / sparse_dir(retriever.name)
    bm25.save(str(directory), show_progress=False)
    return {
        "name": retriever.name,
        "kind": "sparse",
        "bm25": params.model_dump(mode="json", by_alias=True),
        "tokenizer": BM25_TOKENIZER,
    }


def _progress_log(every_s: float = 2.0) -> Callable[[int, int], None]:
    """A progress callback that logs `embedded i/N chunks` at most every `every_s`
    seconds (and at the end): the Job log's progress, and `contextlm up`'s bar."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            log.info("embedded %d/%d chunks", done, total)

    return report
