"""Canary and shadow routes of an alias, and the monitor that rolls a canary back when it breaches its SLO.

- **Canary**: a sticky share of an alias's traffic is answered by another artifact. The bucket of a request
  is ``sha256(alias | "user:" + user)`` (or the tenant, by ``sticky``) mod 10,000, so the same user always
  lands on the same side, and raising the percentage only moves users from primary to canary. A canary must
  meet every condition of a promotion (intact, signed by a trusted key, before its sunset, untainted,
  licensed for the alias's declared use, a succeeded run, a passing gated eval report — never ``--force``)
  and stay on the alias's base: it answers real users.
- **Shadow**: a sample of requests is copied to another artifact in the background; its answers are never
  returned, only its outcome recorded. It needs every condition except the eval gates (shadowing is how a
  candidate is tried on production traffic before it has earned a canary): intact, signed, before its
  sunset, untainted, licensed, same base.
- **SLO** (:class:`SLO`): the canary's error rate (absolute, and optionally minus the primary's) and p99
  latency (absolute ms, or as a ratio to the primary's), judged over a sliding window once the canary has
  ``min_requests`` outcomes in it. :class:`CanaryMonitor` keeps the outcomes in memory, per process; on a
  breach it rolls the canary back once (:func:`rollback_canary`, conditional on that very route still being
  active, so several server processes log a single rollback) and the move's reason carries the numbers.

Every change is a move in the alias's hash-chained history (``canary``, ``canary_rollback``, ``shadow``,
``route_clear``; from = what traffic leaves, to = where it goes) plus an audit event with the settings;
none of them changes the alias's target or the promote/rollback list (registry.TARGET_ACTIONS).

How a serving front uses it, per request for alias A whose production target is P::

    route = routes.get(A)                                   # RouteCache: ≤ 1 s stale
    artifact_id, role = choose_target(route, P, tenant_id=tenant, user=body.user)
    t0 = time.monotonic(); ok = True
    try: answer = generate(artifact_id, …)                  # role "canary": serve and label it as such
    except ServerSideError: ok = False; raise               # 5xx-class only; a client's 4xx is not the canary's fault
    finally: monitor.record(A, role, artifact_id, ok, time.monotonic() - t0)
    shadow = should_shadow(route, P, artifact_id)
    if shadow: run the same request on `shadow` in the background, discard the answer,
               monitor.record(A, "shadow", shadow, ok, latency)
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneops.errors import GateFailed, InvalidInput, NotFound, StateError, TuneopsError
from tuneops.release.registry import (
    _append_move, _lock_alias, check_promotable, declared_use, parse_alias, recipe_use,
)
from tuneops.store import Store
from tuneops.store.schema import AliasMove, AliasRecord, ArtifactRecord, utcnow
from tuneops.store.schema_routes import AliasRoute
from tuneops.store.store import default_actor

log = logging.getLogger("tuneops.routing")

STICKY = ("user", "tenant")
BUCKETS = 10_000  # percentages have 0.01 resolution
ROLES = ("primary", "canary", "shadow")


# -- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SLO:
    """What a canary must hold, judged over the last ``window_s`` seconds once it has ``min_requests``
    outcomes there. ``None`` switches a limit off; the ``*_delta`` / ``*_ratio`` limits compare with the
    primary and are judged only once the primary has ``min_requests`` outcomes too."""

    max_error_rate: float | None = 0.05  # canary errors / requests
    max_error_rate_delta: float | None = None  # canary error rate minus the primary's
    max_p99_ms: float | None = None  # canary p99 latency
    max_latency_ratio: float | None = 2.0  # canary p99 / primary p99
    min_requests: int = 100
    window_s: float = 600.0

    def __post_init__(self):
        for name in ("max_error_rate", "max_error_rate_delta"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise InvalidInput(f"SLO {name} must be between 0 and 1 (a fraction of requests), got {v}")
        for name in ("max_p99_ms", "max_latency_ratio", "window_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise InvalidInput(f"SLO {name} must be > 0, got {v}")
        if not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise InvalidInput(f"SLO min_requests must be a whole number ≥ 1, got {self.min_requests}")
        if self.max_error_rate is None and self.max_error_rate_delta is None and self.max_p99_ms is None \
                and self.max_latency_ratio is None:
            raise InvalidInput("an SLO needs at least one limit (error rate, error-rate delta, p99 ms or latency "
                               "ratio): a canary nothing can roll back is a promotion")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SLO":
        known = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def describe(self) -> str:
        parts = []
        if self.max_error_rate is not None:
            parts.append(f"errors ≤ {self.max_error_rate:.1%}")
        if self.max_error_rate_delta is not None:
            parts.append(f"errors ≤ primary + {self.max_error_rate_delta:.1%}")
        if self.max_p99_ms is not None:
            parts.append(f"p99 ≤ {self.max_p99_ms:g} ms")
        if self.max_latency_ratio is not None:
            parts.append(f"p99 ≤ {self.max_latency_ratio:g}× primary")
        return ", ".join(parts) + f"; judged after {self.min_requests} requests in {self.window_s:g} s"


@dataclass(frozen=True)
class Route:
    """One alias's active (or ended) route, as the front reads it; see AliasRoute for the columns."""

    id: int
    name: str
    stage: str
    primary_artifact: str | None
    canary_artifact: str | None
    canary_percent: float
    sticky: str
    shadow_artifact: str | None
    shadow_percent: float
    slo: SLO
    state: str
    reason: str | None
    created_by: str
    created_at: datetime | None
    ended_by: str | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None

    @property
    def alias(self) -> str:
        return f"{self.name}@{self.stage}"

    @property
    def active(self) -> bool:
        return self.state == "active"

    @classmethod
    def of(cls, row: AliasRoute) -> "Route":
        return cls(id=row.id, name=row.name, stage=row.stage, primary_artifact=row.primary_artifact,
                   canary_artifact=row.canary_artifact, canary_percent=float(row.canary_percent or 0),
                   sticky=row.sticky or "user", shadow_artifact=row.shadow_artifact,
                   shadow_percent=float(row.shadow_percent or 0), slo=SLO.from_dict(row.slo), state=row.state,
                   reason=row.reason, created_by=row.created_by, created_at=row.created_at, ended_by=row.ended_by,
                   ended_at=row.ended_at, end_reason=row.end_reason)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alias"] = self.alias
        d["slo"] = self.slo.to_dict()
        for k in ("created_at", "ended_at"):
            d[k] = d[k].isoformat(timespec="seconds") if d[k] else None
        return d


