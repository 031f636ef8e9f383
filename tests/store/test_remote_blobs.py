"""Blobs on any fsspec URL: written through one store, read back (verified) through another that lacks
the local copy; a tampered remote copy is refused, naming the object; nothing half-written is visible."""

import shutil
import uuid

import fsspec
import pytest

from tuneops.errors import IntegrityError
from tuneops.store import Store
from tuneops.store.blobs import BlobStore


@pytest.fixture(params=["memory", "file"])
def blob_url(request, tmp_path):
    if request.param == "memory":
        url = f"memory://tuneops-test-{uuid.uuid4().hex[:8]}/blobs"
        yield url
        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        yield (tmp_path / "remote").as_uri()


def _remote(url):
    fs, base = fsspec.core.url_to_fs(url)
    return fs, base.rstrip("/")


def _tree(tmp_path):
    d = tmp_path / "adapter"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "adapter_model.safetensors").write_bytes(b"\x00weights" * 1000)
    (d / "adapter_config.json").write_text('{"r": 4}')
    (d / "sub" / "tokenizer.json").write_text("{}")
    return d


def test_a_blob_and_a_tree_written_here_are_read_back_elsewhere(tmp_path, blob_url):
    writer = Store(tmp_path / "a", blob_url=blob_url)
    blob = writer.blobs.put_bytes(b"rows of a dataset")
    digest, _ = writer.blobs.put_tree(_tree(tmp_path))
    writer.engine.dispose()
    shutil.rmtree(tmp_path / "a")  # the machine that wrote them is gone

    reader = Store(tmp_path / "b", blob_url=blob_url)
    assert not reader.blobs.blob_path(blob).exists()
    assert reader.blobs.get_bytes(blob) == b"rows of a dataset"
    path = reader.blobs.verified_tree_path(digest, "artifact ad-test")
    assert path == reader.blobs.tree_path(digest) and path.is_dir()  # a local path, as HF and PEFT need
    assert (path / "adapter_model.safetensors").read_bytes() == b"\x00weights" * 1000
    assert (path / "sub" / "tokenizer.json").read_text() == "{}"
    assert reader.blobs.tree_problems(digest) == []
    reader.engine.dispose()


def test_the_url_can_come_from_the_environment(tmp_path, blob_url, monkeypatch):
    monkeypatch.setenv("TUNEOPS_BLOB_URL", blob_url)
    digest = Store(tmp_path / "a").blobs.put_bytes(b"x")
    fs, base = _remote(blob_url)
    assert fs.cat_file(f"{base}/blobs/sha256/{digest[:2]}/{digest}") == b"x"


def test_the_remote_mirrors_the_local_layout_with_nothing_left_in_tmp(tmp_path, blob_url):
    blobs = BlobStore(tmp_path / "a", remote_url=blob_url)
    digest, _ = blobs.put_tree(_tree(tmp_path))
    fs, base = _remote(blob_url)
    assert fs.exists(f"{base}/blobs/sha256/{digest[:2]}/{digest}")  # the manifest blob
    names = sorted(p[len(base) + 1:] for p in fs.find(f"{base}/trees"))
    assert names == [f"trees/{digest}/{rel}" for rel in ("adapter_config.json", "adapter_model.safetensors",
                                                          "sub/tokenizer.json")]
    assert fs.find(f"{base}/tmp") == []


def test_a_trees_manifest_is_written_last(tmp_path, blob_url, monkeypatch):
    """A push that dies part-way leaves no manifest, so nobody mistakes the tree for a complete one."""
    blobs = BlobStore(tmp_path / "a", remote_url=blob_url)
    remote = blobs.remote
    order, real_put = [], remote.put_file

    def put_file(local, rel):
        order.append(rel)
        if len(order) == 2:
            raise OSError("connection reset")
        real_put(local, rel)

    monkeypatch.setattr(remote, "put_file", put_file)
    with pytest.raises(OSError, match="connection reset"):
        blobs.put_tree(_tree(tmp_path))
    digest = blobs.tree_digest(blobs.tree_manifest(_tree(tmp_path)))
    assert not remote.exists(f"blobs/sha256/{digest[:2]}/{digest}")
    monkeypatch.setattr(remote, "put_file", real_put)
    order.clear()
    blobs.put_tree(_tree(tmp_path))  # the next write completes it
    assert remote.exists(f"blobs/sha256/{digest[:2]}/{digest}")


def test_a_tampered_remote_blob_is_refused(tmp_path, blob_url):
    blob = BlobStore(tmp_path / "a", remote_url=blob_url).put_bytes(b"the real rows")
    fs, base = _remote(blob_url)
    fs.pipe_file(f"{base}/blobs/sha256/{blob[:2]}/{blob}", b"the forged rows")
    reader = BlobStore(tmp_path / "b", remote_url=blob_url)
    with pytest.raises(IntegrityError, match=f"blob sha256:{blob} at .* is corrupt"):
        reader.get_bytes(blob)
    assert not reader.blob_path(blob).exists()  # the forged bytes never became the local copy


def test_a_tampered_remote_tree_file_is_refused_naming_it(tmp_path, blob_url):
    digest, _ = BlobStore(tmp_path / "a", remote_url=blob_url).put_tree(_tree(tmp_path))
    fs, base = _remote(blob_url)
    fs.pipe_file(f"{base}/trees/{digest}/adapter_model.safetensors", b"\x00poisoned" * 1000)
    reader = BlobStore(tmp_path / "b", remote_url=blob_url)
    with pytest.raises(IntegrityError, match=f"trees/{digest}/adapter_model.safetensors is corrupt"):
        reader.verified_tree_path(digest, "artifact ad-test")
    assert not reader.tree_path(digest).exists()
    problems = reader.tree_problems(digest)  # `registry show` reports it rather than failing
    assert len(problems) == 1 and "adapter_model.safetensors is corrupt" in problems[0]


def test_a_tampered_remote_manifest_is_refused(tmp_path, blob_url):
    digest, _ = BlobStore(tmp_path / "a", remote_url=blob_url).put_tree(_tree(tmp_path))
    fs, base = _remote(blob_url)
    fs.pipe_file(f"{base}/blobs/sha256/{digest[:2]}/{digest}", b'{"adapter_config.json": "0"}')
    with pytest.raises(IntegrityError, match=f"blob sha256:{digest} at .* is corrupt"):
        BlobStore(tmp_path / "b", remote_url=blob_url).verified_tree_path(digest, "artifact ad-test")


def test_a_missing_object_says_where_it_looked(tmp_path, blob_url):
    from tuneops.errors import InvalidInput

    blobs = BlobStore(tmp_path / "a", remote_url=blob_url)
    with pytest.raises(InvalidInput, match="missing from .* and from " + blob_url.split("://")[0]):
        blobs.get_bytes("0" * 64)
    assert blobs.tree_problems("1" * 64)[0].endswith(f"missing (and not at {blob_url})")


def test_deleting_a_blob_removes_the_remote_copy(tmp_path, blob_url):
    blobs = BlobStore(tmp_path / "a", remote_url=blob_url)
    digest = blobs.put_bytes(b"erased rows")
    blobs.delete_blob(digest)
    assert not blobs.blob_path(digest).exists() and not blobs.remote.exists(f"blobs/sha256/{digest[:2]}/{digest}")


def test_without_a_url_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEOPS_BLOB_URL", raising=False)
    store = Store(tmp_path / "a")
    assert store.blobs.remote is None
    digest = store.blobs.put_bytes(b"x")
    store.blobs.blob_path(digest).unlink()
    with pytest.raises(Exception, match="missing from"):
        store.blobs.get_bytes(digest)
