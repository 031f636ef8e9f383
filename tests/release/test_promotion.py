"""Every condition of a promotion, each refusal naming it and its fix: intact files, a valid signature by a
trusted key (missing, wrong, tampered record, untrusted, revoked), a passing eval report (missing, failing),
no taint, a licence compatible with the alias's declared use, a sunset not passed, the alias's base.
`--force` (with a reason) overrides only the gates, the run's state and a base change."""

import datetime as dt

import pytest

from tuneops.errors import GateFailed, IntegrityError, InvalidInput, StateError
from tuneops.release.registry import (
    SunsetPassed, deprecate, promote, register_adapter, resolve_alias, rollback, sign_artifact,
)
from tuneops.release.signing import SignatureError, generate_key, revoke_key, sign_payload
from tuneops.store.schema import ArtifactRecord, AuditEvent, BaseModelRecord, EvalReportRecord, RunRecord

TODAY = dt.datetime.now(dt.timezone.utc).date()


def _base(store, base_id="base-0123"):
    with store.session() as s:
        s.add(BaseModelRecord(id=base_id, name=base_id, source="test", source_digest="x", license="MIT", tree="t",
                              weights_sha256="w", num_parameters=1))


def _artifact(store, tmp_path, i, *, base_id="base-0123", datasets=(), passed=True, report=True, use=None):
    """A registered adapter of a succeeded run (whose recipe declares ``use``), with a passing eval report."""
    recipe = "" if use is None else f"name: r\ndata:\n  train: x\n  eval: y\n  use: {use}\n"
    with store.session() as s:
        s.add(RunRecord(id=f"run-{i}", recipe_name="r", recipe_yaml=recipe, recipe_hash="0" * 64, state="succeeded",
                        dataset_ids=list(datasets), metrics={}))
    d = tmp_path / f"adapter{i}"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(bytes([i]) * 16)
    (d / "adapter_config.json").write_text("{}")
    art, created = register_adapter(store, d, base_id=base_id, method="lora", run_id=f"run-{i}",
                                    dataset_ids=list(datasets), recipe_hash="f" * 64)
    assert created
    if report:
        with store.session() as s:
            s.add(EvalReportRecord(id=f"ev-{i}", artifact_id=art.id, baseline=base_id, suites=[], metrics={},
                                   gates=[{"gate": "g", "candidate": 0.1, "threshold": 0.5, "passed": passed,
                                           "task": True}], passed=passed, report_blob="x"))
    return art


@pytest.fixture
def reg(store, tmp_path):
    _base(store)
    return store, [_artifact(store, tmp_path, i) for i in range(2)]


def _set(store, artifact_id, **fields):
    with store.session() as s:
        rec = s.get(ArtifactRecord, artifact_id)
        for k, v in fields.items():
            setattr(rec, k, v)


def _never_moved(store, alias="bot@production"):
    name, stage = alias.split("@")
    assert store.alias_history(name, stage) == []


def _refused(store, artifact_id, exc, match, *, alias="bot@production", force_too=True, **kwargs):
    """Refused with and (where the condition is not overridable) without --force; the alias never moves."""
    name, stage = alias.split("@")
    before = [m.to_artifact for m in store.alias_history(name, stage)]
    attempts = [{}] + ([{"force": True, "reason": "urgent"}] if force_too else [])
    errors = []
    for extra in attempts:
        with pytest.raises(exc, match=match) as e:
            promote(store, artifact_id, alias, **kwargs, **extra)
        assert e.value.hint, "every refusal says how to fix it"
        errors.append(e.value)
    assert [m.to_artifact for m in store.alias_history(name, stage)] == before
    return errors[0]


# -- signatures ------------------------------------------------------------------------------

