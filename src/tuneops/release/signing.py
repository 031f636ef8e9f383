"""Ed25519 signing (``cryptography``): the key pairs a store's users sign with, and the public keys the
store trusts.

- A **private key** lives outside the store, in ``$TUNEOPS_KEY_DIR`` (default ``~/.config/tuneops/keys``)
  as ``<key id>.pem`` (PKCS#8, file mode 0600); the active one is named by ``$TUNEOPS_SIGNING_KEY`` or the
  ``default`` file in that folder. Who holds the key is who signs — the audit log records its key id.
- A **public key** is trusted when it is in the store's ``trusted_keys`` table (``tuneops keys trust``, or
  ``tuneops keys init`` which creates a pair and trusts its public half; a store that trusts no key yet
  trusts the first key that signs in it, logged as ``key.trust``). Verification uses only trusted keys. A
  revoked key verifies nothing at all: a signature carries no time its holder could not have forged, so
  once a key may be in the wrong hands every signature it made is suspect (re-sign what you still vouch
  for with ``tuneops registry sign ID --replace``).
- The key id is ``key-`` + the first 16 hex of sha256(raw public key), so it names the key itself.

What gets signed is canonical JSON (``tuneops.store.ids.canonical_json``); :func:`sign_payload` and
:func:`verify_payload` are the two calls the registry and the ledger use.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from tuneops.errors import InvalidInput, NotFound, TuneopsError
# Keys on disk and raw signature checks live in the store layer (the ledger signs with them); re-exported here.
from tuneops.store.keys import SigningKey, generate_key, key_dir, key_id_of, load_key, verify_with  # noqa: F401


class SignatureError(TuneopsError):
    """A signature is missing, does not verify, or was made by a key the store does not trust (or revoked).

    ``reason`` says which: ``missing``, ``untrusted``, ``revoked`` or ``invalid`` (the content or the
    signature bytes changed); the server answers 403 with ``code`` ``signature_<reason>``."""

    exit_code = 5
    http_status = 403
    error_type = "signature_error"
    error_code = "signature_invalid"

    def __init__(self, message: str, *, hint: str | None = None, reason: str = "invalid"):
        super().__init__(message, hint=hint)
        self.reason = reason
        self.error_code = f"signature_{reason}"


def sign_payload(obj, key: SigningKey | None = None) -> dict:
    """Sign canonical JSON of ``obj``: {"key_id", "signature", "payload_sha256"}."""
    from tuneops.store.ids import canonical_json

    key = key or load_key()
    payload = canonical_json(obj)
    return {"key_id": key.key_id, "signature": key.sign(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest()}


def verify_payload(obj, sig: dict | None, trusted: dict[str, str], *, what: str,
                   revoked: dict[str, str] | None = None, sign_hint: str | None = None) -> str:
    """Check ``sig`` over canonical JSON of ``obj`` against ``trusted`` ({key id: public key b64}, revoked
    keys left out); returns the signer's key id or raises SignatureError naming what is wrong.
    ``revoked`` ({key id: when}) only sharpens the message for a key that was trusted once."""
    from tuneops.store.ids import canonical_json

    if not isinstance(sig, dict) or not sig.get("signature"):
        raise SignatureError(f"{what} is not signed",
                             hint=sign_hint or "sign it with `tuneops registry sign ID` (needs a key: "
                                               "`tuneops keys init`)", reason="missing")
    kid = sig.get("key_id")
    if revoked and kid in revoked:
        raise SignatureError(f"{what} is signed by {kid}, a key revoked in this store ({revoked[kid]})",
                             hint="if you still vouch for it, re-sign it with your own trusted key: "
                                  "`tuneops registry sign ID --replace`", reason="revoked")
    if kid not in trusted:
        raise SignatureError(f"{what} is signed by {kid}, a key this store does not trust",
                             hint="if you know who holds it, trust its public key (`tuneops keys trust KEY.pub "
                                  "--name WHO`); else re-sign with a trusted key (`tuneops registry sign ID "
                                  "--replace`)", reason="untrusted")
    if not verify_with(trusted[kid], canonical_json(obj), str(sig["signature"])):
        raise SignatureError(f"{what}: the signature by {kid} does not match its record (tampered, or signed "
                             "over something else)", hint="do not use it; re-register it from the original files",
                             reason="invalid")
    return kid


# -- local keys ------------------------------------------------------------------------------

def try_load_key(directory: Path | None = None) -> tuple[SigningKey | None, str | None]:
    """(the active signing key, None), or (None, why there is none) — for callers that go on unsigned."""
    try:
        return load_key(directory=directory), None
    except TuneopsError as e:
        return None, e.message


def default_key_id(directory: Path | None = None) -> str | None:
    directory = Path(directory or key_dir())
    kid = os.environ.get("TUNEOPS_SIGNING_KEY")
    if kid:
        return kid
    try:
        return (directory / "default").read_text().strip() or None
    except OSError:
        return None


def local_keys(directory: Path | None = None) -> list[dict]:
    """The private keys in ``directory``: [{"key_id", "path", "public_key", "default"}] (unreadable files
    are listed with an ``error``)."""
    directory = Path(directory or key_dir())
    active = default_key_id(directory)
    out = []
    for path in sorted(directory.glob("key-*.pem")) if directory.is_dir() else []:
        kid = path.stem
        row = {"key_id": kid, "path": str(path), "default": kid == active}
        try:
            row["public_key"] = load_key(kid, directory).public_b64
        except TuneopsError as e:
            row["error"] = e.message
        out.append(row)
    return out


def read_public_key(value: str) -> str:
    """A public key given as a file (base64 of the raw 32 bytes, as ``tuneops keys export-public`` prints
    it, or a PEM ``PUBLIC KEY``) or as the base64 text itself -> base64 of the raw key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = value
    try:
        path = Path(value).expanduser()
        if path.is_file():
            text = path.read_text()
    except (OSError, ValueError):  # not a path (too long, NUL): the key itself
        pass
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as e:
            raise InvalidInput(f"not a PEM public key: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidInput("the PEM public key is not an ed25519 key", hint="tuneops signs with ed25519 only")
        return base64.b64encode(key.public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)).decode()
    for token in text.split():
        try:
            raw = base64.b64decode(token, validate=True)
        except (ValueError, TypeError):
            continue
        if len(raw) == 32:
            try:
                Ed25519PublicKey.from_public_bytes(raw)
            except ValueError:
                continue
            return base64.b64encode(raw).decode()
    shown = value if len(value) <= 60 else value[:60] + "…"
    raise InvalidInput(f"{shown!r} is neither a file holding an ed25519 public key nor the key itself",
                       hint="give the file `tuneops keys export-public` wrote, or the base64 line it printed")


