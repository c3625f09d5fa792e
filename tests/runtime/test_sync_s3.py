"""`contextlm sync` from S3 buckets on real S3 server processes: MinIO (the e2e
cluster's server) for the source and the artifact store, and moto for keys that MinIO
refuses to store but AWS S3 accepts (`../x`, `/x`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import S3Server
from sync_support import (
    make_pdf,
    run_moto,
    s3_client,
    s3_put,
    s3_raw,
    s3_remove_bucket,
    sync_config,
    tokenizer,
)

from contextlm.runtime.artifacts import Chunk, SnapshotManifest, snapshot_prefix
from contextlm.runtime.config import SyncConfig
from contextlm.runtime.sources import ACCESS_KEY_ENV, SECRET_KEY_ENV, UNSAFE_KEY
from contextlm.runtime.store import open_store
from contextlm.runtime.sync import SyncFailed, sync

pytestmark = pytest.mark.integration
KiB = 1024


@pytest.fixture(scope="module")
def minio(s3_server: S3Server) -> S3Server:
    """The session's MinIO (tests/conftest.py)."""
    return s3_server


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with run_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


def credentials(server: S3Server, *, source: bool = True) -> dict[str, str]:
    env = {"CONTEXTLM_S3_ACCESS_KEY": server.access_key}
    env["CONTEXTLM_S3_SECRET_KEY"] = server.secret_key
    if source:
        env[ACCESS_KEY_ENV], env[SECRET_KEY_ENV] = server.access_key, server.secret_key
    return env


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, minio: S3Server) -> None:
    for key, value in credentials(minio).items():
        monkeypatch.setenv(key, value)


def s3_config(
    tmp: Path, server: S3Server, bucket: str, *, endpoint: bool = False, **extra: Any
) -> SyncConfig:
    s3: dict[str, Any] = {"bucket": bucket, "prefix": "kb/", "secretRef": {"name": "creds"}}
    if endpoint:
        s3["endpoint"] = server.endpoint
    config = sync_config(tmp, source={"s3": s3}, **extra)
    config.store = config.store.model_copy(
        # one store prefix per test: the module's tests share the server
        update={"kind": "s3", "endpoint": server.endpoint, "bucket": "artifacts", "prefix": bucket}
    )
    return config


def new_bucket() -> str:
    return f"corpus-{uuid.uuid4().hex[:12]}"


def snapshot_keys(config: SyncConfig) -> list[str]:
    store = open_store(config.store)
    return list(store.list(snapshot_prefix(config.namespace, config.corpus) + "/"))


def cli(config: SyncConfig, tmp: Path, env: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
    path = tmp / "config.json"
    path.write_text(config.model_dump_json())
    log = tmp / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "sync", "--config", str(path),
         "--termination-log", str(log)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**{k: v for k, v in os.environ.items() if "ACCESS_KEY" not in k
                and "SECRET_KEY" not in k}, "HF_HUB_OFFLINE": "1", **env},
    )  # fmt: skip
    return proc.returncode, proc.stderr, json.loads(log.read_text())


