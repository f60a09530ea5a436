"""followups and do_not_call: calls the IVR places to customers by itself, and who never to call

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "followups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("trigger_key", sa.String(255), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("number", sa.String(32), nullable=False, index=True),
        sa.Column("ticket_id", sa.Integer(), index=True),
        sa.Column("customer_id", sa.Integer()),
        sa.Column("sip_call_id", sa.String(255)),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("result", sa.String(32)),
        sa.Column("answers", sa.Text(), nullable=False, server_default=""),
        sa.Column("call_ids", sa.Text(), nullable=False, server_default=""),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_followups_status_due", "followups", ["status", "due_at"])
    op.create_table(
        "do_not_call",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("needs_agent", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("needs_agent")
    op.drop_table("do_not_call")
    op.drop_index("ix_followups_status_due", "followups")
    op.drop_table("followups")