def _check_percent(percent: float, what: str) -> float:
    try:
        p = float(percent)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} percent must be a number, got {percent!r}") from None
    if not (0 < p <= 100) or math.isnan(p):
        raise InvalidInput(f"{what} percent must be > 0 and ≤ 100, got {percent}",
                           hint="to stop it, use `tuneops registry route-clear ALIAS`")
    return round(p, 2)


# -- reading ------------------------------------------------------------------------------------

def _active_row(s: Session, name: str, stage: str, *, lock: bool = False) -> AliasRoute | None:
    q = select(AliasRoute).where(AliasRoute.name == name, AliasRoute.stage == stage, AliasRoute.state == "active") \
        .order_by(AliasRoute.id.desc()).limit(1)
    if lock:
        q = q.with_for_update()
    return s.scalars(q).first()


def get_route(store: Store, alias: str) -> Route | None:
    """The alias's active route, or None (it serves its production target alone)."""
    name, stage = parse_alias(alias)
    with store.session(write=False) as s:
        row = _active_row(s, name, stage)
        return Route.of(row) if row is not None else None


def route_history(store: Store, alias: str) -> list[Route]:
    """Every route the alias has had, oldest first (active, rolled back, cleared, replaced)."""
    name, stage = parse_alias(alias)
    with store.session(write=False) as s:
        rows = s.scalars(select(AliasRoute).where(AliasRoute.name == name, AliasRoute.stage == stage)
                         .order_by(AliasRoute.id)).all()
        return [Route.of(r) for r in rows]


class RouteCache:
    """Active routes for the front, re-read at most every ``ttl_s`` seconds per alias (a route change reaches
    new requests within that); thread-safe. ``invalidate`` after a change this process made."""

    def __init__(self, store: Store, *, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.store, self.ttl_s, self.clock = store, ttl_s, clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Route | None]] = {}

    def get(self, alias: str) -> Route | None:
        key = _norm_alias(alias)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            route = get_route(self.store, key)
        except Exception as e:  # a request must not fail because the route could not be re-read: keep the last
            log.error("reading the route of %s failed (%s); keeping the last one read", key, e)
            return hit[1] if hit is not None else None
        with self._lock:
            self._cache[key] = (now, route)
        return route

    def invalidate(self, alias: str | None = None) -> None:
        with self._lock:
            if alias is None:
                self._cache.clear()
            else:
                self._cache.pop(_norm_alias(alias), None)


