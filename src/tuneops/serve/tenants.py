"""Tenants of the server: who may call which model, how often, with which key.

- **Keys.** ``tnk-`` + 43 URL-safe characters (``secrets.token_urlsafe(32)``: 256 random bits). Only the
  sha256 of a key is stored, with its first 12 characters as a ``prefix`` admins can see; the raw key
  is returned once, by ``add_tenant`` / ``rotate_key``, and never stored, logged or audited. Keys are
  looked up by their hash, so the time a lookup takes says nothing about any stored key.
- **Grants.** A grant of ``name`` lets the tenant call ``name@`` any stage; a grant of ``name@stage``
  only that stage. A bare ``name`` in a request means the stage the tenant's routing names for it
  (``{"quickstart": "staging"}``), else ``production``. An artifact id (``ad-…``) may be called only
  while it is the current target of an alias stage the tenant's grants cover. The base (by id or
  name) only with ``allow_base``.
- **Isolation.** A model the tenant may not call and one that does not exist get the same 404
  ``model_not_found`` with the same words, which never include the requested name: a tenant cannot
  learn another tenant's aliases (or names) from the answers. Only the base, which every client can
  see in ``GET /v1/models`` anyway, is refused with 403 ``model_not_allowed``.
- **Freshness.** ``TenantDirectory`` keeps tenants, keys and grants in memory and reloads them at most
  ``refresh_s`` (1 s) after they were last read, so a revoked, rotated or disabled key stops working
  within about a second, without a restart; a key's rotation grace ends exactly on time.
- **Open mode.** With no tenant defined the directory is open: any client may call every model
  (local development; the server says so at start). Adding the first tenant closes it within 1 s.
- **Quotas.** ``QuotaLimiter``: per-tenant token buckets in memory (requests per minute, tokens per
  minute = prompt + completion), refilled continuously, full at start; 429 with Retry-After when empty.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from tuneops.errors import InvalidInput, NotFound, StateError, TuneopsError
from tuneops.release.registry import ALIAS_RE, DEFAULT_STAGE
from tuneops.store.schema import AliasRecord, utcnow
from tuneops.store.schema_tenants import ApiKeyRecord, TenantGrant, TenantRecord

log = logging.getLogger("tuneops.serve.tenants")

KEY_PREFIX = "tnk-"
KEY_SHOWN = 12  # characters of a key an admin sees ("tnk-" + 8 random characters)
TENANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
STAGE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NAME_HINT = "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. acme-support)"
MODEL_HINT = "GET /v1/models lists the models your API key can call"


# -- errors -----------------------------------------------------------------------------------

class InvalidApiKey(TuneopsError):
    """401: no key, or one that is unknown, revoked or past its rotation grace."""

    http_status = 401
    error_code = "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}


class TenantDisabled(TuneopsError):
    """403: the key is valid but its tenant was disabled by an admin."""

    http_status = 403
    error_type = "permission_error"
    error_code = "tenant_disabled"
    headers: dict = {}


class ModelNotAllowed(TuneopsError):
    """403: the base model, to a tenant without ``allow_base``."""

    http_status = 403
    error_type = "permission_error"
    error_code = "model_not_allowed"
    headers: dict = {}


class ModelNotFound(NotFound):
    """404: the model does not exist *or* this tenant may not call it (deliberately the same answer)."""

    headers: dict = {}


class RateLimited(TuneopsError):
    """429: the tenant's requests or tokens per minute are used up; ``retry_after`` whole seconds (≥ 1)."""

    http_status = 429
    error_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, kind: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.retry_after = max(1, int(retry_after))
        self.error_type = kind  # "requests" or "tokens", as OpenAI's 429s say
        self.headers = {"Retry-After": str(self.retry_after)}


class RequestTooLarge(TuneopsError):
    """400: one request needs more tokens than the tenant's whole per-minute budget; waiting cannot help."""

    http_status = 400
    error_code = "request_too_large"
    headers: dict = {}


# -- keys -------------------------------------------------------------------------------------

