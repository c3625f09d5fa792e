"""`contextlm sync`: fetch, extract and chunk a corpus into an immutable snapshot.

One document at a time: fetched (bounded by `maxDocumentBytes`, checked before reading),
extracted, chunked, deduplicated and appended to a local chunks.jsonl in the work
directory. Memory therefore depends on the largest document, not on the corpus: the
dedup set lives in an SQLite file next to chunks.jsonl, and only the first 50 failures
are kept in memory (all are written to failed.jsonl). At the end the snapshot id is the
hash of every chunk line plus the chunking settings and tokenizer; if that snapshot is
already published nothing is uploaded, otherwise chunks.jsonl and failed.jsonl go up and
the manifest is written last. A source that vanishes or refuses us fails the whole sync
and publishes nothing.

The result is printed as one JSON line and written to the Kubernetes termination log,
where the operator reads it into the Corpus status.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .artifacts import (
    Chunk,
    FailedDocument,
    SnapshotManifest,
    content_hash,
    snapshot_prefix,
    stable_json,
)
from .store import MANIFEST

if TYPE_CHECKING:
    from .chunking import Tokenizer
    from .config import SyncConfig
    from .extract import Limits, Section
    from .sources import Source, SourceDocument
    from .store import ArtifactStore

log = logging.getLogger("contextlm.sync")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4096  # bytes kubelet keeps of a container's termination message
MAX_LISTED_FAILURES = 50
MAX_REASON_CHARS = 1024
EXIT_OK, EXIT_ERROR, EXIT_SOURCE = 0, 1, 2


class Skipped(Exception):
    """The document's format is not one the corpus extracts: neither read nor failed."""


class SyncFailed(Exception):
    """The sync as a whole failed; nothing was published."""

    def __init__(self, reason: str, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class SyncResult:
    snapshot_id: str
    documents: int
    chunks: int
    failed: int
    failed_documents: list[FailedDocument]
    skipped: int
    duplicates: int
    published: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshotId": self.snapshot_id,
            "documents": self.documents,
            "chunks": self.chunks,
            "failed": self.failed,
            "failedDocuments": [f.model_dump() for f in self.failed_documents],
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "published": self.published,
        }


@dataclass
class Counts:
    documents: int = 0
    chunks: int = 0
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0
    failures: list[FailedDocument] = field(default_factory=list)


class SnapshotWriter:
    """Appends chunk and failure lines to local files while hashing the snapshot."""

    def __init__(self, directory: Path, *, dedupe: bool) -> None:
        self.directory = directory
        self.chunks_path = directory / "chunks.jsonl"
        self.failed_path = directory / "failed.jsonl"
        self.chunks: TextIO = self.chunks_path.open("w", encoding="utf-8")
        self.failed: TextIO = self.failed_path.open("w", encoding="utf-8")
        self.digest = hashlib.sha256()
        self.counts = Counts()
        self.seen: sqlite3.Connection | None = None
        if dedupe:
            # On disk rather than a Python set, so memory stays flat on huge corpora.
            self.seen = sqlite3.connect(directory / "seen.sqlite")
            self.seen.execute("PRAGMA journal_mode=OFF")
            self.seen.execute("PRAGMA synchronous=OFF")
            self.seen.execute("CREATE TABLE seen (hash TEXT PRIMARY KEY) WITHOUT ROWID")

    def add_document(self, chunks: list[Chunk]) -> None:
        self.counts.documents += 1
        for chunk in chunks:
            if self.seen is not None:
                cursor = self.seen.execute(
                    "INSERT OR IGNORE INTO seen VALUES (?)", (chunk.content_hash,)
                )
                if cursor.rowcount == 0:
                    self.counts.duplicates += 1
                    continue
            line = chunk.model_dump_json() + "\n"
            self.chunks.write(line)
            self.digest.update(line.encode())
            self.counts.chunks += 1

    def add_failure(self, uri: str, reason: str) -> None:
        failure = FailedDocument(uri=uri, reason=reason[:MAX_REASON_CHARS])
        self.failed.write(failure.model_dump_json() + "\n")
        self.counts.failed += 1
        if len(self.counts.failures) < MAX_LISTED_FAILURES:
            self.counts.failures.append(failure)
        log.warning("failed uri=%s reason=%s", uri, failure.reason)

    def close(self) -> None:
        self.chunks.close()
        self.failed.close()
        if self.seen is not None:
            self.seen.close()

    def finish(self, *, tokenizer: str, chunking: dict[str, Any]) -> str:
        """Close the files; the snapshot id covers every chunk line, in order."""
        self.close()
        return content_hash(tokenizer, stable_json(chunking), self.digest.hexdigest())


