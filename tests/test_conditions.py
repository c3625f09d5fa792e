"""Conditions: transitions keep their time, False transitions are reported, phases derive."""

from __future__ import annotations

from contextlm.api import conditions as c


def test_merge_keeps_transition_time_and_reports_new_false() -> None:
    first, false1 = c.merge([], [c.condition(c.READY, False, c.Reason.JOB_PENDING, "x")], 1)
    assert [f["reason"] for f in false1] == [c.Reason.JOB_PENDING]
    again, false2 = c.merge(first, [c.condition(c.READY, False, c.Reason.JOB_PENDING, "x")], 1)
    assert again == first and false2 == []
    failed, false3 = c.merge(first, [c.condition(c.READY, False, c.Reason.JOB_FAILED, "y")], 2)
    assert [f["reason"] for f in false3] == [c.Reason.JOB_FAILED]
    assert failed[0]["observedGeneration"] == 2
    ok, false4 = c.merge(failed, [c.condition(c.READY, True, c.Reason.AVAILABLE)], 2)
    assert false4 == [] and ok[0]["status"] == "True"


def test_phase_derives_from_conditions() -> None:
    ready = [c.condition(c.READY, True, c.Reason.AVAILABLE)]
    failed = [c.condition(c.READY, False, c.Reason.JOB_FAILED)]
    waiting = [c.condition(c.DEPENDENCIES_READY, False, c.Reason.CORPUS_NOT_READY)]
    running = [c.condition(c.SYNCED, None, c.Reason.JOB_RUNNING)]
    assert c.phase(ready) == "Ready"
    assert c.phase(failed) == "Failed"
    assert c.phase(waiting) == "Waiting"
    assert c.phase(running, progressing="Syncing") == "Syncing"