def new_key() -> str:
    """A fresh raw API key: ``tnk-`` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # A 256-bit random key needs no salt or slow hash: nothing about it can be guessed.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything tuneops writes is UTC.
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


# -- admin ------------------------------------------------------------------------------------

def _check_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_NAME_RE.match(name):
        raise InvalidInput(f"tenant name {name!r} is not valid", hint=NAME_HINT)
    return name


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise InvalidInput(f"alias {alias!r} is not valid",
                           hint="write an alias name (every stage: support-bot) or name@stage (support-bot@production)")
    return alias


def _check_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be a whole number ≥ 1 (got {value!r})", hint="leave it unset for no limit")
    return value


def _tenant(s: Session, name: str, *, lock: bool = True) -> TenantRecord:
    query = select(TenantRecord).where(TenantRecord.name == name)
    rec = s.scalars(query.with_for_update() if lock else query).first()  # a row lock on PostgreSQL
    if rec is None:
        raise NotFound(f"tenant {name!r} not found", hint="list them with `tuneops tenants list`")
    return rec


def _issue_key(s: Session, tenant_id: str) -> tuple[ApiKeyRecord, str]:
    raw = new_key()
    rec = ApiKeyRecord(id=f"key-{secrets.token_hex(8)}", tenant_id=tenant_id, prefix=raw[:KEY_SHOWN],
                       key_sha256=hash_key(raw), created_at=utcnow())
    s.add(rec)
    return rec, raw


def add_tenant(store, name: str, *, allow_base: bool = False, requests_per_min: int | None = None,
               tokens_per_min: int | None = None, grants: Iterable[str] = (),
               routing: Mapping[str, str] | None = None, pinned: Iterable[str] = ()) -> tuple[TenantRecord, str]:
    """Create a tenant with one API key; (tenant, raw key). The raw key exists only in this return value."""
    from ulid import ULID

    _check_name(name)
    grants = list(dict.fromkeys(_check_alias(g) for g in grants))
    routing = dict(routing or {})
    for alias_name, stage in routing.items():
        _check_route(alias_name, stage)
    pinned = list(dict.fromkeys(_check_alias(p) for p in pinned))
    rpm = _check_limit(requests_per_min, "requests per minute")
    tpm = _check_limit(tokens_per_min, "tokens per minute")

    def create(s: Session):
        if s.scalars(select(TenantRecord.id).where(TenantRecord.name == name)).first() is not None:
            raise StateError(f"tenant {name!r} already exists",
                             hint=f"make it a new key with `tuneops tenants rotate-key {name}`, or pick another name")
        now = utcnow()
        rec = TenantRecord(id=f"tn-{str(ULID()).lower()}", name=name, allow_base=allow_base, disabled=False,
                           requests_per_min=rpm, tokens_per_min=tpm, routing=routing, pinned=pinned,
                           created_at=now, updated_at=now)
        s.add(rec)
        s.flush()
        for g in grants:
            s.add(TenantGrant(tenant_id=rec.id, alias=g, created_at=now))
        key, raw = _issue_key(s, rec.id)
        store.audit(s, "tenant.add", "tenant", name, tenant_id=rec.id, allow_base=allow_base, requests_per_min=rpm,
                    tokens_per_min=tpm, grants=grants, routing=routing, pinned=pinned, key_id=key.id,
                    key_prefix=key.prefix)
        s.flush()
        s.expunge(rec)
        return rec, raw

    try:
        return store.transact(create)
    except DBIntegrityError:  # a concurrent add of the same name won the unique constraint
        raise StateError(f"tenant {name!r} already exists", hint="pick another name") from None


def _check_route(alias_name: str, stage: str | None) -> None:
    if not isinstance(alias_name, str) or not ALIAS_RE.match(alias_name) or "@" in alias_name:
        raise InvalidInput(f"routing: {alias_name!r} is not an alias name", hint="write a name without @stage")
    if stage is not None and (not isinstance(stage, str) or not STAGE_RE.match(stage)):
        raise InvalidInput(f"routing: stage {stage!r} for {alias_name} is not valid",
                           hint="use lowercase letters, digits, '_' or '-' (e.g. staging)")


def _update(store, name: str, action: str, change: Callable[[Session, TenantRecord], dict | None]):
    """Apply ``change`` to tenant ``name`` in one transaction with its audit entry (skipped when it returns None)."""
    def run(s: Session):
        rec = _tenant(s, name)
        details = change(s, rec)
        if details is not None:
            rec.updated_at = utcnow()
            store.audit(s, action, "tenant", name, tenant_id=rec.id, **details)
        s.flush()
        s.expunge(rec)
        return rec

    return store.transact(run)


def grant(store, name: str, alias: str) -> bool:
    """Let tenant ``name`` call ``alias`` (``name`` = every stage, ``name@stage`` = that stage); False if it could."""
    _check_name(name)
    _check_alias(alias)
    done = []

    def change(s: Session, rec: TenantRecord):
        if s.get(TenantGrant, (rec.id, alias)) is not None:
            return None
        s.add(TenantGrant(tenant_id=rec.id, alias=alias, created_at=utcnow()))
        done.append(True)
        return {"alias": alias}

    try:
        _update(store, name, "tenant.grant", change)
    except DBIntegrityError:  # the same grant, given at the same moment by someone else
        return False
    return bool(done)


def revoke(store, name: str, alias: str) -> None:
    """Take back a grant exactly as it was given (a ``name@stage`` grant is not a part of a ``name`` grant)."""
    _check_name(name)
    _check_alias(alias)

    def change(s: Session, rec: TenantRecord):
        row = s.get(TenantGrant, (rec.id, alias))
        if row is None:
            held = s.scalars(select(TenantGrant.alias).where(TenantGrant.tenant_id == rec.id)
                             .order_by(TenantGrant.alias)).all()
            raise NotFound(f"tenant {name!r} has no grant {alias!r}",
                           hint=f"its grants: {', '.join(held)}" if held else "it has no grants")
        s.delete(row)
        return {"alias": alias}

    _update(store, name, "tenant.revoke", change)


def rotate_key(store, name: str, *, grace_s: float = 0) -> str:
    """A new key for tenant ``name``; its other keys stop working now, or after ``grace_s`` seconds. Returns the
    raw new key (shown once)."""
    _check_name(name)
    if not isinstance(grace_s, (int, float)) or isinstance(grace_s, bool) or not math.isfinite(grace_s) or grace_s < 0:
        raise InvalidInput(f"grace must be a number of seconds ≥ 0 (got {grace_s!r})",
                           hint="0 ends the old key at once; e.g. 3600 keeps it for an hour")
    out = []

    def change(s: Session, rec: TenantRecord):
        now = utcnow()
        ends = now + timedelta(seconds=grace_s)
        old = s.scalars(select(ApiKeyRecord).where(ApiKeyRecord.tenant_id == rec.id,
                                                   ApiKeyRecord.revoked_at.is_(None))).all()
        retired = []
        for k in old:
            if grace_s == 0:
                k.revoked_at = now
            elif _aware(k.expires_at) is None or _aware(k.expires_at) > ends:
                k.expires_at = ends  # a key already ending sooner keeps its earlier end
            retired.append(k.id)
        key, raw = _issue_key(s, rec.id)
        out.append(raw)
        return {"key_id": key.id, "key_prefix": key.prefix, "retired": retired, "grace_s": grace_s,
                "old_keys_end": ends.isoformat()}

    _update(store, name, "tenant.rotate_key", change)
    return out[0]


_UNCHANGED = object()


def set_limits(store, name: str, *, requests_per_min=_UNCHANGED, tokens_per_min=_UNCHANGED) -> TenantRecord:
    """Change a tenant's quotas; ``None`` removes a limit, a value left out stays as it is."""
    _check_name(name)
    new = {}
    if requests_per_min is not _UNCHANGED:
        new["requests_per_min"] = _check_limit(requests_per_min, "requests per minute")
    if tokens_per_min is not _UNCHANGED:
        new["tokens_per_min"] = _check_limit(tokens_per_min, "tokens per minute")
    if not new:
        raise InvalidInput("no limit to change", hint="give --rpm N and/or --tpm N (0 removes a limit)")

    def change(_s: Session, rec: TenantRecord):
        before = {k: getattr(rec, k) for k in new}
        for k, v in new.items():
            setattr(rec, k, v)
        return {"before": before, "after": new}

    return _update(store, name, "tenant.limits", change)


