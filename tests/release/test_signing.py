"""Signing keys (create, trust, revoke, export), signatures at registration, the CLI (`tuneops keys …`,
`registry sign|verify|deprecate|promote --use`, key creation by `init` / `quickstart`) and the server's refusal
of unsigned, wrongly signed, untrusted, revoked and past-sunset artifacts."""

import base64
import datetime as dt
import json

import httpx
import pytest

from tests.cli.helpers import tuneops
from tuneops.errors import InvalidInput, NotFound, StateError
from tuneops.release.registry import register_adapter, signing_payload, verify_signature
from tuneops.release.signing import (
    SignatureError, generate_key, load_key, local_keys, read_public_key, revoke_key, sign_payload, trust_key,
    trusted_keys, verify_payload,
)
from tuneops.store.schema import ArtifactRecord, BaseModelRecord, RunRecord

TODAY = dt.datetime.now(dt.timezone.utc).date()


# -- keys --------------------------------------------------------------------------------------

def test_generate_load_and_list_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEOPS_KEY_DIR", str(tmp_path))
    a = generate_key()
    b = generate_key(make_default=False)
    assert (tmp_path / f"{a.key_id}.pem").stat().st_mode & 0o777 == 0o600
    assert load_key().key_id == a.key_id and load_key(b.key_id).key_id == b.key_id
    monkeypatch.setenv("TUNEOPS_SIGNING_KEY", b.key_id)
    assert load_key().key_id == b.key_id
    listed = {k["key_id"]: k["default"] for k in local_keys()}
    assert listed == {a.key_id: False, b.key_id: True}
    monkeypatch.delenv("TUNEOPS_SIGNING_KEY")
    (tmp_path / f"{b.key_id}.pem").rename(tmp_path / "key-0000000000000000.pem")
    with pytest.raises(InvalidInput, match="does not match its name"):
        load_key("key-0000000000000000")
    with pytest.raises(NotFound, match="no signing key"):
        load_key(directory=tmp_path / "empty")


def test_read_public_key_in_every_form(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

    key = generate_key(tmp_path, make_default=False)
    b64 = key.public_b64
    pem = key.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "k.pub").write_text(b64 + "\n")
    (tmp_path / "k.pem").write_text(pem)
    for form in (b64, f"  {b64}  ", str(tmp_path / "k.pub"), str(tmp_path / "k.pem"), pem):
        assert read_public_key(form) == b64
    with pytest.raises(InvalidInput, match="neither a file holding an ed25519 public key"):
        read_public_key("not-a-key")
    with pytest.raises(InvalidInput, match="neither"):
        read_public_key(base64.b64encode(b"x" * 31).decode())
    rsa = generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(InvalidInput, match="not an ed25519 key"):
        read_public_key(rsa)


def test_trust_revoke_and_never_trust_again(store, tmp_path):
    key = generate_key(tmp_path, make_default=False)
    row, created = trust_key(store, key.public_b64, name="alice")
    assert created and row.key_id == key.key_id and row.name == "alice"
    assert trust_key(store, key.public_b64, name="alice")[1] is False  # idempotent
    assert trusted_keys(store) == ({key.key_id: key.public_b64}, {})
    revoke_key(store, key.key_id, reason="left the team")
    trusted, revoked = trusted_keys(store)
    assert trusted == {} and revoked[key.key_id].startswith("revoked ")
    with pytest.raises(StateError, match="already revoked"):
        revoke_key(store, key.key_id)
    with pytest.raises(StateError, match="never trusted again"):
        trust_key(store, key.public_b64, name="alice again")
    with pytest.raises(NotFound, match="not in this store's trusted keys"):
        revoke_key(store, "key-ffffffffffffffff")
    actions = [(e.action, e.record_id) for e in store.audit_log() if e.record_type == "key"]
    assert actions == [("key.trust", key.key_id), ("key.revoke", key.key_id)]


