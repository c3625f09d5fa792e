"""contextlm.alignment: the run logic the operator and `contextlm align` share (the
trigger with its schedule, run names, the gate's verdict and the revision history)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contextlm.alignment import (
    check_trigger,
    decide,
    last_scheduled,
    run_name,
    schedule_due,
    serving_revision,
    window_until,
    with_revision,
)
from contextlm.api.aligned_model import Alignment, Revision
from contextlm.api.alignment_run import AlignmentRunSpec


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


def alignment(**trigger: object) -> Alignment:
    return Alignment.model_validate({"trigger": trigger})


NOW = at("2026-11-28T10:00:30")


def test_min_feedback_fires_the_trigger() -> None:
    settings = alignment(minFeedback=10)
    assert check_trigger(settings, fresh=10, last_start=None, at=NOW).due
    waiting = check_trigger(settings, fresh=7, last_start=None, at=NOW)
    assert not waiting.due and "3 more" in waiting.reason


def test_a_schedule_fires_below_min_feedback_only_with_new_rows() -> None:
    settings = alignment(minFeedback=1000, schedule="0 * * * *")
    after_last_hour = "2026-11-28T09:30:00Z"
    check = check_trigger(settings, fresh=4, last_start=after_last_hour, at=NOW)
    assert check.due and "scheduled at 2026-11-28T10:00:00Z" in check.reason
    assert not check_trigger(settings, fresh=0, last_start=after_last_hour, at=NOW).due
    # the 10:00 run already started: the next one is at 11:00
    assert not check_trigger(settings, fresh=4, last_start="2026-11-28T10:00:05Z", at=NOW).due
    disabled = Alignment.model_validate({"enabled": False, "trigger": {"minFeedback": 1}})
    assert not check_trigger(disabled, fresh=50, last_start=None, at=NOW).due


def test_runs_are_named_after_their_window_and_windows_end_to_the_microsecond() -> None:
    assert run_name("m", None) == run_name("m", None) != run_name("m", "2026-11-28T10:00:00Z")
    assert run_name("m", None).startswith("m-") and len(run_name("m", None)) == 2 + 8
    assert window_until(at("2026-11-28T10:00:30.123456")) == "2026-11-28T10:00:30.123456Z"


def gate(decision: str, candidate: float, baseline: float) -> dict[str, object]:
    return {"metric": "preference-accuracy", "candidateScore": candidate,
            "baselineScore": baseline, "minImprovement": 0.1, "decision": decision}  # fmt: skip


SPEC = AlignmentRunSpec.model_validate({"modelRef": {"name": "m"}})


@pytest.mark.parametrize(
    ("decision", "promote", "phase", "reason"),
    [
        ("Promote", True, "Promoted", "GatePassed"),
        ("Reject", True, "Rejected", "GateFailed"),
        ("Promote", False, "Rejected", "DryRun"),  # promote: false only evaluates
    ],
)
def test_the_gate_decides_the_phase_and_records_both_scores(
    decision: str, promote: bool, phase: str, reason: str
) -> None:
    spec = SPEC.model_copy(update={"promote": promote})
    verdict = decide(gate(decision, 0.8, 0.5), run="m-1", run_spec=spec, base_revision="base",
                     output_revision="r1", created="2026-11-28T10:00:00Z")  # fmt: skip
    assert (verdict.phase, verdict.reason) == (phase, reason)
    assert verdict.revision.promoted is (phase == "Promoted")
    assert verdict.revision.scores == {"candidate": 0.8, "baseline": 0.5}
    assert "candidate 0.8000 vs serving 0.5000" in verdict.message


def test_history_keeps_each_revision_once_and_serves_the_newest_promoted() -> None:
    def rev(i: int, promoted: bool) -> Revision:
        return Revision(id=f"r{i}", created=f"2026-11-{i:02d}T00:00:00Z", promoted=promoted)

    history: list[Revision] = []
    for i in range(1, 26):
        history = with_revision(history, rev(i, promoted=i % 2 == 0))
    history = with_revision(history, rev(25, promoted=False))
    assert len(history) == 20 and [r.id for r in history].count("r25") == 1
    assert serving_revision(history, "base") == "r24"
    assert serving_revision([rev(1, False)], "base") == "base"
