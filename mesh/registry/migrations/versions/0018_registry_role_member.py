"""The migrating user becomes a member of ``mesh_registry``, so the registry can serve as it.

Row-level security is now on by default on PostgreSQL: after migrating as the tables' owner the registry
does ``SET ROLE mesh_registry``, which a user who is not a superuser may do only as a member. 0015 made
the user that first migrated a member; this makes whoever migrates now one too (``rls.grant_registry_role``,
idempotent), for databases migrated before by another user.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from mesh.registry.migrations.rls import grant_registry_role

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    grant_registry_role(op)


def downgrade() -> None:
    """The membership stays, as the role does: other schemas of the cluster may rely on it."""
