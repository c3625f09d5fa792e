"""What the retrieval benchmarks share: BEIR SciFact loading, an artifact store (a real S3
server on 127.0.0.1 when one can be started, else a local directory), `contextlm index`
and `contextlm retriever` run as the real CLI processes, and ranking metrics.

Nothing here downloads anything: the data set is read from `../shared/data/scifact`
(or --data / $CONTEXTLM_SCIFACT) and the model comes from the installed package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contextlm.api.retrieval_stack import RetrievalStackSpec
from contextlm.runtime.artifacts import Chunk, content_hash, snapshot_prefix
from contextlm.runtime.config import IndexConfig, RetrieverConfig
from contextlm.runtime.store import S3Store, StoreConfig, open_store

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE, CORPUS = "bench", "scifact"
ACCESS, SECRET = "contextlm", "contextlm-bench-secret"
MINIO = (
    Path(os.environ.get("CONTEXTLM_CACHE", "~/.cache/contextlm")).expanduser() / "bin/current/minio"
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=os.environ.get("CONTEXTLM_SCIFACT", str(ROOT.parent / "shared/data/scifact")),
        help="BEIR SciFact folder (default ../shared/data/scifact, or $CONTEXTLM_SCIFACT)",
    )
    parser.add_argument(
        "--store",
        choices=["auto", "s3", "local"],
        default="auto",
        help="auto: a real S3 server if one can be started here, else local",
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--limit", type=int, default=0, help="index only the first N abstracts")


# Data -------------------------------------------------------------------------------


@dataclass
class SciFact:
    chunks: list[Chunk]
    queries: dict[str, str]
    qrels: dict[str, set[str]]


def load_scifact(folder: str, *, limit: int = 0, split: str = "train") -> SciFact:
    root = Path(folder)
    if not (root / "corpus.jsonl").exists():
        raise SystemExit(f"SciFact not found in {root}: pass --data or set CONTEXTLM_SCIFACT")
    chunks = []
    with (root / "corpus.jsonl").open() as handle:
        for line in handle:
            doc = json.loads(line)
            # One chunk per abstract, title first, as BEIR's dense and BM25 baselines index it.
            title = doc["title"].strip()
            text = f"{title}\n\n{doc['text']}" if title else doc["text"]
            chunks.append(
                Chunk(
                    chunk_id=f"{doc['_id']}-0",
                    doc_id=doc["_id"],
                    uri=f"scifact://{doc['_id']}",
                    position=0,
                    text=text,
                    heading=title,
                    content_hash=content_hash(text),
                )
            )
            if limit and len(chunks) >= limit:
                break
    queries = {}
    with (root / "queries.jsonl").open() as handle:
        for line in handle:
            query = json.loads(line)
            queries[query["_id"]] = query["text"]
    qrels: dict[str, set[str]] = {}
    kept = {c.doc_id for c in chunks}
    with (root / "qrels" / f"{split}.tsv").open() as handle:
        next(handle)
        for line in handle:
            qid, did, score = line.strip().split("\t")
            if int(score) > 0 and did in kept:
                qrels.setdefault(qid, set()).add(did)
    return SciFact(chunks=chunks, queries={q: queries[q] for q in qrels}, qrels=qrels)


# Store ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def artifact_store(kind: str, work: Path) -> Iterator[tuple[StoreConfig, str]]:
    """A store for the run and a line saying which one it is."""
    if kind == "local":
        yield StoreConfig(kind="local", path=str(work / "store")), f"local directory {work}/store"
        return
    port = free_port()
    if MINIO.exists():
        name = "MinIO"
        command = [
            str(MINIO),
            "server",
            "--quiet",
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{free_port()}",
            str(work / "s3"),
        ]
        env = {**os.environ, "MINIO_ROOT_USER": ACCESS, "MINIO_ROOT_PASSWORD": SECRET}
    else:
        try:
            import flask  # noqa: F401
            import moto  # noqa: F401
        except ImportError:
            if kind == "s3":
                raise SystemExit(
                    "no S3 server: run e2e/cluster/build or pip install 'moto[server]'"
                )
            yield (
                StoreConfig(kind="local", path=str(work / "store")),
                "local directory (no S3 server)",
            )
            return
        name = "moto S3 server"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        env = dict(os.environ)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint + "/", 60, accept_errors=True)
    os.environ["CONTEXTLM_S3_ACCESS_KEY"], os.environ["CONTEXTLM_S3_SECRET_KEY"] = ACCESS, SECRET
    config = StoreConfig(kind="s3", endpoint=endpoint, bucket="contextlm")
    S3Store(config).ensure_bucket()
    try:
        yield config, f"{name} at {endpoint}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def publish_snapshot(store_config: StoreConfig, chunks: Sequence[Chunk]) -> str:
    """Put the chunks in the store as a published snapshot, exactly as `contextlm sync`
    leaves one (chunks.jsonl, then manifest.json)."""
    store = open_store(store_config)
    body = "".join(c.model_dump_json() + "\n" for c in chunks)
    snapshot_id = content_hash(body)
    prefix = snapshot_prefix(NAMESPACE, CORPUS, snapshot_id)
    store.put_bytes(f"{prefix}/chunks.jsonl", body.encode())
    store.publish(
        prefix,
        {
            "snapshot_id": snapshot_id,
            "corpus": CORPUS,
            "namespace": NAMESPACE,
            "documents": len(chunks),
            "chunks": len(chunks),
            "failed": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tokenizer": "all-MiniLM-L6-v2",
            "chunking": {"strategy": "none"},
        },
    )
    return snapshot_id


# The real CLI ----------------------------------------------------------------------


def spec(**overrides: Any) -> RetrievalStackSpec:
    body: dict[str, Any] = {
        "corpusRef": {"name": CORPUS},
        "retrievers": [
            {"name": "dense", "weight": 1.0, "dense": {"index": {"type": "hnsw"}}},
            {"name": "bm25", "weight": 1.0, "sparse": {"bm25": {"k1": 0.9, "b": 0.4}}},
        ],
        "fusion": {"method": "rrf", "rrfK": 60, "candidates": 100},
        "topK": 10,
    }
    body.update(overrides)
    return RetrievalStackSpec.model_validate(body)


def run_index(
    store: StoreConfig,
    work: Path,
    snapshot: str,
    stack: RetrievalStackSpec,
    *,
    name: str = "scifact",
) -> tuple[dict[str, Any], float]:
    """`contextlm index --config` as a process: its result line and wall time."""
    config = IndexConfig(
        namespace=NAMESPACE,
        stack=name,
        corpus=CORPUS,
        snapshot_id=snapshot,
        spec=stack,
        store=store,
        work_dir=str(work / f"index-{name}"),
    )
    path = work / f"index-{name}.json"
    path.write_text(config.model_dump_json(by_alias=True))
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "contextlm.cli",
            "index",
            "--config",
            str(path),
            "--termination-log",
            str(work / f"index-{name}.result"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"contextlm index failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


class Retriever:
    """`contextlm retriever --config` as a process on 127.0.0.1."""

    def __init__(
        self,
        store: StoreConfig,
        work: Path,
        version: str,
        stack: RetrievalStackSpec,
        *,
        name: str,
        index_name: str = "scifact",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = RetrieverConfig(
            namespace=NAMESPACE,
            stack=index_name,
            index_version=version,
            spec=stack,
            store=store,
            port=self.port,
            host="127.0.0.1",
            cache_dir=str(work / "retriever-cache"),
        )
        path = work / f"retriever-{name}.json"
        path.write_text(config.model_dump_json(by_alias=True))
        self.log = (work / f"retriever-{name}.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "contextlm.cli",
                "retriever",
                "--config",
                str(path),
                "--termination-log",
                str(work / f"retriever-{name}.result"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.url + "/readyz", 300)
        except BaseException:
            self.stop()
            raise

    def retrieve(self, query: str, top_k: int = 10) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + "/v1/retrieve",
            data=json.dumps({"query": query, "topK": top_k}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def wait_http(url: str, timeout: float, *, accept_errors: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            if accept_errors:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout}s")


@contextmanager
def workdir(arg: str | None) -> Iterator[Path]:
    if arg:
        path = Path(arg).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="contextlm-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Metrics ---------------------------------------------------------------------------


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k as pytrec_eval's ndcg_cut computes it."""
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]
