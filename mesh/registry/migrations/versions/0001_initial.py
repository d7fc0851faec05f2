"""The registry's first schema: agents, tools, runs, policy decisions, reputation, trusted keys.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=True),
        sa.Column("manifest_digest", sa.String(), nullable=True),
        sa.Column("jwks", sa.JSON(), nullable=True),
        sa.Column("registered_at", utc(), nullable=False),
        sa.Column("last_seen", utc(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_agents")),
    )
    op.create_table(
        "tools",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("title", sa.String(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("input_schema", sa.JSON(), nullable=False),
        sa.Column("output_schema", sa.JSON(), nullable=True),
        sa.Column("annotations", sa.JSON(), nullable=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("pinned_digest", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("blocked_reason", sa.Text(), nullable=True),
        sa.Column("wire", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["agent"], ["agents.name"], name=op.f("fk_tools_agent_agents"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("agent", "name", name=op.f("pk_tools")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("parent_run_id", sa.String(length=36), nullable=True),
        sa.Column("log", sa.String(length=6), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("arguments_digest", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("policy_decision", sa.String(), nullable=True),
        sa.Column("policy_rule", sa.String(), nullable=True),
        sa.Column("trace_id", sa.String(), nullable=True),
        sa.Column("started_at", utc(), nullable=False),
        sa.Column("provenance", sa.Text(), nullable=True),
        sa.CheckConstraint("log IN ('caller', 'target')", name=op.f("ck_runs_log")),
        sa.ForeignKeyConstraint(["parent_run_id"], ["runs.id"], name=op.f("fk_runs_parent_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_parent_run_id"), "runs", ["parent_run_id"])
    op.create_index(op.f("ix_runs_agent_started_at"), "runs", ["agent", "started_at"])
    op.create_index(op.f("ix_runs_caller_started_at"), "runs", ["caller", "started_at"])
    op.create_index(op.f("ix_runs_started_at"), "runs", ["started_at"])
    op.create_table(
        "policy_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("allow", sa.Boolean(), nullable=False),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("input_digest", sa.String(), nullable=False),
        sa.Column("decided_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_policy_decisions_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_decisions")),
    )
    op.create_index(op.f("ix_policy_decisions_run_id"), "policy_decisions", ["run_id"])
    op.create_table(
        "reputation",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "tool", name=op.f("pk_reputation")),
    )
    op.create_table(
        "trusted_keys",
        sa.Column("kid", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("jwk", sa.JSON(), nullable=False),
        sa.Column("exp", utc(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_trusted_keys")),
    )
    op.create_index(op.f("ix_trusted_keys_agent"), "trusted_keys", ["agent"])


def downgrade() -> None:
    op.drop_table("trusted_keys")
    op.drop_table("reputation")
    op.drop_table("policy_decisions")
    op.drop_table("runs")
    op.drop_table("tools")
    op.drop_table("agents")
