"""Learning: plans, runs and their iterations, attempts, capability assessments, prompt versions.

Revision ID: 0005
Revises: 0003 (to be re-pointed at 0004, the sandboxes, when both are merged)
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "learning_plans",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("objectives", sa.JSON(), nullable=False),
        sa.Column("tasks", sa.JSON(), nullable=False),
        sa.Column("rubric", sa.JSON(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_learning_plans")),
    )
    op.create_index(op.f("ix_learning_plans_agent_system"), "learning_plans", ["agent", "system"])
    op.create_table(
        "learning_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("plan_id", sa.String(length=36), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("spent", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("start_version", sa.String(), nullable=True),
        sa.Column("final_version", sa.String(), nullable=True),
        sa.Column("started_at", utc(), nullable=False),
        sa.Column("finished_at", utc(), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["learning_plans.id"],
                                name=op.f("fk_learning_runs_plan_id_learning_plans"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_learning_runs")),
    )
    op.create_index(op.f("ix_learning_runs_plan_id"), "learning_runs", ["plan_id"])
    op.create_table(
        "learning_iterations",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("prompt_version", sa.String(), nullable=True),
        sa.Column("attempted", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Integer(), nullable=False),
        sa.Column("success_rate", sa.Double(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("lm_calls", sa.Integer(), nullable=False),
        sa.Column("tool_calls", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("analysis", sa.JSON(), nullable=False),
        sa.Column("lessons", sa.JSON(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["learning_runs.id"],
                                name=op.f("fk_learning_iterations_run_id_learning_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "number", name=op.f("pk_learning_iterations")),
    )
    op.create_table(
        "learning_attempts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("tool_calls", sa.JSON(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("check_detail", sa.Text(), nullable=True),
        sa.Column("prompt_version", sa.String(), nullable=True),
        sa.Column("lm_calls", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("started_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_learning_attempts")),
    )
    op.create_index(op.f("ix_learning_attempts_run_id_iteration"), "learning_attempts", ["run_id", "iteration"])
    op.create_table(
        "capability_assessments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("plan_id", sa.String(length=36), nullable=True),
        sa.Column("prompt_version", sa.String(), nullable=True),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("level", sa.String(), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["learning_plans.id"],
                                name=op.f("fk_capability_assessments_plan_id_learning_plans"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capability_assessments")),
    )
    op.create_index(op.f("ix_capability_assessments_agent_system"), "capability_assessments",
                    ["agent", "system", "created_at"])
    op.create_table(
        "prompt_versions",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("program", sa.Text(), nullable=False),
        sa.Column("lessons", sa.JSON(), nullable=False),
        sa.Column("demos", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("plan_id", sa.String(length=36), nullable=True),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("iteration", sa.Integer(), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "id", name=op.f("pk_prompt_versions")),
    )
    op.create_index(op.f("ix_prompt_versions_agent_system"), "prompt_versions", ["agent", "system", "created_at"])
    op.create_table(
        "active_prompts",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("version_id", sa.String(length=64), nullable=False),
        sa.Column("activated_at", utc(), nullable=False),
        sa.Column("activated_by", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "system", name=op.f("pk_active_prompts")),
    )


def downgrade() -> None:
    for table in ("active_prompts", "prompt_versions", "capability_assessments", "learning_attempts",
                  "learning_iterations", "learning_runs", "learning_plans"):
        op.drop_table(table)