def test_verify_payload_names_each_failure(tmp_path):
    key = generate_key(tmp_path, make_default=False)
    obj = {"id": "ad-1", "tree": "t"}
    sig = sign_payload(obj, key)
    trusted = {key.key_id: key.public_b64}
    assert verify_payload(obj, sig, trusted, what="x") == key.key_id
    cases = [((obj, None, trusted), "missing", "is not signed"),
             ((obj, {"key_id": key.key_id, "signature": ""}, trusted), "missing", "is not signed"),
             (({**obj, "tree": "u"}, sig, trusted), "invalid", "does not match"),
             ((obj, {**sig, "signature": sig["signature"][::-1]}, trusted), "invalid", "does not match"),
             ((obj, sig, {}), "untrusted", "does not trust")]
    for args, reason, words in cases:
        with pytest.raises(SignatureError, match=words) as e:
            verify_payload(*args, what="x")
        assert e.value.reason == reason and e.value.error_code == f"signature_{reason}" and e.value.exit_code == 5
    with pytest.raises(SignatureError, match="revoked") as e:
        verify_payload(obj, sig, {}, what="x", revoked={key.key_id: "revoked 2026-01-01"})
    assert e.value.reason == "revoked"


def _base(store):
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0123", name="b", source="test", source_digest="x", license="MIT", tree="t",
                              weights_sha256="w", num_parameters=1))
        s.add(RunRecord(id="run-0", recipe_name="r", recipe_yaml="", recipe_hash="0" * 64, state="succeeded",
                        dataset_ids=[], metrics={}))


def _adapter(tmp_path, i=0):
    d = tmp_path / f"adapter{i}"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(bytes([i]) * 16)
    (d / "adapter_config.json").write_text("{}")
    return d


def test_registration_signs_id_tree_and_lineage(store, tmp_path, signing_key):
    _base(store)
    art, _ = register_adapter(store, _adapter(tmp_path), base_id="base-0123", method="lora", run_id="run-0",
                              dataset_ids=["ds-a"], recipe_hash="f" * 64)
    assert art.signature["key_id"] == signing_key.key_id
    payload = signing_payload(art)
    assert payload["id"] == art.id and payload["tree"] == art.tree and payload["lineage"] == art.lineage
    assert verify_signature(store, store.get_artifact(art.id)) == signing_key.key_id  # survives the round trip
    assert store.audit_log()[-1].details["signed_by"] == signing_key.key_id


def test_a_store_that_trusts_someone_never_trusts_a_new_signer_by_itself(store, tmp_path, monkeypatch):
    _base(store)
    alice = generate_key(tmp_path / "alice", make_default=False)
    trust_key(store, alice.public_b64, name="alice")
    monkeypatch.setenv("TUNEOPS_KEY_DIR", str(tmp_path / "bob"))
    bob = generate_key()
    art, _ = register_adapter(store, _adapter(tmp_path), base_id="base-0123", method="lora", run_id="run-0",
                              dataset_ids=[], recipe_hash=None)
    assert art.signature["key_id"] == bob.key_id  # signed, so trusting bob later makes it valid
    assert bob.key_id not in trusted_keys(store)[0]
    (notice,) = store.run_events("run-0", "notice")
    assert "does not trust yet" in notice.payload["message"] and "keys trust" in notice.payload["hint"]
    with pytest.raises(SignatureError, match="does not trust"):
        verify_signature(store, art)
    trust_key(store, bob.public_b64, name="bob")
    assert verify_signature(store, art) == bob.key_id


def test_a_revoked_local_key_leaves_registrations_unsigned(store, tmp_path, signing_key):
    _base(store)
    trust_key(store, signing_key.public_b64, name="me")
    revoke_key(store, signing_key.key_id)
    art, _ = register_adapter(store, _adapter(tmp_path), base_id="base-0123", method="lora", run_id="run-0",
                              dataset_ids=[], recipe_hash=None)
    assert art.signature is None
    (notice,) = store.run_events("run-0", "notice")
    assert "revoked" in notice.payload["message"]


