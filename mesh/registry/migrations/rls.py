"""Row-level security for the registry's tenant tables on PostgreSQL, for every migration to reuse.

By default the registry serves as ``mesh_registry`` (``REGISTRY_ROLE``): a NOLOGIN role that owns no
table, so row-level security applies to it; the login role it migrates as must be a member (``SET ROLE``),
which ``grant_registry_role`` makes it when it may grant the role. Each
tenant table gets one policy, ``tenant``: a row is visible and writable only when its ``org_id`` (and
``project_id``) equal the transaction's ``app.org_id`` (and ``app.project_id``), which the registry sets
at the start of every transaction from the acting tenant (``mesh.registry.tenancy.enforce_rls``); ``*``
is the registry's own cross-tenant work. ``FORCE`` makes the policy bind the table's owner too; only a
superuser (or a BYPASSRLS role) passes it.

A migration that adds a tenant table calls ``enable_tenant_rls(op, "TABLE")`` after creating it (and
``project=False`` for a table keyed by organisation only). On SQLite these functions do nothing: the
store enforces the same rules itself (``tenancy.py``).

The role is cluster-wide, so creating it is idempotent (several schemas, e.g. the tests', share it); the
grants are per schema.
"""

from __future__ import annotations

from typing import Any

REGISTRY_ROLE = "mesh_registry"
REGISTRY_SETTING = "*"  # ``app.org_id`` while the registry works across tenants (``tenancy.REGISTRY_SETTING``)


def _postgresql(op: Any) -> bool:
    return op.get_bind().dialect.name == "postgresql"


def create_registry_role(op: Any, role: str = REGISTRY_ROLE) -> None:
    """Create the least-privilege role if the cluster lacks it; let the migrating user act as it; grant it
    the data (never the schema) of this schema's tables, now and of tables created later."""
    if not _postgresql(op):
        return
    op.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} NOLOGIN;
            END IF;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- another schema's migration won
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the role {role} does not exist and the database user % may not create it', current_user
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'an administrator runs: CREATE ROLE {role} NOLOGIN; GRANT {role} TO ' || current_user;
        END $$""")
    grant_registry_role(op, role)
    op.execute(f"""
        DO $$ BEGIN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema());
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO {role}',
                           current_schema());
            EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO {role}', current_schema());
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES '
                           'TO {role}', current_schema());
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO {role}',
                           current_schema());
        END $$""")


def grant_registry_role(op: Any, role: str = REGISTRY_ROLE) -> None:
    """Make the migrating user (the tables' owner, not necessarily a superuser) a member of ``role``, so the
    registry can ``SET ROLE`` to it after migrating. Idempotent. A user who may not grant roles (neither
    CREATEROLE nor ADMIN on it) gets a warning, not a failed migration: the registry names the fix at start,
    and one serving as its login role (``database_role = ""``) needs no membership."""
    if not _postgresql(op):
        return
    op.execute(f"""
        DO $$ BEGIN
            IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
                EXECUTE format('GRANT {role} TO %I', current_user);
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'the database user % may not make itself a member of {role}', current_user;
        END $$""")


def tenant_condition(project: bool = True) -> str:
    """The SQL a row must satisfy: the registry's own work, or the acting tenant's row."""
    own = "org_id = current_setting('app.org_id', true)"
    if project:
        own += " AND project_id = current_setting('app.project_id', true)"
    return f"current_setting('app.org_id', true) = '{REGISTRY_SETTING}' OR ({own})"


def enable_tenant_rls(op: Any, table: str, *, project: bool = True, role: str = REGISTRY_ROLE) -> None:
    """Row-level security on ``table`` (forced, so its owner is bound too), keyed by ``app.org_id`` and,
    unless ``project`` is False, ``app.project_id``; the registry role may read and write its rows."""
    if not _postgresql(op):
        return
    condition = tenant_condition(project)
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"DROP POLICY IF EXISTS tenant ON {table}")
    op.execute(f"CREATE POLICY tenant ON {table} USING ({condition}) WITH CHECK ({condition})")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")


def disable_tenant_rls(op: Any, table: str) -> None:
    """Undo ``enable_tenant_rls`` (a downgrade); the role stays, other schemas may use it."""
    if not _postgresql(op):
        return
    op.execute(f"DROP POLICY IF EXISTS tenant ON {table}")
    op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
