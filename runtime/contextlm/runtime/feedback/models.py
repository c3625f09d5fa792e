"""The feedback store's tables as SQLAlchemy 2 declarative models.

The schema itself is owned by the alembic revisions in `migrations/versions/`; these
models must describe the same tables (a test compares them with alembic's autogenerate
diff), and the application reads and writes through them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Constraint names are spelled out so later migrations can alter them by name on both
# backends (SQLite has no names of its own for them).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
RATINGS = ("up", "down")
DEPLOYMENT_LENGTH = 320  # namespace (63) + "/" + name (253)
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on both backends.

    PostgreSQL keeps the zone (timestamptz); SQLite stores text without one, so values are
    normalised to naive UTC on the way in and marked UTC on the way out. Without this a
    retention cutoff compared on SQLite would depend on the writer's local zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the feedback store keeps aware UTC times")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class QueryRecord(Base):
    """One answer: exactly what the model saw and said, and where the context came from."""

    __tablename__ = "queries"
    __table_args__ = (
        # Training exports and retention read time windows of one deployment.
        Index("ix_queries_deployment_created_at", "deployment", "created_at"),
    )

    query_id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    deployment: Mapped[str] = mapped_column(String(DEPLOYMENT_LENGTH))
    question: Mapped[str] = mapped_column(Text())
    prompt: Mapped[str] = mapped_column(Text())
    answer: Mapped[str] = mapped_column(Text())
    # [{chunk_id, doc_id, uri, rank, score, n}], n = the number in the prompt (None when the
    # token budget dropped it).
    retrieved: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)
    cited: Mapped[list[str]] = mapped_column(JSONDocument)  # chunk ids, first cited first
    model_revision: Mapped[str] = mapped_column(String(128))
    index_version: Mapped[str] = mapped_column(String(128))
    finish_reason: Mapped[str] = mapped_column(String(16))  # stop | length | client_closed
    latency_ms: Mapped[float] = mapped_column(Float())
    prompt_tokens: Mapped[int] = mapped_column(Integer())
    completion_tokens: Mapped[int] = mapped_column(Integer())


class FeedbackRecord(Base):
    """One user's verdict on one answer, stored once per client idempotency key."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("deployment", "idempotency_key"),
        CheckConstraint("rating IN ('up', 'down')", name="rating"),
        Index("ix_feedback_deployment_created_at", "deployment", "created_at"),
        # Covers the status counts: an index-only scan on PostgreSQL.
        Index("ix_feedback_deployment_rating_corrected", "deployment", "rating", "corrected"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    query_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("queries.query_id", ondelete="CASCADE"), index=True
    )
    deployment: Mapped[str] = mapped_column(String(DEPLOYMENT_LENGTH))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    rating: Mapped[str] = mapped_column(String(4))
    corrected: Mapped[bool] = mapped_column(Boolean())
    correction: Mapped[str | None] = mapped_column(Text(), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