def set_disabled(store, name: str, disabled: bool = True) -> TenantRecord:
    """Disable (every key answers 403 tenant_disabled) or enable a tenant again."""
    _check_name(name)

    def change(_s: Session, rec: TenantRecord):
        if rec.disabled == disabled:
            return None
        rec.disabled = disabled
        return {}

    return _update(store, name, "tenant.disable" if disabled else "tenant.enable", change)


def disable(store, name: str) -> TenantRecord:
    return set_disabled(store, name, True)


def enable(store, name: str) -> TenantRecord:
    return set_disabled(store, name, False)


def set_allow_base(store, name: str, allow: bool) -> TenantRecord:
    _check_name(name)

    def change(_s: Session, rec: TenantRecord):
        if rec.allow_base == allow:
            return None
        rec.allow_base = allow
        return {"allow_base": allow}

    return _update(store, name, "tenant.allow_base", change)


def set_route(store, name: str, alias_name: str, stage: str | None) -> TenantRecord:
    """For tenant ``name``, a bare ``alias_name`` means ``alias_name@stage`` (None: back to production)."""
    _check_name(name)
    _check_route(alias_name, stage)

    def change(_s: Session, rec: TenantRecord):
        routing = dict(rec.routing or {})
        if routing.get(alias_name) == stage:
            return None
        if stage is None:
            routing.pop(alias_name, None)
        else:
            routing[alias_name] = stage
        rec.routing = routing  # a new dict: JSON columns only notice assignment
        return {"alias": alias_name, "stage": stage}

    return _update(store, name, "tenant.route", change)


