"""Tenancy: projects; org and project columns on every tenant table; row-level security on PostgreSQL;
organisation settings and the permissions tables.

- ``projects`` (org_id, id, name): the default organisation gets the project ``default``.
- ``org_id`` and ``project_id`` on the tenant tables (``TENANT_TABLES``): existing rows go to
  ``default/default``, so an existing registry keeps its agents, pins and runs. ``approval_requests``
  (0010) has its columns already. Agents refer to their
  project (ON DELETE CASCADE; on SQLite by rebuilding ``agents``, its pins kept aside meanwhile).
- On PostgreSQL: the least-privilege role ``mesh_registry`` with its grants, and a forced ``tenant``
  policy on each tenant table (``migrations/rls.py``); ``projects``, ``org_policies`` and the credentials
  are keyed by organisation only. The audit log stays one chain across the registry (not a tenant table).
- ``org_policies`` (per-organisation settings, one JSON value per key), ``roles``, ``permissions`` and
  ``role_permissions``, seeded from ``auth.PERMISSIONS``: the code stays the one source of truth and the
  registry rewrites the tables at start when they drifted (``store.sync_permissions``).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

from mesh.registry.auth import PERMISSIONS, ROLES
from mesh.registry.migrations.rls import create_registry_role, disable_tenant_rls, enable_tenant_rls
from mesh.registry.store import DEFAULT_TENANT, UTCDateTime, permission_rows, utcnow

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = (
    "agents", "tools", "descriptors", "runs", "policy_decisions", "reputation", "sandboxes", "sandbox_runs",
    "approvals", "learning_plans", "learning_runs", "learning_iterations", "learning_attempts",
    "capability_assessments", "prompt_versions", "active_prompts",
)
PINS = ("tools", "descriptors")  # the tables that refer to agents
# Made with their org_id and project_id by an earlier revision: here they only get their row-level security.
TENANT_TABLES_WITH_COLUMNS = ("approval_requests",)
ORG_TABLES = ("projects", "org_policies", "credentials", "credential_versions")


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "projects",
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_projects_org_id_orgs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("org_id", "id", name=op.f("pk_projects")),
    )
    orgs = sa.table("orgs", sa.column("id"), sa.column("name"), sa.column("created_at", UTCDateTime))
    projects = sa.table("projects", sa.column("org_id"), sa.column("id"), sa.column("name"),
                        sa.column("created_at", UTCDateTime))
    known = set(op.get_bind().scalars(sa.select(orgs.c.id)))
    if DEFAULT_TENANT not in known:
        op.bulk_insert(orgs, [{"id": DEFAULT_TENANT, "name": DEFAULT_TENANT, "created_at": utcnow()}])
    op.bulk_insert(projects, [{"org_id": org, "id": DEFAULT_TENANT, "name": DEFAULT_TENANT, "created_at": utcnow()}
                              for org in sorted(known | {DEFAULT_TENANT})])

    for table in TENANT_TABLES:
        for column in ("org_id", "project_id"):
            op.add_column(table, sa.Column(column, sa.String(64), nullable=False, server_default="default"))
    op.create_index(op.f("ix_agents_org_id_project_id"), "agents", ["org_id", "project_id"])
    op.create_index(op.f("ix_runs_org_id_project_id_started_at"), "runs", ["org_id", "project_id", "started_at"])
    if postgresql:
        op.create_foreign_key(op.f("fk_agents_org_id_projects"), "agents", "projects", ["org_id", "project_id"],
                              ["org_id", "id"], ondelete="CASCADE")
    else:
        _sqlite_agents_refer_to_projects()

    op.create_table(
        "org_policies",
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_org_policies_org_id_orgs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("org_id", "key", name=op.f("pk_org_policies")),
    )
    roles = op.create_table(
        "roles",
        sa.Column("name", sa.String(16), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_roles")),
    )
    permissions = op.create_table(
        "permissions",
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("action", name=op.f("pk_permissions")),
    )
    role_permissions = op.create_table(
        "role_permissions",
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["role"], ["roles.name"], name=op.f("fk_role_permissions_role_roles"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["action"], ["permissions.action"],
                                name=op.f("fk_role_permissions_action_permissions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role", "action", name=op.f("pk_role_permissions")),
    )
    role_rows, action_rows, grants = permission_rows(PERMISSIONS, (*ROLES, "agent"))
    op.bulk_insert(roles, role_rows)
    op.bulk_insert(permissions, action_rows)
    op.bulk_insert(role_permissions, grants)

    create_registry_role(op)
    for table in (*TENANT_TABLES, *TENANT_TABLES_WITH_COLUMNS):
        enable_tenant_rls(op, table)
    for table in ORG_TABLES:
        enable_tenant_rls(op, table, project=False)


def _sqlite_agents_refer_to_projects() -> None:
    with _rebuilding_agents() as batch:
        batch.create_foreign_key(op.f("fk_agents_org_id_projects"), "projects", ["org_id", "project_id"],
                                 ["org_id", "id"], ondelete="CASCADE")


@contextmanager
def _rebuilding_agents() -> Iterator[Any]:
    """SQLite changes a foreign key only by rebuilding the table, and dropping the old ``agents`` (foreign
    keys on) deletes its tools and descriptors by their cascade: they are kept aside and put back."""
    for table in PINS:
        op.execute(f"CREATE TEMP TABLE keep_{table} AS SELECT * FROM {table}")
    with op.batch_alter_table("agents", recreate="always") as batch:
        yield batch
    for table in PINS:
        op.execute(f"INSERT INTO {table} SELECT * FROM keep_{table}")
        op.execute(f"DROP TABLE keep_{table}")


def downgrade() -> None:
    for table in (*TENANT_TABLES, *TENANT_TABLES_WITH_COLUMNS, *ORG_TABLES):
        disable_tenant_rls(op, table)
    op.drop_table("role_permissions")
    op.drop_table("permissions")
    op.drop_table("roles")
    op.drop_table("org_policies")
    op.drop_index(op.f("ix_runs_org_id_project_id_started_at"), "runs")
    op.drop_index(op.f("ix_agents_org_id_project_id"), "agents")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("fk_agents_org_id_projects"), "agents", type_="foreignkey")
        for table in TENANT_TABLES:
            op.drop_column(table, "project_id")
            op.drop_column(table, "org_id")
    else:
        # SQLite's own DROP COLUMN rewrites no table (a rebuild would cascade: runs -> decisions, ...).
        for table in TENANT_TABLES:
            if table != "agents":
                op.execute(f"ALTER TABLE {table} DROP COLUMN project_id")
                op.execute(f"ALTER TABLE {table} DROP COLUMN org_id")
        with _rebuilding_agents() as batch:  # its columns are in its foreign key: only a rebuild drops them
            batch.drop_constraint(op.f("fk_agents_org_id_projects"), type_="foreignkey")
            batch.drop_column("project_id")
            batch.drop_column("org_id")
    op.drop_table("projects")
