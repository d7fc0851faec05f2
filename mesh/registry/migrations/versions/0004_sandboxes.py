"""Sandboxes with a lifecycle, the attempts made in them, and approvals for connected mode.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("required_services", sa.JSON(), nullable=False),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("secret_ref", sa.String(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.Column("expires_at", utc(), nullable=False),
        sa.Column("removed_at", utc(), nullable=True),
        sa.CheckConstraint("mode IN ('mock', 'emulated', 'connected')", name=op.f("ck_sandboxes_mode")),
        sa.CheckConstraint("status IN ('active', 'expired', 'deleted')", name=op.f("ck_sandboxes_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandboxes")),
    )
    op.create_index("ix_sandboxes_agent_status", "sandboxes", ["agent", "status"])
    op.create_index("ix_sandboxes_status_expires_at", "sandboxes", ["status", "expires_at"])
    op.create_table(
        "sandbox_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("operation_id", sa.String(), nullable=False),
        sa.Column("attempt", sa.String(), nullable=True),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("answer", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["sandbox_id"], ["sandboxes.id"], name=op.f("fk_sandbox_runs_sandbox_id_sandboxes")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_sandbox_runs_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_runs")),
    )
    op.create_index("ix_sandbox_runs_sandbox_id_id", "sandbox_runs", ["sandbox_id", "id"])
    op.create_index(op.f("ix_sandbox_runs_run_id"), "sandbox_runs", ["run_id"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("approved_by", sa.String(), nullable=False),
        sa.Column("approved_at", utc(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("base_url", sa.String(), nullable=True),
        sa.Column("revoked_at", utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    op.create_index("ix_approvals_agent_service", "approvals", ["agent", "service"])


def downgrade() -> None:
    op.drop_table("approvals")
    op.drop_table("sandbox_runs")
    op.drop_table("sandboxes")