def sync(
    config: SyncConfig,
    *,
    store: ArtifactStore,
    tokenizer: Tokenizer,
    source: Source | None = None,
    after_document: Callable[[int], None] | None = None,
    progress_every: int = 100,
) -> SyncResult:
    """Build the corpus snapshot and publish it (unless it already exists)."""
    chunking = config.spec.extraction.chunking.model_dump(mode="json", by_alias=True)
    work = Path(config.work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="sync-") as tmp:
        writer = SnapshotWriter(Path(tmp), dedupe=config.spec.extraction.deduplicate)
        _collect(
            source,
            writer=writer,
            config=config,
            tokenizer=tokenizer,
            after_document=after_document,
            progress_every=progress_every,
        )
        snapshot_id = writer.finish(tokenizer=tokenizer.name, chunking=chunking)
        published = _publish(store, writer, config=config, snapshot_id=snapshot_id,
                             tokenizer=tokenizer.name, chunking=chunking)  # fmt: skip
    pruned = prune_snapshots(
        store,
        namespace=config.namespace,
        corpus=config.corpus,
        keep=config.spec.keep_snapshots,
        current=snapshot_id,
    )
    if pruned:
        log.info("pruned snapshots=%s", ",".join(pruned))
    counts = writer.counts
    return SyncResult(
        snapshot_id=snapshot_id,
        documents=counts.documents,
        chunks=counts.chunks,
        failed=counts.failed,
        failed_documents=counts.failures,
        skipped=counts.skipped,
        duplicates=counts.duplicates,
        published=published,
    )


def _collect(
    source: Source | None,
    *,
    writer: SnapshotWriter,
    config: SyncConfig,
    tokenizer: Tokenizer,
    after_document: Callable[[int], None] | None,
    progress_every: int,
) -> None:
    """Every document of the source through `_process`, one at a time."""
    from .extract import Limits
    from .sources import SourceError, open_source

    limits = Limits(config.spec.extraction.max_document_bytes)
    try:
        for index, doc in enumerate((source or open_source(config)).documents(), 1):
            _process(doc, writer=writer, config=config, tokenizer=tokenizer, limits=limits)
            if index % progress_every == 0:
                _progress(writer.counts)
            if after_document is not None:
                after_document(index)
    except SourceError as exc:
        writer.close()
        raise SyncFailed(exc.reason, str(exc), exit_code=EXIT_SOURCE) from exc
    _progress(writer.counts)


def _publish(
    store: ArtifactStore,
    writer: SnapshotWriter,
    *,
    config: SyncConfig,
    snapshot_id: str,
    tokenizer: str,
    chunking: dict[str, Any],
) -> bool:
    """Upload the files, then the manifest; False if this snapshot was already there."""
    prefix = snapshot_prefix(config.namespace, config.corpus, snapshot_id)
    if store.manifest(prefix) is not None:
        log.info("unchanged snapshot=%s already published", snapshot_id)
        return False
    counts = writer.counts
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        corpus=config.corpus,
        namespace=config.namespace,
        documents=counts.documents,
        chunks=counts.chunks,
        failed=counts.failed,
        failed_documents=counts.failures,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        tokenizer=tokenizer,
        chunking=chunking,
    )
    store.put_file(f"{prefix}/chunks.jsonl", writer.chunks_path)
    store.put_file(f"{prefix}/failed.jsonl", writer.failed_path)
    store.publish(prefix, manifest.model_dump(mode="json"))
    log.info("published snapshot=%s prefix=%s", snapshot_id, prefix)
    return True


