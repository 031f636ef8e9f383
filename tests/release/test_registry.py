import pytest

from tuneops.errors import GateFailed, IntegrityError, InvalidInput, NotFound, StateError
from tuneops.release.registry import promote, register_adapter, resolve_alias, rollback
from tuneops.store.schema import BaseModelRecord, EvalReportRecord, RunRecord


@pytest.fixture
def registry(store, tmp_path):
    """A store with one base and three distinct adapters; passed[i] says whether adapter i's gates pass."""
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0123", name="b", source="test", source_digest="x", license="MIT",
                              tree="t", weights_sha256="w", num_parameters=1))
    ids = []
    for i in range(3):
        with store.session() as s:
            s.add(RunRecord(id=f"run-{i}", recipe_name="r", recipe_yaml="", recipe_hash="0" * 64, state="succeeded",
                            dataset_ids=[], metrics={}))
        d = tmp_path / f"adapter{i}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(bytes([i]) * 16)
        (d / "adapter_config.json").write_text("{}")
        art, created = register_adapter(store, d, base_id="base-0123", method="lora", run_id=f"run-{i}",
                                        dataset_ids=["ds-a"], recipe_hash="f" * 64)
        assert created and art.lineage["base"] == "base-0123" and art.lineage["datasets"] == ["ds-a"]
        assert art.lineage["code_version"].startswith("0.1.0")
        ids.append(art.id)
        with store.session() as s:
            s.add(EvalReportRecord(id=f"ev-{i}", artifact_id=art.id, baseline="base-0123", suites=[], metrics={},
                                   gates=[{"gate": "g", "candidate": 0.1, "threshold": 0.5, "passed": i != 2,
                                          "task": True}],
                                   passed=i != 2, report_blob="x"))
    return store, ids


def test_register_is_idempotent(registry, tmp_path):
    store, ids = registry
    art, created = register_adapter(store, tmp_path / "adapter0", base_id="base-0123", method="lora",
                                    run_id="run-again", dataset_ids=[], recipe_hash=None)
    assert art.id == ids[0] and not created and art.run_id == "run-0"


def test_promote_history_and_rollback(registry):
    store, (a, b, _) = registry
    promote(store, a, "bot@production")
    promote(store, b, "bot@production")
    assert resolve_alias(store, "bot").id == b  # bare name means @production
    mv = rollback(store, "bot@production", reason="latency regression")
    assert (mv.from_artifact, mv.to_artifact) == (b, a)
    assert resolve_alias(store, "bot@production").id == a
    with pytest.raises(StateError, match="no earlier target"):
        rollback(store, "bot@production")
    history = store.alias_history("bot", "production")
    assert [(m.action, m.to_artifact) for m in history] == [("promote", a), ("promote", b), ("rollback", a)]
    assert [e.action for e in store.audit_log() if e.record_type == "alias"] == \
        ["alias.promote", "alias.promote", "alias.rollback"]


def test_failing_gates_refuse_promotion(registry):
    store, (a, _, failing) = registry
    promote(store, a, "bot@production")
    with pytest.raises(GateFailed, match="failed its gates in ev-2"):
        promote(store, failing, "bot@production")
    assert resolve_alias(store, "bot").id == a
    with pytest.raises(InvalidInput, match="--force needs --reason"):
        promote(store, failing, "bot@production", force=True)
    mv = promote(store, failing, "bot@production", force=True, reason="hotfix approved by on-call")
    assert mv.reason == "hotfix approved by on-call"
    assert store.audit_log()[-1].details["forced"] is True


def test_bad_alias_and_unknown_artifact(registry):
    store, (a, *_) = registry
    with pytest.raises(InvalidInput, match="is not an alias"):
        promote(store, a, "Bad Alias")
    with pytest.raises(NotFound, match="artifact 'ad-nope' not found"):
        promote(store, "ad-nope", "bot@production")
    with pytest.raises(NotFound, match="alias ghost@production does not exist"):
        resolve_alias(store, "ghost")