def test_sync_from_a_bucket_prefix_into_an_s3_store(tmp_path: Path, minio: S3Server, env: None) -> None:  # fmt: skip
    bucket = new_bucket()
    s3_put(
        minio,
        bucket,
        {
            "kb/returns.md": b"# Returns\n\nReturn items within thirty days.\n",
            "kb/guides/shipping.html": b"<h1>Shipping</h1><p>Parcels leave daily.</p>",
            "kb/manual.pdf": make_pdf(["The warranty lasts two years."]),
            "kb/hours.txt": b"Open nine to five.",
            "kb/empty.txt": b"",
            "kb/corrupt.pdf": b"%PDF-1.4 not really",
            "kb/latin1.txt": "déjà vu".encode("latin-1"),
            "kb/big.txt": b"word " * (300 * KiB // 5),
            "kb/folder/": b"",  # a "directory marker" object
            "other/outside-prefix.md": b"# Not synced",
        },
    )
    config = s3_config(tmp_path, minio, bucket, extraction={"maxDocumentBytes": 256 * KiB})
    open_store(config.store).ensure_bucket()  # type: ignore[attr-defined]
    result = sync(config, store=open_store(config.store), tokenizer=tokenizer())

    assert (result.documents, result.failed, result.published) == (4, 4, True)
    reasons = {f.uri: f.reason for f in result.failed_documents}
    assert reasons.keys() == {f"s3://{bucket}/kb/{n}" for n in
                              ("big.txt", "corrupt.pdf", "empty.txt", "latin1.txt")}  # fmt: skip
    assert "larger than maxDocumentBytes" in reasons[f"s3://{bucket}/kb/big.txt"]
    assert "empty document" in reasons[f"s3://{bucket}/kb/empty.txt"]

    store = open_store(config.store)
    prefix = snapshot_prefix("default", "docs", result.snapshot_id)
    manifest = SnapshotManifest.model_validate(store.manifest(prefix))
    assert (manifest.documents, manifest.chunks, manifest.failed) == (4, result.chunks, 4)
    chunks = [Chunk.model_validate_json(x) for x in
              store.get_bytes(f"{prefix}/chunks.jsonl").splitlines()]  # fmt: skip
    assert {c.uri for c in chunks} == {
        f"s3://{bucket}/kb/{n}" for n in ("returns.md", "guides/shipping.html", "manual.pdf",
                                         "hours.txt")
    }  # fmt: skip
    assert {c.heading for c in chunks} >= {"Returns", "Shipping"}

    again = sync(config, store=open_store(config.store), tokenizer=tokenizer())
    assert again.snapshot_id == result.snapshot_id and not again.published


def test_a_bucket_deleted_mid_sync_publishes_nothing(tmp_path: Path, minio: S3Server, env: None) -> None:  # fmt: skip
    bucket = new_bucket()
    s3_put(minio, bucket, {f"kb/doc-{i}.txt": f"document {i}".encode() for i in range(6)})
    config = s3_config(tmp_path, minio, bucket)
    open_store(config.store).ensure_bucket()  # type: ignore[attr-defined]

    def delete_bucket(index: int) -> None:
        if index == 2:
            s3_remove_bucket(minio, bucket)

    with pytest.raises(SyncFailed, match="disappeared") as failure:
        sync(config, store=open_store(config.store), tokenizer=tokenizer(),
             after_document=delete_bucket)  # fmt: skip
    assert (failure.value.reason, failure.value.exit_code) == ("SourceUnavailable", 2)
    assert snapshot_keys(config) == []
    assert not any((tmp_path / "work").iterdir())


def test_cli_missing_bucket_exits_2(tmp_path: Path, minio: S3Server) -> None:
    config = s3_config(tmp_path, minio, new_bucket(), endpoint=True)
    code, stderr, termination = cli(config, tmp_path, credentials(minio))
    assert code == 2, stderr
    assert termination["reason"] == "SourceUnavailable"
    assert "does not exist" in termination["error"]


@pytest.mark.parametrize("who", ["wrong-secret", "anonymous"])
def test_cli_bad_credentials_exit_2(tmp_path: Path, minio: S3Server, env: None, who: str) -> None:
    bucket = new_bucket()
    s3_put(minio, bucket, {"kb/a.txt": b"private"})
    config = s3_config(tmp_path, minio, bucket, endpoint=True)
    child = credentials(minio, source=False)
    if who == "wrong-secret":
        child |= {ACCESS_KEY_ENV: minio.access_key, SECRET_KEY_ENV: "not-the-secret"}
    code, stderr, termination = cli(config, tmp_path, child)
    assert code == 2, stderr
    assert termination["reason"] == "BadCredentials"
    expected = "with the given credentials" if who == "wrong-secret" else "anonymously"
    assert expected in termination["error"]
    assert snapshot_keys(config) == []


def test_an_unreachable_endpoint_is_a_source_error(tmp_path: Path, minio: S3Server, env: None) -> None:  # fmt: skip
    from servers import free_port

    config = sync_config(
        tmp_path,
        source={"s3": {"bucket": "docs", "endpoint": f"http://127.0.0.1:{free_port()}"}},
    )
    with pytest.raises(SyncFailed, match="unreachable") as failure:
        sync(config, store=open_store(config.store), tokenizer=tokenizer())
    assert failure.value.reason == "SourceUnavailable"


def test_keys_that_climb_out_are_failed_and_nothing_is_written_outside_work_dir(
    tmp_path: Path, moto: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in credentials(moto).items():
        monkeypatch.setenv(key, value)
    bucket = new_bucket()
    raw = s3_raw(moto)
    raw.make_bucket(bucket)
    mark = uuid.uuid4().hex[:8]  # file names no other test could have written
    hostile = [f"kb/../up-{mark}.txt", f"kb/a/../../up2-{mark}.txt", f"kb//abs-{mark}.txt",
               f"kb/./dot-{mark}.txt"]  # fmt: skip
    for key in [*hostile, "kb/ok.md"]:
        raw.put(bucket, key, b"# Title\n\nSome escaped text " + key.encode())
    assert {o.object_name for o in s3_client(moto).list_objects(bucket, recursive=True)} == {
        *hostile,
        "kb/ok.md",
    }  # the server really stores them, as AWS S3 does
    config = s3_config(tmp_path, moto, bucket, endpoint=True)
    config.store = config.store.model_copy(update={"kind": "local"})
    before = set(tmp_path.parent.rglob("*"))
    result = sync(config, store=open_store(config.store), tokenizer=tokenizer())

    assert result.documents == 1 and result.published
    reasons = {f.uri.removeprefix(f"s3://{bucket}/"): f.reason for f in result.failed_documents}
    assert reasons == {key: UNSAFE_KEY for key in hostile}
    created = {p for p in set(tmp_path.parent.rglob("*")) - before if p.is_file()}
    store_root = Path(config.store.path)
    assert created and all(p.is_relative_to(store_root) for p in created), created
    assert list(tmp_path.parent.rglob(f"*{mark}*")) == []
