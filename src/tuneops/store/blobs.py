"""Content-addressed blob store on a local directory, optionally mirrored to any fsspec URL.

Single files live at ``blobs/sha256/ab/<digest>``; directories (models, adapters) live at
``trees/<digest>/`` where the digest is the sha256 of the canonical manifest of their files.
Every write goes to a temp path first and is renamed into place, so a crash never leaves a
half-written object under its final name.

With a remote URL (``s3://bucket/tuneops``, ``gs://…``, ``file:///mnt/share``, ``memory://…``), the local
directory stays the verified working copy (Hugging Face and PEFT load weights by local path), and the
remote holds the same layout: every blob and tree written is also put there — each file under
``tmp/`` first, then moved to its final name, a tree's files before its manifest blob, so a remote tree
whose manifest exists is complete. An object missing locally is fetched from the remote and checked
against its digest before it is used: a corrupted remote copy is refused (IntegrityError) and never
reaches the local copy.
"""

import json
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path, PurePosixPath

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


class RemoteBlobs:
    """The remote copy of a blob store: the local layout, under an fsspec URL."""

    def __init__(self, url: str):
        import fsspec  # only stores with a remote pay for importing it

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url)
        self.base = self.base.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def where(self, rel: str) -> str:
        """A readable location for messages."""
        return f"{self.url}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def _publish(self, write, rel: str) -> None:
        """Write to a fresh name under tmp/, then move it to ``rel``: readers never see half an object."""
        tmp = self.path(f"tmp/{uuid.uuid4().hex}")
        final = self.path(rel)
        self.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        try:
            write(tmp)
            self.fs.mv(tmp, final)
        except BaseException:
            try:
                self.fs.rm(tmp)
            except (OSError, FileNotFoundError):
                pass
            raise

    def put_file(self, local: Path, rel: str) -> None:
        self._publish(lambda tmp: self.fs.put_file(str(local), tmp), rel)

    def put_bytes(self, data: bytes, rel: str) -> None:
        self._publish(lambda tmp: self.fs.pipe_file(tmp, data), rel)

    def get_file(self, rel: str, local: Path) -> None:
        self.fs.get_file(self.path(rel), str(local))


def _blob_rel(digest: str) -> str:
    return f"blobs/sha256/{digest[:2]}/{digest}"


