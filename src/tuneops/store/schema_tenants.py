"""Tables for serving (tenants), on the ledger's declarative Base; imported by schema.py so every store has them.

A tenant is who calls the server: its API keys (only their sha256 is stored), the aliases it may call
(grants), whether it may call the bare base, its quotas, and per-tenant routing (which stage a bare
alias name means for it) and pinning. Admin code lives in ``tuneops.serve.tenants``.
"""

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tuneops.store.schema import Base, utcnow


class TenantRecord(Base):
    """A tenant; never deleted (disable it instead), so its name stays unique in the audit log."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "tn-<ulid>"
    name: Mapped[str] = mapped_column(String(64), unique=True)
    allow_base: Mapped[bool] = mapped_column(Boolean, default=False)  # may call the bare base model
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)  # every key answers 403 tenant_disabled
    requests_per_min: Mapped[int | None] = mapped_column(Integer, nullable=True)  # NULL: no limit
    tokens_per_min: Mapped[int | None] = mapped_column(Integer, nullable=True)  # prompt + completion; NULL: no limit
    routing: Mapped[dict] = mapped_column(JSON, default=dict)  # {alias name: stage} a bare name means
    pinned: Mapped[list] = mapped_column(JSON, default=list)  # alias names the adapter pool keeps resident
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKeyRecord(Base):
    """One API key of a tenant. Keys are 256-bit random, so a plain sha256 is a safe verifier; the raw key
    is shown once, when made, and never stored or logged. ``prefix`` (the first 12 characters) lets an
    admin tell keys apart."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "key-<16 hex>"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # rotation grace
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TenantGrant(Base):
    """A tenant may call ``alias``: a bare name (``support-bot``) covers every stage of it, ``name@stage``
    only that stage."""

    __tablename__ = "tenant_grants"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