def set_pinned(store, name: str, alias: str, pinned: bool = True) -> TenantRecord:
    """Ask the adapter pool to keep ``alias`` (as this tenant's routing resolves it) resident, or stop asking."""
    _check_name(name)
    _check_alias(alias)

    def change(_s: Session, rec: TenantRecord):
        current = list(rec.pinned or [])
        if (alias in current) == pinned:
            return None
        rec.pinned = current + [alias] if pinned else [a for a in current if a != alias]
        return {"alias": alias, "pinned": pinned}

    return _update(store, name, "tenant.pin", change)


def list_tenants(store) -> list[dict]:
    """Every tenant with its grants, limits and live keys (prefixes only), oldest first."""
    now = utcnow()
    with store.session(write=False) as s:
        tenants = s.scalars(select(TenantRecord).order_by(TenantRecord.created_at, TenantRecord.name)).all()
        grants: dict[str, list[str]] = {}
        for g in s.scalars(select(TenantGrant).order_by(TenantGrant.alias)):
            grants.setdefault(g.tenant_id, []).append(g.alias)
        keys: dict[str, list[dict]] = {}
        for k in s.scalars(select(ApiKeyRecord).where(ApiKeyRecord.revoked_at.is_(None))
                           .order_by(ApiKeyRecord.created_at)):
            ends = _aware(k.expires_at)
            if ends is None or ends > now:
                keys.setdefault(k.tenant_id, []).append(
                    {"id": k.id, "prefix": k.prefix, "created_at": _aware(k.created_at).isoformat(),
                     "expires_at": ends.isoformat() if ends else None})
        return [{"name": t.name, "id": t.id, "disabled": bool(t.disabled), "allow_base": bool(t.allow_base),
                 "requests_per_min": t.requests_per_min, "tokens_per_min": t.tokens_per_min,
                 "grants": grants.get(t.id, []), "keys": keys.get(t.id, []), "routing": dict(t.routing or {}),
                 "pinned": list(t.pinned or []), "created_at": _aware(t.created_at).isoformat()}
                for t in tenants]


def open_mode(store) -> bool:
    """True when no tenant is defined: local development, where any client may call every model."""
    with store.session(write=False) as s:
        return s.scalars(select(TenantRecord.id).limit(1)).first() is None


