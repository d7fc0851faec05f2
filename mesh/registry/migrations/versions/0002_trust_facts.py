"""Revocations and audit events the registry keeps; the key each pinned tool was signed by.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "key_revocations",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("kid", sa.String(), nullable=False),
        sa.Column("revoked_at", utc(), nullable=False),
        sa.Column("revoked_by", sa.String(), nullable=False),
        sa.Column("statement", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("agent", "kid", name=op.f("pk_key_revocations")),
    )
    # Keys revoked under the old schema stay revoked.
    op.execute("INSERT INTO key_revocations (agent, kid, revoked_at, revoked_by) "
               "SELECT agent, kid, CURRENT_TIMESTAMP, 'migration' FROM trusted_keys WHERE revoked")
    with op.batch_alter_table("trusted_keys") as batch:
        batch.drop_column("revoked")
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", utc(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("remote", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    with op.batch_alter_table("tools") as batch:
        batch.add_column(sa.Column("signed_by", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tools") as batch:
        batch.drop_column("signed_by")
    op.drop_index(op.f("ix_audit_events_at"), table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("trusted_keys") as batch:
        batch.add_column(sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.drop_table("key_revocations")
