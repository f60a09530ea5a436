"""calls and call_events

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sip_call_id", sa.String(255), nullable=False, unique=True),
        sa.Column("caller", sa.String(128), nullable=False),
        sa.Column("callee", sa.String(128), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("answered_at", ts),
        sa.Column("ended_at", ts),
        sa.Column("greeting", sa.String(64)),
        sa.Column("silent_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("outcome", sa.String(32)),
        sa.Column("hangup_by", sa.String(16)),
        sa.Column("tier", sa.String(16)),
        sa.Column("service", sa.String(64)),
        sa.Column("seat_group", sa.String(64)),
        sa.Column("agent_number", sa.String(32)),
        sa.Column("queue_wait_s", sa.Float()),
        sa.Column("talk_s", sa.Float()),
        sa.Column("survey_score", sa.Integer()),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_caller", "calls", ["caller"])
    op.create_table(
        "call_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_call_events_call_id", "call_events", ["call_id"])


def downgrade() -> None:
    op.drop_table("call_events")
    op.drop_table("calls")
