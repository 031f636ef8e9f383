"""Tamper evidence for the ledger itself: the audit log and the alias history are hash chains.

Every new ``audit`` / ``alias_moves`` row is chained when its session flushes (``install`` hooks a
``before_flush`` listener on the store's sessions, so no caller has to do anything):

- **Order** is decided by the ledger, not by the database: under the chain's lock the entry gets its
  ``seq`` explicitly (PostgreSQL: the column's own sequence, ``nextval``; SQLite: ``max(seq) + 1``, which is
  what SQLite would pick itself), and ``seq`` is part of what is hashed. The chain's order is therefore the
  order of ``seq`` — a reader needs nothing but ``ORDER BY seq`` — and an entry cannot be moved without its
  hash, or the next entry's ``prev_hash``, no longer matching.
- ``entry_hash = sha256(prev_hash | canonical JSON {format, chain, seq, content fields})``, where
  ``prev_hash`` is the hash of the entry before it (the chain's head when it was appended). Timestamps are
  hashed as UTC ISO-8601 with microseconds, JSON fields as they read back from the database.
- **The head** (``ledger_heads``: chain, seq, entry_hash) is updated in the same transaction and signed with
  the writer's ed25519 key when it has one that this store trusts (``signature``: key_id, signature,
  payload_sha256 over canonical JSON {format, chain, seq, entry_hash}); otherwise the head is left unsigned
  and ``verify`` warns (``require_signed``: an error). The head makes a truncated tail visible; its signature
  makes a rewritten chain visible. Someone with write access to the database can still strip the signature
  and rewrite everything: that shows only as "unsigned", hence ``--require-signed`` for stores whose writers
  all hold trusted keys.
- **Concurrency**: the first chained append of a transaction locks *every* chain's head row (``SELECT …
  ORDER BY chain FOR UPDATE`` on PostgreSQL; SQLite write transactions already hold the database's single
  write lock), so two transactions can never both append after the same head, and a transaction that
  appends to both chains (an alias move and its audit event) takes the locks in one fixed order. The lock is
  held until commit: chained writes are serialised, which the store's write path already is on SQLite.
- **Older stores** (rows without hashes from before this module): they are *sealed*, not rewritten (the
  audit table refuses UPDATE): when a chain's head is created, its hash is a chain computed over those
  legacy rows (domain-separated from real entries), and the first real entry links to it. ``verify``
  reports "N legacy entries before the chain began"; an edit, deletion or reordering among them is
  detected (but not located: the seal covers them as a block).
- A head that disappears while chained entries exist is re-created from the newest entry, marked
  ``recovered_at``; ``verify`` reports that as an error from then on (the tail may have been deleted with it).
- ORM updates or deletes of chained rows are refused (``StateError``); raw SQL that bypasses the store is
  what ``verify`` is for.

``verify(store, chain)`` reads one consistent snapshot and names the first bad entry: ``edited``,
``reordered``, ``deleted``, ``forked``, ``unchained`` (a row written around the ledger), ``legacy_altered``,
``truncated`` / ``head_mismatch`` / ``head_missing`` / ``head_recovered``, ``signature_invalid`` /
``signature_missing``.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from sqlalchemy import bindparam, case, event, func, insert, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_state

from tuneops.errors import StateError, TuneopsError
from tuneops.store.ids import canonical_json
from tuneops.store.schema import AliasMove, AuditEvent, LedgerHead, TrustedKey, utcnow

FORMAT = "tuneops-ledger-v1"
# chain name (= table name) -> model; sorted() of the names is the lock order.
CHAINS: dict[str, type] = {"alias_moves": AliasMove, "audit": AuditEvent}
CONTENT: dict[str, tuple[str, ...]] = {
    "audit": ("at", "actor", "action", "record_type", "record_id", "details"),
    "alias_moves": ("at", "name", "stage", "action", "from_artifact", "to_artifact", "actor", "reason"),
}
_CHAIN_OF = {model: chain for chain, model in CHAINS.items()}
_ADVISORY_KEY = 7210553512  # PostgreSQL: creating a missing head (there is no row to lock yet)


class LedgerTampered(TuneopsError):
    """``tuneops registry audit --verify`` found an entry or head that does not match the hash chain."""

    exit_code = 6
    error_type = "integrity_error"
    error_code = "ledger_tampered"
    http_status = 503


# -- hashing --------------------------------------------------------------------------------------

def _ts(value: Any) -> Any:
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None:  # SQLite hands back naive datetimes; the store writes UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, (dict, list, tuple)):
        return json.loads(json.dumps(value))  # what the JSON column reads back (tuples as lists, str keys)
    return value


def content_of(chain: str, seq: int, values) -> dict:
    """What an entry's hash covers. ``values``: a row or model instance with the chain's content fields."""
    get = values.get if isinstance(values, Mapping) else (lambda f: getattr(values, f))
    body = {f: _norm(get(f)) for f in CONTENT[chain]}
    return {"format": FORMAT, "chain": chain, "seq": int(seq), **body}


def entry_hash(prev_hash: str, chain: str, seq: int, values, *, legacy: bool = False) -> str:
    tag = b"legacy|" if legacy else b""
    return hashlib.sha256(tag + prev_hash.encode() + b"|" + canonical_json(content_of(chain, seq, values))).hexdigest()


def genesis(chain: str) -> str:
    """The ``prev_hash`` of a chain's first entry when there is nothing before it."""
    return hashlib.sha256(f"{FORMAT}:{chain}:genesis".encode()).hexdigest()


