"""The AlignmentRun's logic that does not depend on where it runs.

When the trigger fires, what a run is called, the config of each step (export, train,
evaluate) and what the gate's result means for the run and for the model's revision
history. The operator (Jobs in a cluster) and `contextlm align` (processes on one
machine) both use this module, so a run means the same thing in both places; they
differ only in how a step runs and where its files live.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from .api.aligned_model import AlignedModelSpec, Alignment, Revision
from .api.alignment_run import AlignmentRunSpec, GateDecision, RunPhase
from .api.common import parse_time
from .api.conditions import Reason
from .api.contextual_deployment import ContextualDeploymentSpec
from .runtime.config import EvaluateConfig, ExportConfig, FeedbackSource, TrainConfig
from .runtime.store import StoreConfig

EXPORT, TRAIN, EVALUATE = "export", "train", "evaluate"
STEPS = (EXPORT, TRAIN, EVALUATE)
FINAL: tuple[RunPhase, ...] = ("Promoted", "Rejected", "Failed")
MAX_HISTORY = 20  # revisions kept in an AlignedModel's status


def run_name(model: str, since: str | None) -> str:
    """A triggered run is named after the start of its window: a repeated check opens
    the same run, never a second one."""
    text = json.dumps([since or "start"], sort_keys=True, separators=(",", ":"))
    return f"{model}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def window_until(at: datetime | None = None) -> str:
    """The end of a triggered window, to the microsecond: the next window starts there,
    and a row recorded later in the same second must not be left for a run of its own."""
    moment = at or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# The trigger ------------------------------------------------------------------------


def last_scheduled(schedule: str, at: datetime) -> datetime:
    """The latest time at or before `at` that the cron schedule names (UTC)."""
    from croniter import croniter

    # get_prev is strictly before its start: start a second later to include `at` itself.
    latest: datetime = croniter(schedule, at + timedelta(seconds=1)).get_prev(datetime)
    return latest


def schedule_due(schedule: str | None, *, last_start: datetime, at: datetime) -> bool:
    """Whether a scheduled time passed since `last_start`."""
    return schedule is not None and last_scheduled(schedule, at) > last_start


@dataclass(frozen=True)
class TriggerCheck:
    due: bool
    reason: str


def check_trigger(
    alignment: Alignment, *, fresh: int, last_start: str | None, at: datetime
) -> TriggerCheck:
    """Whether a run opens now, given the feedback rows since the last run (`fresh`) and
    when the last run started (or the model was created, before any run).

    A run opens as soon as `minFeedback` rows arrived; with a `schedule`, also at each
    scheduled time when any arrived. A scheduled time fires at most once: it is due only
    when it is later than the last run's start."""
    trigger = alignment.trigger
    need = trigger.min_feedback
    if not alignment.enabled:
        return TriggerCheck(False, "alignment.enabled is false for this AlignedModel")
    if fresh >= need:
        return TriggerCheck(True, f"{fresh} new feedback rows (minFeedback {need})")
    if (
        fresh > 0
        and last_start is not None
        and schedule_due(trigger.schedule, last_start=parse_time(last_start), at=at)
    ):
        assert trigger.schedule is not None
        when = last_scheduled(trigger.schedule, at).strftime("%Y-%m-%dT%H:%M:%SZ")
        return TriggerCheck(True, f"scheduled at {when} ({trigger.schedule}), {fresh} new rows")
    waiting = f" or the next time of schedule {trigger.schedule!r}" if trigger.schedule else ""
    return TriggerCheck(
        False,
        f"{fresh} feedback rows since the last run, the trigger needs {need}"
        f" (alignment.trigger.minFeedback): {need - fresh} more{waiting}",
    )


# The steps --------------------------------------------------------------------------


def run_alignment(model: AlignedModelSpec, run: AlignmentRunSpec) -> Alignment:
    """The model's alignment settings with the run's overrides."""
    alignment = model.alignment.model_copy(deep=True)
    if run.method:
        alignment.method = run.method
    return alignment


@dataclass(frozen=True)
class Paths:
    """Where a step's files live: a pod's volumes, or the embedded data directory."""

    work_dir: str
    cache_dir: str
    evaluation_set: str | None = None  # the evaluation ConfigMap's files


