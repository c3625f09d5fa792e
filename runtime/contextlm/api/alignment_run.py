"""AlignmentRun: one retraining of an AlignedModel on a window of feedback."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from .aligned_model import REVISION, AlignmentMethod, GateMetric
from .common import LocalObjectReference, Model, Rule, StatusBase, Timestamp, immutable, parse_time

RunPhase = Literal["Pending", "Training", "Evaluating", "Promoted", "Rejected", "Failed"]


class FeedbackWindow(Model):
    """Which feedback the run learns from; empty bounds are open."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.since) || !has(self.until) || self.since < self.until",
            message="since must be before until",
            field="since",
            check=lambda s: (
                s.since is None or s.until is None or parse_time(s.since) < parse_time(s.until)
            ),
        ),
    )

    since: Timestamp | None = Field(
        default=None,
        description="Feedback recorded at or after this time (RFC 3339).",
    )
    until: Timestamp | None = Field(
        default=None,
        description="Feedback recorded before this time (RFC 3339).",
    )


class AlignmentRunSpec(Model):
    """A retraining request; immutable once created (a run is a record)."""

    model_config = ConfigDict(json_schema_extra=immutable("spec"))

    model_ref: LocalObjectReference = Field(description="The AlignedModel to retrain.")
    method: AlignmentMethod | None = Field(
        default=None, description="Alignment method; empty uses the AlignedModel's."
    )
    base_revision: str | None = Field(
        default=None,
        max_length=128,
        pattern=REVISION,
        description="Revision to train from; empty uses the model's serving revision.",
    )
    feedback_window: FeedbackWindow = Field(
        default_factory=FeedbackWindow, description="Feedback to learn from."
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Override of the model's maxSteps."
    )
    promote: bool = Field(
        default=True,
        description="Promote when the gate passes; false only evaluates (a dry run).",
    )


class DatasetCounts(Model):
    """What the exported dataset held."""

    desirable: int = Field(default=0, ge=0, description="Thumbs-up rows.")
    undesirable: int = Field(default=0, ge=0, description="Thumbs-down rows.")
    pairs: int = Field(default=0, ge=0, description="Correction pairs.")
    held_out: int = Field(default=0, ge=0, description="Rows kept for evaluation.")
    duplicates_dropped: int = Field(default=0, ge=0, description="Duplicates removed.")


class GateDecision(Model):
    """The promotion gate's verdict, with both scores."""

    metric: GateMetric = Field(description="Metric compared.")
    candidate_score: float = Field(description="Score of the trained revision.")
    baseline_score: float = Field(description="Score of the serving revision.")
    min_improvement: float = Field(ge=0.0, le=1.0, description="Margin required.")
    decision: Literal["Promote", "Reject"] = Field(description="Verdict.")


class AlignmentRunStatus(StatusBase):
    """Where the run is and what it produced."""

    phase: RunPhase | None = Field(default=None, description="Lifecycle phase.")
    base_revision: str | None = Field(default=None, max_length=128, description="Trained from.")
    output_revision: str | None = Field(
        default=None, max_length=128, description="Revision the run produced."
    )
    dataset: DatasetCounts | None = Field(default=None, description="Exported dataset.")
    train_loss: float | None = Field(default=None, description="Final training loss.")
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps taken.")
    gate: GateDecision | None = Field(default=None, description="Promotion decision.")
    start_time: Timestamp | None = Field(
        default=None,
        description="When training started.",
    )
    completion_time: Timestamp | None = Field(
        default=None,
        description="When the run ended.",
    )
