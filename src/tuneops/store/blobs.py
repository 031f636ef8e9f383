"""Content-addressed blob store on a local directory.

Single files live at ``blobs/sha256/ab/<digest>``; directories (models, adapters) live at
``trees/<digest>/`` where the digest is the sha256 of the canonical manifest of their files.
Every write goes to a temp path first and is renamed into place, so a crash never leaves a
half-written object under its final name.
"""

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from tuneops.errors import IntegrityError, InvalidInput
from tuneops.store.ids import canonical_json, sha256_bytes, sha256_file

# Fast path for verify-on-load: (size, mtime_ns, ctime_ns, inode) of a file whose sha256 matched.
# ctime cannot be set from user space, so rewriting a file and restoring its mtime still
# invalidates the entry; a changed file is always re-hashed before it is trusted again.
_VERIFIED: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_VERIFIED_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def verified_sha256(path: Path) -> str:
    """sha256 of a file, re-hashed only when its size, mtime, ctime or inode changed."""
    key = str(path)
    stat = _stat_key(path)
    with _VERIFIED_LOCK:
        hit = _VERIFIED.get(key)
    if hit is not None and hit[0] == stat:
        return hit[1]
    digest = sha256_file(path)
    if _stat_key(path) == stat:  # unchanged while we hashed it
        with _VERIFIED_LOCK:
            _VERIFIED[key] = (stat, digest)
    return digest


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

    def put_file(self, path: Path) -> str:
        """Move a finished file (written under ``scratch_dir``, so the rename stays on one filesystem)
        into the store as a blob, hashing it in chunks rather than reading it whole."""
        path = Path(path)
        digest = sha256_file(path)
        dest = self.blob_path(digest)
        if dest.exists():
            path.unlink()
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(path, dest)
        return digest

    def get_bytes(self, digest: str) -> bytes:
        return self.blob_file(digest).read_bytes()

    def blob_file(self, digest: str) -> Path:
        """The path of a stored blob, for readers that stream it (pyarrow) instead of reading it whole."""
        path = self.blob_path(digest)
        if not path.exists():
            raise InvalidInput(f"blob sha256:{digest} is missing from {self.root}")
        return path

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
        # The manifest is stored as a blob whose name is the tree digest itself, so verification
        # can name the file that changed, and the manifest cannot be altered without detection.
        self.put_bytes(canonical_json(manifest))
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

    def tree_problems(self, digest: str) -> list[str]:
        """What differs between a stored tree and the manifest recorded when it was stored
        (empty list: intact). Unchanged files are not re-hashed (see ``verified_sha256``)."""
        path = self.tree_path(digest)
        if not path.is_dir():
            return [f"{path}: missing"]
        recorded = self._recorded_manifest(digest)
        present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink()}
        if recorded is None:  # no manifest blob (or it was altered): fall back to the whole-tree digest
            ok = self.tree_digest({rel: sha256_file(path / rel) for rel in sorted(present)}) == digest
            return [] if ok else [f"{path}: contents do not match tree digest {digest[:16]}…"]
        problems = []
        for rel, want in sorted(recorded.items()):
            f = path / rel
            if rel not in present:
                problems.append(f"{f}: missing")
            elif f.is_symlink() or not f.is_file():
                problems.append(f"{f}: not a regular file")
            elif verified_sha256(f) != want:
                problems.append(f"{f}: sha256 differs from the recorded {want[:16]}… "
                                f"({f.stat().st_size} bytes now)")
        problems += [f"{path / rel}: unexpected file" for rel in sorted(present - set(recorded))]
        return problems

    def _recorded_manifest(self, digest: str) -> dict[str, str] | None:
        blob = self.blob_path(digest)
        if not blob.exists():
            return None
        data = blob.read_bytes()
        if sha256_bytes(data) != digest:
            return None
        try:
            manifest = json.loads(data)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) else None

    def verify_tree(self, digest: str) -> bool:
        """True when a stored tree still matches what was stored."""
        return not self.tree_problems(digest)

    def verified_tree_path(self, digest: str, what: str) -> Path:
        """The path of a stored tree, after checking every file against its recorded hash.

        This is the only way code that *uses* stored weights (eval, serve, promote, export)
        should reach them: a mismatch raises IntegrityError naming the files."""
        problems = self.tree_problems(digest)
        if problems:
            shown = "\n  ".join(problems[:10])
            raise IntegrityError(f"{what} failed its integrity check; it will not be loaded:\n  {shown}",
                                 hint="the stored files were changed after they were registered; restore them "
                                      "from a backup or re-register the original files (a new id), "
                                      "and see `tuneops registry audit`")
        return self.tree_path(digest)

    def scratch_dir(self, prefix: str) -> Path:
        """A fresh directory inside the store's tmp area (same filesystem, so renames are atomic)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / "tmp"))
