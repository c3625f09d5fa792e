"""`contextlm export`: feedback windows become KTO rows and correction pairs, de-duplicated,
split by query id, with counts; against SQLite and a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alignment_support import ListSource, feedback_row, thumbs_stream
from feedback_helpers import answer, fresh_postgres, fresh_sqlite, open_migrated
from servers import PostgresServer

from contextlm.runtime.config import ExportConfig, FeedbackSource
from contextlm.runtime.feedback.export import (
    build_dataset,
    dataset_prefix,
    export,
    is_held_out,
    last_window_end,
    read_jsonl,
)
from contextlm.runtime.feedback.store import FeedbackInput, FeedbackStore
from contextlm.runtime.store import LocalStore, StoreConfig

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_thumbs_become_kto_rows_and_corrections_become_pairs() -> None:
    rows = [
        feedback_row(prompt="P1", answer="A1", rating="up", at=at(1)),
        feedback_row(prompt="P2", answer="A2", rating="down", at=at(2), correction="C2"),
        feedback_row(prompt="P3", answer="A3", rating="down", at=at(3)),
    ]
    data = build_dataset(rows, held_out_fraction=0.0)
    assert [(r["prompt"], r["completion"], r["label"]) for r in data.kto_train] == [
        ("P1", "A1", True),
        ("P2", "A2", False),
        ("P3", "A3", False),
    ]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in data.pairs_train] == [
        ("P2", "C2", "A2")
    ]
    assert data.kto_train[1]["queryId"] == str(rows[1].query_id)
    assert data.counts.status() == {
        "desirable": 1,
        "undesirable": 2,
        "pairs": 1,
        "heldOut": 0,
        "duplicatesDropped": 0,
    }


def test_duplicates_are_dropped_and_the_latest_verdict_on_an_answer_stands() -> None:
    first = feedback_row(prompt="P", answer="A", rating="up", at=at(1))
    changed_mind = feedback_row(prompt="P", answer="A", rating="down", at=at(5), correction="B")
    changed_mind = dataclasses.replace(changed_mind, query_id=first.query_id)
    same_content = feedback_row(prompt="Q", answer="X", rating="up", at=at(2))
    again = feedback_row(prompt="Q", answer="X", rating="up", at=at(3))  # another user, same answer
    same_pair = feedback_row(prompt="R", answer="Y", rating="down", at=at(4), correction="Z")
    same_pair_again = feedback_row(
        prompt="R", answer="Y", rating="down", at=at(6), correction=" Z "
    )
    no_change = feedback_row(prompt="S", answer="W", rating="down", at=at(7), correction="W")
    data = build_dataset(
        [first, same_content, again, same_pair, changed_mind, same_pair_again, no_change],
        held_out_fraction=0.0,
    )
    kto = [(r["prompt"], r["completion"], r["label"]) for r in data.kto_train]
    assert kto == [("Q", "X", True), ("R", "Y", False), ("P", "A", False), ("S", "W", False)]
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in data.pairs_train]
    assert pairs == [("R", "Z", "Y"), ("P", "B", "A")]
    # the overruled verdict on P, the second Q row, the second R thumbs row and R pair
    assert data.counts.duplicates_dropped == 4


def test_the_held_out_split_is_a_stable_function_of_the_query_id() -> None:
    rows = thumbs_stream(400, seed=3)
    data = build_dataset(rows, held_out_fraction=0.25)
    held = {r["queryId"] for r in data.kto_heldout}
    assert held == {str(r.query_id) for r in rows if is_held_out(r.query_id, 0.25)}
    assert 0.18 < len(held) / len(rows) < 0.32
    # a second export of a wider window agrees on every answer it shares
    wider = build_dataset(rows + thumbs_stream(50, seed=4), held_out_fraction=0.25)
    assert held <= {r["queryId"] for r in wider.kto_heldout}
    assert data.counts.held_out == len(held)
    assert data.counts.train_desirable + data.counts.train_undesirable == len(data.kto_train)


def test_a_pair_and_its_thumbs_row_land_on_the_same_side() -> None:
    rows = [
        feedback_row(prompt=f"P{i}", answer="bad", rating="down", at=at(i), correction=f"good {i}")
        for i in range(200)
    ]
    data = build_dataset(rows, held_out_fraction=0.3)
    assert {r["queryId"] for r in data.kto_heldout} == {r["queryId"] for r in data.pairs_heldout}
    assert data.counts.held_out == len(data.kto_heldout) + len(data.pairs_heldout)


def config(tmp_path: Path, **overrides: object) -> ExportConfig:
    values: dict[str, object] = {
        "namespace": "team",
        "model": "assistant",
        "run": "assistant-1",
        "feedback": FeedbackSource(
            backend="sqlite", sqlite_path=str(tmp_path / "f.db"), deployment="team/docs"
        ),
        "store": StoreConfig(kind="local", path=str(tmp_path / "store")),
        "held_out_fraction": 0.2,
    }
    values.update(overrides)
    return ExportConfig.model_validate(values)


def test_export_publishes_files_then_the_manifest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    rows = thumbs_stream(60, seed=1)
    result = export(config(tmp_path, until=at(10**9)), store, rows_source=ListSource(rows))
    prefix = dataset_prefix("team", "assistant", "assistant-1")
    assert result["datasetPrefix"] == prefix
    manifest = store.manifest(prefix)
    assert manifest is not None and manifest["counts"] == result["dataset"]
    train = read_jsonl(store, f"{prefix}/kto-train.jsonl")
    held = read_jsonl(store, f"{prefix}/kto-heldout.jsonl")
    assert len(train) + len(held) == 60 and len(held) == result["dataset"]["heldOut"]
    assert manifest["files"]["kto-train.jsonl"]["rows"] == len(train)
    assert read_jsonl(store, f"{prefix}/pairs-train.jsonl") == []


def test_the_next_export_starts_where_the_last_window_ended(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    rows = thumbs_stream(30, seed=2)  # one row a second from 2025-01-01
    cut = rows[19].created_at + dt.timedelta(milliseconds=1)
    first = export(config(tmp_path, until=cut), store, rows_source=ListSource(rows))
    assert first["since"] is None
    assert first["dataset"]["desirable"] + first["dataset"]["undesirable"] == 20
    assert last_window_end(store, "team", "assistant") == cut
    second = export(
        config(tmp_path, run="assistant-2", until=at(10**9)), store, rows_source=ListSource(rows)
    )
    assert second["since"] == cut.isoformat()
    assert second["dataset"]["desirable"] + second["dataset"]["undesirable"] == 10


def _record(
    store: FeedbackStore, *, prompt: str, text: str, rating: str, correction: str | None = None
) -> uuid.UUID:
    record = answer(prompt=prompt, answer=text)
    store.record_answer(record)
    store.add_feedback(
        FeedbackInput(
            query_id=record.query_id,
            rating=rating,
            idempotency_key=str(uuid.uuid4()),
            correction=correction,
        )
    )
    return record.query_id


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_export_command_reads_the_feedback_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = fresh_postgres(server)
        source = FeedbackSource(
            backend="postgres", dsn_env="TEST_FEEDBACK_DSN", deployment="team/docs"
        )
    else:
        dsn = fresh_sqlite(tmp_path)
        source = FeedbackSource(
            backend="sqlite", sqlite_path=dsn.removeprefix("sqlite:///"), deployment="team/docs"
        )
    store = open_migrated(dsn, deployment="team/docs")
    other = FeedbackStore(store.engine, deployment="team/other")
    try:
        _record(store, prompt="<p1>", text="right [1]", rating="up")
        _record(store, prompt="<p2>", text="wrong [2]", rating="down", correction="right [1]")
        _record(store, prompt="<p3>", text="wrong [3]", rating="down")
        _record(other, prompt="<x>", text="not ours", rating="up")  # another deployment's
    finally:
        store.close()
    cfg = config(tmp_path, feedback=source, held_out_fraction=0.0)
    cfg_path = tmp_path / "export.json"
    cfg_path.write_text(cfg.model_dump_json())
    termination = tmp_path / "termination"
    env = {"TEST_FEEDBACK_DSN": dsn, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "contextlm.cli",
            "export",
            "--config",
            str(cfg_path),
            "--termination-log",
            str(termination),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(termination.read_text()) == result
    assert result["dataset"] == {
        "desirable": 1,
        "undesirable": 2,
        "pairs": 1,
        "heldOut": 0,
        "duplicatesDropped": 0,
    }
    local = LocalStore(tmp_path / "store")
    pairs = read_jsonl(local, f"{result['datasetPrefix']}/pairs-train.jsonl")
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("<p2>", "right [1]", "wrong [2]")
    ]