def _process(
    doc: SourceDocument,
    *,
    writer: SnapshotWriter,
    config: SyncConfig,
    tokenizer: Tokenizer,
    limits: Limits,
) -> None:
    """Read, extract and chunk one document; a failure is recorded, never raised."""
    from .extract import ExtractionError
    from .sources import DocumentError

    try:
        sections = read_document(doc, limits=limits, formats=config.spec.extraction.formats)
        chunks = document_chunks(doc, sections, config=config, tokenizer=tokenizer)
    except Skipped:
        writer.counts.skipped += 1
        return
    except (DocumentError, ExtractionError) as exc:
        writer.add_failure(doc.uri, str(exc))
        return
    except Exception as exc:  # a library bug on one odd document must not stop the corpus
        from .sources import SourceError

        if isinstance(exc, SourceError):
            raise
        log.exception("unexpected error uri=%s", doc.uri)
        writer.add_failure(doc.uri, f"unexpected {type(exc).__name__}: {exc}")
        return
    writer.add_document(chunks)


def read_document(
    doc: SourceDocument, *, limits: Limits, formats: Collection[str]
) -> list[Section]:
    """The sections of `doc`; the size limit is checked before a byte is read."""
    from .extract import ExtractionError, detect_format, extract, gunzip

    if doc.problem:
        raise ExtractionError(doc.problem)
    fmt, gzipped = (doc.format, False) if doc.format else detect_format(doc.doc_id)
    if fmt is None or fmt not in formats:
        raise Skipped(doc.doc_id)
    limit = limits.max_document_bytes
    if doc.size is not None and doc.size > limit:
        raise ExtractionError(f"larger than maxDocumentBytes ({doc.size} > {limit} bytes)")
    if doc.size == 0:
        raise ExtractionError("empty document")
    data = doc.read(limit)
    if not data:
        raise ExtractionError("empty document")
    if gzipped and isinstance(data, bytes):
        data = gunzip(data, cap=limits.expansion_cap)
    return extract(data, fmt, limits=limits)


def document_chunks(
    doc: SourceDocument, sections: list[Section], *, config: SyncConfig, tokenizer: Tokenizer
) -> list[Chunk]:
    from .chunking import chunk_sections

    chunking = config.spec.extraction.chunking
    doc_hash = content_hash(doc.doc_id)
    metadata = dict(doc.metadata)
    chunks = []
    for position, piece in enumerate(
        chunk_sections(
            sections,
            tokenizer=tokenizer,
            strategy=chunking.strategy,
            size=chunking.size,
            overlap=chunking.overlap,
        )
    ):
        chunks.append(
            Chunk(
                chunk_id=f"{doc_hash}-{position}",
                doc_id=doc.doc_id,
                uri=doc.uri,
                position=position,
                text=piece.text,
                heading=piece.heading,
                content_hash=content_hash(piece.text),
                metadata=metadata,
            )
        )
    return chunks


def prune_snapshots(
    store: ArtifactStore, *, namespace: str, corpus: str, keep: int, current: str
) -> list[str]:
    """Delete published snapshots beyond the `keep` newest, never `current`.

    Unpublished prefixes (no manifest: a sync killed mid-upload) are left alone, since
    one may be a concurrent sync still uploading.
    """
    base = snapshot_prefix(namespace, corpus)
    created: dict[str, str] = {}
    for key in store.list(base + "/"):
        snapshot, _, name = key[len(base) + 1 :].partition("/")
        if name == MANIFEST and snapshot != current:
            manifest = store.manifest(f"{base}/{snapshot}") or {}
            created[snapshot] = str(manifest.get("created", ""))
    older = sorted(created, key=lambda s: created[s], reverse=True)[keep - 1 :]
    for snapshot in older:
        store.delete_prefix(f"{base}/{snapshot}/")
    return older


def _progress(counts: Counts) -> None:
    log.info(
        "progress documents=%d chunks=%d failed=%d skipped=%d duplicates=%d",
        counts.documents,
        counts.chunks,
        counts.failed,
        counts.skipped,
        counts.duplicates,
    )