# -- the CLI -----------------------------------------------------------------------------------

def test_cli_init_creates_a_key_once_and_keys_commands(tmp_path):
    home, keys, bob_keys = tmp_path / "home", tmp_path / "keys", tmp_path / "bob-keys"
    out = tuneops(home, "init", TUNEOPS_KEY_DIR=keys).stdout
    (pem,) = keys.glob("key-*.pem")
    kid = pem.stem
    assert "store ready at" in out and f"signing key {kid} created at {pem}" in out and "trusted in this store" in out
    assert "signing key" not in tuneops(home, "init", TUNEOPS_KEY_DIR=keys).stdout  # nothing new the second time
    public = tuneops(home, "keys", "export-public", TUNEOPS_KEY_DIR=keys).stdout.strip()
    assert read_public_key(public) == public and len(base64.b64decode(public)) == 32

    # Bob makes a key where there is no store, shares its public half; the store's owner trusts it.
    proc = tuneops(tmp_path / "nowhere", "keys", "init", "--name", "bob", "--json", TUNEOPS_KEY_DIR=bob_keys)
    bob = json.loads(proc.stdout)
    assert bob["created"] and bob["trusted_in"] is None and "no store here" in proc.stderr
    (tmp_path / "bob.pub").write_text(tuneops(None, "keys", "export-public", TUNEOPS_KEY_DIR=bob_keys).stdout)
    trusted = json.loads(tuneops(home, "keys", "trust", tmp_path / "bob.pub", "--name", "bob", "--json",
                                 TUNEOPS_KEY_DIR=keys).stdout)
    assert trusted["key_id"] == bob["key_id"] and trusted["created"] is True
    rows = {r["key_id"]: r for r in json.loads(tuneops(home, "keys", "list", "--json", TUNEOPS_KEY_DIR=keys).stdout)}
    assert rows[kid]["local"] == "default" and rows[kid]["trusted"] == "yes"
    assert rows[bob["key_id"]]["local"] == "no" and rows[bob["key_id"]]["name"] == "bob"
    # export-public of a key known only as trusted
    assert tuneops(home, "keys", "export-public", bob["key_id"], TUNEOPS_KEY_DIR=keys).stdout.strip() == \
        bob["public_key"]

    revoked = json.loads(tuneops(home, "keys", "revoke", bob["key_id"], "--reason", "left", "--json",
                                 TUNEOPS_KEY_DIR=keys).stdout)
    assert revoked["revoked_at"]
    rows = {r["key_id"]: r for r in json.loads(tuneops(home, "keys", "list", "--json", TUNEOPS_KEY_DIR=keys).stdout)}
    assert rows[bob["key_id"]]["trusted"].startswith("revoked ")
    again = tuneops(home, "keys", "trust", tmp_path / "bob.pub", "--name", "bob", check=False, TUNEOPS_KEY_DIR=keys)
    assert again.returncode == 2 and "never trusted again" in again.stderr


