"""ContextualDeployment: the system that binds retrieval and a model into one endpoint."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import (
    Autoscaling,
    LocalObjectReference,
    Model,
    Placement,
    ResourceRequirements,
    Rule,
    ScaledStatus,
    SecretKeySelector,
    immutable,
)

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using only the numbered context passages. Cite every claim with"
    " the passage number in square brackets, like [1]. If the context does not contain the"
    " answer, say that you do not know."
)
DEFAULT_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"


class PromptSpec(Model):
    """How the prompt is built from the question and the retrieved chunks."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.template.contains('{context}') && self.template.contains('{question}')",
            message="template must contain the placeholders {context} and {question}",
            field="template",
            check=lambda s: "{context}" in s.template and "{question}" in s.template,
        ),
    )

    system: str = Field(
        default=DEFAULT_SYSTEM_PROMPT, max_length=16384, description="System prompt."
    )
    template: str = Field(
        default=DEFAULT_TEMPLATE,
        min_length=1,
        max_length=16384,
        description="User turn; {context} becomes the numbered chunks, {question} the query.",
    )
    max_context_tokens: int = Field(
        default=2048,
        ge=64,
        le=262144,
        description="Token budget for the context chunks; chunks that do not fit are dropped"
        " lowest-ranked first. Must leave room within the model's maxInputLength.",
    )
    max_chunks: int = Field(default=8, ge=1, le=100, description="Most chunks in a prompt.")
    citations: bool = Field(
        default=True, description="Map [n] markers in the answer to their sources."
    )
    temperature: float = Field(default=0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(default=512, ge=1, le=65536, description="Most tokens generated.")


class GatewayAuth(Model):
    """API-key authentication of the gateway."""

    secret_ref: SecretKeySelector = Field(
        description="Secret key holding the API key clients send as a Bearer token."
    )


class GatewaySpec(Placement):
    """The gateway Deployment."""

    replicas: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Replicas; ignored while autoscaling is set (the autoscaler owns them).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Per-replica resources."
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Autoscale on CPU.")
    auth: GatewayAuth | None = Field(default=None, description="Require an API key.")


class PostgresStore(Model):
    """A PostgreSQL feedback store."""

    secret_ref: SecretKeySelector = Field(
        description="Secret key holding the connection URL"
        " (postgresql://user:password@host:5432/db)."
    )


class FeedbackStore(Model):
    """Where feedback is kept."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.backend == 'postgres') == has(self.postgres)",
            message="postgres must be set exactly when backend is postgres",
            field="postgres",
            check=lambda s: (s.backend == "postgres") == (s.postgres is not None),
        ),
    )

    backend: Literal["postgres", "sqlite"] = Field(
        default="sqlite",
        description="postgres for clusters; sqlite (embedded, one writer) for a single"
        " gateway replica. Immutable: switching would strand the recorded feedback.",
        json_schema_extra=immutable("feedback.store.backend"),
    )
    postgres: PostgresStore | None = Field(default=None, description="PostgreSQL settings.")


class FeedbackSpec(Model):
    """Feedback recording."""

    store: FeedbackStore = Field(default_factory=FeedbackStore, description="The store.")
    retention_days: int = Field(
        default=365, ge=1, le=3650, description="Feedback older than this is deleted."
    )


class ContextualDeploymentSpec(Model):
    """Retrieval plus model behind one gateway that cites and records feedback."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.feedback.store.backend != 'sqlite' || self.gateway.replicas <= 1"
            " && !has(self.gateway.autoscaling)",
            message="the sqlite feedback store has one writer: use backend postgres for more"
            " than one gateway replica",
            field="gateway.replicas",
            check=lambda s: (
                s.feedback.store.backend != "sqlite"
                or (s.gateway.replicas <= 1 and s.gateway.autoscaling is None)
            ),
        ),
    )

    retrieval_ref: LocalObjectReference = Field(description="The RetrievalStack to query.")
    model_ref: LocalObjectReference = Field(description="The AlignedModel that answers.")
    prompt: PromptSpec = Field(default_factory=PromptSpec, description="Prompt building.")
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="The gateway.")
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec, description="Feedback.")


class FeedbackCounts(Model):
    """Feedback recorded so far."""

    up: int = Field(default=0, ge=0, description="Thumbs up.")
    down: int = Field(default=0, ge=0, description="Thumbs down.")
    corrections: int = Field(default=0, ge=0, description="Answers corrected by users.")


class ContextualDeploymentStatus(ScaledStatus):
    """The endpoint and what it serves."""

    endpoint: str | None = Field(
        default=None, max_length=512, description="In-cluster URL of the gateway."
    )
    index_version: str | None = Field(
        default=None, max_length=128, description="Index version being retrieved from."
    )
    model_revision: str | None = Field(
        default=None, max_length=128, description="Model revision answering."
    )
    feedback: FeedbackCounts | None = Field(default=None, description="Feedback counts.")
