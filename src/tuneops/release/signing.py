"""Ed25519 signing (``cryptography``): the key pairs a store's users sign with, and the public keys the
store trusts.

- A **private key** lives outside the store, in ``$TUNEOPS_KEY_DIR`` (default ``~/.config/tuneops/keys``)
  as ``<key id>.pem`` (PKCS#8, file mode 0600); the active one is named by ``$TUNEOPS_SIGNING_KEY`` or the
  ``default`` file in that folder. Who holds the key is who signs — the audit log records its key id.
- A **public key** is trusted when it is in the store's ``keys`` table (``tuneops keys trust``, or
  ``tuneops keys init`` which creates a pair and trusts its public half). Verification uses only trusted
  keys; a revoked key verifies nothing signed after its revocation.
- The key id is ``key-`` + the first 16 hex of sha256(raw public key), so it names the key itself.

What gets signed is canonical JSON (``tuneops.store.ids.canonical_json``); :func:`sign_payload` and
:func:`verify_payload` are the two calls the registry and the ledger use.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tuneops.errors import InvalidInput, NotFound, TuneopsError


class SignatureError(TuneopsError):
    """A signature is missing, does not verify, or was made by a key the store does not trust."""

    exit_code = 5


def key_dir() -> Path:
    return Path(os.environ.get("TUNEOPS_KEY_DIR") or Path.home() / ".config" / "tuneops" / "keys")


def key_id_of(public_raw: bytes) -> str:
    return "key-" + hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass
class SigningKey:
    key_id: str
    private: object  # cryptography Ed25519PrivateKey
    path: Path

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self.private.sign(payload)).decode()


def generate_key(directory: Path | None = None, *, make_default: bool = True) -> SigningKey:
    """Create an ed25519 key pair in ``directory`` (the private key, mode 0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory or key_dir())
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = key_id_of(raw)
    path = directory / f"{kid}.pem"
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    if make_default:
        tmp = directory / "default.tmp"
        tmp.write_text(kid + "\n")
        os.replace(tmp, directory / "default")
    return SigningKey(kid, private, path)


def load_key(key_id: str | None = None, directory: Path | None = None) -> SigningKey:
    """The active signing key: ``key_id``, else ``$TUNEOPS_SIGNING_KEY``, else the folder's default."""
    from cryptography.hazmat.primitives import serialization

    directory = Path(directory or key_dir())
    kid = key_id or os.environ.get("TUNEOPS_SIGNING_KEY")
    if not kid:
        default = directory / "default"
        if not default.exists():
            raise NotFound(f"no signing key (looked in {directory})",
                           hint="create one with `tuneops keys init` (or set TUNEOPS_KEY_DIR / TUNEOPS_SIGNING_KEY)")
        kid = default.read_text().strip()
    path = directory / f"{kid}.pem"
    if not path.exists():
        raise NotFound(f"signing key {kid} not found in {directory}", hint="`tuneops keys list` shows the keys here")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"{path}: not an unencrypted PKCS#8 ed25519 private key ({e})") from None
    key = SigningKey(kid, private, path)
    if key_id_of(key.public_raw) != kid:
        raise InvalidInput(f"{path}: its public key does not match its name {kid}",
                           hint="keys are named by their public key; do not rename key files")
    return key


def verify_with(public_b64: str, payload: bytes, signature_b64: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64)).verify(base64.b64decode(signature_b64),
                                                                                  payload)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def sign_payload(obj, key: SigningKey | None = None) -> dict:
    """Sign canonical JSON of ``obj``: {"key_id", "signature", "payload_sha256"}."""
    from tuneops.store.ids import canonical_json

    key = key or load_key()
    payload = canonical_json(obj)
    return {"key_id": key.key_id, "signature": key.sign(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest()}


def verify_payload(obj, sig: dict | None, trusted: dict[str, str], *, what: str) -> str:
    """Check ``sig`` over canonical JSON of ``obj`` against ``trusted`` ({key id: public key b64}); returns
    the signer's key id or raises SignatureError naming what is wrong."""
    from tuneops.store.ids import canonical_json

    if not sig or not sig.get("signature"):
        raise SignatureError(f"{what} is not signed", hint="sign it with `tuneops registry sign ID` (needs a key: "
                                                           "`tuneops keys init`)")
    kid = sig.get("key_id")
    if kid not in trusted:
        raise SignatureError(f"{what} is signed by {kid}, a key this store does not trust",
                             hint="trust its public key with `tuneops keys trust KEY.pub` if you know who holds it")
    if not verify_with(trusted[kid], canonical_json(obj), sig["signature"]):
        raise SignatureError(f"{what}: the signature by {kid} does not match its content (tampered, or signed "
                             "over something else)", hint="do not use it; re-register from the original files")
    return kid
