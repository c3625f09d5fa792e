"""Where artifacts live in the store and what their records look like.

Layout (every id is a content hash; `manifest.json` is written last):

    corpora/<namespace>/<corpus>/snapshots/<snapshot-id>/chunks.jsonl
                                                        /failed.jsonl
                                                        /manifest.json
    retrieval/<namespace>/<stack>/indexes/<index-version>/chunks.jsonl
                                                         /dense-<retriever>/index.faiss
                                                         /dense-<retriever>/embeddings.npy
                                                         /sparse-<retriever>/  (bm25s)
                                                         /manifest.json
    models/<name>/...                      base models put there by the platform team
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field


def content_hash(*parts: str | bytes, length: int = 16) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:length]


def stable_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def snapshot_prefix(namespace: str, corpus: str, snapshot_id: str | None = None) -> str:
    base = f"corpora/{namespace}/{corpus}/snapshots"
    return f"{base}/{snapshot_id}" if snapshot_id else base


def index_prefix(namespace: str, stack: str, version: str | None = None) -> str:
    base = f"retrieval/{namespace}/{stack}/indexes"
    return f"{base}/{version}" if version else base


class Chunk(BaseModel):
    """One retrievable piece of a document (a line of chunks.jsonl)."""

    chunk_id: str = Field(description="`<doc hash>-<position>`; stable across snapshots.")
    doc_id: str = Field(description="Document id (key, path or inline id).")
    uri: str = Field(description="Source URI shown in citations.")
    position: int = Field(ge=0, description="Index of the chunk within its document.")
    text: str = Field(description="Chunk text, heading path included for markdown sections.")
    heading: str = Field(default="", description="Heading path of the section, if any.")
    content_hash: str = Field(description="Hash of `text`: the key of its embedding.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Filterable metadata.")


class FailedDocument(BaseModel):
    uri: str
    reason: str


class SnapshotManifest(BaseModel):
    """manifest.json of a corpus snapshot."""

    snapshot_id: str
    corpus: str
    namespace: str
    documents: int
    chunks: int
    failed: int
    failed_documents: list[FailedDocument] = Field(default_factory=list, max_length=50)
    created: str
    tokenizer: str
    chunking: dict[str, Any]


class IndexManifest(BaseModel):
    """manifest.json of an index version."""

    index_version: str
    snapshot_id: str
    stack: str
    namespace: str
    chunks: int
    retrievers: list[dict[str, Any]] = Field(description="Name, kind and parameters of each.")
    embedded: int = Field(description="Chunks embedded in this build (others were reused).")
    reused: int = Field(description="Embeddings reused from the previous version.")
    created: str


def revision_prefix(namespace: str, model: str, revision: str | None = None) -> str:
    """Where an AlignedModel's trained revisions live (adapter/, merged/, manifest.json)."""
    base = f"revisions/{namespace}/{model}"
    return f"{base}/{revision}" if revision else base


def run_prefix(namespace: str, model: str, run: str) -> str:
    """Where one AlignmentRun keeps its exported dataset and evaluation report."""
    return f"alignment/{namespace}/{model}/runs/{run}"
