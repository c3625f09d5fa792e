"""Where a corpus's documents come from: an S3 bucket, a mounted directory (PVC or
ConfigMap), or the resource itself (inline).

A source yields documents lazily, one at a time, in a stable order (so the snapshot id
is reproducible). It distinguishes two kinds of trouble: a `DocumentError` fails one
document (it vanished, it is too large, its key is unsafe) and the sync goes on; a
`SourceError` means the source itself is gone or refuses us, and the sync publishes
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .extract import Format
from .store import check_key

if TYPE_CHECKING:
    from minio import Minio

    from ..api.corpus import S3Source
    from .config import SyncConfig

SourceReason = Literal["SourceUnavailable", "BadCredentials", "InvalidConfig"]
ACCESS_KEY_ENV = "CONTEXTLM_SOURCE_ACCESS_KEY"
SECRET_KEY_ENV = "CONTEXTLM_SOURCE_SECRET_KEY"
READ_BLOCK = 64 * 1024
UNSAFE_KEY = "unsafe key (absolute path, '.', '..' or empty path segment)"
# S3 error codes that mean "these credentials may not do this", not "the bucket is gone".
CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
    }
)


class SourceError(Exception):
    """The source as a whole is unusable; nothing may be published."""

    def __init__(self, reason: SourceReason, message: str) -> None:
        super().__init__(message)
        self.reason: SourceReason = reason


class DocumentError(Exception):
    """One document cannot be fetched; the message is its listed failure reason."""


Reader = Callable[[int], "bytes | str"]


class Source(Protocol):
    def check(self) -> None:
        """Raise SourceError now if the source is unusable (before slow setup work)."""
        ...

    def documents(self) -> Iterator[SourceDocument]:
        """Documents in a stable order; raises SourceError when the source is unusable."""
        ...


@dataclass
class SourceDocument:
    """A document as listed; `read(limit)` fetches at most `limit` bytes of it."""

    doc_id: str
    uri: str
    read: Reader
    size: int | None = None
    format: Format | None = None  # declared; otherwise the name's extension decides
    metadata: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # found unusable while listing (unsafe key, bad link)


def read_capped(chunks: Iterator[bytes], limit: int) -> bytes:
    """Concatenate `chunks`, refusing to hold more than `limit` bytes."""
    out = bytearray()
    for block in chunks:
        out += block
        if len(out) > limit:
            raise DocumentError(f"larger than maxDocumentBytes ({limit} bytes)")
    return bytes(out)


# S3 -------------------------------------------------------------------------------


class S3DocumentSource:
    """Objects under a prefix, listed in key order, fetched one at a time."""

    def __init__(self, spec: S3Source, *, endpoint: str, region: str | None) -> None:
        self.spec = spec
        self.client = _s3_client(endpoint, region)

    def check(self) -> None:
        bucket = self.spec.bucket
        if not self._call(self.client.bucket_exists, bucket):
            raise SourceError("SourceUnavailable", f"bucket {bucket!r} does not exist")

    def documents(self) -> Iterator[SourceDocument]:
        self.check()
        bucket = self.spec.bucket
        listing = self.client.list_objects(bucket, prefix=self.spec.prefix, recursive=True)
        while True:
            obj = self._call(next, listing, None)
            if obj is None:
                return
            key = obj.object_name or ""
            if obj.is_dir or key.endswith("/"):
                continue
            yield SourceDocument(
                doc_id=key,
                uri=f"s3://{bucket}/{key}",
                read=self._reader(key),
                size=obj.size,
                problem=_unsafe_key(key),
            )

    def _reader(self, key: str) -> Reader:
        def read(limit: int) -> bytes:
            response = self._get(key)
            try:
                return read_capped(response.stream(READ_BLOCK), limit)
            except DocumentError:
                raise
            except Exception as exc:
                raise self._classify(exc, document=True) from exc
            finally:
                response.close()
                response.release_conn()

        return read

    def _get(self, key: str) -> Any:
        from minio.error import S3Error

        try:
            return self.client.get_object(self.spec.bucket, key)
        except S3Error as exc:
            # Is it this object, or the whole bucket (deleted, credentials revoked)? The
            # bucket probe raises the SourceError in the second case.
            if not self._call(self.client.bucket_exists, self.spec.bucket):
                raise SourceError(
                    "SourceUnavailable", f"bucket {self.spec.bucket!r} disappeared"
                ) from exc
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise DocumentError("object disappeared during the sync") from exc
            raise self._classify(exc, document=True) from exc
        except Exception as exc:
            raise self._classify(exc, document=True) from exc

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise self._classify(exc) from exc

    def _classify(self, exc: Exception, *, document: bool = False) -> Exception:
        """A SourceError; or, while fetching one object, a DocumentError for what only
        that object has (a per-object denial, an archived object, an odd key)."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        bucket = self.spec.bucket
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket":
                return SourceError("SourceUnavailable", f"bucket {bucket!r} disappeared")
            if document:
                return DocumentError(f"cannot fetch object: {exc.code}: {exc.message}")
            if exc.code in CREDENTIAL_CODES:
                how = "with the given credentials" if _has_credentials() else "anonymously"
                return SourceError(
                    "BadCredentials", f"access to bucket {bucket!r} {how} denied: {exc.code}"
                )
            return SourceError("SourceUnavailable", f"s3 error on {bucket!r}: {exc.code}")
        if document and not isinstance(exc, HTTPError | OSError):
            return DocumentError(f"cannot fetch object: {exc}")
        return SourceError("SourceUnavailable", f"s3 endpoint unreachable: {exc}")


