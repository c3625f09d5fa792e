"""The artifact store: one interface over S3 (any S3 server, through `minio`) and a
local directory (the embedded default).

Artifacts are immutable and content-addressed: a snapshot, an index version or a model
revision lives under a prefix named by its id, and its `manifest.json` is written last.
Readers only trust a prefix whose manifest exists, so a half-written artifact (a Job
killed mid-upload, a bucket that vanished) is never visible.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"


class StoreError(RuntimeError):
    """The store could not be reached or refused the request (bad credentials, no bucket)."""


class StoreConfig(BaseModel):
    """Where artifacts live. Credentials come from the environment, never the config,
    so the operator can render this model into a ConfigMap and the keys into a Secret.
    """

    kind: Literal["s3", "local"] = Field(default="local", description="Backend.")
    path: str = Field(default="~/.local/share/contextlm/store", description="Local root.")
    endpoint: str | None = Field(default=None, description="S3 endpoint URL (http(s)://host:port).")
    bucket: str = Field(default="contextlm", description="S3 bucket holding all artifacts.")
    prefix: str = Field(default="", description="Key prefix inside the bucket.")
    region: str | None = Field(default=None, description="S3 region.")
    access_key_env: str = Field(default="CONTEXTLM_S3_ACCESS_KEY", description="Env var.")
    secret_key_env: str = Field(default="CONTEXTLM_S3_SECRET_KEY", description="Env var.")


def check_key(key: str) -> str:
    """Refuse keys that could escape their prefix (`..`, absolute paths, empty parts)."""
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in key.split("/")):
        raise ValueError(f"unsafe artifact key: {key!r}")
    return key


class ArtifactStore(ABC):
    """Put, get and list objects by key; publish and read artifact manifests."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix`, recursively, relative to the store root."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`, manifests first: an artifact being removed
        stops being visible before any of its files goes."""
        keys = sorted(self.list(prefix), key=lambda k: (not k.endswith("/" + MANIFEST), k))
        for key in keys:
            self.delete(key)
        return len(keys)

    # Artifacts -------------------------------------------------------------------

    def publish(self, prefix: str, manifest: dict[str, Any]) -> None:
        """Make the artifact under `prefix` visible: write its manifest, last."""
        self.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2).encode())

    def manifest(self, prefix: str) -> dict[str, Any] | None:
        """The manifest of a published artifact, or None if it is absent or partial."""
        key = f"{prefix}/{MANIFEST}"
        if not self.exists(key):
            return None
        loaded: dict[str, Any] = json.loads(self.get_bytes(key))
        return loaded

    def upload_dir(self, prefix: str, directory: Path) -> None:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                self.put_file(f"{prefix}/{path.relative_to(directory).as_posix()}", path)

    def download_dir(self, prefix: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for key in self.list(prefix + "/"):
            rel = check_key(key[len(prefix) + 1 :])
            self.get_file(key, directory / rel)


class LocalStore(ArtifactStore):
    """A directory; writes go to a temporary file and are renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"unsafe artifact key: {key!r}")
        return path

    def _write(self, key: str, writer: Any) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                writer(handle)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        def copy(handle: Any) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, handle)

        self._write(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda handle: handle.write(data))

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix.rstrip("/") if prefix.strip("/") else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store(ArtifactStore):
    """A bucket on any S3 server, through the `minio` client."""

    def __init__(self, config: StoreConfig) -> None:
        from urllib.parse import urlparse

        from minio import Minio

        if not config.endpoint:
            raise StoreError("the s3 artifact store needs an endpoint")
        url = urlparse(config.endpoint)
        self.bucket = config.bucket
        self.prefix = config.prefix.strip("/")
        self.client = Minio(
            url.netloc,
            access_key=os.environ.get(config.access_key_env),
            secret_key=os.environ.get(config.secret_key_env),
            secure=url.scheme == "https",
            region=config.region,
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from minio.error import MinioException

        try:
            return fn(*args, **kwargs)
        except MinioException as exc:
            raise StoreError(f"s3 {getattr(fn, '__name__', 'call')} failed: {exc}") from exc

    def ensure_bucket(self) -> None:
        if not self._call(self.client.bucket_exists, self.bucket):
            self._call(self.client.make_bucket, self.bucket)

    def put_file(self, key: str, path: Path) -> None:
        self._call(self.client.fput_object, self.bucket, self._key(key), str(path))

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self._call(
            self.client.put_object, self.bucket, self._key(key), io.BytesIO(data), len(data)
        )

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(self.client.fget_object, self.bucket, self._key(key), str(path))

    def get_bytes(self, key: str) -> bytes:
        response = self._call(self.client.get_object, self.bucket, self._key(key))
        try:
            data: bytes = response.read()
            return data
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise StoreError(f"s3 stat failed: {exc}") from exc
        return True

    def list(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        objects = self._call(self.client.list_objects, self.bucket, prefix=full, recursive=True)
        for obj in objects:
            yield obj.object_name[strip:]

    def delete(self, key: str) -> None:
        self._call(self.client.remove_object, self.bucket, self._key(key))


def open_store(config: StoreConfig) -> ArtifactStore:
    if config.kind == "s3":
        return S3Store(config)
    return LocalStore(config.path)
