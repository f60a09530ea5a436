"""monitoring_sessions and monitoring_mode_changes; agent_commands carry a monitor command's supervisor and mode

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitoring_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_key", sa.String(255), nullable=False, unique=True),
        sa.Column("sip_call_id", sa.String(255), nullable=False, index=True),
        sa.Column("agent_number", sa.String(32), nullable=False, index=True),
        sa.Column("supervisor", sa.String(32), nullable=False, index=True),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.String(64)),
    )
    op.create_table(
        "monitoring_mode_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), sa.ForeignKey("monitoring_sessions.id"), nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
    )
    with op.batch_alter_table("agent_commands") as batch:
        batch.add_column(sa.Column("supervisor", sa.String(32)))
        batch.add_column(sa.Column("mode", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("agent_commands") as batch:
        batch.drop_column("mode")
        batch.drop_column("supervisor")
    op.drop_table("monitoring_mode_changes")
    op.drop_table("monitoring_sessions")
