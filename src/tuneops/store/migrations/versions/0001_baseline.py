"""Baseline: the schema as of the day tuneops began versioning it (tuneops 0.1.0, issue 11).

A store made by an older tuneops has no version table and some subset of these tables and columns:
upgrading it adds what is missing (tables, nullable columns — additive only, as tuneops did on every
open before), and links each dataset to its name when ``dataset_names`` is new. On a store that already
has everything (one created from the models) it changes nothing.

The tables are a frozen copy, not ``tuneops.store.schema``: later revisions change the models, and this
revision must keep meaning what it meant.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BASELINE = sa.MetaData()

sa.Table(
    "bases", BASELINE,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("source_digest", sa.String(64), nullable=False, index=True),
    sa.Column("license", sa.String(100), nullable=False),
    sa.Column("tree", sa.String(64), nullable=False),
    sa.Column("weights_sha256", sa.String(64), nullable=False),
    sa.Column("chat_template_sha256", sa.String(64), nullable=True),
    sa.Column("num_parameters", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "datasets", BASELINE,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("manifest_blob", sa.String(64), nullable=False),
    sa.Column("rows_blob", sa.String(64), nullable=False),
    sa.Column("num_rows", sa.Integer(), nullable=False),
    sa.Column("summary", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "dataset_names", BASELINE,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("dataset_id", sa.String(64), sa.ForeignKey("datasets.id"), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "runs", BASELINE,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("recipe_name", sa.String(200), nullable=False),
    sa.Column("recipe_yaml", sa.Text(), nullable=False),
    sa.Column("recipe_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("base_id", sa.String(64), nullable=True),
    sa.Column("dataset_ids", sa.JSON(), nullable=False),
    sa.Column("artifact_id", sa.String(64), nullable=True),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.Column("priority", sa.Integer(), nullable=True),
    sa.Column("worker", sa.String(255), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=True),
    sa.Column("control", sa.String(32), nullable=True),
)
sa.Table(
    "run_events", BASELINE,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "checkpoints", BASELINE,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("epoch", sa.Float(), nullable=True),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("location", sa.Text(), nullable=True),
    sa.Column("files", sa.JSON(), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "artifacts", BASELINE,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("tree", sa.String(64), nullable=False),
    sa.Column("base_id", sa.String(64), sa.ForeignKey("bases.id"), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("lineage", sa.JSON(), nullable=False),
    sa.Column("signature", sa.JSON(), nullable=True),
    sa.Column("deprecation", sa.JSON(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "eval_reports", BASELINE,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("artifact_id", sa.String(64), sa.ForeignKey("artifacts.id"), nullable=False, index=True),
    sa.Column("baseline", sa.String(64), nullable=False),
    sa.Column("suites", sa.JSON(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("gates", sa.JSON(), nullable=False),
    sa.Column("passed", sa.Boolean(), nullable=False),
    sa.Column("report_blob", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "aliases", BASELINE,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("stage", sa.String(64), primary_key=True),
    sa.Column("artifact_id", sa.String(64), sa.ForeignKey("artifacts.id"), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "alias_moves", BASELINE,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_artifact", sa.String(64), nullable=True),
    sa.Column("to_artifact", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("entry_hash", sa.String(64), nullable=True),
)
sa.Table(
    "erasures", BASELINE,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("selector", sa.JSON(), nullable=False),
    sa.Column("datasets", sa.JSON(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "taints", BASELINE,
    sa.Column("artifact_id", sa.String(64), sa.ForeignKey("artifacts.id"), primary_key=True),
    sa.Column("erasure_id", sa.String(64), sa.ForeignKey("erasures.id"), primary_key=True),
    sa.Column("dataset_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "audit", BASELINE,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("record_type", sa.String(32), nullable=False),
    sa.Column("record_id", sa.String(200), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("entry_hash", sa.String(64), nullable=True),
)
sa.Table(
    "trusted_keys", BASELINE,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("public_key", sa.Text(), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("added_by", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)
sa.Table(
    "ledger_heads", BASELINE,
    sa.Column("chain", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer(), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.JSON(), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "exports", BASELINE,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("artifact_id", sa.String(64), sa.ForeignKey("artifacts.id"), nullable=False, index=True),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def upgrade() -> None:
    from tuneops.store.migrations import add_missing

    conn = op.get_bind()
    had_datasets = sa.inspect(conn).has_table("datasets")
    added = add_missing(conn, BASELINE)
    if had_datasets and "dataset_names" in added["tables"]:
        # Before dataset_names, a dataset's name was a column of the dataset: link each to it.
        conn.execute(sa.text("INSERT INTO dataset_names (name, dataset_id, created_at) "
                             "SELECT d.name, d.id, d.created_at FROM datasets d"))


def downgrade() -> None:
    raise NotImplementedError("0001 is the baseline: there is no tuneops schema before it to go back to")
