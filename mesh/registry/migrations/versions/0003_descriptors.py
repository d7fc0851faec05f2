"""Pinned resources, resource templates and prompts: admitted, listed and blocked like tools.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "descriptors",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("wire", sa.JSON(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("pinned_digest", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("blocked_reason", sa.Text(), nullable=True),
        sa.Column("signed_by", sa.String(), nullable=True),
        sa.CheckConstraint("kind IN ('resource', 'resource_template', 'prompt')", name=op.f("ck_descriptors_kind")),
        sa.ForeignKeyConstraint(["agent"], ["agents.name"], name=op.f("fk_descriptors_agent_agents"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("agent", "kind", "name", name=op.f("pk_descriptors")),
    )


def downgrade() -> None:
    op.drop_table("descriptors")
