"""Shared pieces of the feedback store and gateway tests: fresh databases on the real
PostgreSQL of the session (or an SQLite file), and answer records to give feedback on."""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

import psycopg
from servers import PostgresServer

from contextlm.runtime.feedback.migrate import upgrade
from contextlm.runtime.feedback.store import AnswerRecord, FeedbackStore, sqlite_dsn

_names = itertools.count()


def fresh_postgres(server: PostgresServer) -> str:
    """A new, empty database on the session's server; its DSN (as users write it)."""
    name = f"fb_{os.getpid()}_{next(_names)}"
    admin = server.dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.dsn.rsplit("/", 1)[0] + f"/{name}"


def fresh_sqlite(tmp: Path) -> str:
    return sqlite_dsn(str(tmp / f"feedback-{next(_names)}.db"))


def open_migrated(dsn: str, deployment: str = "default/docs", pool_size: int = 8) -> FeedbackStore:
    store = FeedbackStore.open(dsn, deployment=deployment, pool_size=pool_size)
    upgrade(store.engine)
    return store


def answer(**overrides: object) -> AnswerRecord:
    values: dict[str, object] = {
        "query_id": uuid.uuid4(),
        "question": "How tall is Jupiter?",
        "prompt": "<system>cite</system>\n[1] (source: s3://a) Jupiter is big.\nQuestion: ?",
        "answer": "Very big [1].",
        "retrieved": [
            {"chunk_id": "c1", "doc_id": "a.md", "uri": "s3://a", "rank": 1, "score": 0.9, "n": 1}
        ],
        "cited": ["c1"],
        "model_revision": "rev-1",
        "index_version": "idx-1",
        "finish_reason": "stop",
        "latency_ms": 12.5,
        "prompt_tokens": 40,
        "completion_tokens": 5,
    }
    values.update(overrides)
    return AnswerRecord(**values)  # type: ignore[arg-type]
