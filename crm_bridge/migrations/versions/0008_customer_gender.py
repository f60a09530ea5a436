"""customers.gender: male or female, for greeting a senior customer by surname and title (张先生 / 李女士)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("gender", sa.String(8)))


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("gender")