def test_registration_signs_and_a_fresh_store_trusts_the_first_signer(reg, signing_key):
    store, (a, _) = reg
    assert a.signature["key_id"] == signing_key.key_id
    keys = [e for e in store.audit_log() if e.action == "key.trust"]
    assert [e.record_id for e in keys] == [signing_key.key_id]
    mv = promote(store, a.id, "bot@production")
    assert resolve_alias(store, "bot").id == a.id
    audit = store.audit_log()[-1]
    assert audit.action == "alias.promote" and audit.details["signed_by"] == signing_key.key_id
    assert audit.details["use"] == "commercial" and mv.reason == "gates passed in ev-0"


def test_missing_signature_is_refused_even_with_force(reg):
    store, (a, _) = reg
    _set(store, a.id, signature=None)
    e = _refused(store, a.id, SignatureError, rf"artifact {a.id} is not signed")
    assert e.reason == "missing" and f"tuneops registry sign {a.id}" in e.hint


def test_wrong_signature_is_refused_even_with_force(reg, signing_key):
    store, (a, b) = reg
    _set(store, a.id, signature=b.signature)  # a real signature, over another artifact
    e = _refused(store, a.id, SignatureError, "does not match its record")
    assert e.reason == "invalid"
    garbage = dict(a.signature, signature="A" * 86 + "==")
    _set(store, a.id, signature=garbage)
    _refused(store, a.id, SignatureError, "does not match its record")


@pytest.mark.parametrize("field,value", [("lineage", "datasets"), ("base_id", None), ("tree", "0" * 64),
                                         ("run_id", "run-1")])
def test_a_tampered_record_fails_its_signature(reg, field, value):
    store, (a, _) = reg
    if field == "lineage":
        value = {**a.lineage, "datasets": ["ds-something-else"]}
    elif field == "base_id":
        _base(store, "base-other")
        value = "base-other"
    _set(store, a.id, **{field: value})
    _refused(store, a.id, (SignatureError, IntegrityError), "does not match its record|failed its integrity check")
    if field != "tree":  # the files are intact: it is the signature that catches it
        _refused(store, a.id, SignatureError, "does not match its record")


def test_untrusted_key_is_refused_until_trusted(reg, tmp_path):
    from tuneops.release.registry import signing_payload
    from tuneops.release.signing import trust_key

    store, (a, _) = reg
    mallory = generate_key(tmp_path / "mallory", make_default=False)
    _set(store, a.id, signature=sign_payload(signing_payload(a), mallory))
    e = _refused(store, a.id, SignatureError, rf"signed by {mallory.key_id}, a key this store does not trust")
    assert e.reason == "untrusted" and "keys trust" in e.hint
    trust_key(store, mallory.public_b64, name="mallory, vetted")
    promote(store, a.id, "bot@production")  # now it is someone the store trusts
    assert resolve_alias(store, "bot").id == a.id


def test_revoked_key_is_refused_and_resigning_restores(reg, signing_key, tmp_path):
    store, (a, b) = reg
    promote(store, a.id, "bot@production")
    revoke_key(store, signing_key.key_id, reason="laptop stolen")
    e = _refused(store, b.id, SignatureError, rf"signed by {signing_key.key_id}, a key revoked in this store")
    assert e.reason == "revoked" and "--replace" in e.hint
    with pytest.raises(SignatureError, match="revoked"):  # the revoked key cannot sign either
        sign_artifact(store, b.id, replace=True, key=signing_key)
    alice = generate_key(tmp_path / "alice", make_default=False)
    from tuneops.release.signing import trust_key

    trust_key(store, alice.public_b64, name="alice")
    with pytest.raises(SignatureError, match="revoked"):
        sign_artifact(store, b.id, key=alice)  # replacing a signature is explicit
    rec, changed = sign_artifact(store, b.id, replace=True, key=alice)
    assert changed and rec.signature["key_id"] == alice.key_id
    promote(store, b.id, "bot@production")
    (signed,) = [e for e in store.audit_log() if e.action == "artifact.sign"]
    assert signed.details["replaced"] == signing_key.key_id and signed.details["key"] == alice.key_id


