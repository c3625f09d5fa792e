"""The contextlm resource API (group contextlm.io, version v1alpha1).

The models here are the single source of truth: the CRDs in crds/ are generated from
them by `contextlm crds`, and the operator and runtime read resources through them.
"""

from .aligned_model import AlignedModelSpec, AlignedModelStatus
from .alignment_run import AlignmentRunSpec, AlignmentRunStatus
from .common import API_VERSION, GROUP, VERSION, Condition
from .contextual_deployment import ContextualDeploymentSpec, ContextualDeploymentStatus
from .corpus import CorpusSpec, CorpusStatus
from .resources import (
    KIND_BY_NAME,
    KINDS,
    AlignedModel,
    AlignmentRun,
    ContextualDeployment,
    Corpus,
    Kind,
    Resource,
    RetrievalStack,
)
from .retrieval_stack import RetrievalStackSpec, RetrievalStackStatus
from .validation import FieldError, InvalidResource, validate_manifest

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "KIND_BY_NAME",
    "VERSION",
    "AlignedModel",
    "AlignedModelSpec",
    "AlignedModelStatus",
    "AlignmentRun",
    "AlignmentRunSpec",
    "AlignmentRunStatus",
    "Condition",
    "ContextualDeployment",
    "ContextualDeploymentSpec",
    "ContextualDeploymentStatus",
    "Corpus",
    "CorpusSpec",
    "CorpusStatus",
    "FieldError",
    "InvalidResource",
    "Kind",
    "Resource",
    "RetrievalStack",
    "RetrievalStackSpec",
    "RetrievalStackStatus",
    "validate_manifest",
]
