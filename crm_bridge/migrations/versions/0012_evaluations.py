"""evaluation_forms, evaluations, evaluation_answers, evaluation_responses: QA review of recorded calls

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_forms",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False, unique=True),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("first_loaded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("form_id", sa.Integer(), sa.ForeignKey("evaluation_forms.id"), nullable=False),
        sa.Column("recording_id", sa.Integer(), sa.ForeignKey("recordings.id")),
        sa.Column("agent_number", sa.String(32), nullable=False, index=True),
        sa.Column("evaluator", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("fatal", sa.Text(), nullable=False, server_default=""),
        sa.Column("comment", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "evaluation_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("evaluation_id", sa.Integer(), sa.ForeignKey("evaluations.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("criterion", sa.String(64), nullable=False),
        sa.Column("answer", sa.String(64), nullable=False),
        sa.Column("points", sa.Float()),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("auto", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("evaluation_id", "criterion", name="uq_evaluation_answers_criterion"),
    )
    op.create_table(
        "evaluation_responses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("evaluation_id", sa.Integer(), sa.ForeignKey("evaluations.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("evaluation_responses")
    op.drop_table("evaluation_answers")
    op.drop_table("evaluations")
    op.drop_table("evaluation_forms")
