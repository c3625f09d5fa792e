"""The five top-level kinds and what the CRD generator needs to know about each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .aligned_model import AlignedModelSpec, AlignedModelStatus
from .alignment_run import AlignmentRunSpec, AlignmentRunStatus
from .common import ObjectMeta
from .contextual_deployment import ContextualDeploymentSpec, ContextualDeploymentStatus
from .corpus import CorpusSpec, CorpusStatus
from .retrieval_stack import RetrievalStackSpec, RetrievalStackStatus


class _Object(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["contextlm.io/v1alpha1"] = Field(
        default="contextlm.io/v1alpha1", alias="apiVersion"
    )
    metadata: ObjectMeta


class Corpus(_Object):
    """A document collection, synced into immutable, content-addressed snapshots."""

    kind: Literal["Corpus"] = "Corpus"
    spec: CorpusSpec
    status: CorpusStatus | None = None


class RetrievalStack(_Object):
    """Dense and sparse indexes over a Corpus and the hybrid retrieval service."""

    kind: Literal["RetrievalStack"] = "RetrievalStack"
    spec: RetrievalStackSpec
    status: RetrievalStackStatus | None = None


class AlignedModel(_Object):
    """A language model served on GPUs (or CPU) that is aligned on user feedback."""

    kind: Literal["AlignedModel"] = "AlignedModel"
    spec: AlignedModelSpec
    status: AlignedModelStatus | None = None


class ContextualDeployment(_Object):
    """Retrieval and a model behind one gateway that answers with citations."""

    kind: Literal["ContextualDeployment"] = "ContextualDeployment"
    spec: ContextualDeploymentSpec
    status: ContextualDeploymentStatus | None = None


class AlignmentRun(_Object):
    """One retraining of an AlignedModel on feedback, gated by evaluation."""

    kind: Literal["AlignmentRun"] = "AlignmentRun"
    spec: AlignmentRunSpec
    status: AlignmentRunStatus | None = None


Resource = Corpus | RetrievalStack | AlignedModel | ContextualDeployment | AlignmentRun


@dataclass(frozen=True)
class Column:
    """An additionalPrinterColumn."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class Scale:
    """Paths of the scale subresource (so an autoscaler or `kubectl scale` can own replicas)."""

    spec_replicas: str
    status_replicas: str = ".status.replicas"
    label_selector: str = ".status.selector"


PHASE = Column("Phase", ".status.phase", description="Summary of the conditions.")
READY = Column("Ready", '.status.conditions[?(@.type=="Ready")].status')
AGE = Column("Age", ".metadata.creationTimestamp", type="date")


@dataclass(frozen=True)
class Kind:
    """A top-level kind: its model and its CRD naming."""

    model: type[BaseModel]
    plural: str
    short_names: tuple[str, ...]
    columns: tuple[Column, ...]
    scale: Scale | None = None
    categories: tuple[str, ...] = field(default=("contextlm",))

    @property
    def name(self) -> str:
        return str(self.model.model_fields["kind"].default)

    @property
    def singular(self) -> str:
        return self.name.lower()


KINDS: tuple[Kind, ...] = (
    Kind(
        Corpus,
        plural="corpora",
        short_names=("corp",),
        columns=(
            PHASE,
            READY,
            Column("Snapshot", ".status.snapshotId", description="Latest snapshot id."),
            Column("Documents", ".status.documents", type="integer"),
            Column("Chunks", ".status.chunks", type="integer"),
            AGE,
        ),
    ),
    Kind(
        RetrievalStack,
        plural="retrievalstacks",
        short_names=("rstack",),
        columns=(
            PHASE,
            READY,
            Column("Corpus", ".spec.corpusRef.name"),
            Column("Index", ".status.servingIndexVersion", description="Served index version."),
            Column("Built", ".status.builtIndexVersion", priority=1),
            AGE,
        ),
        scale=Scale(".spec.serving.replicas"),
    ),
    Kind(
        AlignedModel,
        plural="alignedmodels",
        short_names=("amodel",),
        columns=(
            PHASE,
            READY,
            Column("Engine", ".spec.serving.engine"),
            Column("Revision", ".status.servingRevision", description="Serving revision."),
            Column("Candidate", ".status.candidateRevision", priority=1),
            AGE,
        ),
        scale=Scale(".spec.serving.replicas"),
    ),
    Kind(
        ContextualDeployment,
        plural="contextualdeployments",
        short_names=("cdep",),
        columns=(
            PHASE,
            READY,
            Column("Index", ".status.indexVersion"),
            Column("Revision", ".status.modelRevision"),
            Column("Endpoint", ".status.endpoint", priority=1),
            AGE,
        ),
        scale=Scale(".spec.gateway.replicas"),
    ),
    Kind(
        AlignmentRun,
        plural="alignmentruns",
        short_names=("arun",),
        columns=(
            Column("Model", ".spec.modelRef.name"),
            Column("Method", ".spec.method"),
            PHASE,
            Column("Output", ".status.outputRevision", description="Produced revision."),
            Column("Candidate", ".status.gate.candidateScore", type="number", priority=1),
            Column("Baseline", ".status.gate.baselineScore", type="number", priority=1),
            AGE,
        ),
    ),
)

KIND_BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
