"""The AlignedModel trigger's schedule: due once per scheduled time after the last run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contextlm_operator.reconcile.alignment_trigger import last_scheduled, schedule_due


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        ("0 3 * * *", "2026-11-28T02:59:00", "2026-11-27T03:00:00"),
        ("0 3 * * *", "2026-11-28T03:00:00", "2026-11-28T03:00:00"),
        ("*/15 * * * *", "2026-11-28T10:44:59", "2026-11-28T10:30:00"),
        ("0 0 * * 1", "2026-11-28T12:00:00", "2026-11-23T00:00:00"),  # Monday before
        ("@daily", "2026-11-28T12:00:00", "2026-11-28T00:00:00"),
    ],
)
def test_the_latest_scheduled_time(schedule: str, now: str, expected: str) -> None:
    assert last_scheduled(schedule, at(now)) == at(expected)


def test_a_schedule_is_due_once_per_time_after_the_last_run() -> None:
    nightly = "0 3 * * *"
    last_run = at("2026-11-27T03:00:05")  # the run the 03:00 time opened
    assert not schedule_due(nightly, last_start=last_run, at=at("2026-11-27T15:00:00"))
    assert not schedule_due(nightly, last_start=last_run, at=at("2026-11-28T02:59:59"))
    assert schedule_due(nightly, last_start=last_run, at=at("2026-11-28T03:00:00"))
    assert schedule_due(nightly, last_start=last_run, at=at("2026-11-30T09:00:00"))


def test_no_schedule_is_never_due() -> None:
    assert not schedule_due(
        None, last_start=at("2020-01-01T00:00:00"), at=at("2026-11-28T00:00:00")
    )