# -- keys a store trusts ---------------------------------------------------------------------

def _iso(at) -> str:
    return at.isoformat(timespec="seconds") if hasattr(at, "isoformat") else str(at)


def trusted_keys(store) -> tuple[dict[str, str], dict[str, str]]:
    """({key id: public key b64} of the keys the store trusts, {key id: "revoked <when>"} of revoked ones)."""
    from sqlalchemy import select

    from tuneops.store.schema import TrustedKey

    trusted, revoked = {}, {}
    with store.session(write=False) as s:
        for k in s.scalars(select(TrustedKey)):
            if k.revoked_at is None:
                trusted[k.key_id] = k.public_key
            else:
                revoked[k.key_id] = f"revoked {_iso(k.revoked_at)}"
    return trusted, revoked


def trusted_rows(store) -> list:
    from tuneops.store.schema import TrustedKey

    return store.all(TrustedKey, order_by=TrustedKey.created_at)


def _add_trust(s, store, public_b64: str, *, name: str | None, how: str) -> tuple[object, bool]:
    """Inside a write transaction: trust ``public_b64`` (idempotent); (row, created). A revoked key is not
    trusted again."""
    from tuneops.errors import StateError
    from tuneops.store.schema import TrustedKey
    from tuneops.store.store import default_actor

    kid = key_id_of(base64.b64decode(public_b64))
    row = s.get(TrustedKey, kid, with_for_update=True)
    if row is not None:
        if row.revoked_at is not None:
            raise StateError(f"{kid} was revoked in this store ({_iso(row.revoked_at)}); a revoked key is never "
                             "trusted again", hint="its holder creates a new key (`tuneops keys init --new`)")
        return row, False
    row = TrustedKey(key_id=kid, public_key=public_b64, name=name, added_by=default_actor())
    from sqlalchemy.exc import IntegrityError as DBIntegrityError

    try:
        with s.begin_nested():  # a concurrent writer may trust the same key first (PostgreSQL)
            s.add(row)
            s.flush()
    except DBIntegrityError:
        return s.get(TrustedKey, kid, populate_existing=True), False
    store.audit(s, "key.trust", "key", kid, name=name, how=how)
    s.flush()
    return row, True


def trust_key(store, public: str, *, name: str | None, how: str = "keys trust") -> tuple[object, bool]:
    """Trust a public key (file, PEM or base64) in this store; (row, created). Logged as ``key.trust``."""
    public_b64 = read_public_key(public)

    def add(s):
        row, created = _add_trust(s, store, public_b64, name=name, how=how)
        s.expunge(row)
        return row, created

    return store.transact(add)


def trust_on_first_use(s, store, key: SigningKey, *, name: str | None = None) -> bool:
    """Inside a write transaction: a store that trusts no key at all (none ever, revoked ones included)
    trusts ``key``, the first that signs in it; True if it did. A store that already trusts someone never
    adds a key by itself: someone it trusts runs `tuneops keys trust`."""
    from sqlalchemy import func, select

    from tuneops.store.schema import TrustedKey

    if s.scalar(select(func.count()).select_from(TrustedKey)):
        return False
    _add_trust(s, store, key.public_b64, name=name or _holder(), how="first key to sign in this store")
    return True


def _holder() -> str:
    import getpass

    try:
        return os.environ.get("TUNEOPS_ACTOR") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def revoke_key(store, key_id: str, *, reason: str | None = None):
    """Mark a trusted key revoked: nothing it signed verifies any more. Logged as ``key.revoke``."""
    from tuneops.errors import StateError
    from tuneops.store.schema import TrustedKey, utcnow

    def revoke(s):
        row = s.get(TrustedKey, key_id, with_for_update=True)
        if row is None:
            raise NotFound(f"key {key_id} is not in this store's trusted keys", hint="`tuneops keys list` shows them")
        if row.revoked_at is not None:
            raise StateError(f"{key_id} was already revoked ({_iso(row.revoked_at)})")
        row.revoked_at = utcnow()
        store.audit(s, "key.revoke", "key", key_id, name=row.name, reason=reason)
        s.flush()
        s.expunge(row)
        return row

    return store.transact(revoke)


def ensure_key(store=None, *, name: str | None = None) -> tuple[SigningKey, bool]:
    """The active signing key, created (and made the default) if there is none; with ``store``, also
    trusted there when that store trusts no key yet. (key, created)."""
    key, _ = try_load_key()
    created = False
    if key is None:
        if default_key_id():  # a key is named ($TUNEOPS_SIGNING_KEY, the default file) but cannot be loaded:
            load_key()        # say why (raises) rather than quietly replace someone's key
        key = generate_key()
        created = True
    if store is not None:
        store.transact(lambda s: trust_on_first_use(s, store, key, name=name))
    return key, created