@lru_cache(maxsize=4096)
def _norm_alias(alias: str) -> str:
    name, stage = parse_alias(alias)
    return f"{name}@{stage}"


# -- changing -----------------------------------------------------------------------------------

_FORCE_HINT = re.compile(r"(,? or )?pass --force --reason '…'( to promote it anyway)?( \(logged\))?")


def _refusal(e: TuneopsError, artifact_id: str, alias: str, what: str) -> TuneopsError:
    """The promotion condition's own error (same type, so the same exit code), told as a refusal of the route;
    its ``--force`` advice is dropped: a route is never forced."""
    hint = _FORCE_HINT.sub("", e.hint or "").strip(" ,;")
    e.message = f"{artifact_id} cannot be the {what} of {alias}: {e.message}"
    e.hint = hint or f"a {what} meets the same conditions as a promotion (there is no --force for it)"
    e.args = (f"{e.message}\n  fix: {e.hint}",)
    return e


def _release_checks(store: Store, artifact: ArtifactRecord, name: str, stage: str, *, gates: bool,
                    what: str) -> dict:
    """The promotion conditions that do not depend on the alias (gates only with ``gates``); facts for the log."""
    with store.session(write=False) as s:
        declared = declared_use(s, name, stage)
    use = declared or recipe_use(store, artifact) or "commercial"
    try:
        report, facts = check_promotable(store, artifact, use=use, force=not gates)
    except TuneopsError as e:
        raise _refusal(e, artifact.id, f"{name}@{stage}", what) from None
    facts = {**facts, "use": use}
    if report is not None:
        facts["gates"] = report.id
    return facts


def _locked_alias(s: Session, name: str, stage: str, artifact: ArtifactRecord | None, what: str) -> AliasRecord:
    current = _lock_alias(s, name, stage)
    if current is None:
        raise NotFound(f"alias {name}@{stage} does not exist, so it has no traffic to route",
                       hint=f"promote its first target: `tuneops registry promote ARTIFACT {name}@{stage}`")
    if artifact is None:
        return current
    if current.artifact_id == artifact.id:
        raise StateError(f"{name}@{stage} already serves {artifact.id}; a {what} of it would compare it with itself")
    primary = s.get(ArtifactRecord, current.artifact_id)
    if primary is not None and primary.base_id != artifact.base_id:
        raise GateFailed(f"{name}@{stage} serves {primary.id}, trained on {primary.base_id}, but {artifact.id} was "
                         f"trained on {artifact.base_id}: a server of {name}@{stage} runs one base, so it cannot be "
                         f"its {what}", hint="give it an alias of its own")
    return current


def _end(row: AliasRoute, state: str, reason: str | None) -> None:
    row.state, row.ended_by, row.ended_at, row.end_reason = state, default_actor(), utcnow(), reason


def _successor(s: Session, name: str, stage: str, old: AliasRoute | None, primary: str, reason: str,
               **changes) -> AliasRoute:
    """A new active route carrying over what ``old`` had that ``changes`` does not replace; ``old`` ends as replaced."""
    keep = {}
    if old is not None:
        keep = dict(canary_artifact=old.canary_artifact, canary_percent=old.canary_percent, sticky=old.sticky,
                    shadow_artifact=old.shadow_artifact, shadow_percent=old.shadow_percent, slo=old.slo)
        _end(old, "replaced", reason)
    fields = {"canary_artifact": None, "canary_percent": 0.0, "sticky": "user", "shadow_artifact": None,
              "shadow_percent": 0.0, "slo": {}, **keep, **changes}
    row = AliasRoute(name=name, stage=stage, primary_artifact=primary, state="active", reason=reason,
                     created_by=default_actor(), created_at=utcnow(), **fields)
    s.add(row)
    s.flush()
    if old is not None:
        old.end_reason = f"replaced by route {row.id}: {reason}"
    return row