# -- who is calling ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Principal:
    """The tenant behind a request (``unrestricted`` in open mode: no tenant, every model, no quota)."""

    tenant_id: str | None
    name: str | None
    allow_base: bool
    grants: frozenset[str]
    routing: Mapping[str, str]
    requests_per_min: int | None
    tokens_per_min: int | None
    pinned: tuple[str, ...] = ()
    key_id: str | None = None
    unrestricted: bool = False

    def stage_for(self, alias_name: str) -> str:
        """The stage a bare alias name means for this tenant."""
        return self.routing.get(alias_name, DEFAULT_STAGE)

    def covers(self, alias_name: str, stage: str) -> bool:
        """Whether this tenant's grants cover ``alias_name@stage``."""
        return self.unrestricted or alias_name in self.grants or f"{alias_name}@{stage}" in self.grants


OPEN = Principal(tenant_id=None, name=None, allow_base=True, grants=frozenset(), routing=MappingProxyType({}),
                 requests_per_min=None, tokens_per_min=None, unrestricted=True)


@dataclass(frozen=True)
class Target:
    """What an authorised request calls: ``ref`` is what to resolve (``name@stage``, an artifact id or the
    base id); ``alias`` is ``name@stage`` when the request named an alias."""

    kind: str  # "base" | "alias" | "artifact"
    ref: str
    alias: str | None = None


@dataclass
class _Snapshot:
    keys: dict[str, tuple[str, str, datetime | None]]  # sha256 -> (key id, tenant id, expires_at)
    tenants: dict[str, Principal]  # tenant id -> principal
    disabled: frozenset[str]  # tenant ids
    loaded: float


def _not_found() -> ModelNotFound:
    # The same words for "does not exist" and "not yours", and never the requested name.
    return ModelNotFound("The model does not exist or you do not have access to it.", hint=MODEL_HINT)