def test_a_record_that_fails_its_signature_is_never_resigned(reg):
    store, (a, _) = reg
    _set(store, a.id, lineage={**a.lineage, "datasets": ["ds-laundered"]})
    for replace in (False, True):
        with pytest.raises(SignatureError, match="refusing to sign it again"):
            sign_artifact(store, a.id, replace=replace)


def test_unsigned_registration_without_a_key_then_sign(store, tmp_path, monkeypatch):
    _base(store)
    monkeypatch.setenv("TUNEOPS_KEY_DIR", str(tmp_path / "no-keys"))
    art = _artifact(store, tmp_path, 0)
    assert art.signature is None
    (notice,) = store.run_events("run-0", "notice")
    assert "unsigned" in notice.payload["message"] and "tuneops keys init" in notice.payload["hint"]
    _refused(store, art.id, SignatureError, "is not signed")
    key = generate_key(tmp_path / "no-keys")
    rec, changed = sign_artifact(store, art.id)
    assert changed and rec.signature["key_id"] == key.key_id
    assert sign_artifact(store, art.id)[1] is False  # already validly signed: nothing to do
    promote(store, art.id, "bot@production")


def test_tampered_blob_is_refused_even_with_force(reg):
    store, (a, _) = reg
    path = store.blobs.tree_path(a.tree) / "adapter_model.safetensors"
    path.write_bytes(b"\x09" * 16)
    _refused(store, a.id, IntegrityError, "failed its integrity check")
    with pytest.raises(IntegrityError):
        sign_artifact(store, a.id, replace=True)  # never vouch for changed files


# -- eval reports, taint, licence, sunset, base -------------------------------------------------

def test_missing_or_failing_eval_report_is_refused_unless_forced(store, tmp_path):
    _base(store)
    none = _artifact(store, tmp_path, 0, report=False)
    failing = _artifact(store, tmp_path, 1, passed=False)
    e = _refused(store, none.id, GateFailed, "has no eval report that judged gates", force_too=False)
    assert "eval run" in e.hint
    _refused(store, failing.id, GateFailed, "failed its gates in ev-1", force_too=False)
    with pytest.raises(InvalidInput, match="--force needs --reason"):
        promote(store, failing.id, "bot@production", force=True)
    mv = promote(store, failing.id, "bot@production", force=True, reason="hotfix approved by on-call")
    assert mv.reason == "hotfix approved by on-call" and store.audit_log()[-1].details["forced"] is True