def _need_reason(reason: str | None, what: str) -> str:
    if not reason or not reason.strip():
        raise InvalidInput(f"a {what} needs --reason: it is logged in the alias's history")
    return reason.strip()


def set_canary(store: Store, alias: str, artifact_id: str, percent: float, *, sticky: str = "user",
               slo: SLO | None = None, reason: str | None = None) -> tuple[Route, AliasMove]:
    """Send ``percent`` % of ``alias``'s traffic (sticky by user or tenant) to ``artifact_id``, judged by ``slo``.
    The artifact must meet every promotion condition and stay on the alias's base; the refusal names the
    condition. Replaces an earlier canary (a shadow is kept). Logged as a ``canary`` move."""
    name, stage = parse_alias(alias)
    reason = _need_reason(reason, "canary")
    percent = _check_percent(percent, "canary")
    if sticky not in STICKY:
        raise InvalidInput(f"--sticky must be one of {', '.join(STICKY)}, got {sticky!r}")
    slo = slo or SLO()
    artifact = store.get_artifact(artifact_id)
    facts = _release_checks(store, artifact, name, stage, gates=True, what="canary")

    def do(s: Session) -> tuple[Route, AliasMove]:
        current = _locked_alias(s, name, stage, artifact, "canary")
        old = _active_row(s, name, stage, lock=True)
        row = _successor(s, name, stage, old, current.artifact_id, reason, canary_artifact=artifact.id,
                         canary_percent=percent, sticky=sticky, slo=slo.to_dict())
        note = f"{reason} [{percent:g}% sticky by {sticky}; SLO {slo.describe()}; route {row.id}]"
        move = _append_move(s, store, name=name, stage=stage, action="canary", current=current,
                            to_artifact=artifact.id, reason=note, route=row.id, percent=percent, sticky=sticky,
                            slo=slo.to_dict(), replaced=old.id if old is not None else None, **facts)
        return Route.of(row), move

    return store.transact(do)


def set_shadow(store: Store, alias: str, artifact_id: str, percent: float = 100.0, *,
               reason: str | None = None) -> tuple[Route, AliasMove]:
    """Copy ``percent`` % of ``alias``'s requests to ``artifact_id`` in the background, never returning its
    answers. Every promotion condition but the eval gates applies. Replaces an earlier shadow (a canary is
    kept). Logged as a ``shadow`` move."""
    name, stage = parse_alias(alias)
    reason = _need_reason(reason, "shadow")
    percent = _check_percent(percent, "shadow")
    artifact = store.get_artifact(artifact_id)
    facts = _release_checks(store, artifact, name, stage, gates=False, what="shadow")

    def do(s: Session) -> tuple[Route, AliasMove]:
        current = _locked_alias(s, name, stage, artifact, "shadow")
        old = _active_row(s, name, stage, lock=True)
        row = _successor(s, name, stage, old, current.artifact_id, reason, shadow_artifact=artifact.id,
                         shadow_percent=percent)
        note = f"{reason} [{percent:g}% of requests copied, answers discarded; route {row.id}]"
        move = _append_move(s, store, name=name, stage=stage, action="shadow", current=current,
                            to_artifact=artifact.id, reason=note, route=row.id, percent=percent,
                            replaced=old.id if old is not None else None, **facts)
        return Route.of(row), move

    return store.transact(do)


def clear_route(store: Store, alias: str, *, reason: str | None = None, part: str = "all") -> list[AliasMove]:
    """End the alias's canary, shadow or both (``part``); one ``route_clear`` move per part ended (from the
    canary or shadow, to the production target). What is left of the route stays active."""
    name, stage = parse_alias(alias)
    reason = _need_reason(reason, "route change")
    if part not in ("all", "canary", "shadow"):
        raise InvalidInput(f"part must be all, canary or shadow, got {part!r}")

    def do(s: Session) -> list[AliasMove]:
        current = _locked_alias(s, name, stage, None, "route")
        row = _active_row(s, name, stage, lock=True)
        ending = [] if row is None else [p for p in ("canary", "shadow")
                                          if part in ("all", p) and getattr(row, f"{p}_artifact")]
        if not ending:
            what = "route" if part == "all" else part
            raise StateError(f"{name}@{stage} has no active {what}; nothing changed",
                             hint=f"see `tuneops registry route {name}@{stage}`")
        keep = {p: getattr(row, f"{p}_artifact") for p in ("canary", "shadow") if p not in ending}
        _end(row, "cleared", reason)
        if any(keep.values()):
            _successor(s, name, stage, None, current.artifact_id,
                       f"kept after clearing the {' and '.join(ending)}: {reason}",
                       **({"canary_artifact": row.canary_artifact, "canary_percent": row.canary_percent,
                           "sticky": row.sticky, "slo": row.slo} if keep.get("canary") else {}),
                       **({"shadow_artifact": row.shadow_artifact, "shadow_percent": row.shadow_percent}
                          if keep.get("shadow") else {}))
        return [_append_move(s, store, name=name, stage=stage, action="route_clear", current=current,
                             from_artifact=getattr(row, f"{p}_artifact"), to_artifact=current.artifact_id,
                             reason=f"{p} ended: {reason} [route {row.id}]", route=row.id, part=p)
                for p in ending]

    return store.transact(do)


