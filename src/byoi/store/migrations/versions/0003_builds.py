"""image builds

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'image_builds',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('build_id', sa.String(length=40), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('registry', sa.String(length=255), nullable=False),
        sa.Column('repository', sa.String(length=255), nullable=False),
        sa.Column('tag', sa.String(length=128), nullable=False),
        sa.Column('image_name', sa.String(length=63), nullable=True),
        sa.Column('client_token', sa.String(length=64), nullable=True),
        sa.Column('digest', sa.String(length=80), nullable=True),
        sa.Column('image_version_arn', sa.String(length=512), nullable=True),
        sa.Column('failure_reason', sa.String(length=1024), nullable=True),
        sa.Column('failed_step', sa.String(length=512), nullable=True),
        sa.Column('stop_requested', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('context_size', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=True),
        sa.Column('ended_at', sa.Float(), nullable=True),
        sa.Column('modified_at', sa.Float(), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.Float(), nullable=True),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_attempt_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_image_builds')),
        sa.UniqueConstraint('build_id', name=op.f('uq_image_builds_build_id')),
    )
    with op.batch_alter_table('image_builds', schema=None) as batch_op:
        batch_op.create_index('ix_image_builds_status', ['status'], unique=False)
        batch_op.create_index('ix_image_builds_client_token', ['client_token'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('image_builds', schema=None) as batch_op:
        batch_op.drop_index('ix_image_builds_client_token')
        batch_op.drop_index('ix_image_builds_status')
    op.drop_table('image_builds')