def test_cli_sign_verify_deprecate_and_promote_with_use(tmp_path, signing_key):
    from tuneops.store import Store

    home, keys = tmp_path / "home", tmp_path / "keys"
    tuneops(home, "init", TUNEOPS_KEY_DIR=keys)  # the store now trusts the CLI user's key, not the session's
    store = Store(home)
    _base(store)
    art, _ = register_adapter(store, _adapter(tmp_path), base_id="base-0123", method="lora", run_id="run-0",
                              dataset_ids=[], recipe_hash=None)  # signed in-process with the untrusted session key

    def run(*args, check=True):
        return tuneops(home, *args, check=check, TUNEOPS_KEY_DIR=keys)

    bad = run("registry", "verify", art.id, check=False)
    assert bad.returncode == 5 and f"signed by {signing_key.key_id}, a key this store does not trust" in bad.stderr
    refused = run("registry", "sign", art.id, check=False)
    assert refused.returncode == 5 and "--replace" in refused.stderr
    signed = json.loads(run("registry", "sign", art.id, "--replace", "--json").stdout)
    assert signed["changed"] and signed["signed_by"] == next(keys.glob("key-*.pem")).stem
    ok = json.loads(run("registry", "verify", art.id, "--json").stdout)
    assert ok["ok"] and ok["files"] == "intact" and ok["signature"].startswith("valid, by trusted key")

    # promote --use: an artifact of a run with no eval report, forced with a reason; the use is recorded.
    moved = json.loads(run("registry", "promote", art.id, "bot@production", "--use", "research", "--force",
                           "--reason", "demo", "--json").stdout)
    assert moved["to_artifact"] == art.id and moved["reason"] == "demo"
    assert store.audit_log()[-1].details["use"] == "research"
    bad_use = run("registry", "promote", art.id, "x@production", "--use", "everything", check=False)
    assert bad_use.returncode == 2 and "is not one of" in bad_use.stderr

    yesterday = (TODAY - dt.timedelta(days=1)).isoformat()
    dep = json.loads(run("registry", "deprecate", "bot@production", "--sunset", yesterday, "--reason", "retired",
                         "--json").stdout)
    assert dep["deprecated"] and dep["refused_now"] and dep["aliases"] == ["bot@production"]
    past = run("registry", "verify", art.id, check=False)
    assert past.returncode == 2 and f"sunset {yesterday} has passed: retired" in past.stderr
    run("registry", "deprecate", art.id, "--undo")
    assert run("registry", "verify", art.id).returncode == 0

    weights = store.blobs.tree_path(art.tree) / "adapter_model.safetensors"
    weights.write_bytes(b"\x07" * 16)
    tampered = run("registry", "verify", art.id, check=False)
    assert tampered.returncode == 2 and "failed its integrity check" in tampered.stderr
    assert "adapter_model.safetensors" in tampered.stderr