def _ingest(store, name, license, n=3, **extra):
    from tuneops.data.ingest import ingest_rows

    rows = [{"messages": [{"role": "user", "content": f"{name} q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "source": f"{name}-src", "license": license, **extra} for i in range(n)]
    return ingest_rows(store, rows, name=name)[0]


def test_tainted_artifact_is_refused_even_with_force(store, tmp_path):
    from tuneops.data.erasure import erase

    _base(store)
    from tuneops.data.ingest import subject_key_hash

    ds = _ingest(store, "tickets", "MIT", subject=subject_key_hash("cust-1"))
    art = _artifact(store, tmp_path, 0, datasets=[ds.id])
    er = erase(store, subject="cust-1", reason="GDPR request")
    e = _refused(store, art.id, GateFailed, rf"{art.id} is tainted: .* erased \({er.id}\)")
    assert "tuneops data impact" in e.hint


def test_licence_conflict_with_the_alias_declared_use(store, tmp_path):
    _base(store)
    nc = _ingest(store, "nc-rows", "CC-BY-NC-4.0")
    ev = _ingest(store, "eval-rows", "CC-BY-NC-4.0")
    mit = _ingest(store, "mit-rows", "MIT")
    research = _artifact(store, tmp_path, 0, datasets=[nc.id, ev.id], use="research")
    commercial = _artifact(store, tmp_path, 1, datasets=[mit.id, ev.id])  # the eval set is not in the weights
    # An alias declared for commercial use never takes a model trained on non-commercial rows.
    promote(store, commercial.id, "bot@production", use="commercial")
    e = _refused(store, research.id, GateFailed, rf"training data {nc.id} may not be used for commercial: 3 row\(s\) "
                                                 r"under CC-BY-NC-4.0 .* from nc-rows-src; the alias is declared for "
                                                 r"commercial use")
    assert "--use" in e.hint
    # The declaration is remembered: a later promotion without --use is held to it.
    assert store.audit_log()[-1].details["use"] == "commercial"
    # An alias promoted first without --use takes the recipe's declared use (research here) ...
    promote(store, research.id, "lab@staging")
    assert store.audit_log()[-1].details["use"] == "research"
    # ... and --use changes a declaration explicitly (logged), still checked against the licences.
    _refused(store, research.id, GateFailed, "may not be used for internal", alias="lab@production", use="internal")
    promote(store, commercial.id, "lab@staging", use="internal")
    assert store.audit_log()[-1].details["use_changed_from"] == "research"
    with pytest.raises(InvalidInput, match="is not one of"):
        promote(store, commercial.id, "x@production", use="military")


def test_rows_past_retention_are_a_licence_conflict_too(store, tmp_path):
    _base(store)
    old = _ingest(store, "old-rows", "MIT", retention_until=(TODAY - dt.timedelta(days=1)).isoformat())
    art = _artifact(store, tmp_path, 0, datasets=[old.id])
    _refused(store, art.id, GateFailed, r"past retention")


def test_past_sunset_is_refused_and_before_it_promotes_with_a_note(reg):
    store, (a, b) = reg
    deprecate(store, a.id, sunset=TODAY, reason="superseded by b")
    promote(store, a.id, "bot@production")  # the sunset day itself still counts
    assert store.audit_log()[-1].details["deprecated_sunset"] == TODAY.isoformat()
    deprecate(store, b.id, sunset=TODAY - dt.timedelta(days=1), reason="leaks PII")
    e = _refused(store, b.id, SunsetPassed, rf"sunset {TODAY - dt.timedelta(days=1)} has passed: leaks PII")
    assert "--undo" in e.hint
    deprecate(store, b.id, undo=True)
    promote(store, b.id, "bot@production")
    assert [e.action for e in store.audit_log() if e.record_type == "artifact"][-2:] == \
        ["artifact.deprecate", "artifact.undeprecate"]


def test_deprecation_needs_a_reason_and_a_date(reg):
    store, (a, _) = reg
    with pytest.raises(InvalidInput, match="needs --reason"):
        deprecate(store, a.id, sunset=TODAY)
    with pytest.raises(InvalidInput, match="needs --sunset"):
        deprecate(store, a.id, reason="x")
    with pytest.raises(InvalidInput, match="is not a date"):
        deprecate(store, a.id, sunset="next tuesday", reason="x")
    with pytest.raises(StateError, match="is not deprecated"):
        deprecate(store, a.id, undo=True)


def test_base_mismatch_is_refused_unless_forced(reg, tmp_path):
    store, (a, _) = reg
    _base(store, "base-other")
    other = _artifact(store, tmp_path, 5, base_id="base-other")
    promote(store, a.id, "bot@production")
    e = _refused(store, other.id, GateFailed, rf"serves {a.id}, trained on base-0123, but {other.id} was trained on "
                                              r"base-other", force_too=False)
    assert "--force" in e.hint
    promote(store, other.id, "bot@production", force=True, reason="clients move to the new base")
    assert resolve_alias(store, "bot").id == other.id


def test_rollback_lands_only_on_a_valid_signed_target_before_its_sunset(reg, signing_key):
    store, (a, b) = reg
    promote(store, a.id, "bot@production")
    promote(store, b.id, "bot@production")
    good = store.get_artifact(a.id).signature
    _set(store, a.id, signature=None)
    with pytest.raises(SignatureError, match="is not signed"):
        rollback(store, "bot@production")
    _set(store, a.id, signature=good)
    deprecate(store, a.id, sunset=TODAY - dt.timedelta(days=3), reason="retired")
    with pytest.raises(SunsetPassed, match="can no longer be rolled back to"):
        rollback(store, "bot@production")
    assert resolve_alias(store, "bot").id == b.id
    deprecate(store, a.id, undo=True)
    assert rollback(store, "bot@production").to_artifact == a.id


def test_refusal_matrix_is_complete(store, tmp_path, signing_key):
    """One artifact per failure mode, each refused with its own reason: 100 % refusal, 0 false accepts."""
    from tuneops.data.erasure import erase
    from tuneops.release.registry import signing_payload
    from tuneops.release.signing import trust_key

    _base(store)
    good = _artifact(store, tmp_path, 0)
    promote(store, good.id, "bot@production")
    nc = _ingest(store, "nc", "CC-BY-NC-4.0")
    from tuneops.data.ingest import subject_key_hash

    pii = _ingest(store, "pii", "MIT", subject=subject_key_hash("s-1"))
    cases = {}
    cases["tampered blob"] = _artifact(store, tmp_path, 1)
    (store.blobs.tree_path(cases["tampered blob"].tree) / "adapter_config.json").write_text('{"r": 1}')
    cases["missing signature"] = _artifact(store, tmp_path, 2)
    _set(store, cases["missing signature"].id, signature=None)
    cases["wrong signature"] = _artifact(store, tmp_path, 3)
    _set(store, cases["wrong signature"].id, signature=good.signature)
    cases["untrusted key"] = _artifact(store, tmp_path, 4)
    eve = generate_key(tmp_path / "eve", make_default=False)
    _set(store, cases["untrusted key"].id, signature=sign_payload(signing_payload(cases["untrusted key"]), eve))
    cases["revoked key"] = _artifact(store, tmp_path, 5)
    carol = generate_key(tmp_path / "carol", make_default=False)
    trust_key(store, carol.public_b64, name="carol")
    _set(store, cases["revoked key"].id, signature=sign_payload(signing_payload(cases["revoked key"]), carol))
    revoke_key(store, carol.key_id)
    cases["missing eval report"] = _artifact(store, tmp_path, 6, report=False)
    cases["failing eval report"] = _artifact(store, tmp_path, 7, passed=False)
    cases["tainted"] = _artifact(store, tmp_path, 8, datasets=[pii.id])
    erase(store, subject="s-1")
    cases["licence conflict"] = _artifact(store, tmp_path, 9, datasets=[nc.id])
    cases["past sunset"] = _artifact(store, tmp_path, 10)
    deprecate(store, cases["past sunset"].id, sunset=TODAY - dt.timedelta(days=1), reason="retired")
    _base(store, "base-other")
    cases["base mismatch"] = _artifact(store, tmp_path, 11, base_id="base-other")
    expected = {"tampered blob": (IntegrityError, "integrity"), "missing signature": (SignatureError, "not signed"),
                "wrong signature": (SignatureError, "does not match"),
                "untrusted key": (SignatureError, "does not trust"), "revoked key": (SignatureError, "revoked"),
                "missing eval report": (GateFailed, "no eval report"),
                "failing eval report": (GateFailed, "failed its gates"), "tainted": (GateFailed, "tainted"),
                "licence conflict": (GateFailed, "may not be used for commercial"),
                "past sunset": (SunsetPassed, "has passed"), "base mismatch": (GateFailed, "runs one base")}
    refused = {}
    for case, art in cases.items():
        exc, words = expected[case]
        try:
            promote(store, art.id, "bot@production")
        except exc as e:
            refused[case] = words in e.message
    assert refused == {case: True for case in cases}, refused
    assert [m.to_artifact for m in store.alias_history("bot", "production")] == [good.id]
    with store.session(write=False) as s:
        promotes = s.query(AuditEvent).filter(AuditEvent.action == "alias.promote").count()
    assert promotes == 1
