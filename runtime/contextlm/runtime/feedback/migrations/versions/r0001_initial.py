"""Initial schema: queries (every answer) and feedback (verdicts on answers).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "queries",
        sa.Column("query_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("deployment", sa.String(320), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("retrieved", JSON, nullable=False),
        sa.Column("cited", JSON, nullable=False),
        sa.Column("model_revision", sa.String(128), nullable=False),
        sa.Column("index_version", sa.String(128), nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("query_id", name=op.f("pk_queries")),
    )
    op.create_index(
        op.f("ix_queries_deployment_created_at"), "queries", ["deployment", "created_at"]
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("query_id", sa.Uuid(), nullable=False),
        sa.Column("deployment", sa.String(320), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("rating", sa.String(4), nullable=False),
        sa.Column("corrected", sa.Boolean(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.ForeignKeyConstraint(
            ["query_id"],
            ["queries.query_id"],
            name=op.f("fk_feedback_query_id_queries"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "deployment", "idempotency_key", name=op.f("uq_feedback_deployment_idempotency_key")
        ),
        sa.CheckConstraint("rating IN ('up', 'down')", name=op.f("ck_feedback_rating")),
    )
    op.create_index(op.f("ix_feedback_query_id"), "feedback", ["query_id"])
    op.create_index(
        op.f("ix_feedback_deployment_created_at"), "feedback", ["deployment", "created_at"]
    )
    op.create_index(
        op.f("ix_feedback_deployment_rating_corrected"),
        "feedback",
        ["deployment", "rating", "corrected"],
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("queries")
