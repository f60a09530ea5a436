"""customers, seat groups, agents, surveys, tickets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("phone", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.String(128), nullable=False, server_default=""),
        sa.Column("assets", sa.Float(), nullable=False, server_default="0"),
        sa.Column("volume", sa.Float(), nullable=False, server_default="0"),
        sa.Column("tier", sa.String(16)),
    )
    op.create_table(
        "seat_groups",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("label", sa.String(64), nullable=False),
    )
    op.create_table(
        "agents",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, server_default=""),
        sa.Column("seat_group", sa.String(32), sa.ForeignKey("seat_groups.name"), nullable=False),
    )
    op.create_table(
        "surveys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("agent_number", sa.String(32)),
        sa.Column("seat_group", sa.String(32)),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
    )
    op.create_index("ix_surveys_call_id", "surveys", ["call_id"])
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("customer_phone", sa.String(32), nullable=False),
        sa.Column("agent_number", sa.String(32)),
        sa.Column("seat_group", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("opened_at", ts, nullable=False),
        sa.Column("next_feedback_due", ts, nullable=False),
        sa.Column("last_feedback_at", ts),
    )
    op.create_index("ix_tickets_call_id", "tickets", ["call_id"])
    op.create_index("ix_tickets_next_feedback_due", "tickets", ["next_feedback_due"])


def downgrade() -> None:
    for table in ("tickets", "surveys", "agents", "seat_groups", "customers"):
        op.drop_table(table)