class BlobStore:
    def __init__(self, root: Path, remote_url: str | None = None):
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "trees").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.remote_url = remote_url or None
        self._remote: RemoteBlobs | None = None

    @property
    def remote(self) -> RemoteBlobs | None:
        """The remote copy (None without a URL), connected on first use."""
        if self.remote_url and self._remote is None:
            self._remote = RemoteBlobs(self.remote_url)
        return self._remote

    # -- single blobs -------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest[:2] / digest

    def put_bytes(self, data: bytes) -> str:
        digest = self._put_local_bytes(data)
        self._push_blob(digest)
        return digest

    def _put_local_bytes(self, data: bytes) -> str:
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

    def _push_blob(self, digest: str) -> None:
        """Put a local blob to the remote unless it is there already (content-addressed: same name, same bytes)."""
        remote = self.remote
        if remote is not None and not remote.exists(_blob_rel(digest)):
            remote.put_file(self.blob_path(digest), _blob_rel(digest))

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
        self._push_blob(digest)
        return digest

    def get_bytes(self, digest: str) -> bytes:
        return self.blob_file(digest).read_bytes()

    def blob_file(self, digest: str) -> Path:
        """The path of a stored blob, for readers that stream it (pyarrow) instead of reading it whole."""
        path = self.blob_path(digest)
        if not path.exists() and self.remote is not None:
            self._fetch_blob(digest)
        if not path.exists():
            where = f"{self.root}" + (f" and from {self.remote_url}" if self.remote_url else "")
            raise InvalidInput(f"blob sha256:{digest} is missing from {where}")
        return path

    def delete_blob(self, digest: str) -> None:
        """Remove a blob everywhere it is kept (erasure purges rows' bytes: the remote copy goes too)."""
        self.blob_path(digest).unlink(missing_ok=True)
        remote = self.remote
        if remote is not None and remote.exists(_blob_rel(digest)):
            remote.fs.rm(remote.path(_blob_rel(digest)))

    def _fetch_blob(self, digest: str) -> bool:
        """Copy a blob from the remote into the local store, verified; False when the remote lacks it."""
        remote = self.remote
        rel = _blob_rel(digest)
        if not remote.exists(rel):
            return False
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        try:
            remote.get_file(rel, Path(tmp))
            got = sha256_file(Path(tmp))
            if got != digest:
                raise IntegrityError(
                    f"blob sha256:{digest} at {remote.where(rel)} is corrupt (its content hashes to "
                    f"{got[:16]}…); it was not used",
                    hint="the remote copy was changed after it was written; restore it from the machine that "
                         "wrote it (its local store still has it) or from a backup")
            dest = self.blob_path(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

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
        self._put_local_bytes(canonical_json(manifest))
        dest = self.tree_path(digest)
        if not dest.exists():
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
        self._push_tree(digest, manifest)
        return digest, dest

    def _push_tree(self, digest: str, manifest: dict[str, str]) -> None:
        """Put a stored tree to the remote: its files, then its manifest blob (the mark of a complete tree)."""
        remote = self.remote
        if remote is None or remote.exists(_blob_rel(digest)):
            return
        src = self.verified_tree_path(digest, f"tree {digest[:16]}…")  # never publish a changed local copy
        for rel in sorted(manifest):
            remote.put_file(src / rel, f"trees/{digest}/{rel}")
        remote.put_file(self.blob_path(digest), _blob_rel(digest))

    def _fetch_tree(self, digest: str) -> bool:
        """Copy a tree from the remote into the local store, every file verified against the manifest
        (itself verified against the digest); False when the remote lacks it."""
        remote = self.remote
        if not self.blob_path(digest).exists() and not self._fetch_blob(digest):
            return False
        manifest = self._recorded_manifest(digest)
        if manifest is None:
            raise IntegrityError(f"tree {digest}: its manifest blob is not a file list; it was not used")
        tmp = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
        try:
            for rel, want in sorted(manifest.items()):
                parts = PurePosixPath(rel).parts
                if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
                    raise IntegrityError(f"tree {digest}: manifest entry {rel!r} points outside the tree")
                src = f"trees/{digest}/{rel}"
                if not remote.exists(src):
                    raise IntegrityError(f"tree {digest} is incomplete at {remote.url}: {remote.where(src)} is missing",
                                         hint="put the tree again from a machine whose local store has it")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                remote.get_file(src, tmp / rel)
                got = sha256_file(tmp / rel)
                if got != want:
                    raise IntegrityError(
                        f"tree {digest}: {remote.where(src)} is corrupt (sha256 {got[:16]}…, recorded "
                        f"{want[:16]}…); the tree was not used",
                        hint="the remote copy was changed after it was written; restore it from the machine "
                             "that wrote it (its local store still has it) or from a backup")
            dest = self.tree_path(digest)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():  # another process fetched it first: keep theirs
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def _ensure_local_tree(self, digest: str) -> None:
        if self.remote is not None and not self.tree_path(digest).is_dir():
            self._fetch_tree(digest)

    def tree_problems(self, digest: str) -> list[str]:
        """What differs between a stored tree and the manifest recorded when it was stored
        (empty list: intact). Unchanged files are not re-hashed (see ``verified_sha256``)."""
        path = self.tree_path(digest)
        try:
            self._ensure_local_tree(digest)
        except IntegrityError as e:
            return [e.message]
        if not path.is_dir():
            return [f"{path}: missing" + (f" (and not at {self.remote_url})" if self.remote_url else "")]
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
        if not blob.exists() and self.remote is not None:
            try:
                self._fetch_blob(digest)
            except IntegrityError:
                return None
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
        should reach them: a mismatch raises IntegrityError naming the files. A tree missing locally is
        fetched from the remote first (refused, naming the file, when the remote copy is corrupt)."""
        self._ensure_local_tree(digest)
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