class TenantDirectory:
    """Tenants, keys and grants in memory, reloaded from the store at most ``refresh_s`` after the last load.

    Thread-safe; ``authenticate`` may read the store (once per ``refresh_s``), so call it off the event
    loop (a plain ``def`` FastAPI dependency runs in the thread pool)."""

    def __init__(self, store, refresh_s: float = 1.0, *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utcnow):
        self.store, self.refresh_s, self._clock, self._now = store, refresh_s, clock, now
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None

    # -- loading -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload now."""
        with self._lock:
            self._snap = self._load()

    def _load(self) -> _Snapshot:
        started = self._clock()
        now = self._now()
        with self.store.session(write=False) as s:
            tenants = s.scalars(select(TenantRecord)).all()
            grants: dict[str, set[str]] = {}
            for tenant_id, alias in s.execute(select(TenantGrant.tenant_id, TenantGrant.alias)):
                grants.setdefault(tenant_id, set()).add(alias)
            keys = {}
            for kid, tid, digest, ends in s.execute(
                    select(ApiKeyRecord.id, ApiKeyRecord.tenant_id, ApiKeyRecord.key_sha256, ApiKeyRecord.expires_at)
                    .where(ApiKeyRecord.revoked_at.is_(None))):
                ends = _aware(ends)
                if ends is None or ends > now:
                    keys[digest] = (kid, tid, ends)
            principals = {t.id: Principal(
                tenant_id=t.id, name=t.name, allow_base=bool(t.allow_base), grants=frozenset(grants.get(t.id, ())),
                routing=MappingProxyType(dict(t.routing or {})), requests_per_min=t.requests_per_min,
                tokens_per_min=t.tokens_per_min, pinned=tuple(t.pinned or ())) for t in tenants}
            disabled = frozenset(t.id for t in tenants if t.disabled)
        return _Snapshot(keys=keys, tenants=principals, disabled=disabled, loaded=started)

    def _current(self) -> _Snapshot:
        snap = self._snap
        if snap is not None and self._clock() - snap.loaded < self.refresh_s:
            return snap
        # One thread reloads; the others keep answering from the previous snapshot meanwhile (it is at most
        # one load older), unless there is none yet.
        if not self._lock.acquire(blocking=snap is None):
            return snap
        try:
            snap = self._snap
            if snap is None or self._clock() - snap.loaded >= self.refresh_s:
                try:
                    self._snap = snap = self._load()
                except Exception:
                    if snap is None:
                        raise
                    log.warning("could not reload tenants from the store; keeping the previous ones", exc_info=True)
            return snap
        finally:
            self._lock.release()

    @property
    def open_mode(self) -> bool:
        """No tenant defined (as of the last load): any client may call every model."""
        return not self._current().tenants

    def pinned_aliases(self) -> set[str]:
        """``name@stage`` of every alias an enabled tenant asked to keep resident (its routing applied)."""
        snap = self._current()
        out = set()
        for tid, p in snap.tenants.items():
            if tid in snap.disabled:
                continue
            for ref in p.pinned:
                name, _, stage = ref.partition("@")
                out.add(f"{name}@{stage or p.stage_for(name)}")
        return out

    # -- per request --------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token stands for: ``OPEN`` in open mode; InvalidApiKey (401) for a missing,
        unknown, revoked or expired key; TenantDisabled (403) for a disabled tenant's key."""
        snap = self._current()
        if not snap.tenants:
            return OPEN
        if not token:
            raise InvalidApiKey("You didn't provide an API key.",
                                hint="send 'Authorization: Bearer <key>'; an admin makes one with "
                                     "`tuneops tenants add NAME`")
        found = snap.keys.get(hash_key(token))
        if found is not None:
            key_id, tenant_id, ends = found
            if ends is not None and ends <= self._now():
                found = None
        if found is None:
            raise InvalidApiKey("Incorrect API key provided.",
                                hint="check the key; a rotated or revoked key no longer works")
        if tenant_id in snap.disabled:
            raise TenantDisabled("Access for this API key is disabled.", hint="ask the server's operator")
        return dataclasses.replace(snap.tenants[tenant_id], key_id=key_id)

    def authorize(self, principal: Principal, model_ref: str, *, base_id: str, base_name: str) -> Target:
        """What ``principal`` may call for the request's ``model``: the base, ``name@stage`` (routing applied
        to a bare name) or an artifact id. ModelNotFound (404) when it may not — the same answer as for a
        model that does not exist; ModelNotAllowed (403) for the base without ``allow_base``."""
        if model_ref in (base_id, base_name):
            if not principal.allow_base:
                raise ModelNotAllowed("This API key may not call the base model.",
                                      hint="call one of your aliases (GET /v1/models); the server's operator can allow "
                                           "the base with `tuneops tenants allow-base`")
            return Target("base", base_id)
        if principal.unrestricted:
            if model_ref.startswith("ad-"):
                return Target("artifact", model_ref)
            m = ALIAS_RE.match(model_ref)
            if m is None:
                raise _not_found()
            alias = f"{m['name']}@{m['stage'] or DEFAULT_STAGE}"
            return Target("alias", alias, alias)
        if model_ref.startswith("ad-"):
            if len(model_ref) > 64 or not self._artifact_granted(principal, model_ref):
                raise _not_found()
            return Target("artifact", model_ref)
        m = ALIAS_RE.match(model_ref)
        if m is None:
            raise _not_found()
        name = m["name"]
        stage = m["stage"] or principal.stage_for(name)
        if not principal.covers(name, stage):
            raise _not_found()
        alias = f"{name}@{stage}"
        return Target("alias", alias, alias)

    def _artifact_granted(self, principal: Principal, artifact_id: str) -> bool:
        # Read at request time, not from the snapshot: an alias move takes an artifact id away at once.
        with self.store.session(write=False) as s:
            rows = s.execute(select(AliasRecord.name, AliasRecord.stage)
                             .where(AliasRecord.artifact_id == artifact_id)).all()
        return any(principal.covers(name, stage) for name, stage in rows)

    def visible_models(self, principal: Principal, entries: list[dict], *, base_id: str) -> list[dict]:
        """The ``GET /v1/models`` entries (``id`` = base id or ``name@stage``) this principal may call."""
        out = []
        for e in entries:
            ref = e.get("id", "")
            if ref == base_id:
                keep = principal.allow_base
            else:
                name, _, stage = ref.partition("@")
                keep = bool(stage) and principal.covers(name, stage)
            if keep:
                out.append(e)
        return out


# -- quotas -----------------------------------------------------------------------------------

@dataclass
class _Bucket:
    level: float
    at: float

    def refill(self, limit: int, now: float) -> None:
        self.level = min(float(limit), self.level + (now - self.at) * limit / 60.0)
        self.at = now

    def wait_for(self, amount: float, limit: int) -> float:
        """Seconds until ``amount`` is available (0: it is now)."""
        return 0.0 if self.level >= amount else (amount - self.level) * 60.0 / limit