# Command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `contextlm sync` beyond the shared --config and --termination-log."""
    parser.add_argument(
        "--progress-every", type=int, default=100, help="log progress every N documents"
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `contextlm sync`: exit 0 done, 2 source/credentials, 1 otherwise."""
    _configure_logging()
    try:
        result = _run(args)
    except SyncFailed as exc:
        log.error("sync failed reason=%s: %s", exc.reason, exc)
        print(f"contextlm sync: {exc.reason}: {exc}", file=sys.stderr)
        write_termination_log(args.termination_log, {"error": str(exc), "reason": exc.reason})
        return exc.exit_code
    except Exception as exc:  # still tell the operator why, not just "Error"
        log.exception("sync crashed")
        message = f"{type(exc).__name__}: {exc}"
        write_termination_log(args.termination_log, {"error": message, "reason": "InternalError"})
        return EXIT_ERROR
    payload = result.to_json()
    print(json.dumps(payload), flush=True)
    write_termination_log(args.termination_log, payload)
    return EXIT_OK


def _run(args: argparse.Namespace) -> SyncResult:
    from pydantic import ValidationError

    from .chunking import load_tokenizer
    from .config import SyncConfig, load_config
    from .models import ModelNotFound
    from .sources import SourceError, open_source
    from .store import StoreError, open_store

    try:
        config = load_config(SyncConfig, args.config)
    except (ValidationError, OSError, SystemExit) as exc:
        raise SyncFailed("InvalidConfig", str(exc), exit_code=EXIT_ERROR) from exc
    try:
        source = open_source(config)
        source.check()  # seconds before the tokenizer has even loaded
    except SourceError as exc:
        raise SyncFailed(exc.reason, str(exc), exit_code=EXIT_SOURCE) from exc
    try:
        store = open_store(config.store)
        tokenizer = load_tokenizer(tokenizer_name(config), store=store)
        return sync(
            config,
            store=store,
            tokenizer=tokenizer,
            source=source,
            progress_every=max(1, getattr(args, "progress_every", 100)),
        )
    except StoreError as exc:
        raise SyncFailed("StoreUnavailable", str(exc), exit_code=EXIT_ERROR) from exc
    except ModelNotFound as exc:
        raise SyncFailed("TokenizerNotFound", str(exc), exit_code=EXIT_ERROR) from exc


def tokenizer_name(config: SyncConfig) -> str:
    """The spec's tokenizer, unless the config names one explicitly (a developer run)."""
    if "tokenizer" in config.model_fields_set:
        return config.tokenizer
    return config.spec.extraction.chunking.tokenizer


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            stream=sys.stderr,
            level=os.environ.get("CONTEXTLM_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )


def termination_message(payload: dict[str, Any], *, limit: int = TERMINATION_LOG_LIMIT) -> str:
    """`payload` as JSON of at most `limit` bytes: kubelet cuts longer messages, which
    would leave the operator unparseable JSON. Failures are dropped from the end (the
    count stays) and long texts shortened until it fits."""
    payload = dict(payload)
    failures = [
        {"uri": f["uri"][:256], "reason": f["reason"][:160]}
        for f in payload.get("failedDocuments", [])
    ]
    if "error" in payload:
        payload["error"] = str(payload["error"])[: limit // 2]
    while True:
        if "failedDocuments" in payload:
            payload["failedDocuments"] = failures
        text = json.dumps(payload, separators=(",", ":"))
        if len(text.encode()) <= limit or not failures:
            return text
        failures = failures[: len(failures) // 2 if len(failures) > 8 else len(failures) - 1]
        payload["failedDocumentsTruncated"] = True


def write_termination_log(path: str, payload: dict[str, Any]) -> None:
    """Write the result where Kubernetes picks it up; the default path only if present
    (kubelet creates it in a pod; outside one, nothing is created under /dev)."""
    if path == DEFAULT_TERMINATION_LOG and not os.path.exists(path):
        return
    try:
        Path(path).write_text(termination_message(payload))
    except OSError as exc:
        log.warning("cannot write termination log path=%s: %s", path, exc)
