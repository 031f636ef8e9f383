"""Content-addressed blob store on a local directory.

Single files live at ``blobs/sha256/ab/<digest>``; directories (models, adapters) live at
``trees/<digest>/`` where the digest is the sha256 of the canonical manifest of their files.
Every write goes to a temp path first and is renamed into place, so a crash never leaves a
half-written object under its final name.
"""

import os
import shutil
import tempfile
from pathlib import Path

from tuneops.errors import InvalidInput
from tuneops.store.ids import canonical_json, sha256_bytes, sha256_file


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "trees").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # -- single blobs -------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest[:2] / digest

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        dest = self.blob_path(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        return digest

    def get_bytes(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        if not path.exists():
            raise InvalidInput(f"blob sha256:{digest} is missing from {self.root}")
        return path.read_bytes()

    # -- directory trees ----------------------------------------------------------------
    def tree_path(self, digest: str) -> Path:
        return self.root / "trees" / digest

    @staticmethod
    def tree_manifest(directory: Path) -> dict[str, str]:
        """Map of relative file path -> sha256 for every file under ``directory``."""
        directory = Path(directory)
        return {
            str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        }

    @staticmethod
    def tree_digest(manifest: dict[str, str]) -> str:
        return sha256_bytes(canonical_json(manifest))

    def put_tree(self, directory: Path, manifest: dict[str, str] | None = None) -> tuple[str, Path]:
        """Copy ``directory`` into the store (atomically); return (digest, stored path)."""
        manifest = manifest or self.tree_manifest(directory)
        digest = self.tree_digest(manifest)
        dest = self.tree_path(digest)
        if dest.exists():
            return digest, dest
        tmp = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
        try:
            for rel in manifest:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(directory) / rel, tmp / rel)
            os.replace(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not dest.exists():
                raise
        return digest, dest

    def verify_tree(self, digest: str) -> bool:
        """Re-hash a stored tree: False means its files were changed after they were stored."""
        path = self.tree_path(digest)
        return path.exists() and self.tree_digest(self.tree_manifest(path)) == digest

    def scratch_dir(self, prefix: str) -> Path:
        """A fresh directory inside the store's tmp area (same filesystem, so renames are atomic)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / "tmp"))