@dataclass
class Reservation:
    """Tokens set aside for one generation; ``settle(actual)`` returns what was not used (once)."""

    limiter: "QuotaLimiter | None"
    tenant_id: str | None
    tokens: int
    limit: int | None
    settled: bool = field(default=False)

    def settle(self, actual_tokens: int) -> None:
        if self.settled or self.limiter is None or self.limit is None:
            self.settled = True
            return
        self.settled = True
        self.limiter._give_back(self.tenant_id, self.limit, self.tokens - max(0, int(actual_tokens)))

    def release(self) -> None:
        """Nothing was generated (an error, a client that left): give everything back."""
        self.settle(0)


class QuotaLimiter:
    """Per-tenant token buckets for requests/min and tokens/min, in memory, thread-safe.

    A bucket holds a minute's allowance and refills continuously, so a tenant may burst up to its limit
    and then continues at limit/60 per second. Limits are read from the principal on each call, so a
    change (``tuneops tenants limits``) applies as soon as the directory reloads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, tenant_id: str, kind: str, limit: int, now: float) -> _Bucket:
        b = self._buckets.get((tenant_id, kind))
        if b is None:
            b = self._buckets[(tenant_id, kind)] = _Bucket(level=float(limit), at=now)
        b.refill(limit, now)
        return b

    def check_request(self, principal: Principal) -> None:
        """Count one request against requests/min, or raise RateLimited (429) with Retry-After."""
        limit = principal.requests_per_min
        if limit is None or principal.tenant_id is None:
            return
        with self._lock:
            b = self._bucket(principal.tenant_id, "requests", limit, self._clock())
            wait = b.wait_for(1, limit)
            if wait == 0:
                b.level -= 1
                return
        raise RateLimited(f"Rate limit reached for requests per minute (limit {limit}).", kind="requests",
                          retry_after=math.ceil(wait), hint=f"retry after {math.ceil(max(wait, 1))} s")

    def reserve(self, principal: Principal, tokens: int) -> Reservation:
        """Set aside ``tokens`` (prompt + max completion) of tokens/min before generating; settle with the
        actual count after. RateLimited (429) when they are not there yet; RequestTooLarge (400) when they
        never can be (more than the whole per-minute limit)."""
        limit = principal.tokens_per_min
        tokens = max(0, int(tokens))
        if limit is None or principal.tenant_id is None:
            return Reservation(None, principal.tenant_id, tokens, None, settled=False)
        if tokens > limit:
            raise RequestTooLarge(f"This request needs up to {tokens} tokens (prompt + max_tokens), more than this "
                                  f"API key's limit of {limit} tokens per minute.",
                                  hint="lower max_tokens or shorten the messages")
        with self._lock:
            b = self._bucket(principal.tenant_id, "tokens", limit, self._clock())
            wait = b.wait_for(tokens, limit)
            if wait == 0:
                b.level -= tokens
                return Reservation(self, principal.tenant_id, tokens, limit)
        raise RateLimited(f"Rate limit reached for tokens per minute (limit {limit}, requested {tokens}).",
                          kind="tokens", retry_after=math.ceil(wait),
                          hint=f"retry after {math.ceil(max(wait, 1))} s, or lower max_tokens")

    def _give_back(self, tenant_id: str, limit: int, tokens: int) -> None:
        # Negative when a generation used more than it reserved: the bucket goes below zero and the
        # tenant waits that much longer.
        with self._lock:
            b = self._bucket(tenant_id, "tokens", limit, self._clock())
            b.level = min(float(limit), b.level + tokens)


__all__ = [
    "InvalidApiKey", "ModelNotAllowed", "ModelNotFound", "OPEN", "Principal", "QuotaLimiter", "RateLimited",
    "RequestTooLarge", "Reservation", "Target", "TenantDirectory", "TenantDisabled", "add_tenant", "disable",
    "enable", "grant", "hash_key", "list_tenants", "new_key", "open_mode", "revoke", "rotate_key",
    "set_allow_base", "set_disabled", "set_limits", "set_pinned", "set_route",
]