def _has_credentials() -> bool:
    return bool(os.environ.get(ACCESS_KEY_ENV))


def _s3_client(endpoint: str, region: str | None) -> Minio:
    from urllib.parse import urlparse

    import urllib3
    from minio import Minio

    url = urlparse(endpoint)
    # Fewer, shorter retries than minio's defaults: a dead endpoint should fail the
    # sync within seconds, with its reason, rather than after minutes.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=120),
        retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        url.netloc,
        access_key=os.environ.get(ACCESS_KEY_ENV) or None,
        secret_key=os.environ.get(SECRET_KEY_ENV) or None,
        secure=url.scheme == "https",
        region=region,
        http_client=http,
    )


def _unsafe_key(key: str) -> str | None:
    """S3 allows any key; one that could name a path outside its prefix is refused."""
    try:
        check_key(key)
    except ValueError:
        return UNSAFE_KEY
    return None


# Mounted directories --------------------------------------------------------------


class DirectorySource:
    """Files under a mounted directory, walked depth-first in name order.

    Hidden entries are skipped (a ConfigMap volume keeps its real files under `..data`
    and exposes each key as a symlink into it); a symlink is followed only when its
    target stays inside the mount, so a volume cannot leak the pod's own files (such
    as its service-account token) into the corpus.
    """

    def __init__(self, root: Path, *, uri_base: str) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.uri_base = uri_base.rstrip("/")

    def check(self) -> None:
        if not self.root.is_dir():
            raise SourceError("SourceUnavailable", f"source directory {self.root} is missing")

    def documents(self) -> Iterator[SourceDocument]:
        self.check()
        yield from self._walk(self.real_root)

    def _walk(self, directory: Path) -> Iterator[SourceDocument]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            self._check_root()
            rel = directory.relative_to(self.real_root).as_posix()
            yield self._failed(rel, f"cannot list directory: {exc.strerror}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            rel = path.relative_to(self.real_root).as_posix()
            if entry.is_symlink():
                target = path.resolve()
                if not target.exists():
                    yield self._failed(rel, "broken symlink")
                    continue
                if not target.is_relative_to(self.real_root):
                    yield self._failed(rel, "symlink points outside the source directory")
                    continue
                if target.is_dir():
                    continue  # directory links could loop; their files are walked directly
                path = target
            elif entry.is_dir(follow_symlinks=False):
                yield from self._walk(path)
                continue
            elif not entry.is_file(follow_symlinks=False):
                continue  # sockets, fifos, devices
            yield self._document(rel, path)

    def _document(self, rel: str, path: Path) -> SourceDocument:
        def read(limit: int) -> bytes:
            try:
                with path.open("rb") as handle:
                    return read_capped(iter(lambda: handle.read(READ_BLOCK), b""), limit)
            except FileNotFoundError as exc:
                self._check_root()
                raise DocumentError("file disappeared during the sync") from exc
            except OSError as exc:
                self._check_root()
                raise DocumentError(f"cannot read file: {exc.strerror}") from exc

        try:
            size: int | None = path.stat().st_size
        except OSError:
            size = None
        return SourceDocument(doc_id=rel, uri=f"{self.uri_base}/{rel}", read=read, size=size)

    def _failed(self, rel: str, problem: str) -> SourceDocument:
        def read(limit: int) -> bytes:
            raise DocumentError(problem)

        return SourceDocument(doc_id=rel, uri=f"{self.uri_base}/{rel}", read=read, problem=problem)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise SourceError("SourceUnavailable", f"source directory {self.root} disappeared")


# Inline ---------------------------------------------------------------------------


class InlineDocumentSource:
    def __init__(self, config: SyncConfig) -> None:
        assert config.spec.source.inline is not None
        self.documents_spec = config.spec.source.inline.documents
        self.corpus = config.corpus

    def check(self) -> None:
        pass

    def documents(self) -> Iterator[SourceDocument]:
        for doc in self.documents_spec:
            text = doc.text
            yield SourceDocument(
                doc_id=doc.id,
                uri=doc.uri or f"inline://{self.corpus}/{doc.id}",
                read=_constant(text),
                size=len(text.encode()),
                format=doc.format,
                metadata=dict(doc.metadata),
            )


def _constant(text: str) -> Reader:
    def read(limit: int) -> str:
        return text

    return read


def open_source(config: SyncConfig) -> Source:
    source = config.spec.source
    if source.inline is not None:
        return InlineDocumentSource(config)
    if source.s3 is not None:
        endpoint = source.s3.endpoint or config.store.endpoint
        if not endpoint:
            raise SourceError(
                "InvalidConfig", "s3 source without an endpoint, and the store has none"
            )
        return S3DocumentSource(
            source.s3, endpoint=endpoint, region=source.s3.region or config.store.region
        )
    if not config.source_path:
        raise SourceError("InvalidConfig", "pvc and configMap sources need source_path")
    root = Path(config.source_path)
    if source.pvc is not None:
        # source_path already points at `path` inside the mounted claim (the operator
        # joins them); a `..` in `path` would have walked out of the volume.
        if ".." in PurePosixPath(source.pvc.path).parts:
            raise SourceError("InvalidConfig", f"pvc path {source.pvc.path!r} leaves the volume")
        return DirectorySource(root, uri_base=f"pvc://{source.pvc.claim_name}{source.pvc.path}")
    assert source.config_map is not None
    return DirectorySource(root, uri_base=f"configmap://{source.config_map.name}")
