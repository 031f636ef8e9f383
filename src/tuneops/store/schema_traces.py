"""Tables for serving (traces), on the ledger's declarative Base; imported by schema.py so every store has them."""

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tuneops.store.schema import Base, utcnow


class TraceRecord(Base):
    """One served request (serve/tracing.py): who asked for what, which base revision and adapter answered,
    how it went — and, only where content tracing is on, the PII-redacted messages and answers.

    Traces are high-volume run-time records, not ledger entries: no audit event, no foreign keys (a trace
    outlives nothing it names, and must never block or fail a request on a constraint)."""

    __tablename__ = "traces"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "tr-" + ulid, sent as X-Tuneops-Trace
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)  # request arrival
    tenant: Mapped[str | None] = mapped_column(String(200), nullable=True)  # tenant id; None: serving without tenants
    endpoint: Mapped[str] = mapped_column(String(64), default="chat.completions")  # "chat.completions" | "completions"
    model: Mapped[str | None] = mapped_column(String(300), nullable=True)  # the `model` string as the client sent it
    alias: Mapped[str | None] = mapped_column(String(200), nullable=True)  # name@stage it resolved through
    artifact_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: the bare base answered
    base_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    base_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)  # sha256 of the base's weights
    path: Mapped[str | None] = mapped_column(String(16), nullable=True)  # batched | peft | merged | base
    status: Mapped[int] = mapped_column(Integer)  # HTTP status answered (499: the client went away)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)  # OpenAI-style error code
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # arrival -> last byte
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    queue_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    gen_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # first forward pass -> done
    cold_load_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: the adapter was resident
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # {"fallback": …, "interrupted": …, "canary": …}: what the front adds; small, never content
    extra: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Only with content tracing on: {"messages" | "prompt": …, "completion": [...]}, already PII-redacted
    content: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    pii: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # per-type counts of what redaction replaced

    __table_args__ = (
        Index("ix_traces_tenant_at", "tenant", "at"),
        Index("ix_traces_artifact_at", "artifact_id", "at"),
    )
