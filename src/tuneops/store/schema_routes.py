"""Tables for serving (routes), on the ledger's declarative Base; imported by schema.py so every store has them.

A route is how an alias's traffic is split besides its production target (release/routing.py): a canary
(a sticky percentage of users or tenants answered by another artifact, judged against an SLO) and/or a
shadow (a sample of requests copied to another artifact whose answers are never returned). One row per
episode: at most one ``active`` row per alias (written under the alias lock); a change ends the active row
(``replaced``) and starts a new one, so a row's id names one configuration — the canary monitor rolls
each back at most once. Every change is also an alias move (hash-chained), which is what ``registry
history`` shows; this table holds the settings the front reads per request.
"""

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tuneops.store.schema import Base, utcnow

ROUTE_STATES = ("active", "rolled_back", "cleared", "replaced")


class AliasRoute(Base):
    __tablename__ = "alias_routes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    # the production target when the route started (what the canary is compared with)
    primary_artifact: Mapped[str | None] = mapped_column(String(64), nullable=True)
    canary_artifact: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id"), nullable=True)
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0)  # 0–100, 0.01 resolution
    sticky: Mapped[str] = mapped_column(String(16), default="user")  # user | tenant
    shadow_artifact: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id"), nullable=True)
    shadow_percent: Mapped[float] = mapped_column(Float, default=0.0)
    # {"max_error_rate", "max_error_rate_delta", "max_p99_ms", "max_latency_ratio", "min_requests", "window_s"}
    slo: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="active")  # one of ROUTE_STATES
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
