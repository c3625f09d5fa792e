"""Shared pieces of the index and retriever tests: a small corpus written as a published
snapshot, configs, a tiny cross-encoder, and a real `contextlm retriever` process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from contextlm.api.retrieval_stack import RetrievalStackSpec
from contextlm.runtime.artifacts import Chunk, content_hash, snapshot_prefix
from contextlm.runtime.config import IndexConfig, RetrieverConfig
from contextlm.runtime.store import ArtifactStore, StoreConfig

NAMESPACE = "default"
CORPUS = "docs"
STACK = "search"

# doc id -> (topic metadata, chunk texts). Each chunk has words and a subject of its own,
# so both a lexical and a semantic query have one right answer.
DOCS: dict[str, tuple[str, list[str]]] = {
    "kubernetes.md": (
        "ops",
        [
            "A Kubernetes Deployment keeps the requested number of pod replicas running.",
            "The kubelet restarts a container whose liveness probe keeps failing.",
            "A Service gives a stable virtual IP address to a changing set of pods.",
        ],
    ),
    "baking.md": (
        "food",
        [
            "Sourdough bread rises with a starter of wild yeast and lactic acid bacteria.",
            "Preheat the oven to 220 degrees before baking the loaf on a stone.",
            "Croissant dough is laminated with butter and folded many times.",
        ],
    ),
    "astronomy.md": (
        "science",
        [
            "Jupiter is the largest planet of the solar system, a gas giant with many moons.",
            "A supernova is the explosion of a massive star at the end of its life.",
            "The Hubble telescope orbits Earth and photographs distant galaxies.",
        ],
    ),
    "medicine.md": (
        "science",
        [
            "Insulin lowers blood glucose; people with type 1 diabetes must inject it.",
            "Penicillin was the first widely used antibiotic against bacterial infections.",
            "Vaccines train the immune system to recognise a pathogen before infection.",
        ],
    ),
}


def corpus_chunks(docs: dict[str, tuple[str, list[str]]] | None = None) -> list[Chunk]:
    chunks = []
    for doc_id, (topic, texts) in (docs or DOCS).items():
        for position, text in enumerate(texts):
            chunks.append(
                Chunk(
                    chunk_id=f"{content_hash(doc_id, length=8)}-{position}",
                    doc_id=doc_id,
                    uri=f"s3://corpus/{doc_id}",
                    position=position,
                    text=text,
                    heading=doc_id.removesuffix(".md").title(),
                    content_hash=content_hash(text),
                    metadata={"topic": topic, "doc": doc_id},
                )
            )
    return chunks


def publish_snapshot(
    store: ArtifactStore, chunks: list[Chunk], *, corpus: str = CORPUS, publish: bool = True
) -> str:
    """Write chunks.jsonl as `contextlm sync` would, then (optionally) its manifest."""
    body = "".join(c.model_dump_json() + "\n" for c in chunks)
    snapshot_id = content_hash(body)
    prefix = snapshot_prefix(NAMESPACE, corpus, snapshot_id)
    store.put_bytes(f"{prefix}/chunks.jsonl", body.encode())
    if publish:
        store.publish(
            prefix,
            {
                "snapshot_id": snapshot_id,
                "corpus": corpus,
                "namespace": NAMESPACE,
                "documents": len({c.doc_id for c in chunks}),
                "chunks": len(chunks),
                "failed": 0,
                "failed_documents": [],
                "created": "2025-01-01T00:00:00+00:00",
                "tokenizer": "all-MiniLM-L6-v2",
                "chunking": {},
            },
        )
    return snapshot_id


def stack_spec(**overrides: Any) -> RetrievalStackSpec:
    spec: dict[str, Any] = {
        "corpusRef": {"name": CORPUS},
        "retrievers": [
            {"name": "dense", "weight": 1.0, "dense": {"index": {"type": "flat"}}},
            {"name": "bm25", "weight": 1.0, "sparse": {"bm25": {"k1": 1.2, "b": 0.75}}},
        ],
        "fusion": {"method": "rrf", "rrfK": 60, "candidates": 20},
        "topK": 5,
    }
    spec.update(overrides)
    return RetrievalStackSpec.model_validate(spec)


def index_config(
    store: StoreConfig,
    work: Path,
    snapshot_id: str,
    spec: RetrievalStackSpec,
    *,
    previous: str | None = None,
) -> IndexConfig:
    return IndexConfig(
        namespace=NAMESPACE,
        stack=STACK,
        corpus=CORPUS,
        snapshot_id=snapshot_id,
        spec=spec,
        store=store,
        previous_version=previous,
        work_dir=str(work),
        device="cpu",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tiny_cross_encoder(target: Path) -> Path:
    """A cross-encoder head on the MiniLM weights: untrained, it only has to run."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from contextlm.runtime.models import resolve_model

    source = resolve_model("all-MiniLM-L6-v2")
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(target))
    return target


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    text = payload.decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


class RetrieverProcess:
    """`contextlm retriever --config FILE` as a child process on 127.0.0.1."""

    def __init__(self, config: RetrieverConfig, work: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = work / "retriever.json"
        path.write_text(config.model_dump_json(by_alias=True))
        self.log = (work / "retriever.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "contextlm.cli",
                "retriever",
                "--config",
                str(path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--termination-log",
                str(work / "termination-log"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )

    def wait_listening(self, timeout: float = 60) -> None:
        self._wait(lambda: self.get("/healthz")[0] == 200, timeout, "listen")

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait(lambda: self.get("/readyz")[0] == 200, timeout, "become ready")

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"retriever exited {self.process.returncode}: {self.output()}")
            try:
                if check():
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"retriever did not {what} in {timeout}s: {self.output()}")

    def get(self, path: str) -> tuple[int, Any]:
        return http("GET", self.url + path)

    def post(self, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
        return http("POST", self.url + "/v1/retrieve", body, raw=raw)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
