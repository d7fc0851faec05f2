"""Budgets: limits per organisation or agent and period (``budgets``), their running totals
(``budget_spend``), the soft alerts already fired (``budget_alerts``), admins' overrides
(``budget_overrides``), what each run cost (``runs.cost``) and what a tool's manifest declares a call of it
costs (``tools.cost``).

The new tables carry ``org_id`` and ``project_id`` ("default" until tenancy scopes them).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def tenant_columns() -> list[sa.Column]:
    return [sa.Column("org_id", sa.String(64), server_default="default", nullable=False),
            sa.Column("project_id", sa.String(64), server_default="default", nullable=False)]


def upgrade() -> None:
    op.add_column("runs", sa.Column("cost", sa.Double(), nullable=True))
    op.add_column("tools", sa.Column("cost", sa.Double(), nullable=True))
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(64), nullable=False),
        *tenant_columns(),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("starts_at", utc(), nullable=True),
        sa.Column("ends_at", utc(), nullable=True),
        sa.Column("cost_limit", sa.Double(), nullable=False),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.CheckConstraint("scope IN ('org', 'agent')", name=op.f("ck_budgets_scope")),
        sa.CheckConstraint("period IN ('day', 'week', 'month', 'fixed')", name=op.f("ck_budgets_period")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
    )
    op.create_table(
        "budget_spend",
        sa.Column("budget_id", sa.String(64), nullable=False),
        sa.Column("period_start", utc(), nullable=False),
        *tenant_columns(),
        sa.Column("spent", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"], name=op.f("fk_budget_spend_budget_id_budgets"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("budget_id", "period_start", name=op.f("pk_budget_spend")),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("budget_id", sa.String(64), nullable=False),
        sa.Column("period_start", utc(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        *tenant_columns(),
        sa.Column("spent", sa.Double(), nullable=False),
        sa.Column("fired_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"], name=op.f("fk_budget_alerts_budget_id_budgets"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("budget_id", "period_start", "threshold", name=op.f("pk_budget_alerts")),
    )
    op.create_table(
        "budget_overrides",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("budget_id", sa.String(64), nullable=False),
        *tenant_columns(),
        sa.Column("granted_by", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("expires_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"], name=op.f("fk_budget_overrides_budget_id_budgets"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_overrides")),
    )
    op.create_index(op.f("ix_budget_overrides_budget_id"), "budget_overrides", ["budget_id"])


def downgrade() -> None:
    op.drop_table("budget_overrides")
    op.drop_table("budget_alerts")
    op.drop_table("budget_spend")
    op.drop_table("budgets")
    for table in ("tools", "runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cost")
