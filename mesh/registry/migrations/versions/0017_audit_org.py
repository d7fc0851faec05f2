"""Audit entries name their organisation: ``audit_events.org_id``, covered by the entry's hash.

The log stays one chain; each organisation reads, exports and verifies its own entries in it
(``audit.py``). Entries already written keep ``org_id`` NULL (the registry operator's) and hash exactly
as before, since a hash leaves ``org`` out when it is None: nothing is rewritten, so the append-only
triggers of 0007 stay as they are. Plain ``ALTER TABLE ... ADD COLUMN`` on both backends (no batch copy
on SQLite, which would drop those triggers; no UPDATE, which they would refuse).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("org_id", sa.String(64), nullable=True))
    op.create_index("ix_audit_events_org_id_seq", "audit_events", ["org_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_org_id_seq", table_name="audit_events")
    if op.get_bind().dialect.name == "sqlite":  # SQLite ≥ 3.35 drops a column in place, keeping the triggers
        op.execute("ALTER TABLE audit_events DROP COLUMN org_id")
    else:
        op.drop_column("audit_events", "org_id")