def rollback_canary(store: Store, alias: str, *, reason: str, route_id: int | None = None) -> AliasMove | None:
    """End the alias's canary as ``rolled_back`` and log a ``canary_rollback`` move (from the canary to the
    production target) with ``reason``. With ``route_id`` (the monitor) it is conditional: None when that
    route is no longer the active one or has no canary (rolled back, cleared or replaced already), so
    concurrent judges log one rollback. A shadow of another artifact is kept on a new route."""
    name, stage = parse_alias(alias)
    reason = _need_reason(reason, "canary rollback")

    def do(s: Session) -> AliasMove | None:
        current = _locked_alias(s, name, stage, None, "route")
        row = _active_row(s, name, stage, lock=True)
        if row is None or not row.canary_artifact or (route_id is not None and row.id != route_id):
            if route_id is not None:
                return None
            raise StateError(f"{name}@{stage} has no active canary; nothing changed",
                             hint=f"see `tuneops registry route {name}@{stage}`")
        _end(row, "rolled_back", reason)
        if row.shadow_artifact and row.shadow_artifact != row.canary_artifact:
            _successor(s, name, stage, None, current.artifact_id,
                       f"shadow kept after the canary's rollback (route {row.id})",
                       shadow_artifact=row.shadow_artifact, shadow_percent=row.shadow_percent)
        return _append_move(s, store, name=name, stage=stage, action="canary_rollback", current=current,
                            from_artifact=row.canary_artifact, to_artifact=current.artifact_id,
                            reason=f"{reason} [route {row.id}]", route=row.id)

    return store.transact(do)


# -- per request --------------------------------------------------------------------------------

def bucket(alias: str, key: str) -> int:
    """A request key's place in [0, 10000) for ``alias``: the same key, the same place, every time and process."""
    digest = hashlib.sha256(f"{_norm_alias(alias)}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def sticky_key(route: Route, *, tenant_id: str | None, user: str | None) -> str | None:
    """What keeps a request on its side: the user (``sticky="user"``) or the tenant first, the other as the
    fallback; None when neither is known (the request is then placed at random)."""
    order = (("user", user), ("tenant", tenant_id)) if route.sticky == "user" else \
        (("tenant", tenant_id), ("user", user))
    return next((f"{kind}:{value}" for kind, value in order if value), None)


def choose_target(route: Route | None, primary_artifact_id: str, *, tenant_id: str | None = None,
                  user: str | None = None, rng: random.Random | None = None) -> tuple[str, str]:
    """(artifact id, role) for one request: ``canary`` when its sticky bucket falls below the canary's
    percentage, else ``primary``. No route, no canary, an ended route, or a canary that became the production
    target: always the primary."""
    if route is None or not route.active or not route.canary_artifact or route.canary_percent <= 0 \
            or route.canary_artifact == primary_artifact_id:
        return primary_artifact_id, "primary"
    key = sticky_key(route, tenant_id=tenant_id, user=user)
    place = bucket(route.alias, key) if key is not None else (rng or random).randrange(BUCKETS)
    if place < round(route.canary_percent * 100):
        return route.canary_artifact, "canary"
    return primary_artifact_id, "primary"


def should_shadow(route: Route | None, primary_artifact_id: str, served_artifact_id: str, *,
                  request_id: str | None = None, rng: random.Random | None = None) -> str | None:
    """The artifact to copy this request to in the background, or None. Sampled per request (by ``request_id``'s
    hash when given, else at random) at the shadow's percentage; never when the shadow is what answered."""
    if route is None or not route.active or not route.shadow_artifact or route.shadow_percent <= 0:
        return None
    if route.shadow_artifact in (served_artifact_id, primary_artifact_id):
        return None
    place = bucket(route.alias, f"request:{request_id}") if request_id else (rng or random).randrange(BUCKETS)
    return route.shadow_artifact if place < round(route.shadow_percent * 100) else None


# -- judging ------------------------------------------------------------------------------------

@dataclass
class TargetStats:
    artifact: str | None
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    p50_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}


