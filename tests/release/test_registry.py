import pytest

from tuneops.errors import GateFailed, InvalidInput, NotFound, StateError
from tuneops.release.registry import promote, register_adapter, resolve_alias, rollback
from tuneops.store.schema import BaseModelRecord, EvalReportRecord


@pytest.fixture
def registry(store, tmp_path):
    """A store with one base and three distinct adapters; passed[i] says whether adapter i's gates pass."""
    with store.session() as s:
        s.add(BaseModelRecord(id="base-0123", name="b", source="test", source_digest="x", license="MIT",
                              tree="t", weights_sha256="w", num_parameters=1))
    ids = []
    for i in range(3):
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
                                   gates=[{"gate": "g", "candidate": 0.1, "threshold": 0.5, "passed": i != 2}],
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
