"""The feedback store API: record answers, take feedback exactly once, count, purge, export.

Synchronous SQLAlchemy Core on a pooled engine; the gateway calls it from a small thread
pool. Every write is one short transaction, and a method returns only after its commit
returned, so a caller that answers 2xx after it has a durable row.

Failures are sorted into three exceptions the gateway maps to HTTP: `StoreUnavailable`
(the database cannot be reached or dropped the connection: 503, retry), `UnknownQuery`
(404) and `IdempotencyConflict` (409: a key reused for a different feedback).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, create_engine, delete, event, exists, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url

from .models import RATINGS, Base

DSN_ENV = "CONTEXTLM_FEEDBACK_DSN"
queries = Base.metadata.tables["queries"]
feedback = Base.metadata.tables["feedback"]


class StoreUnavailable(RuntimeError):
    """The database could not be reached, or the connection broke mid-transaction.

    Nothing is known to be committed; a retry with the same idempotency key is safe."""


class UnknownQuery(LookupError):
    """Feedback names a query_id the store has never recorded."""


class IdempotencyConflict(ValueError):
    """An idempotency key was used before for a different feedback."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class AnswerRecord:
    """Everything training needs to know about one answer."""

    query_id: uuid.UUID
    question: str
    prompt: str
    answer: str
    retrieved: list[dict[str, Any]]
    cited: list[str]
    model_revision: str
    index_version: str
    finish_reason: str = "stop"
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class FeedbackInput:
    query_id: uuid.UUID
    rating: str
    idempotency_key: str
    correction: str | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        if self.rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}")
        if not self.idempotency_key or len(self.idempotency_key) > 255:
            raise ValueError("idempotency_key must be 1 to 255 characters")


@dataclass(frozen=True)
class StoredFeedback:
    feedback_id: uuid.UUID
    query_id: uuid.UUID
    rating: str
    created_at: dt.datetime
    created: bool  # False: an idempotent replay of an earlier post


@dataclass(frozen=True)
class Counts:
    up: int = 0
    down: int = 0
    corrections: int = 0

    @property
    def total(self) -> int:
        return self.up + self.down


@dataclass(frozen=True)
class Purged:
    feedback: int
    queries: int


@dataclass(frozen=True)
class FeedbackRow:
    """One feedback joined with the answer it judges: a row of a training export."""

    feedback_id: uuid.UUID
    created_at: dt.datetime
    rating: str
    correction: str | None
    comment: str | None
    query_id: uuid.UUID
    question: str
    prompt: str
    answer: str
    retrieved: list[dict[str, Any]]
    cited: list[str]
    model_revision: str
    index_version: str
    finish_reason: str


# Connecting --------------------------------------------------------------------------


def engine_url(dsn: str) -> URL:
    """The SQLAlchemy URL for a DSN as users write it (postgresql://…, sqlite:///…).

    PostgreSQL always goes through psycopg 3, whatever driver the DSN names or omits."""
    url = make_url(dsn)
    if url.get_backend_name() in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+pysqlite")
    raise ValueError(f"unsupported feedback store {url.get_backend_name()!r}: postgresql or sqlite")


def sqlite_dsn(path: str) -> str:
    return f"sqlite:///{path}"


def create_store_engine(
    dsn: str, *, pool_size: int = 8, connect_timeout: int = 3, answers: bool = False
) -> Engine:
    """A pooled engine for the store. `answers=True` gives the PostgreSQL engine answers
    are written with: autocommit (one round trip per answer instead of four) and commits
    that do not wait for the WAL flush; see `FeedbackStore.record_answer`."""
    url = engine_url(dsn)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=pool_size,
            pool_pre_ping=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "application_name": "contextlm",
    }
    if answers:
        connect_args["options"] = "-c synchronous_commit=off"
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A pooled connection that died with the server is noticed before use and
        # replaced, so the first feedback after an outage does not fail on a dead socket.
        # An answer skips the check (a round trip): if it fails, it waits in memory and
        # is written again (feedback.recorder), and the failure resets the whole pool.
        pool_pre_ping=not answers,
        pool_timeout=5,
        pool_recycle=1800,
        # READ COMMITTED whatever the database's default: the SELECT after a conflicting
        # insert must see the row another transaction committed meanwhile.
        isolation_level="AUTOCOMMIT" if answers else "READ COMMITTED",
        connect_args=connect_args,
    )


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL lets the readiness probe and counts read while a feedback commits; FULL syncs
    # the WAL on every commit, so an acknowledged feedback survives power loss.
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# The store ---------------------------------------------------------------------------


