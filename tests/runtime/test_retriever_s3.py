"""The index → retriever path against a real S3 server on 127.0.0.1: MinIO when the e2e
harness has built it (`e2e/cluster/build`), otherwise moto's S3 server (`pip install
'moto[server]'`). Both speak the S3 protocol over HTTP to the real `minio` client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from retrieval_helpers import (
    NAMESPACE,
    STACK,
    RetrieverProcess,
    corpus_chunks,
    free_port,
    index_config,
    publish_snapshot,
    stack_spec,
)

from contextlm.runtime.config import RetrieverConfig
from contextlm.runtime.store import S3Store, StoreConfig

pytestmark = pytest.mark.integration

ACCESS, SECRET = "contextlm", "contextlm-test-secret"
MINIO = (
    Path(os.environ.get("CONTEXTLM_CACHE", "~/.cache/contextlm")).expanduser() / "bin/current/minio"
)


def start_s3(data: Path) -> tuple[str, subprocess.Popen[bytes], str]:
    port = free_port()
    if MINIO.exists():
        kind = "minio"
        command = [
            str(MINIO),
            "server",
            "--quiet",
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{free_port()}",
            str(data),
        ]
        env = {
            **os.environ,
            "MINIO_ROOT_USER": ACCESS,
            "MINIO_ROOT_PASSWORD": SECRET,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
    else:
        try:
            import flask  # noqa: F401  (moto's server needs it)
            import moto  # noqa: F401
        except ImportError:
            pytest.fail("no S3 server: run e2e/cluster/build, or pip install 'moto[server]'")
        kind = "moto"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        env = dict(os.environ)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # an S3 error answer: the server is up
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"{kind} S3 server did not start on {endpoint}")
    return endpoint, process, kind


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StoreConfig, str]]:
    data = tmp_path_factory.mktemp("s3-data")
    endpoint, process, kind = start_s3(data)
    saved = {k: os.environ.get(k) for k in ("CONTEXTLM_S3_ACCESS_KEY", "CONTEXTLM_S3_SECRET_KEY")}
    os.environ["CONTEXTLM_S3_ACCESS_KEY"], os.environ["CONTEXTLM_S3_SECRET_KEY"] = ACCESS, SECRET
    try:
        yield StoreConfig(kind="s3", endpoint=endpoint, bucket="artifacts", prefix="team-a"), kind
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def test_index_and_serve_from_s3(s3: tuple[StoreConfig, str], tmp_path: Path) -> None:
    store_config, kind = s3
    store = S3Store(store_config)
    store.ensure_bucket()
    snapshot = publish_snapshot(store, corpus_chunks())
    config = tmp_path / "index.json"
    config.write_text(
        index_config(store_config, tmp_path / "work", snapshot, stack_spec()).model_dump_json(
            by_alias=True
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "contextlm.cli",
            "index",
            "--config",
            str(config),
            "--termination-log",
            str(tmp_path / "index.log"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{kind}: {done.stderr[-3000:]}"
    version = json.loads((tmp_path / "index.log").read_text())["indexVersion"]
    keys = list(store.list(f"retrieval/{NAMESPACE}/{STACK}/indexes/{version}/"))
    assert any(k.endswith("dense-dense/index.faiss") for k in keys), (kind, keys)
    assert any(k.endswith("manifest.json") for k in keys)

    retriever = RetrieverProcess(
        RetrieverConfig(
            stack=STACK,
            index_version=version,
            spec=stack_spec(),
            store=store_config,
            cache_dir=str(tmp_path / "cache"),
            device="cpu",
        ),
        tmp_path,
    )
    try:
        retriever.wait_ready()
        status, body = retriever.post({"query": "largest planet"})
    finally:
        retriever.stop()
    assert status == 200 and body["indexVersion"] == version, (kind, body)
    assert body["results"][0]["text"].startswith("Jupiter")
    assert (tmp_path / "cache/indexes" / version / "sparse-bm25").is_dir()
