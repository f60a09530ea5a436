"""agent state shared by IVR workers: state columns on agents, acd_workers, acd_queue, calls.ivr_worker

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STATE_COLUMNS = ("state", "contact_host", "contact_port", "registered_until", "idle_since", "call_id", "worker",
                 "wrap_up_until", "state_changed_at")


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("ivr_worker", sa.String(128)))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="logged_out"))
        batch.add_column(sa.Column("contact_host", sa.String(64)))
        batch.add_column(sa.Column("contact_port", sa.Integer()))
        batch.add_column(sa.Column("registered_until", ts))
        batch.add_column(sa.Column("idle_since", ts))
        batch.add_column(sa.Column("call_id", sa.String(255)))
        batch.add_column(sa.Column("worker", sa.String(128)))
        batch.add_column(sa.Column("wrap_up_until", ts))
        batch.add_column(sa.Column("state_changed_at", ts))
    op.create_index("ix_agents_group_state", "agents", ["seat_group", "state"])
    op.create_table(
        "acd_workers",
        sa.Column("worker", sa.String(128), primary_key=True),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("seen_at", ts, nullable=False),
    )
    op.create_table(
        "acd_queue",
        sa.Column("call_id", sa.String(255), primary_key=True),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("seat_group", sa.String(32), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("joined_at", ts, nullable=False),
    )
    op.create_index("ix_acd_queue_group_joined", "acd_queue", ["seat_group", "joined_at"])


def downgrade() -> None:
    op.drop_index("ix_acd_queue_group_joined", "acd_queue")
    op.drop_table("acd_queue")
    op.drop_table("acd_workers")
    op.drop_index("ix_agents_group_state", "agents")
    with op.batch_alter_table("agents") as batch:
        for name in reversed(STATE_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("ivr_worker")
