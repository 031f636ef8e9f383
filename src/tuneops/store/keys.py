"""Ed25519 key pairs on disk and signature checks: what the store's ledger needs to sign and verify its
heads, kept in the store layer so it does not import upward (release/signing.py re-exports all of it and
adds trust, registry signatures and the errors the CLI and server map)."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tuneops.errors import InvalidInput, NotFound


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


__all__ = ["SigningKey", "generate_key", "key_dir", "key_id_of", "load_key", "verify_with"]
