"""A hash-chained, append-only audit log with signed checkpoints; credentials stored by reference.

The entries already in ``audit_events`` are chained in the order they were written (by id), so an
upgraded registry verifies from its first entry. Then triggers make the log append-only on both backends:
UPDATE and DELETE on ``audit_events`` and ``audit_checkpoints`` are refused (and TRUNCATE on PostgreSQL).

For later migrations: on SQLite, ``batch_alter_table`` rebuilds a table by copying it, which drops its
triggers: a migration that alters ``audit_events`` (tenancy adding ``org_id``) must run
``create_append_only_triggers()`` again after it. On PostgreSQL, a backfilling UPDATE must disable the
triggers for its duration (``ALTER TABLE audit_events DISABLE TRIGGER USER``) and change nothing the
hash covers.

Revision ID: 0007
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mesh.registry.audit import GENESIS, entry_hash  # the chain's one definition of a hash
from mesh.registry.store import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = ("audit_events", "audit_checkpoints")


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("data", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(), nullable=True))
    head = chain_existing_entries()
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(), nullable=False)
        batch.create_unique_constraint(op.f("uq_audit_events_seq"), ["seq"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :seq, :hash)").bindparams(
        seq=head[0], hash=head[1]))
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.Column("at", utc(), nullable=False),
        sa.Column("kid", sa.String(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_checkpoints")),
    )
    create_append_only_triggers()
    op.create_table(
        "credentials",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("backend", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("rotated_at", utc(), nullable=True),
        sa.PrimaryKeyConstraint("org_id", "ref", name=op.f("pk_credentials")),
    )
    op.create_table(
        "credential_versions",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=True),
        sa.Column("vault_version", sa.Integer(), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["org_id", "ref"], ["credentials.org_id", "credentials.ref"],
                                name=op.f("fk_credential_versions_org_id_credentials"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("org_id", "ref", "version", name=op.f("pk_credential_versions")),
    )


def chain_existing_entries() -> tuple[int, str]:
    """Number and hash the entries written before the chain existed, oldest first; returns the head."""
    events = sa.table("audit_events", sa.column("id", sa.Integer()), sa.column("at", UTCDateTime()),
                      *(sa.column(name, sa.String()) for name in ("actor", "action", "subject", "outcome", "detail",
                                                                  "remote", "prev_hash", "hash")),
                      sa.column("seq", sa.Integer()))
    connection = op.get_bind()
    rows = connection.execute(sa.select(events).order_by(events.c.id)).mappings().all()
    seq, previous = 0, GENESIS
    for row in rows:
        seq += 1
        entry = {"seq": seq, "at": row["at"].isoformat(), "actor": row["actor"], "action": row["action"],
                 "subject": row["subject"], "outcome": row["outcome"], "detail": row["detail"],
                 "remote": row["remote"], "data": None, "prev": previous}
        digest = entry_hash(entry)
        connection.execute(sa.update(events).where(events.c.id == row["id"]).values(
            seq=seq, prev_hash=previous, hash=digest))
        previous = digest
    return seq, previous


def create_append_only_triggers() -> None:
    """UPDATE and DELETE on the audit tables are refused by the database itself."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE OR REPLACE FUNCTION mesh_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END $$""")
        for table in APPEND_ONLY:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION mesh_audit_append_only()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION mesh_audit_append_only()")
        return
    for table in APPEND_ONLY:
        for operation in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END")


def drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS mesh_audit_append_only()")
        return
    for table in APPEND_ONLY:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{operation}")


def downgrade() -> None:
    op.drop_table("credential_versions")
    op.drop_table("credentials")
    drop_append_only_triggers()
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint(op.f("uq_audit_events_seq"), type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("data")
        batch.drop_column("seq")