class FeedbackStore:
    """The rows of one deployment (`namespace/name`) in a store that several may share."""

    def __init__(
        self, engine: Engine, *, deployment: str, answers_engine: Engine | None = None
    ) -> None:
        self.engine = engine
        self.answers = answers_engine or engine
        self.deployment = deployment
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, dsn: str, *, deployment: str, pool_size: int = 8) -> FeedbackStore:
        engine = create_store_engine(dsn, pool_size=pool_size)
        answers = None
        if engine.dialect.name == "postgresql":
            answers = create_store_engine(dsn, pool_size=pool_size, answers=True)
        return cls(engine, deployment=deployment, answers_engine=answers)

    def close(self) -> None:
        self.engine.dispose()
        if self.answers is not self.engine:
            self.answers.dispose()

    def _insert(self, table: Any) -> Any:
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table)

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise _unavailable(exc) from exc

    def record_answer(self, record: AnswerRecord) -> None:
        """Insert an answer; recording the same query_id twice keeps the first."""
        values = {
            "query_id": record.query_id,
            "created_at": record.created_at,
            "deployment": self.deployment,
            "question": record.question,
            "prompt": record.prompt,
            "answer": record.answer,
            "retrieved": record.retrieved,
            "cited": record.cited,
            "model_revision": record.model_revision,
            "index_version": record.index_version,
            "finish_reason": record.finish_reason,
            "latency_ms": record.latency_ms,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
        }
        statement = self._insert(queries).values(values).on_conflict_do_nothing()
        # On PostgreSQL the answer is one autocommitted statement whose commit does not
        # wait for the WAL flush: it is on every request's path. A server crash can lose
        # the last fraction of a second of answers, never a feedback: a feedback's
        # synchronous commit flushes the WAL up to itself, which includes the answer it
        # refers to (its foreign key needed that row).
        try:
            with self.answers.begin() as conn:
                conn.execute(statement)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise _unavailable(exc) from exc

    def add_feedback(self, item: FeedbackInput) -> StoredFeedback:
        """Store a feedback once per idempotency key, committed before this returns.

        INSERT … ON CONFLICT DO NOTHING RETURNING, then (on a conflict) SELECT of the row
        that holds the key, in one transaction: a retry after a lost answer, or two
        concurrent posts with one key, both return the single stored row."""
        now = utcnow()
        values = {
            "id": uuid.uuid4(),
            "query_id": item.query_id,
            "deployment": self.deployment,
            "idempotency_key": item.idempotency_key,
            "rating": item.rating,
            "corrected": bool(item.correction),
            "correction": item.correction or None,
            "comment": item.comment or None,
            "created_at": now,
        }
        statement = (
            self._insert(feedback)
            .values(values)
            .on_conflict_do_nothing(index_elements=["deployment", "idempotency_key"])
            .returning(feedback.c.id)
        )
        try:
            with self.engine.begin() as conn:
                inserted = conn.execute(statement).scalar_one_or_none()
                if inserted is None:
                    return self._replay(conn, item)
        except sa_exc.IntegrityError as exc:
            # The only constraint left after ON CONFLICT is the foreign key.
            raise UnknownQuery(f"unknown query_id {item.query_id}") from exc
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            # Includes a connection lost during COMMIT: the row may or may not be there,
            # which is why the client retries with the same key.
            raise _unavailable(exc) from exc
        return StoredFeedback(inserted, item.query_id, item.rating, now, created=True)

    def _replay(self, conn: Connection, item: FeedbackInput) -> StoredFeedback:
        row = conn.execute(
            select(
                feedback.c.id,
                feedback.c.query_id,
                feedback.c.rating,
                feedback.c.correction,
                feedback.c.comment,
                feedback.c.created_at,
            ).where(
                feedback.c.deployment == self.deployment,
                feedback.c.idempotency_key == item.idempotency_key,
            )
        ).one()
        same = (row.query_id, row.rating, row.correction, row.comment) == (
            item.query_id,
            item.rating,
            item.correction or None,
            item.comment or None,
        )
        if not same:
            raise IdempotencyConflict(
                f"idempotency key {item.idempotency_key!r} was used for a different feedback"
            )
        return StoredFeedback(row.id, row.query_id, row.rating, row.created_at, created=False)

    def has_query(self, query_id: uuid.UUID) -> bool:
        try:
            with self.engine.connect() as conn:
                found = conn.execute(
                    select(queries.c.query_id).where(queries.c.query_id == query_id)
                ).first()
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise _unavailable(exc) from exc
        return found is not None

    def counts(self, *, since: dt.datetime | None = None) -> Counts:
        """Thumbs up, down and corrections of this deployment (since a time, if given)."""
        where = [feedback.c.deployment == self.deployment]
        if since is not None:
            where.append(feedback.c.created_at >= since)
        statement = (
            select(feedback.c.rating, feedback.c.corrected, func.count())
            .where(*where)
            .group_by(feedback.c.rating, feedback.c.corrected)
        )
        up = down = corrections = 0
        try:
            with self.engine.connect() as conn:
                for rating, corrected, count in conn.execute(statement):
                    up += count if rating == "up" else 0
                    down += count if rating == "down" else 0
                    corrections += count if corrected else 0
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise _unavailable(exc) from exc
        return Counts(up=up, down=down, corrections=corrections)

    def purge(self, *, older_than: dt.datetime, batch: int = 5000) -> Purged:
        """Delete feedback created before `older_than`, then answers of that age that no
        remaining feedback refers to, in batches so no transaction holds locks for long."""
        old_feedback = (
            select(feedback.c.id)
            .where(feedback.c.deployment == self.deployment, feedback.c.created_at < older_than)
            .limit(batch)
        )
        referenced = exists().where(feedback.c.query_id == queries.c.query_id)
        old_queries = (
            select(queries.c.query_id)
            .where(
                and_(
                    queries.c.deployment == self.deployment,
                    queries.c.created_at < older_than,
                    ~referenced,
                )
            )
            .limit(batch)
        )
        try:
            removed_feedback = self._delete_batches(
                delete(feedback).where(feedback.c.id.in_(old_feedback.scalar_subquery()))
            )
            removed_queries = self._delete_batches(
                delete(queries).where(queries.c.query_id.in_(old_queries.scalar_subquery()))
            )
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise _unavailable(exc) from exc
        return Purged(feedback=removed_feedback, queries=removed_queries)

    def _delete_batches(self, statement: Any) -> int:
        total = 0
        while True:
            with self.engine.begin() as conn:
                count = conn.execute(statement).rowcount
            total += count
            if count == 0:
                return total

    def feedback_window(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None, page: int = 500
    ) -> Iterator[FeedbackRow]:
        """Feedback created in [since, until), oldest first, with its answer.

        Pages by (created_at, id) so an export of millions of rows holds no long
        transaction and sees each row once."""
        after: tuple[dt.datetime, uuid.UUID] | None = None
        while True:
            rows = self._feedback_page(since=since, until=until, after=after, page=page)
            yield from rows
            if len(rows) < page:
                return
            after = (rows[-1].created_at, rows[-1].feedback_id)

    def _feedback_page(
        self,
        *,
        since: dt.datetime | None,
        until: dt.datetime | None,
        after: tuple[dt.datetime, uuid.UUID] | None,
        page: int,
    ) -> list[FeedbackRow]:
        f, q = feedback.c, queries.c
        where = [f.deployment == self.deployment]
        if since is not None:
            where.append(f.created_at >= since)
        if until is not None:
            where.append(f.created_at < until)
        if after is not None:
            where.append(
                (f.created_at > after[0]) | and_(f.created_at == after[0], f.id > after[1])
            )
        statement = (
            select(
                f.id.label("feedback_id"),
                f.created_at,
                f.rating,
                f.correction,
                f.comment,
                q.query_id,
                q.question,
                q.prompt,
                q.answer,
                q.retrieved,
                q.cited,
                q.model_revision,
                q.index_version,
                q.finish_reason,
            )
            .join(queries, q.query_id == f.query_id)
            .where(*where)
            .order_by(f.created_at, f.id)
            .limit(page)
        )
        with self.engine.connect() as conn:
            return [FeedbackRow(**row._mapping) for row in conn.execute(statement)]
