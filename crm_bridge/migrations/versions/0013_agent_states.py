"""agent_states: each agent state change the IVR sees, for time-by-state and occupancy in the scorecards;
an index of call_events by kind and time for the scorecards' step counts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_states",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("agent_number", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seat_group", sa.String(32)),
        sa.Column("sip_call_id", sa.String(255)),
        sa.Column("worker", sa.String(128)),
    )
    op.create_index("ix_agent_states_agent_at", "agent_states", ["agent_number", "at"])
    op.create_index("ix_call_events_kind_at", "call_events", ["kind", "at"])


def downgrade() -> None:
    op.drop_index("ix_call_events_kind_at", table_name="call_events")
    op.drop_index("ix_agent_states_agent_at", table_name="agent_states")
    op.drop_table("agent_states")