@dataclass
class Verdict:
    """One evaluation of an alias's canary: judged (enough requests), breach, why, the numbers per target,
    and whether this evaluation rolled it back."""

    alias: str
    route_id: int | None
    judged: bool
    breach: bool
    reasons: list[str] = field(default_factory=list)
    canary: TargetStats | None = None
    primary: TargetStats | None = None
    shadow: TargetStats | None = None
    note: str | None = None
    rolled_back: bool = False
    rollback_error: str | None = None

    @property
    def message(self) -> str:
        if self.breach:
            return f"canary {self.canary.artifact} breached its SLO: " + "; ".join(self.reasons)
        return self.note or "within its SLO"

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("canary", "primary", "shadow"):
            d[k] = getattr(self, k).to_dict() if getattr(self, k) is not None else None
        d["message"] = self.message
        return d


def _p(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]  # nearest rank


def _stats(artifact: str | None, samples: list[tuple[float, bool, float]]) -> TargetStats:
    ms = sorted(lat * 1000.0 for _, _, lat in samples)
    return TargetStats(artifact=artifact, requests=len(samples), errors=sum(1 for _, ok, _ in samples if not ok),
                       p99_ms=_p(ms, 0.99), p50_ms=_p(ms, 0.50))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def judge(slo: SLO, canary: TargetStats, primary: TargetStats) -> tuple[bool, list[str]]:
    """(judged, breaches): nothing is judged before the canary has ``min_requests`` outcomes; the limits
    relative to the primary wait for the primary to have as many."""
    if canary.requests < slo.min_requests:
        return False, []
    out = []
    vs = f" (primary {_pct(primary.error_rate)}, {primary.errors}/{primary.requests})"
    if slo.max_error_rate is not None and canary.error_rate > slo.max_error_rate:
        out.append(f"error rate {_pct(canary.error_rate)} ({canary.errors}/{canary.requests}) > "
                   f"{_pct(slo.max_error_rate)}{vs}")
    primary_judged = primary.requests >= slo.min_requests
    if slo.max_error_rate_delta is not None and primary_judged \
            and canary.error_rate - primary.error_rate > slo.max_error_rate_delta:
        out.append(f"error rate {_pct(canary.error_rate)} ({canary.errors}/{canary.requests}) exceeds the primary's "
                   f"{_pct(primary.error_rate)} ({primary.errors}/{primary.requests}) by more than "
                   f"{_pct(slo.max_error_rate_delta)}")
    if slo.max_p99_ms is not None and canary.p99_ms > slo.max_p99_ms:
        out.append(f"p99 latency {canary.p99_ms:.0f} ms > {slo.max_p99_ms:g} ms"
                   + (f" (primary {primary.p99_ms:.0f} ms)" if primary.p99_ms is not None else ""))
    if slo.max_latency_ratio is not None and primary_judged and primary.p99_ms \
            and canary.p99_ms / primary.p99_ms > slo.max_latency_ratio:
        out.append(f"p99 latency {canary.p99_ms:.0f} ms is {canary.p99_ms / primary.p99_ms:.2f}× the primary's "
                   f"{primary.p99_ms:.0f} ms (> {slo.max_latency_ratio:g}×)")
    return True, out


