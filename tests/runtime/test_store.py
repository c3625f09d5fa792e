"""The artifact store, on a local directory and on a real S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import S3Server

from contextlm.runtime.store import (
    ArtifactStore,
    LocalStore,
    S3Store,
    StoreConfig,
    StoreError,
    check_key,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"store-{os.getpid()}-{len(list(tmp_path.parent.iterdir()))}"
    config = StoreConfig(kind="s3", endpoint=server.endpoint, bucket=bucket, prefix="team-a")
    old = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    s3 = S3Store(config)
    s3.ensure_bucket()
    try:
        yield s3
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_round_trip_and_listing(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("a/b/one.txt", b"one")
    src = tmp_path / "two.bin"
    src.write_bytes(b"\x00\x01two")
    store.put_file("a/c/two.bin", src)
    assert store.get_bytes("a/b/one.txt") == b"one"
    assert store.exists("a/c/two.bin") and not store.exists("a/c/three.bin")
    assert sorted(store.list("a/")) == ["a/b/one.txt", "a/c/two.bin"]
    out = tmp_path / "out" / "two.bin"
    store.get_file("a/c/two.bin", out)
    assert out.read_bytes() == b"\x00\x01two"
    assert store.delete_prefix("a/b/") == 1
    assert list(store.list("a/")) == ["a/c/two.bin"]


def test_an_artifact_is_visible_only_once_its_manifest_is_written(
    store: ArtifactStore, tmp_path: Path
) -> None:
    prefix = "corpora/ns/docs/snapshots/abc"
    store.put_bytes(f"{prefix}/chunks.jsonl", b"{}\n")
    assert store.manifest(prefix) is None
    store.publish(prefix, {"snapshot_id": "abc"})
    assert store.manifest(prefix) == {"snapshot_id": "abc"}
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "sub" / "f").write_text("x")
    store.upload_dir("copy", tmp_path / "dir")
    store.download_dir("copy", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "f").read_text() == "x"


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a/./b"])
def test_keys_that_escape_are_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_bad_credentials_are_a_store_error(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTEXTLM_S3_ACCESS_KEY", "nobody")
    monkeypatch.setenv("CONTEXTLM_S3_SECRET_KEY", "wrong-secret")
    store = S3Store(StoreConfig(kind="s3", endpoint=s3_server.endpoint, bucket="whatever"))
    with pytest.raises(StoreError):
        store.put_bytes("k", b"v")
