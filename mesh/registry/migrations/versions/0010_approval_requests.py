"""Approval requests: calls the policy holds until a person approves or denies them (``approvals.py``).

Beside ``approvals`` (standing approvals of connected sandboxes, revision 0004), not a change of it. The
``org_id`` and ``project_id`` columns are there for tenancy, which scopes the table.

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("org_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("project_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("arguments_digest", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("approvers", sa.JSON(), nullable=False),
        sa.Column("requested_at", utc(), nullable=False),
        sa.Column("expires_at", utc(), nullable=False),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("decided_via", sa.String(16), nullable=True),
        sa.Column("decided_at", utc(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("executed_at", utc(), nullable=True),
        sa.CheckConstraint("status IN ('requested', 'approved', 'denied', 'expired', 'executed')",
                           name=op.f("ck_approval_requests_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
    )
    op.create_index("ix_approval_requests_status_requested_at", "approval_requests", ["status", "requested_at"])
    op.create_index(op.f("ix_approval_requests_run_id"), "approval_requests", ["run_id"])


def downgrade() -> None:
    op.drop_table("approval_requests")