def head_payload(chain: str, seq: int, entry_hash_: str, recovered_at: str | None = None) -> dict:
    payload = {"format": FORMAT, "chain": chain, "seq": int(seq), "entry_hash": entry_hash_}
    if recovered_at:
        payload["recovered_at"] = recovered_at
    return payload


# -- signing (store/keys.py; imported lazily, as it needs cryptography) --------------------------------

_KEYS: dict[tuple[str, str], Any] = {}


def _signing_key():
    """The writer's active key, or None (no key, unreadable key, cryptography missing): never fails a write."""
    try:
        from tuneops.store.keys import key_dir, load_key
    except ImportError:
        return None
    directory = key_dir()
    kid = os.environ.get("TUNEOPS_SIGNING_KEY")
    if not kid:
        try:
            kid = (directory / "default").read_text().strip()
        except OSError:
            return None
    if not kid:
        return None
    cache_key = (str(directory), kid)
    key = _KEYS.get(cache_key)
    if key is None:
        try:
            key = load_key(kid, directory)
        except (TuneopsError, OSError, ValueError):
            return None
        _KEYS[cache_key] = key
    return key


_TRUST = select(TrustedKey.public_key, TrustedKey.revoked_at).where(TrustedKey.key_id == bindparam("k"))


def _sign_head(conn, chain: str, seq: int, hash_: str, recovered_at: str | None) -> dict | None:
    """A signature for the head, when the writer holds a key this store trusts (and has not revoked);
    a key the store does not trust would only make ``verify`` fail, so the head stays unsigned instead."""
    key = _signing_key()
    if key is None:
        return {"recovered_at": recovered_at} if recovered_at else None
    row = conn.execute(_TRUST, {"k": key.key_id}).first()
    if row is None or row.revoked_at is not None or row.public_key != key.public_b64:
        return {"recovered_at": recovered_at} if recovered_at else None
    payload = canonical_json(head_payload(chain, seq, hash_, recovered_at))
    sig = {"key_id": key.key_id, "signature": key.sign(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    if recovered_at:
        sig["recovered_at"] = recovered_at
    return sig


# -- appending --------------------------------------------------------------------------------------

def _is_pg(conn) -> bool:
    return conn.dialect.name == "postgresql"


def _legacy_seal(conn, chain: str) -> tuple[int, str]:
    """(seq of the last row, hash) of a chain over the rows that carry no hash: the seal of an older store."""
    table = CHAINS[chain].__table__
    cols = [table.c.seq] + [table.c[f] for f in CONTENT[chain]]
    seq, h = 0, genesis(chain)
    for row in conn.execute(select(*cols).where(table.c.entry_hash.is_(None)).order_by(table.c.seq)):
        seq, h = row.seq, entry_hash(h, chain, row.seq, row._mapping, legacy=True)
    return seq, h


def _create_head(conn, chain: str) -> None:
    """Create a missing head: over the legacy rows (a new or older store), or — when chained entries exist,
    so the head was deleted — from the newest chained entry, marked ``recovered_at``."""
    if _is_pg(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
    if conn.execute(select(LedgerHead.chain).where(LedgerHead.chain == chain)).first() is not None:
        return
    table = CHAINS[chain].__table__
    last = conn.execute(select(table.c.seq, table.c.entry_hash).where(table.c.entry_hash.is_not(None))
                        .order_by(table.c.seq.desc()).limit(1)).first()
    recovered_at = None
    if last is not None:
        seq, h = last.seq, last.entry_hash
        recovered_at = _ts(utcnow())
    else:
        seq, h = _legacy_seal(conn, chain)
    conn.execute(insert(LedgerHead).values(chain=chain, seq=seq, entry_hash=h, updated_at=utcnow(),
                                           signature=_sign_head(conn, chain, seq, h, recovered_at)))


_HEADS = LedgerHead.__table__
# Built once (statement construction is most of a Core call's cost): the heads, each with its table's newest seq
# (SQLite numbers entries from it), locked in chain order (FOR UPDATE is left out on SQLite by the dialect).
_LOCK_HEADS = select(_HEADS.c.chain, _HEADS.c.seq, _HEADS.c.entry_hash, _HEADS.c.signature,
                     case(*[(_HEADS.c.chain == name, select(func.max(model.__table__.c.seq)).scalar_subquery())
                            for name, model in sorted(CHAINS.items())]).label("top")) \
    .where(_HEADS.c.chain.in_(sorted(CHAINS))).order_by(_HEADS.c.chain)
_LOCK_HEADS_PG = _LOCK_HEADS.with_only_columns(_HEADS.c.chain, _HEADS.c.seq, _HEADS.c.entry_hash,
                                               _HEADS.c.signature).with_for_update()
_UPDATE_HEAD = update(_HEADS).where(_HEADS.c.chain == bindparam("c")).values(
    seq=bindparam("seq"), entry_hash=bindparam("h"), signature=bindparam("sig"), updated_at=bindparam("at"))


def _lock_heads(conn) -> dict[str, Any]:
    q = _LOCK_HEADS_PG if _is_pg(conn) else _LOCK_HEADS
    heads = {r.chain: r for r in conn.execute(q)}
    missing = [c for c in sorted(CHAINS) if c not in heads]
    if missing:
        for chain in missing:
            _create_head(conn, chain)
        heads = {r.chain: r for r in conn.execute(q)}
    return heads


def _next_seqs(conn, chain: str, head, n: int) -> list[int]:
    if _is_pg(conn):
        # The column's own sequence, so inserts that do not come through here never collide with ours.
        seq_name = f"pg_get_serial_sequence('{chain}', 'seq')"
        vals = sorted(conn.execute(text(f"SELECT nextval({seq_name}) FROM generate_series(1, :n)"), {"n": n}).scalars())
        if vals[0] <= head.seq:  # the sequence fell behind the chain (reset by hand): move it past the head
            conn.execute(text(f"SELECT setval({seq_name}, :v)"), {"v": head.seq + n})
            vals = list(range(head.seq + 1, head.seq + n + 1))
        return [int(v) for v in vals]
    start = max(int(head.top or 0), int(head.seq)) + 1  # what SQLite itself would pick, never behind the head
    return list(range(start, start + n))


def _before_flush(session: Session, _flush_context, _instances) -> None:
    pending: dict[str, list] = {}
    for obj in session.new:
        chain = _CHAIN_OF.get(type(obj))
        if chain is not None:
            pending.setdefault(chain, []).append(obj)
    for obj in list(session.dirty) + list(session.deleted):
        chain = _CHAIN_OF.get(type(obj))
        if chain is not None and (obj in session.deleted or session.is_modified(obj, include_collections=False)):
            raise StateError(f"{chain} entries are append-only (hash-chained); seq {obj.seq} cannot be changed",
                             hint="record a new entry instead")
    if not pending:
        return
    conn = session.connection()
    heads = _lock_heads(conn)
    for chain in sorted(pending):
        objs = sorted(pending[chain], key=lambda o: instance_state(o).insert_order or 0)
        head = heads[chain]
        seqs = _next_seqs(conn, chain, head, len(objs))
        prev = head.entry_hash
        for obj, seq in zip(objs, seqs):
            at = obj.at or utcnow()
            obj.at = (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
            if chain == "audit" and obj.details is None:
                obj.details = {}
            obj.seq = seq
            obj.prev_hash = prev
            obj.entry_hash = prev = entry_hash(prev, chain, seq, obj)
        recovered_at = (head.signature or {}).get("recovered_at") if isinstance(head.signature, dict) else None
        conn.execute(_UPDATE_HEAD, {"c": chain, "seq": seqs[-1], "h": prev, "at": utcnow(),
                                    "sig": _sign_head(conn, chain, seqs[-1], prev, recovered_at)})


def install(store) -> None:
    """Chain every new audit event and alias move of ``store``'s sessions; create missing heads."""
    if getattr(store, "_ledger_installed", False):
        return
    for maker in (store._writes, store._reads):
        event.listen(maker, "before_flush", _before_flush)
    store._ledger_installed = True
    with store.engine.connect() as conn:
        have = {r[0] for r in conn.execute(select(LedgerHead.chain))}
        conn.rollback()
    if set(CHAINS) - have:
        with store.engine.execution_options(tuneops_write=True).begin() as conn:
            for chain in sorted(set(CHAINS) - have):
                _create_head(conn, chain)


# -- verifying ------------------------------------------------------------------------------------

@dataclass
class Problem:
    seq: int | None  # the first bad entry (None: the head, or the legacy block as a whole)
    kind: str
    message: str


@dataclass
class ChainReport:
    chain: str
    ok: bool = True
    entries: int = 0  # chained entries checked
    legacy: int = 0  # entries from before the chain began (sealed as a block)
    head_seq: int | None = None
    head_hash: str | None = None
    signed_by: str | None = None
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, kind: str, message: str) -> "ChainReport":
        if self.problem is None:
            self.ok, self.problem = False, Problem(seq, kind, message)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        if self.problem is not None:
            where = f"seq {self.problem.seq}" if self.problem.seq is not None else "head"
            return f"{self.chain}: {where} {self.problem.kind}: {self.problem.message}"
        return f"{self.chain}: ok"


@contextmanager
def _snapshot(store) -> Iterator:
    """One consistent view: REPEATABLE READ on PostgreSQL; SQLite's deferred read transaction (WAL) already is."""
    engine = store.engine
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def _short(h: str | None) -> str:
    return (h or "∅")[:12]


def _reorder_partner(conn, chain: str, row, content: dict) -> int | None:
    """The seq of another entry whose hash this row's content reproduces (contents swapped or moved)."""
    table = CHAINS[chain].__table__
    for other in conn.execute(select(table.c.seq, table.c.prev_hash, table.c.entry_hash)
                              .where(table.c.entry_hash.is_not(None), table.c.seq != row.seq)):
        if entry_hash(other.prev_hash, chain, other.seq, content) == other.entry_hash:
            return other.seq
    return None


def _trusted(conn) -> dict[str, tuple[str, datetime | None]]:
    return {r.key_id: (r.public_key, r.revoked_at)
            for r in conn.execute(select(TrustedKey.key_id, TrustedKey.public_key, TrustedKey.revoked_at))}


def _check_signature(report: ChainReport, head, trusted, require_signed: bool, *, empty: bool = False) -> None:
    from tuneops.store.keys import verify_with

    sig = head.signature if isinstance(head.signature, dict) else None
    recovered_at = sig.get("recovered_at") if sig else None
    if recovered_at:
        report.fail(None, "head_recovered",
                    f"the head was missing (deleted?) and was re-created at {recovered_at} from the newest entry, "
                    f"seq {head.seq}: entries deleted together with the head cannot be ruled out")
    if not sig or not sig.get("signature"):
        msg = ("no entries yet, and the head is not signed" if empty else
               "the head is not signed (the last writer held no key this store trusts): a rewrite of the whole "
               "chain would go unnoticed")
        if require_signed:
            report.fail(None, "signature_missing", msg)
        else:
            report.warnings.append(msg)
        return
    kid = sig.get("key_id")
    if kid not in trusted:
        report.fail(None, "signature_invalid", f"the head is signed by {kid}, a key this store does not trust")
        return
    public, revoked_at = trusted[kid]
    payload = canonical_json(head_payload(report.chain, head.seq, head.entry_hash, recovered_at))
    if not verify_with(public, payload, str(sig["signature"])):
        report.fail(None, "signature_invalid", f"the head's signature by {kid} does not match it (seq {head.seq}, "
                                               f"hash {_short(head.entry_hash)}): the chain was rewritten")
        return
    if revoked_at is not None:
        signed_at, revoked = head.updated_at, revoked_at
        if signed_at is not None:
            signed_at = signed_at if signed_at.tzinfo else signed_at.replace(tzinfo=timezone.utc)
            revoked = revoked if revoked.tzinfo else revoked.replace(tzinfo=timezone.utc)
        if signed_at is None or signed_at > revoked:
            report.fail(None, "signature_invalid", f"the head is signed by {kid}, a key revoked in this store "
                                                   f"({_ts(revoked_at)}) before it signed")
            return
        report.warnings.append(f"the head is signed by {kid}, revoked since ({_ts(revoked_at)}); the next write "
                               "by a trusted key re-signs it")
    report.signed_by = kid


def verify(store, chain: str, *, require_signed: bool = False) -> ChainReport:
    """Walk ``chain`` in seq order and check every link, content hash and the (signed) head; the report
    names the first bad entry. Unsigned heads are a warning unless ``require_signed``."""
    if chain not in CHAINS:
        raise ValueError(f"unknown chain {chain!r} (one of {', '.join(sorted(CHAINS))})")
    table = CHAINS[chain].__table__
    report = ChainReport(chain)
    cols = [table.c.seq, table.c.prev_hash, table.c.entry_hash] + [table.c[f] for f in CONTENT[chain]]
    with _snapshot(store) as conn:
        heads = LedgerHead.__table__
        head = conn.execute(select(heads).where(heads.c.chain == chain)).first()
        if head is not None:
            report.head_seq, report.head_hash = head.seq, head.entry_hash
        trusted = _trusted(conn)
        expected = genesis(chain)
        sealed: dict[str, int] = {}  # legacy-seal hash after each legacy row -> that row's seq
        legacy_seqs: list[int] = []
        pred_seq: int | None = None
        started = False
        for row in conn.execute(select(*cols).order_by(table.c.seq)):
            if row.entry_hash is None and not started:
                expected = entry_hash(expected, chain, row.seq, row._mapping, legacy=True)
                sealed[expected] = row.seq
                legacy_seqs.append(row.seq)
                report.legacy += 1
                pred_seq = row.seq
                continue
            if row.entry_hash is None:
                return report.fail(row.seq, "unchained", f"seq {row.seq} carries no hash: it was written around the "
                                                         "ledger (raw SQL, not tuneops), or its hash was erased")
            if row.prev_hash != expected:
                return _broken_link(conn, report, row, pred_seq, expected, legacy_seqs, sealed, started)
            content = content_of(chain, row.seq, row._mapping)
            if entry_hash(row.prev_hash, chain, row.seq, row._mapping) != row.entry_hash:
                partner = _reorder_partner(conn, chain, row, content)
                if partner is not None:
                    return report.fail(row.seq, "reordered", f"seq {row.seq} holds the content that was chained as "
                                                             f"seq {partner}: entries were swapped or moved")
                return report.fail(row.seq, "edited", f"seq {row.seq} no longer matches its hash: its content was "
                                                      f"edited after it was written")
            started = True
            report.entries += 1
            expected, pred_seq = row.entry_hash, row.seq
        last_seq = pred_seq or 0
        if head is None:
            return report.fail(None, "head_missing", f"the chain has no head; its newest entry is seq {last_seq}")
        if head.entry_hash != expected or head.seq != last_seq:
            if head.seq > last_seq:
                ends = f"ends at seq {last_seq}: the entries after seq {last_seq} were deleted" if last_seq else \
                    "is empty: every entry was deleted"
                report.fail(None, "truncated", f"the head records seq {head.seq} (hash {_short(head.entry_hash)}), but "
                                               f"the chain {ends}")
            else:
                report.fail(last_seq or None, "head_mismatch",
                            f"the newest entry, seq {last_seq} (hash {_short(expected)}), is not the one the head "
                            f"records (seq {head.seq}, hash {_short(head.entry_hash)}): the tail was rewritten or "
                            "appended around the ledger")
        _check_signature(report, head, trusted, require_signed, empty=not report.entries and not report.legacy)
        if report.legacy:
            report.warnings.append(f"{report.legacy} legacy entries before the chain began (seq {legacy_seqs[0]}–"
                                   f"{legacy_seqs[-1]}), sealed as a block: an edit among them is detected, "
                                   "not located")
    return report


def _broken_link(conn, report: ChainReport, row, pred_seq, expected, legacy_seqs, sealed, started) -> ChainReport:
    """``row.prev_hash`` is not the hash of the entry before it: say what most likely happened."""
    table = CHAINS[report.chain].__table__
    found = conn.execute(select(table.c.seq).where(table.c.entry_hash == row.prev_hash)).first()
    if found is not None:
        twins = [r.seq for r in conn.execute(select(table.c.seq).where(table.c.prev_hash == row.prev_hash)
                                             .order_by(table.c.seq))]
        if len(twins) > 1:
            both = " and seq ".join(map(str, twins))
            return report.fail(row.seq, "forked", f"seq {both} were both chained after seq {found.seq}: two writers "
                                                  "appended to the same head")
        return report.fail(row.seq, "reordered", f"seq {row.seq} was chained after seq {found.seq}, but it is stored "
                                                 f"after seq {pred_seq}: entries were reordered")
    if row.prev_hash in sealed and sealed[row.prev_hash] != pred_seq:
        return report.fail(row.seq, "unchained", f"the legacy entries after seq {sealed[row.prev_hash]} were written "
                                                 "around the ledger after the chain began (they carry no hash)")
    if not started and legacy_seqs:
        return report.fail(row.seq, "legacy_altered",
                           f"the {len(legacy_seqs)} legacy entries (seq {legacy_seqs[0]}–{legacy_seqs[-1]}) no "
                           f"longer match the seal seq {row.seq} was chained to: one of them was edited, deleted or "
                           f"reordered (or chained entries before seq {row.seq} were deleted)")
    if pred_seq is None:
        return report.fail(row.seq, "deleted", f"the entries before seq {row.seq}, the first one left, were deleted")
    if row.seq - pred_seq > 1:
        return report.fail(row.seq, "deleted", f"the chain breaks between seq {pred_seq} and seq {row.seq}: the "
                                               f"entries in between were deleted")
    return report.fail(row.seq, "deleted", f"seq {row.seq} was chained after an entry that is gone: seq {pred_seq} "
                                           f"was replaced (its hash {_short(expected)} is not the "
                                           f"{_short(row.prev_hash)} seq {row.seq} recorded), or an entry between "
                                           "them was deleted")


def verify_all(store, *, require_signed: bool = False) -> list[ChainReport]:
    return [verify(store, chain, require_signed=require_signed) for chain in ("audit", "alias_moves")]


# -- reading ----------------------------------------------------------------------------------------

def audit_entries(store, *, limit: int = 50, record: str | None = None, actor: str | None = None,
                  action: str | None = None) -> list[AuditEvent]:
    """The newest ``limit`` audit events (oldest first) matching every filter given.

    ``actor``: the whole actor string, its name ("alice" matches "alice (key-…)") or its key id;
    ``action``: exact, or a family ("alias" matches "alias.promote"); ``record``: the record id."""
    q = select(AuditEvent)
    if record:
        q = q.where(AuditEvent.record_id == record)
    if actor:
        q = q.where((AuditEvent.actor == actor) | AuditEvent.actor.startswith(f"{actor} (", autoescape=True)
                    | AuditEvent.actor.endswith(f"({actor})", autoescape=True))
    if action:
        q = q.where((AuditEvent.action == action) | AuditEvent.action.startswith(f"{action}.", autoescape=True))
    with store.session(write=False) as s:
        rows = s.scalars(q.order_by(AuditEvent.seq.desc()).limit(limit)).all()
        for r in rows:
            s.expunge(r)
    return list(reversed(rows))


__all__ = ["CHAINS", "ChainReport", "LedgerTampered", "Problem", "audit_entries", "entry_hash", "genesis",
           "install", "verify", "verify_all"]
