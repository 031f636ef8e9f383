"""Indexes the ledger's reads need: the audit log by record, an alias's history by (name, stage).

`tuneops registry audit --record ID` (ledger.audit_entries) scanned the whole audit table; every
promote and rollback reads the newest move of its name@stage (release/registry.py _append_move), and
`registry history` reads them all (Store.alias_history), through an index on the name alone that then
scans every stage of that name and sorts. Both tables grow with every write. Idempotent (IF NOT EXISTS): a store
that already has them is left as it is.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_record_id", "audit", ["record_id"], if_not_exists=True)
    op.create_index("ix_alias_moves_name_stage_seq", "alias_moves", ["name", "stage", "seq"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_alias_moves_name_stage_seq", table_name="alias_moves", if_exists=True)
    op.drop_index("ix_audit_record_id", table_name="audit", if_exists=True)
