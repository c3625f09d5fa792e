"""`contextlm sync` end to end on mounted directories, inline documents and a local
store: snapshots, ids, dedup, publication order, pruning, hostile input, the CLI."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sync_support import make_pdf, sync_config, tokenizer

from contextlm.runtime.artifacts import Chunk, FailedDocument, SnapshotManifest, snapshot_prefix
from contextlm.runtime.config import SyncConfig
from contextlm.runtime.extract import ExtractionError, Limits
from contextlm.runtime.sources import SourceDocument
from contextlm.runtime.store import LocalStore
from contextlm.runtime.sync import (
    SyncFailed,
    SyncResult,
    read_document,
    sync,
    termination_message,
)

KiB = 1024
MARKDOWN = """# Returns

Items can be returned within thirty days of delivery.

## Refunds

Refunds are paid to the original payment method within five business days.
"""
HTML = "<h1>Shipping</h1><p>Parcels leave the warehouse every weekday.</p>"
TEXT = "Opening hours are nine to five, Monday to Friday.\n"


def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return root


def good_files() -> dict[str, bytes | str]:
    return {
        "policies/returns.md": MARKDOWN,
        "policies/shipping.html": HTML,
        "hours.txt": TEXT,
        "manual.pdf": make_pdf(["The warranty lasts two years.", "Keep your receipt."]),
    }


def pvc_config(tmp: Path, **kwargs: Any) -> SyncConfig:
    kwargs.setdefault("extraction", {"chunking": {"size": 32, "overlap": 8}})
    return sync_config(
        tmp, source={"pvc": {"claimName": "docs"}}, source_path=str(tmp / "src"), **kwargs
    )


def run_sync(config: SyncConfig, **kwargs: Any) -> SyncResult:
    return sync(config, store=LocalStore(config.store.path), tokenizer=tokenizer(), **kwargs)


def snapshot_chunks(config: SyncConfig, snapshot_id: str) -> list[Chunk]:
    prefix = snapshot_prefix(config.namespace, config.corpus, snapshot_id)
    data = LocalStore(config.store.path).get_bytes(f"{prefix}/chunks.jsonl")
    return [Chunk.model_validate_json(line) for line in data.splitlines()]


def published(config: SyncConfig) -> list[str]:
    store = LocalStore(config.store.path)
    base = snapshot_prefix(config.namespace, config.corpus)
    return sorted(
        key.split("/")[-2] for key in store.list(base + "/") if key.endswith("/manifest.json")
    )


# The happy path -------------------------------------------------------------------------


def test_sync_publishes_a_snapshot_of_every_format(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {**good_files(), "logo.png": b"\x89PNG..."})
    config = pvc_config(tmp_path)
    result = run_sync(config)
    assert (result.documents, result.failed, result.skipped) == (4, 0, 1)
    assert result.published and published(config) == [result.snapshot_id]

    chunks = snapshot_chunks(config, result.snapshot_id)
    assert result.chunks == len(chunks)
    by_doc = {c.doc_id: c for c in chunks}
    assert sorted(by_doc) == ["hours.txt", "manual.pdf", "policies/returns.md",
                              "policies/shipping.html"]  # fmt: skip
    assert by_doc["manual.pdf"].uri == "pvc://docs/manual.pdf"
    assert "warranty lasts two years" in by_doc["manual.pdf"].text
    refunds = [c for c in chunks if c.heading == "Returns > Refunds"]
    assert refunds and refunds[0].text.startswith("Returns > Refunds\n\nRefunds are paid")
    assert any(c.heading == "Shipping" for c in chunks)
    for c in chunks:
        assert tokenizer().count(c.text) <= 32
        assert c.chunk_id.endswith(f"-{c.position}")

    store = LocalStore(config.store.path)
    manifest = SnapshotManifest.model_validate(
        store.manifest(snapshot_prefix("default", "docs", result.snapshot_id))
    )
    assert (manifest.documents, manifest.chunks, manifest.failed) == (4, result.chunks, 0)
    assert manifest.tokenizer == "all-MiniLM-L6-v2"
    assert manifest.chunking == {
        "strategy": "markdown-sections",
        "size": 32,
        "overlap": 8,
        "tokenizer": "all-MiniLM-L6-v2",
    }
    assert not any((tmp_path / "work").iterdir())  # scratch files are cleaned up


def test_formats_outside_the_spec_are_skipped_not_failed(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", good_files())
    config = pvc_config(tmp_path, extraction={"formats": ["markdown", "text"]})
    result = run_sync(config)
    assert (result.documents, result.skipped, result.failed) == (2, 2, 0)


def test_inline_documents_keep_their_metadata(tmp_path: Path) -> None:
    docs = [
        {"id": "faq", "text": MARKDOWN, "metadata": {"team": "support"}},
        {"id": "note", "text": TEXT, "format": "text", "uri": "https://x.invalid/n",
         "metadata": {}},
    ]  # fmt: skip
    config = sync_config(tmp_path, source={"inline": {"documents": docs}})
    result = run_sync(config)
    chunks = snapshot_chunks(config, result.snapshot_id)
    assert {c.uri for c in chunks} == {"inline://docs/faq", "https://x.invalid/n"}
    assert all(c.metadata == {"team": "support"} for c in chunks if c.doc_id == "faq")


def test_configmap_volume_layout(tmp_path: Path) -> None:
    """kubelet's layout: real files under a timestamped dir, `..data` links to it, and
    each key is a symlink `key -> ..data/key`."""
    mount = tmp_path / "src"
    real = write_tree(mount / "..2026_01_01_00_00_00.1", {"faq.md": MARKDOWN, "hours": TEXT})
    (mount / "..data").symlink_to(real.name)
    for key in ("faq.md", "hours"):
        (mount / key).symlink_to(f"..data/{key}")
    config = sync_config(tmp_path, source={"configMap": {"name": "kb"}}, source_path=str(mount))
    result = run_sync(config)
    assert (result.documents, result.failed) == (2, 0)
    uris = {c.uri for c in snapshot_chunks(config, result.snapshot_id)}
    assert uris == {"configmap://kb/faq.md", "configmap://kb/hours"}


# Ids, dedup, versions ------------------------------------------------------------------


def test_ids_are_stable_and_an_unchanged_corpus_is_not_republished(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", good_files())
    config = pvc_config(tmp_path)
    first = run_sync(config)
    os.utime(tmp_path / "src/hours.txt", (0, 0))  # a touch is not a change
    second = run_sync(config)
    assert second.snapshot_id == first.snapshot_id
    assert not second.published
    assert published(config) == [first.snapshot_id]


def test_snapshot_id_changes_iff_content_changes(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", good_files())
    config = pvc_config(tmp_path)
    original = run_sync(config)
    before = {c.chunk_id: c for c in snapshot_chunks(config, original.snapshot_id)}

    (src / "hours.txt").write_text("Opening hours are eight to six, every day.\n")
    changed = run_sync(config)
    assert changed.snapshot_id != original.snapshot_id and changed.published
    after = {c.chunk_id: c for c in snapshot_chunks(config, changed.snapshot_id)}
    assert before.keys() == after.keys()  # ids name positions in documents, not content
    differs = {i for i in before if before[i].content_hash != after[i].content_hash}
    assert {before[i].doc_id for i in differs} == {"hours.txt"}

    (src / "hours.txt").write_text(TEXT)  # reverting gives back the original snapshot
    reverted = run_sync(config)
    assert reverted.snapshot_id == original.snapshot_id and not reverted.published

    rechunked = run_sync(pvc_config(tmp_path, extraction={"chunking": {"size": 48}}))
    assert rechunked.snapshot_id not in (original.snapshot_id, changed.snapshot_id)


def test_exact_duplicates_are_removed(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"a.md": MARKDOWN, "copy/a.md": MARKDOWN, "b.txt": TEXT})
    config = pvc_config(tmp_path)
    deduped = run_sync(config)
    chunks = snapshot_chunks(config, deduped.snapshot_id)
    assert deduped.duplicates > 0 and deduped.documents == 3
    assert {c.doc_id for c in chunks} == {"a.md", "b.txt"}
    assert len({c.content_hash for c in chunks}) == len(chunks)

    kept = run_sync(pvc_config(tmp_path, extraction={"deduplicate": False}))
    assert kept.duplicates == 0 and kept.chunks == deduped.chunks + deduped.duplicates


# Publication ---------------------------------------------------------------------------


class RecordingStore(LocalStore):
    """A real local store that records the order of writes and can fail one of them."""

    def __init__(self, root: Path, fail_on: str | None = None) -> None:
        super().__init__(root)
        self.writes: list[str] = []
        self.fail_on = fail_on

    def _record(self, key: str) -> None:
        if self.fail_on and key.endswith(self.fail_on):
            raise OSError(f"disk full writing {key}")
        self.writes.append(key.rsplit("/", 1)[1])

    def put_file(self, key: str, path: Path) -> None:
        self._record(key)
        super().put_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._record(key)
        super().put_bytes(key, data)


def test_manifest_is_written_last(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", good_files())
    config = pvc_config(tmp_path)
    store = RecordingStore(Path(config.store.path))
    sync(config, store=store, tokenizer=tokenizer())
    assert store.writes == ["chunks.jsonl", "failed.jsonl", "manifest.json"]


def test_an_interrupted_upload_publishes_nothing(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", good_files())
    config = pvc_config(tmp_path)
    store = RecordingStore(Path(config.store.path), fail_on="failed.jsonl")
    with pytest.raises(OSError, match="disk full"):
        sync(config, store=store, tokenizer=tokenizer())
    assert store.writes == ["chunks.jsonl"]
    assert published(config) == []  # chunks.jsonl is there, but no reader will trust it


def test_old_snapshots_are_pruned_but_never_the_current_one(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": "version zero"})
    config = pvc_config(tmp_path, spec={"keepSnapshots": 2})
    ids = []
    for version in range(4):
        (src / "a.txt").write_text(f"version {version}")
        ids.append(run_sync(config).snapshot_id)
    assert published(config) == sorted(ids[2:])
    # back to an old content whose snapshot was pruned: republished, kept with the newest
    (src / "a.txt").write_text("version 0")
    again = run_sync(config)
    assert again.snapshot_id == ids[0] and again.published
    assert published(config) == sorted([ids[0], ids[3]])
    # and a current snapshot that is the oldest one published is never the one deleted
    (src / "a.txt").write_text("version 3")
    assert run_sync(config).snapshot_id == ids[3]
    assert published(config) == sorted([ids[0], ids[3]])


# Bad and hostile input -----------------------------------------------------------------


def hostile_tree(root: Path, outside: Path) -> None:
    outside.write_text("SECRET service account token")
    write_tree(
        root,
        {
            **good_files(),
            "corrupt.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ngarbage",
            "empty.md": b"",
            "huge.txt": b"x",  # replaced by a sparse 10 GiB file below
            "bomb.pdf": make_pdf(["boom"], padding=50_000_000),
            "bomb.txt.gz": gzip.compress(b"a" * 50_000_000),
            "latin1.txt": "Prix: 10 € — déjà vu".encode("cp1252"),
            ".hidden.md": "# hidden files are skipped",
        },
    )
    os.truncate(root / "huge.txt", 10 * 1024**3)
    (root / "leak.txt").symlink_to(outside)
    (root / "inside.txt").symlink_to("hours.txt")


HOSTILE_REASONS = {
    "corrupt.pdf": "corrupt PDF",
    "empty.md": "empty document",
    "huge.txt": "larger than maxDocumentBytes (10737418240 > 1048576 bytes)",
    "bomb.pdf": "compression bomb",
    "bomb.txt.gz": "compression bomb",
    "latin1.txt": "not valid utf-8 text",
    "leak.txt": "symlink points outside the source directory",
}


def test_hostile_documents_fail_alone_and_the_rest_is_published(tmp_path: Path) -> None:
    hostile_tree(tmp_path / "src", tmp_path / "outside-secret.txt")
    config = pvc_config(tmp_path, extraction={"maxDocumentBytes": 1024 * KiB})
    result = run_sync(config)
    reasons = {f.uri.removeprefix("pvc://docs/"): f.reason for f in result.failed_documents}
    assert reasons.keys() == HOSTILE_REASONS.keys()
    for name, reason in HOSTILE_REASONS.items():
        assert reason in reasons[name], (name, reasons[name])
    assert result.documents == 5 and result.published  # 4 good files + the inside symlink
    texts = " ".join(c.text for c in snapshot_chunks(config, result.snapshot_id))
    assert "SECRET" not in texts and "hidden files" not in texts
    store = LocalStore(config.store.path)
    prefix = snapshot_prefix("default", "docs", result.snapshot_id)
    failed = [FailedDocument.model_validate_json(x) for x in
              store.get_bytes(f"{prefix}/failed.jsonl").splitlines()]  # fmt: skip
    assert len(failed) == result.failed == len(HOSTILE_REASONS)


def test_size_is_checked_before_a_byte_is_read() -> None:
    reads: list[int] = []

    def read(limit: int) -> bytes:
        reads.append(limit)
        return b"x" * limit

    doc = SourceDocument(doc_id="big.txt", uri="s3://b/big.txt", read=read, size=10**12)
    with pytest.raises(ExtractionError, match="larger than maxDocumentBytes"):
        read_document(doc, limits=Limits(4096), formats=["text"])
    assert reads == []
    # a document that grew after it was listed is cut off by the reader's own limit
    doc = SourceDocument(doc_id="grew.txt", uri="file://grew", read=read, size=10)
    read_document(doc, limits=Limits(4096), formats=["text"])
    assert reads == [4096]


def test_failures_are_counted_in_full_but_listed_up_to_fifty(tmp_path: Path) -> None:
    empties: dict[str, bytes | str] = {f"empty-{i:03d}.txt": b"" for i in range(60)}
    write_tree(tmp_path / "src", empties | good_files())
    config = pvc_config(tmp_path)
    result = run_sync(config)
    assert result.failed == 60 and len(result.failed_documents) == 50
    manifest = LocalStore(config.store.path).manifest(
        snapshot_prefix("default", "docs", result.snapshot_id)
    )
    assert manifest is not None and manifest["failed"] == 60
    assert len(manifest["failed_documents"]) == 50


def test_a_source_that_disappears_mid_sync_publishes_nothing(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {f"doc-{i}.txt": f"document number {i}" for i in range(5)})
    config = pvc_config(tmp_path)

    def unmount(index: int) -> None:
        if index == 2:
            shutil.rmtree(src)

    with pytest.raises(SyncFailed, match="disappeared") as failure:
        run_sync(config, after_document=unmount)
    assert failure.value.reason == "SourceUnavailable" and failure.value.exit_code == 2
    assert published(config) == []
    assert list(LocalStore(config.store.path).list("")) == []  # not even partial files
    assert not any((tmp_path / "work").iterdir())


def test_progress_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_tree(tmp_path / "src", good_files())
    with caplog.at_level(logging.INFO, logger="contextlm.sync"):
        run_sync(pvc_config(tmp_path), progress_every=2)
    progress = [r.getMessage() for r in caplog.records if "progress" in r.getMessage()]
    assert progress[0] == "progress documents=2 chunks=2 failed=0 skipped=0 duplicates=0"
    assert len(progress) == 3  # after 2 and 4 documents, and at the end


# The command line ----------------------------------------------------------------------


def cli(config: SyncConfig, tmp: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    path = tmp / "config.json"
    path.write_text(config.model_dump_json())
    log = tmp / "termination-log"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "sync", "--config", str(path),
         "--termination-log", str(log)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    return proc, json.loads(log.read_text()) if log.exists() else None


def test_cli_prints_the_result_and_writes_the_termination_log(tmp_path: Path) -> None:
    hostile_tree(tmp_path / "src", tmp_path / "outside-secret.txt")
    config = pvc_config(tmp_path, extraction={"maxDocumentBytes": 1024 * KiB})
    proc, termination = cli(config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result == termination
    assert set(result) >= {"snapshotId", "documents", "chunks", "failed", "failedDocuments"}
    assert result["failed"] == len(HOSTILE_REASONS) and result["documents"] == 5
    assert published(config) == [result["snapshotId"]]
    assert "progress documents=" in proc.stderr


def test_cli_missing_mount_exits_2_with_a_reason(tmp_path: Path) -> None:
    config = pvc_config(tmp_path)  # tmp/src was never created
    proc, termination = cli(config, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert termination["reason"] == "SourceUnavailable"
    assert "missing" in termination["error"] and "SourceUnavailable" in proc.stderr
    assert published(config) == []


def test_cli_bad_config_exits_1_with_a_reason(tmp_path: Path) -> None:
    config = sync_config(tmp_path, source={"pvc": {"claimName": "docs"}})  # no source_path
    proc, termination = cli(config, tmp_path)
    assert (proc.returncode, termination["reason"]) == (2, "InvalidConfig")
    (tmp_path / "config.json").write_text('{"corpus": "x"}')
    proc = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "sync", "--config",
         str(tmp_path / "config.json"), "--termination-log", str(tmp_path / "t2")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert json.loads((tmp_path / "t2").read_text())["reason"] == "InvalidConfig"


def test_termination_message_always_fits_kubelets_limit() -> None:
    failures = [{"uri": f"s3://bucket/{'deep/' * 60}{i}.pdf", "reason": "corrupt PDF: " * 40}
                for i in range(50)]  # fmt: skip
    payload = {"snapshotId": "abc", "documents": 1, "chunks": 2, "failed": 1234,
               "failedDocuments": failures}  # fmt: skip
    text = termination_message(payload)
    assert len(text.encode()) <= 4096
    decoded = json.loads(text)
    assert decoded["failed"] == 1234 and decoded["failedDocumentsTruncated"] is True
    assert 0 < len(decoded["failedDocuments"]) < 50
    small = {"snapshotId": "abc", "failed": 0, "failedDocuments": []}
    assert json.loads(termination_message(small)) == small
    huge_error = termination_message({"error": "x" * 100_000, "reason": "SourceUnavailable"})
    assert len(huge_error.encode()) <= 4096


def test_a_pvc_path_that_climbs_out_of_the_volume_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from contextlm.runtime.sources import SourceError, open_source

    # The resource API refuses it (and the CRD's CEL rule at kubectl apply) ...
    with pytest.raises(ValidationError, match="path must stay inside the volume"):
        sync_config(
            tmp_path,
            source={"pvc": {"claimName": "docs", "path": "/../etc"}},
            source_path=str(tmp_path / "src"),
        )
    # ... and the sync still refuses a config that skipped validation.
    config = sync_config(
        tmp_path,
        source={"pvc": {"claimName": "docs", "path": "/docs"}},
        source_path=str(tmp_path / "src"),
    )
    assert config.spec.source.pvc is not None
    object.__setattr__(config.spec.source.pvc, "path", "/../etc")
    with pytest.raises(SourceError, match="leaves the volume") as failure:
        open_source(config)
    assert failure.value.reason == "InvalidConfig"