class CanaryMonitor:
    """Outcomes per (alias, role, artifact) in a sliding window, in memory, thread-safe; judges each alias's
    canary against its route's SLO and rolls it back on a breach, once per route.

    ``routes``: where the active route comes from (a RouteCache, or any callable alias -> Route | None).
    ``record`` judges the alias after every ``check_every``-th canary outcome; ``evaluate`` judges now."""

    def __init__(self, store: Store, *, routes: RouteCache | Callable[[str], Route | None] | None = None,
                 auto_rollback: bool = True, check_every: int = 10, max_samples: int = 20_000,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.routes = routes if routes is not None else RouteCache(store)
        self.auto_rollback, self.check_every, self.max_samples, self.clock = auto_rollback, check_every, \
            max_samples, clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], deque] = {}
        self._primary: dict[str, str] = {}  # alias -> the primary artifact last recorded
        self._since_check: dict[str, int] = {}
        self._rolled: set[int] = set()  # route ids rolled back (or being rolled back) by this monitor

    def _route(self, alias: str) -> Route | None:
        return self.routes.get(alias) if isinstance(self.routes, RouteCache) else self.routes(alias)

    def record(self, alias: str, role: str, artifact_id: str, ok: bool, latency_s: float) -> Verdict | None:
        """One request's outcome (``ok``: no server-side error; ``latency_s``: wall time of the request).
        Returns the verdict when this call judged the canary, else None."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        alias = _norm_alias(alias)
        due = False
        with self._lock:
            key = (alias, role, artifact_id)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque(maxlen=self.max_samples)
            window.append((self.clock(), bool(ok), float(latency_s)))
            if role == "primary":
                self._primary[alias] = artifact_id
            elif role == "canary":
                n = self._since_check.get(alias, 0) + 1
                due = n >= self.check_every
                self._since_check[alias] = 0 if due else n
        return self.evaluate(alias) if due else None

    def _samples(self, key: tuple[str, str, str], since: float) -> list[tuple[float, bool, float]]:
        window = self._windows.get(key)
        if not window:
            return []
        while window and window[0][0] < since:
            window.popleft()
        return list(window)

    def evaluate(self, alias: str, route: Route | None = None, *, act: bool = True) -> Verdict:
        """Judge the alias's canary now; on a breach (with ``act`` and ``auto_rollback``) roll it back, once per
        route."""
        alias = _norm_alias(alias)
        route = route if route is not None else self._route(alias)
        if route is None or not route.active or not route.canary_artifact:
            return Verdict(alias, route.id if route else None, False, False, note="no active canary")
        slo = route.slo
        with self._lock:
            since = self.clock() - slo.window_s
            primary_id = self._primary.get(alias) or route.primary_artifact
            canary = _stats(route.canary_artifact, self._samples((alias, "canary", route.canary_artifact), since))
            primary = _stats(primary_id, self._samples((alias, "primary", primary_id), since) if primary_id else [])
            shadow = _stats(route.shadow_artifact, self._samples((alias, "shadow", route.shadow_artifact), since)) \
                if route.shadow_artifact else None
        judged, reasons = judge(slo, canary, primary)
        verdict = Verdict(alias, route.id, judged, bool(reasons), reasons, canary, primary, shadow,
                          note=None if judged else f"not judged yet: {canary.requests} of {slo.min_requests} "
                                                   "canary requests in the window")
        if verdict.breach and act and self.auto_rollback:
            with self._lock:
                first = route.id not in self._rolled
                self._rolled.add(route.id)
            if first:
                self._roll_back(verdict, route)
        return verdict

    def _roll_back(self, verdict: Verdict, route: Route) -> None:
        reason = f"automatic: {verdict.message} (window {route.slo.window_s:g} s)"
        try:
            move = rollback_canary(self.store, route.alias, reason=reason, route_id=route.id)
        except Exception as e:  # never fail the request that happened to trigger the judgement; retry next time
            with self._lock:
                self._rolled.discard(route.id)
            verdict.rollback_error = f"{type(e).__name__}: {e}"
            log.error("canary rollback of %s failed: %s", route.alias, verdict.rollback_error)
            return
        verdict.rolled_back = move is not None
        if isinstance(self.routes, RouteCache):
            self.routes.invalidate(route.alias)
        log.warning("%s: %s", route.alias, reason if move is not None else "canary already ended elsewhere")

    def stats(self, alias: str) -> dict:
        """The numbers per target in the current window of the alias's route, judged but never acted on (for
        /metrics or a status page)."""
        return self.evaluate(alias, act=False).to_dict()


__all__ = ["SLO", "Route", "RouteCache", "CanaryMonitor", "Verdict", "TargetStats", "bucket", "choose_target",
           "clear_route", "get_route", "judge", "rollback_canary", "route_history", "set_canary", "set_shadow",
           "should_shadow", "sticky_key"]
