"""Corpus: where the documents come from and how they become chunks."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import (
    CRON,
    CronSchedule,
    LocalObjectReference,
    Model,
    Name,
    Rule,
    StatusBase,
    StringMap,
    Timestamp,
    unique,
)

DocumentFormat = Literal["pdf", "html", "markdown", "text"]
ALL_FORMATS: tuple[DocumentFormat, ...] = ("pdf", "html", "markdown", "text")
MiB = 1024 * 1024


class S3Source(Model):
    """Objects under a prefix of an S3 bucket (AWS S3, MinIO, any S3 server)."""

    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="S3 endpoint URL; empty uses the operator's artifact-store endpoint.",
    )
    bucket: str = Field(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="Bucket holding the documents.",
    )
    prefix: str = Field(
        default="",
        max_length=1024,
        description="Only keys under this prefix are synced.",
    )
    region: str | None = Field(default=None, max_length=64, description="Bucket region.")
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with keys accessKey and secretKey; empty means anonymous.",
    )


class PvcSource(Model):
    """Files on a PersistentVolumeClaim, mounted read-only into the sync Job."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!self.path.matches('(^|/)[.][.](/|$)')",
            message="path must stay inside the volume: no '..' segments",
            field="path",
            check=lambda s: ".." not in s.path.split("/"),
        ),
    )

    claim_name: Name = Field(description="PersistentVolumeClaim in the same namespace.")
    path: str = Field(
        default="/",
        max_length=1024,
        pattern=r"^/",
        description="Directory inside the volume to sync, absolute within the volume.",
    )


class ConfigMapSource(Model):
    """Each key of a ConfigMap is one document; the key is its file name."""

    name: Name = Field(description="ConfigMap in the same namespace.")


class InlineDocument(Model):
    """A document written directly into the resource (small corpora, tests, demos)."""

    id: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./]*$",
        description="Document id, unique within the corpus.",
    )
    text: str = Field(min_length=1, max_length=65536, description="The document's text.")
    format: Literal["markdown", "text", "html"] = Field(
        default="markdown", description="How the text is to be read."
    )
    uri: str | None = Field(
        default=None, max_length=2048, description="Source URI shown in citations."
    )
    metadata: StringMap = Field(description="Metadata kept with every chunk, for filters.")


class InlineSource(Model):
    """Documents given in the resource itself."""

    rules: ClassVar[tuple[Rule, ...]] = (unique("documents", "id"),)

    documents: list[InlineDocument] = Field(
        min_length=1,
        max_length=200,
        description="The documents.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )


class CorpusSource(Model):
    """Exactly one place the documents come from."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="[has(self.s3), has(self.pvc), has(self.configMap), has(self.inline)]"
            ".filter(x, x).size() == 1",
            message="exactly one of s3, pvc, configMap or inline must be set",
            check=lambda s: [s.s3, s.pvc, s.config_map, s.inline].count(None) == 3,
        ),
    )

    s3: S3Source | None = Field(default=None, description="Documents in an S3 bucket.")
    pvc: PvcSource | None = Field(default=None, description="Documents on a volume.")
    config_map: ConfigMapSource | None = Field(
        default=None, description="Documents in a ConfigMap."
    )
    inline: InlineSource | None = Field(default=None, description="Documents in the spec.")


class Chunking(Model):
    """How documents are cut into chunks, in tokens of the embedding model's tokenizer."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.overlap < self.size",
            message="overlap must be smaller than size",
            field="overlap",
            check=lambda s: s.overlap < s.size,
        ),
    )

    strategy: Literal["tokens", "markdown-sections"] = Field(
        default="markdown-sections",
        description="tokens: fixed windows; markdown-sections: windows that never cross a"
        " heading and carry their section's heading path.",
    )
    size: int = Field(default=256, ge=16, le=8192, description="Chunk size in tokens.")
    overlap: int = Field(
        default=32, ge=0, le=4096, description="Tokens shared by consecutive chunks."
    )
    tokenizer: str = Field(
        default="all-MiniLM-L6-v2",
        min_length=1,
        max_length=512,
        description="Tokenizer sizes are counted in: the embedding model of the stacks that"
        " index this corpus (a cached name or a path in the artifact store).",
    )


class Extraction(Model):
    """Which documents are read and how."""

    formats: list[DocumentFormat] = Field(
        default_factory=lambda: list(ALL_FORMATS),
        min_length=1,
        max_length=4,
        description="Formats to extract; other files are skipped.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    chunking: Chunking = Field(default_factory=Chunking, description="Chunking.")
    deduplicate: bool = Field(
        default=True, description="Drop chunks whose exact text was already seen."
    )
    max_document_bytes: int = Field(
        default=50 * MiB,
        ge=1024,
        le=1024 * MiB,
        description="Larger documents are listed as failed instead of being read.",
    )


class Refresh(Model):
    """Periodic re-sync; a new snapshot is published only when content changed."""

    schedule: CronSchedule = Field(
        max_length=128, pattern=CRON, description="Cron schedule, e.g. '0 3 * * *'."
    )
    suspend: bool = Field(default=False, description="Pause scheduled syncs.")


class CorpusSpec(Model):
    """The documents to serve from, and how they are read."""

    source: CorpusSource = Field(description="Where the documents come from.")
    extraction: Extraction = Field(default_factory=Extraction, description="Reading.")
    refresh: Refresh | None = Field(default=None, description="Scheduled re-syncs.")
    keep_snapshots: int = Field(
        default=3, ge=1, le=100, description="Snapshots kept in the artifact store."
    )
    artifact_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What happens to the snapshots in the store when the Corpus is deleted.",
    )


class FailedDocument(Model):
    """A document that could not be read, and why."""

    uri: str = Field(max_length=2048, description="The document.")
    reason: str = Field(max_length=1024, description="Why it failed.")


class CorpusStatus(StatusBase):
    """What the last sync produced."""

    snapshot_id: str | None = Field(
        default=None, max_length=128, description="Content hash of the latest snapshot."
    )
    documents: int | None = Field(default=None, ge=0, description="Documents in the snapshot.")
    chunks: int | None = Field(default=None, ge=0, description="Chunks in the snapshot.")
    failed_documents: list[FailedDocument] = Field(
        default_factory=list,
        max_length=50,
        description="Documents that failed in the last sync (first 50).",
    )
    failed_count: int | None = Field(default=None, ge=0, description="All failed documents.")
    sync_inputs: str | None = Field(
        default=None,
        max_length=64,
        description="Hash of the inputs of the last finished sync (so it is not repeated).",
    )
    last_sync_time: Timestamp | None = Field(
        default=None,
        description="When the last sync finished.",
    )
