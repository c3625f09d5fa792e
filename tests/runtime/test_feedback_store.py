"""The feedback store on SQLite and on a real PostgreSQL: migrations, exactly-once
feedback, counts, retention and the training window."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from feedback_helpers import answer, fresh_postgres, fresh_sqlite, open_migrated
from servers import PostgresServer, free_port
from sqlalchemy import func, inspect, select, update

from contextlm.runtime.feedback.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from contextlm.runtime.feedback.models import Base
from contextlm.runtime.feedback.store import (
    Counts,
    FeedbackInput,
    FeedbackStore,
    IdempotencyConflict,
    StoreUnavailable,
    UnknownQuery,
    engine_url,
    feedback,
    queries,
)

pytestmark = pytest.mark.integration
UTC = dt.UTC


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return fresh_sqlite(tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return fresh_postgres(server)


@pytest.fixture
def store(dsn: str) -> Iterator[FeedbackStore]:
    store = open_migrated(dsn)
    yield store
    store.close()


def vote(query_id: uuid.UUID, key: str, rating: str = "up", **extra: str) -> FeedbackInput:
    return FeedbackInput(query_id=query_id, rating=rating, idempotency_key=key, **extra)


# Migrations --------------------------------------------------------------------------


def test_migrations_create_the_schema_the_models_describe(dsn: str) -> None:
    store = FeedbackStore.open(dsn, deployment="default/docs")
    try:
        assert current_revision(store.engine) is None
        before, after = upgrade(store.engine)
        assert (before, after) == (None, head_revision())
        assert upgrade(store.engine) == (after, after)  # a second run changes nothing
        names = set(inspect(store.engine).get_table_names())
        assert {"queries", "feedback", "alembic_version"} <= names
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("feedback")}
        assert {
            "ix_feedback_deployment_created_at",
            "ix_feedback_deployment_rating_corrected",
        } <= indexes
    finally:
        store.close()


def test_migrations_go_down_and_up_again(store: FeedbackStore) -> None:
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), "base")
    assert current_revision(store.engine) is None
    assert "queries" not in inspect(store.engine).get_table_names()
    upgrade(store.engine)
    assert current_revision(store.engine) == head_revision()


def test_concurrent_migrations_on_postgres_serialise(postgres_server: PostgresServer) -> None:
    dsn = fresh_postgres(postgres_server)
    results: list[object] = []

    def migrate() -> None:
        store = FeedbackStore.open(dsn, deployment="x/y", pool_size=1)
        try:
            results.append(upgrade(store.engine))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head = head_revision()
    assert sorted(results, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)


def test_migrate_command_against_postgres(postgres_server: PostgresServer, tmp_path: Path) -> None:
    dsn = fresh_postgres(postgres_server)
    env = {**os.environ, "CONTEXTLM_FEEDBACK_DSN": dsn}
    env.pop("CONTEXTLM_CONFIG", None)
    log = tmp_path / "termination-log"
    done = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "migrate", "--termination-log", str(log)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"from": None, "to": head_revision(), "head": head_revision()}
    assert json.loads(log.read_text()) == result
    ddl = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "migrate", "--sql"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ddl.returncode == 0, ddl.stderr
    assert "CREATE TABLE feedback" in ddl.stdout and "JSONB" in ddl.stdout
    assert "contextlm-test" not in ddl.stdout  # the password never reaches the output


def test_migrate_command_without_a_dsn_says_what_is_missing() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CONTEXTLM_FEEDBACK_DSN", "CONTEXTLM_CONFIG")
    }
    done = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "migrate", "--termination-log", "/dev/null"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "CONTEXTLM_FEEDBACK_DSN" in done.stderr


def test_dsn_spellings_map_to_psycopg3_and_pysqlite() -> None:
    assert engine_url("postgresql://u:p@h:5432/db").drivername == "postgresql+psycopg"
    assert engine_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert engine_url("postgresql+psycopg2://u:p@h/db").drivername == "postgresql+psycopg"
    assert engine_url("sqlite:////var/lib/x.db").drivername == "sqlite+pysqlite"
    with pytest.raises(ValueError, match="unsupported"):
        engine_url("mysql://u:p@h/db")


# Answers and feedback --------------------------------------------------------------


def test_an_answer_is_recorded_once(store: FeedbackStore) -> None:
    record = answer()
    store.record_answer(record)
    store.record_answer(answer(query_id=record.query_id, answer="a retry must not overwrite"))
    assert store.has_query(record.query_id)
    with store.engine.connect() as conn:
        row = conn.execute(select(queries).where(queries.c.query_id == record.query_id)).one()
    assert row.answer == "Very big [1]."
    assert row.prompt == record.prompt
    assert row.retrieved == record.retrieved and row.cited == ["c1"]
    assert (row.model_revision, row.index_version) == ("rev-1", "idx-1")
    assert row.created_at.tzinfo is not None


def test_feedback_is_idempotent_on_the_client_key(store: FeedbackStore) -> None:
    record = answer()
    store.record_answer(record)
    first = store.add_feedback(vote(record.query_id, "k-1", "down", correction="It is 140,000 km."))
    again = store.add_feedback(vote(record.query_id, "k-1", "down", correction="It is 140,000 km."))
    assert first.created and not again.created
    assert again.feedback_id == first.feedback_id
    other = store.add_feedback(vote(record.query_id, "k-2", "up"))
    assert other.feedback_id != first.feedback_id
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(feedback)).scalar_one() == 2


def test_a_key_reused_for_a_different_feedback_is_a_conflict(store: FeedbackStore) -> None:
    record = answer()
    store.record_answer(record)
    store.add_feedback(vote(record.query_id, "k", "up"))
    with pytest.raises(IdempotencyConflict):
        store.add_feedback(vote(record.query_id, "k", "down"))


def test_feedback_on_an_unknown_query_is_refused(store: FeedbackStore) -> None:
    with pytest.raises(UnknownQuery):
        store.add_feedback(vote(uuid.uuid4(), "k"))
    with pytest.raises(ValueError, match="rating"):
        vote(uuid.uuid4(), "k", "meh")


def test_the_same_key_posted_concurrently_is_stored_once(store: FeedbackStore) -> None:
    record = answer()
    store.record_answer(record)
    results = []
    barrier = threading.Barrier(8)

    def post() -> None:
        barrier.wait()
        results.append(store.add_feedback(vote(record.query_id, "same-key")))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert sum(r.created for r in results) == 1
    assert len({r.feedback_id for r in results}) == 1


def test_keys_are_per_deployment(dsn: str) -> None:
    one, two = open_migrated(dsn, "ns/one"), open_migrated(dsn, "ns/two")
    try:
        a, b = answer(), answer()
        one.record_answer(a)
        two.record_answer(b)
        assert one.add_feedback(vote(a.query_id, "1")).created
        assert two.add_feedback(vote(b.query_id, "1")).created
        assert one.counts() == Counts(up=1) and two.counts() == Counts(up=1)
    finally:
        one.close()
        two.close()


def test_counts(store: FeedbackStore) -> None:
    records = [answer() for _ in range(6)]
    for r in records:
        store.record_answer(r)
    ratings = ["up", "up", "up", "down", "down", "down"]
    for i, (r, rating) in enumerate(zip(records, ratings, strict=True)):
        correction = "better" if rating == "down" and i < 5 else None
        store.add_feedback(
            vote(r.query_id, f"k{i}", rating, **({"correction": correction} if correction else {}))
        )
    assert store.counts() == Counts(up=3, down=3, corrections=2)
    assert store.counts(since=dt.datetime.now(UTC) + dt.timedelta(minutes=1)) == Counts()


def _age(
    store: FeedbackStore, table: object, column: object, ids: list[uuid.UUID], days: int
) -> None:
    when = dt.datetime.now(UTC) - dt.timedelta(days=days)
    with store.engine.begin() as conn:
        conn.execute(update(table).where(column.in_(ids)).values(created_at=when))  # type: ignore[attr-defined, arg-type]


def test_retention_deletes_old_feedback_and_unreferenced_old_answers(store: FeedbackStore) -> None:
    old_answer, old_with_new_feedback, new_answer, old_unrated = (answer() for _ in range(4))
    for r in (old_answer, old_with_new_feedback, new_answer, old_unrated):
        store.record_answer(r)
    old_fb = store.add_feedback(vote(old_answer.query_id, "old"))
    store.add_feedback(vote(old_with_new_feedback.query_id, "recent"))
    store.add_feedback(vote(new_answer.query_id, "new"))
    _age(
        store,
        queries,
        queries.c.query_id,
        [old_answer.query_id, old_with_new_feedback.query_id, old_unrated.query_id],
        400,
    )
    _age(store, feedback, feedback.c.id, [old_fb.feedback_id], 400)
    purged = store.purge(older_than=dt.datetime.now(UTC) - dt.timedelta(days=365), batch=1)
    assert (purged.feedback, purged.queries) == (1, 2)
    assert not store.has_query(old_answer.query_id) and not store.has_query(old_unrated.query_id)
    assert store.has_query(old_with_new_feedback.query_id) and store.has_query(new_answer.query_id)
    assert store.counts() == Counts(up=2)


def test_the_training_window_pages_through_every_row_once(store: FeedbackStore) -> None:
    records = [answer(question=f"q{i}") for i in range(23)]
    for i, r in enumerate(records):
        store.record_answer(r)
        store.add_feedback(vote(r.query_id, f"k{i}", "up" if i % 2 else "down"))
    rows = list(store.feedback_window(page=5))
    assert len(rows) == 23 and len({r.feedback_id for r in rows}) == 23
    assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)
    assert {r.question for r in rows} == {f"q{i}" for i in range(23)}
    assert rows[0].prompt == records[0].prompt and rows[0].cited == ["c1"]
    middle = rows[10].created_at
    later = list(store.feedback_window(since=middle, page=4))
    assert [r.feedback_id for r in later] == [r.feedback_id for r in rows if r.created_at >= middle]
    assert list(store.feedback_window(until=rows[0].created_at)) == []


def test_an_unreachable_store_raises_store_unavailable() -> None:
    store = FeedbackStore.open(f"postgresql://u:p@127.0.0.1:{free_port()}/db", deployment="a/b")
    try:
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.add_feedback(vote(uuid.uuid4(), "k"))
        with pytest.raises(StoreUnavailable):
            store.record_answer(answer())
        with pytest.raises(StoreUnavailable):
            store.counts()
    finally:
        store.close()
