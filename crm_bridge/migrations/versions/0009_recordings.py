"""recordings and recording_pauses: the files of recorded bridged calls and their paused spans

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sip_call_id", sa.String(255), nullable=False, index=True),
        sa.Column("agent_number", sa.String(32), index=True),
        sa.Column("seat_group", sa.String(64)),
        sa.Column("path", sa.String(512), nullable=False, unique=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float()),
        sa.Column("size_bytes", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("error", sa.Text()),
        sa.Column("characteristics", sa.Text()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "recording_pauses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("recording_id", sa.Integer(), sa.ForeignKey("recordings.id"), nullable=False, index=True),
        sa.Column("paused_by", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("offset_s", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float()),
    )


def downgrade() -> None:
    op.drop_table("recording_pauses")
    op.drop_table("recordings")