def step_config(
    step: str,
    *,
    namespace: str,
    run: str,
    run_spec: AlignmentRunSpec,
    model_spec: AlignedModelSpec,
    deployment: ContextualDeploymentSpec,
    feedback: FeedbackSource,
    base_revision: str,
    candidate: str | None,
    retriever_url: str | None,
    store: StoreConfig,
    paths: Paths,
) -> BaseModel:
    """The config of one step of a run."""
    alignment = run_alignment(model_spec, run_spec)
    common: dict[str, Any] = {
        "namespace": namespace,
        "model": run_spec.model_ref.name,
        "run": run,
        "store": store,
    }
    if step == EXPORT:
        window = run_spec.feedback_window
        return ExportConfig(
            **common,
            feedback=feedback,
            since=window.since,
            until=window.until,
            since_last_run=window.since is None,
            held_out_fraction=model_spec.alignment.evaluation.held_out_fraction,
        )
    serving = model_spec.serving
    if step == TRAIN:
        return TrainConfig(
            **common,
            base_model=model_spec.base.model,
            base_revision=base_revision,
            alignment=alignment,
            max_steps=run_spec.max_steps,
            merge=serving.engine == "tensorrt-llm",  # TensorRT-LLM builds from full weights
            max_length=min(serving.max_input_length + serving.max_output_length, 4096),
            work_dir=f"{paths.work_dir}/train",
            cache_dir=paths.cache_dir,
        )
    if step != EVALUATE:
        raise ValueError(f"unknown step {step!r}")
    assert candidate is not None
    with_dataset = model_spec.alignment.evaluation.dataset is not None
    return EvaluateConfig(
        **common,
        base_model=model_spec.base.model,
        candidate_revision=candidate,
        baseline_revision=base_revision,
        alignment=alignment,
        evaluation_set=paths.evaluation_set if with_dataset else None,
        retriever_url=retriever_url if with_dataset else None,
        prompt=deployment.prompt,
        max_new_tokens=deployment.prompt.max_tokens,
        cache_dir=paths.cache_dir,
    )


# The decision -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What a finished evaluation means: the run's final phase and condition, its gate
    status, and the revision to record in the model's history."""

    phase: RunPhase
    reason: str
    message: str
    gate: GateDecision
    revision: Revision


def decide(
    result: dict[str, Any],
    *,
    run: str,
    run_spec: AlignmentRunSpec,
    base_revision: str | None,
    output_revision: str,
    created: str,
) -> Verdict:
    """Promote only a passed gate of a run that may promote; record both scores."""
    gate = GateDecision(
        metric=result["metric"],
        candidate_score=float(result["candidateScore"]),
        baseline_score=float(result["baselineScore"]),
        min_improvement=float(result["minImprovement"]),
        decision=result["decision"],
    )
    promote = gate.decision == "Promote" and run_spec.promote
    message = (
        f"{gate.metric}: candidate {gate.candidate_score:.4f} vs serving"
        f" {gate.baseline_score:.4f} (needs +{gate.min_improvement})"
    )
    if promote:
        phase: RunPhase = "Promoted"
        reason = Reason.GATE_PASSED
    else:
        phase = "Rejected"
        reason = Reason.GATE_FAILED if gate.decision == "Reject" else Reason.DRY_RUN
    revision = Revision(
        id=output_revision,
        parent=base_revision,
        alignment_run=run,
        created=created,
        scores={"candidate": gate.candidate_score, "baseline": gate.baseline_score},
        promoted=promote,
    )
    return Verdict(phase, reason, message, gate, revision)


def with_revision(history: list[Revision], revision: Revision) -> list[Revision]:
    """The model's history with `revision` recorded (once) and only the newest kept."""
    kept = [r for r in history if r.id != revision.id]
    return [*kept, revision][-MAX_HISTORY:]


def serving_revision(history: list[Revision], base_revision: str) -> str:
    """The newest promoted revision in the history, else the spec's base revision."""
    promoted = [r for r in history if r.promoted]
    if promoted:
        return max(promoted, key=lambda r: r.created).id
    return base_revision
