"""agent desk: complaint workflow columns on tickets, ticket_history, call_notes, agent_commands, desk_users

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TICKET_COLUMNS = ("description", "department", "result", "caller_satisfied", "updated_at", "closed_at")


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("department", sa.String(64)))
        batch.add_column(sa.Column("result", sa.Text()))
        batch.add_column(sa.Column("caller_satisfied", sa.Boolean()))
        batch.add_column(sa.Column("updated_at", ts))
        batch.add_column(sa.Column("closed_at", ts))
    op.create_table(
        "ticket_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("status_from", sa.String(16)),
        sa.Column("status_to", sa.String(16)),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_ticket_history_ticket_id", "ticket_history", ["ticket_id"])
    op.create_table(
        "call_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("agent_number", sa.String(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.Column("wrap_up_code", sa.String(64)),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.UniqueConstraint("call_id", "agent_number", name="uq_call_notes_call_agent"),
    )
    op.create_table(
        "agent_commands",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("requested_at", ts, nullable=False),
        sa.Column("requested_by", sa.String(128)),
        sa.Column("taken_at", ts),
        sa.Column("taken_by", sa.String(128)),
    )
    op.create_index("ix_agent_commands_pending", "agent_commands", ["taken_at", "requested_at"])
    op.create_table(
        "desk_users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("agent_number", sa.String(32)),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("desk_users")
    op.drop_index("ix_agent_commands_pending", "agent_commands")
    op.drop_table("agent_commands")
    op.drop_table("call_notes")
    op.drop_index("ix_ticket_history_ticket_id", "ticket_history")
    op.drop_table("ticket_history")
    with op.batch_alter_table("tickets") as batch:
        for name in reversed(TICKET_COLUMNS):
            batch.drop_column(name)