def test_quickstart_creates_a_key_on_a_machine_without_one(tmp_path, monkeypatch, capsys):
    import tuneops.cli.quickstart as qs
    from tuneops.cli.main import run_cli

    seen = {}

    def fake_run_quickstart(store, **kwargs):
        seen["key"] = load_key().key_id
        seen["trusted"] = list(trusted_keys(store)[0])

    monkeypatch.setattr(qs, "run_quickstart", fake_run_quickstart)
    monkeypatch.setenv("TUNEOPS_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("TUNEOPS_HOME", str(tmp_path / "home"))
    assert run_cli(["quickstart"]) == 0
    (pem,) = (tmp_path / "keys").glob("key-*.pem")
    assert seen == {"key": pem.stem, "trusted": [pem.stem]}
    assert f"signing key {pem.stem} created at {pem}" in capsys.readouterr().out
    assert run_cli(["quickstart"]) == 0  # the second time there is nothing to create
    assert "created" not in capsys.readouterr().out and len(list((tmp_path / "keys").glob("key-*.pem"))) == 1


# -- the server --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed_server(tiny_model_dir, tmp_path_factory, signing_key):
    """A server over its own store: the tiny base and an untrained LoRA adapter, signed at registration."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.serve.conftest import running
    from tuneops.models.base import import_local
    from tuneops.serve.app import create_app
    from tuneops.store import Store

    root = tmp_path_factory.mktemp("signed-serve")
    store = Store(root / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(root / "adapter")
    art, _ = register_adapter(store, root / "adapter", base_id=base.id, method="lora", run_id=None, dataset_ids=[],
                              recipe_hash=None)
    from tuneops.release.registry import promote

    promote(store, art.id, "signed@production", force=True, reason="serving test: no run vouches for it")
    with running(create_app(store, base.id)) as url:
        yield url, store, art


def _ask(url, model):
    return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "Ada, 36, London"}],
                            "max_tokens": 2})


def _set(store, artifact_id, **fields):
    with store.session() as s:
        rec = s.get(ArtifactRecord, artifact_id)
        for k, v in fields.items():
            setattr(rec, k, v)


def _refused(url, models, status, code, words):
    for model in models:
        r = _ask(url, model)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and words in err["message"], err
    return err


def test_server_refuses_every_bad_signature_and_past_sunset(signed_server, tmp_path):
    url, store, art = signed_server
    names = (art.id, "signed", "signed@production")
    good = store.get_artifact(art.id)
    for model in names:
        r = _ask(url, model)
        assert r.status_code == 200 and r.headers["x-tuneops-artifact"] == art.id and "sunset" not in r.headers
        assert "deprecation" not in r.json()["tuneops"]
    try:
        _set(store, art.id, signature=None)
        err = _refused(url, names, 403, "signature_missing", f"artifact {art.id} is not signed")
        assert err["type"] == "signature_error"
        _set(store, art.id, signature={**good.signature, "signature": "A" * 86 + "=="})
        _refused(url, names, 403, "signature_invalid", "does not match its record")
        _set(store, art.id, signature=good.signature, lineage={**good.lineage, "datasets": ["ds-forged"]})
        _refused(url, names, 403, "signature_invalid", "does not match its record")
        _set(store, art.id, lineage=good.lineage)
        stranger = generate_key(tmp_path / "stranger", make_default=False)
        _set(store, art.id, signature=sign_payload(signing_payload(good), stranger))
        _refused(url, names, 403, "signature_untrusted", f"signed by {stranger.key_id}, a key this store does not")
        _set(store, art.id, signature=good.signature)
        assert _ask(url, art.id).status_code == 200  # restored: served again

        # Deprecated: served with a warning until the sunset day ends, refused after it.
        tomorrow = (TODAY + dt.timedelta(days=1)).isoformat()
        from tuneops.release.registry import deprecate

        deprecate(store, art.id, sunset=tomorrow, reason="use signed-v2")
        r = _ask(url, "signed")
        assert r.status_code == 200
        assert r.json()["tuneops"]["deprecation"]["sunset"] == tomorrow
        assert r.json()["tuneops"]["deprecation"]["reason"] == "use signed-v2"
        assert r.headers["x-tuneops-deprecated"] == tomorrow and r.headers["deprecation"].startswith("@")
        assert r.headers["warning"].startswith("299 tuneops") and r.headers["sunset"].endswith("GMT")
        deprecate(store, art.id, undo=True)
        deprecate(store, art.id, sunset=(TODAY - dt.timedelta(days=1)).isoformat(), reason="use signed-v2")
        _refused(url, names, 410, "model_sunset", "has passed: use signed-v2")
        deprecate(store, art.id, undo=True)
        assert _ask(url, "signed").status_code == 200

        # A tampered blob (the hardening issue's check) is refused too.
        weights = store.blobs.tree_path(art.tree) / "adapter_model.safetensors"
        original = weights.read_bytes()
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        try:
            _refused(url, names, 503, "integrity_check_failed", art.id)
        finally:
            weights.write_bytes(original)
        assert _ask(url, "signed").status_code == 200
    finally:
        _set(store, art.id, signature=good.signature, lineage=good.lineage, deprecation=None)


def test_server_refuses_a_revoked_signer_and_unloads_its_adapter(signed_server, signing_key):
    import time

    url, store, art = signed_server
    assert _ask(url, "signed").status_code == 200
    assert art.id in httpx.get(f"{url}/healthz").json()["adapters_loaded"]
    revoke_key(store, signing_key.key_id, reason="compromised")
    _refused(url, (art.id, "signed"), 403, "signature_revoked", "revoked in this store")
    deadline = time.time() + 10
    while art.id in httpx.get(f"{url}/healthz").json()["adapters_loaded"]:
        assert time.time() < deadline, "the refused adapter stayed loaded"
        time.sleep(0.1)
    assert _ask(url, store.get_artifact(art.id).base_id).status_code == 200  # the base is still served
