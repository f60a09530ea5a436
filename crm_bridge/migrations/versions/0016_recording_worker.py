"""recordings.ivr_worker: the IVR process writing a recording, so a restart marks only its own as interrupted

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("ivr_worker", sa.String(128)))
        batch.create_index("ix_recordings_ivr_worker", ["ivr_worker"])


def downgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.drop_index("ix_recordings_ivr_worker")
        batch.drop_column("ivr_worker")