def _tamper(store, artifact_id, how):
    path = store.blobs.tree_path(store.get_artifact(artifact_id).tree) / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[3] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[:5]))
    elif how == "delete":
        path.unlink()
    elif how == "extra":
        (path.parent / "extra.bin").write_bytes(b"x")
    return path


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "extra"])
def test_tampered_artifact_is_never_promoted_even_with_force(registry, how):
    store, (a, b, _) = registry
    promote(store, a, "bot@production")
    path = _tamper(store, b, how)
    for kwargs in ({}, {"force": True, "reason": "urgent"}):
        with pytest.raises(IntegrityError, match="failed its integrity check") as e:
            promote(store, b, "bot@production", **kwargs)
        assert str(path.parent) in e.value.message
    assert resolve_alias(store, "bot").id == a
    assert [m.to_artifact for m in store.alias_history("bot", "production")] == [a]


def test_rollback_refuses_a_tampered_target(registry):
    store, (a, b, _) = registry
    promote(store, a, "bot@production")
    promote(store, b, "bot@production")
    _tamper(store, a, "flip")
    with pytest.raises(IntegrityError):
        rollback(store, "bot@production")
    assert resolve_alias(store, "bot").id == b


def test_artifact_of_a_failed_run_is_not_promoted_without_force(registry):
    store, (a, *_) = registry
    with store.session() as s:  # a run that registered its adapter, then failed
        s.get(RunRecord, "run-0").state = "failed"
    with pytest.raises(GateFailed, match="which is failed; only artifacts of succeeded runs"):
        promote(store, a, "bot@production")
    with pytest.raises(NotFound):
        resolve_alias(store, "bot")
    mv = promote(store, a, "bot@production", force=True, reason="known-good despite the eval crash")
    assert mv.reason == "known-good despite the eval crash" and resolve_alias(store, "bot").id == a


def test_report_without_a_task_gate_cannot_promote(registry):
    store, (a, *_) = registry
    with store.session() as s:
        s.get(EvalReportRecord, "ev-0").passed = False  # what save_eval_report records for such a report
        s.get(EvalReportRecord, "ev-0").gates = [{"gate": "forgetting", "candidate": 1, "threshold": 0.9,
                                                  "passed": True, "task": False}]
    with pytest.raises(GateFailed, match="no passing gate on its own task"):
        promote(store, a, "bot@production")


def test_an_ungated_report_never_hides_the_gated_verdict(registry):
    """An lm-eval-harness run or an `eval run` without gates is newer but decides nothing."""
    import datetime as dt

    store, (a, _, c) = registry
    later = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(hours=1)
    with store.session() as s:
        for i, art in ((10, a), (12, c)):
            s.add(EvalReportRecord(id=f"ev-{i}", artifact_id=art, baseline="base-0123", suites=[], metrics={},
                                   gates=[], passed=False, report_blob="x", created_at=later))
    promote(store, a, "bot@production")  # ev-0 passed; the newer ungated ev-10 does not block it
    with pytest.raises(GateFailed, match="failed its gates in ev-2"):  # nor does ev-12 hide ev-2's failure
        promote(store, c, "bot@production")
    with store.session() as s:
        s.get(EvalReportRecord, "ev-0").gates = []
    with pytest.raises(GateFailed, match="no eval report that judged gates"):
        promote(store, a, "bot@staging")


def test_conditional_moves(registry):
    store, (a, b, _) = registry
    with pytest.raises(StateError, match="points at nothing, not " + a):
        promote(store, b, "bot@production", expect_current=a)
    promote(store, a, "bot@production", expect_current="none")
    with pytest.raises(StateError, match=f"points at {a}, not none"):
        promote(store, b, "bot@production", expect_current="none")
    promote(store, b, "bot@production", expect_current=a)
    with pytest.raises(StateError, match="already points at"):
        promote(store, b, "bot@production")
    with pytest.raises(StateError, match=f"points at {b}, not {a}"):
        rollback(store, "bot@production", expect_current=a)
    assert rollback(store, "bot@production", expect_current=b).to_artifact == a
