"""Content-hash identities: the same bytes always give the same id."""

import hashlib
import json
from pathlib import Path
from typing import Any

from ulid import ULID

ID_HEX = 16  # hex characters of sha256 kept in an id: 64 bits, ample for one team's store


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace, so equal content hashes equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_id(prefix: str, digest: str) -> str:
    return f"{prefix}-{digest[:ID_HEX]}"


def new_run_id() -> str:
    return f"run-{str(ULID()).lower()}"
