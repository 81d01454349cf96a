"""the installation's settings: its id (and a check of the master key), shared by every replica

Revision ID: 0009
Revises: 0001

One row per key. Until now the installation id that names and labels session containers was a file in each
server's data dir, so two replicas on one database had two ids; it lives here now. The first start after this
upgrade copies the data dir's file into the table (services/installation.py), so the containers of an existing
installation stay its own.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation_settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_installation_settings"),
    )


def downgrade() -> None:
    op.drop_table("installation_settings")
