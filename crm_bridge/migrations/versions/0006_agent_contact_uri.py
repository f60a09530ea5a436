"""agents.contact_uri: the Contact URI an agent's phone registered, the Request-URI to ring it at

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("contact_uri", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("contact_uri")
