"""agents.contact_path: the Path (RFC 3327) a shared agent's phone registered through, so every worker rings it
with that Route set (a browser behind Kamailio's WebSocket is reachable only through the balancer)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("contact_path", sa.String(1024)))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("contact_path")
