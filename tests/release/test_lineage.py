"""Lineage both ways, and the base-compatibility refusal, on a store with real (tiny) runs.

``lineage_store`` (session-scoped, shared with test_card.py) holds two runs of the tiny recipe that differ
only in learning rate (both promoted to tiny@production, so the alias has a history), a checkpoint of the
first run registered as its own artifact, and a hand-registered "student" whose lineage names the first
run's artifact as its distillation teacher.
"""

import json
from types import SimpleNamespace

import pytest

from tests.cli.helpers import tuneops
from tests.conftest import tiny_recipe

FAST_EVAL = {"suites": ["json_extraction", {"use": "forgetting", "per_tag": 1}], "max_new_tokens": 4, "batch_size": 8}


def fast_train(lr: float) -> dict:
    return {"max_steps": 6, "batch_size": 4, "learning_rate": lr, "warmup_ratio": 0.0, "threads": 2}


_BUILT: dict = {}  # test_card.py imports the fixture: one build per session serves both modules


@pytest.fixture(scope="session")
def lineage_store(tmp_path_factory, tiny_model_dir):
    if "store" not in _BUILT:
        _BUILT["store"] = _build_lineage_store(tmp_path_factory, tiny_model_dir)
    return _BUILT["store"]


def _build_lineage_store(tmp_path_factory, tiny_model_dir):
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_local
    from tuneops.pipeline import register_checkpoint, run_recipe
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store

    root = tmp_path_factory.mktemp("lineage")
    store = Store(root / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    train_rows, eval_rows = json_extraction_rows(16, 6, seed=1)
    train, _ = ingest_rows(store, train_rows, name="tiny-train")
    held, _ = ingest_rows(store, eval_rows, name="tiny-eval")
    a = run_recipe(store, tiny_recipe(base.id, train=fast_train(1e-2), eval=FAST_EVAL))
    b = run_recipe(store, tiny_recipe(base.id, train=fast_train(2e-2), eval=FAST_EVAL))
    assert a.run.state == b.run.state == "succeeded" and a.artifact.id != b.artifact.id
    ckpt, _ = register_checkpoint(store, a.run.id, 4)
    student_dir = root / "student"
    student_dir.mkdir()
    (student_dir / "adapter_model.safetensors").write_bytes(b"student weights")
    (student_dir / "adapter_config.json").write_text("{}")
    student, _ = register_adapter(store, student_dir, base_id=base.id, method="lora", run_id=None, dataset_ids=[],
                                  recipe_hash=None, extra_lineage={"teacher": {"artifact": a.artifact.id,
                                                                               "base": base.id}})
    return SimpleNamespace(store=store, home=root / "store", base=base, train=train, held=held, a=a, b=b,
                           ckpt=ckpt, student=student)


def test_forward_lineage_names_everything_upstream(lineage_store):
    from tuneops.release.lineage import artifact_lineage, lineage_tree, resolve_artifact_ref
    from tuneops.store.schema import ExportRecord

    st = lineage_store
    store, art = st.store, st.a.artifact
    with store.session() as s:
        s.add(ExportRecord(id=f"exp-{art.id}-peft", artifact_id=art.id, format="peft", digest="e" * 64,
                           path="/exports/a", details={}, actor="tester"))
    data = artifact_lineage(store, resolve_artifact_ref(store, art.id))
    assert data["base"].items() >= {"id": st.base.id, "name": "tiny-llama", "license": "unknown",
                                    "chat_template_sha256": st.base.chat_template_sha256}.items()
    assert data["base"]["source"].startswith("local:")
    roles = {d["role"]: d for d in data["datasets"]}
    assert set(roles) == {"train", "eval"}
    assert roles["train"]["id"] == st.train.id and roles["train"]["rows"] == 16 == st.train.num_rows
    assert roles["train"]["licenses"] == {"Apache-2.0": 16}
    assert roles["train"]["sources"] == {"tuneops:bundled/json-extraction": 16}
    assert roles["eval"]["id"] == st.held.id and roles["eval"]["names"] == ["tiny-eval"]
    run = store.get_run(st.a.run.id)
    assert data["recipe"] == {"sha256": run.recipe_hash, "name": "tiny", "objective": "sft", "method": "lora",
                              "method_summary": "lora r=4 alpha=8", "use": "commercial"}
    assert data["run"]["id"] == run.id and data["run"]["state"] == "succeeded" and data["run"]["steps"] == 6
    assert data["run"]["metrics"]["eval_report"] == st.a.report.id
    assert [r["id"] for r in data["eval_reports"]] == [st.a.report.id]
    km = data["eval_reports"][0]["key_metrics"]
    assert set(km) == {"json_extraction.field_accuracy", "forgetting.accuracy"}  # what the gates judged
    assert km["forgetting.accuracy"]["n"] == st.a.report.metrics["forgetting.accuracy"]["n"]
    # b took tiny@production over from a: a has no alias now, but its history shows both moves
    assert data["aliases"] == []
    moves = [(h["action"], h["from"], h["to"]) for h in data["alias_history"]]
    assert moves == [("promote", None, art.id), ("promote", art.id, st.b.artifact.id)]
    assert data["exports"] == [{"id": f"exp-{art.id}-peft", "format": "peft", "digest": "e" * 64, "path": "/exports/a",
                                "actor": "tester", "created_at": data["exports"][0]["created_at"]}]
    # registration signs with the active key when there is one (the test session's, trusted on first use)
    assert data["signature"]["status"] == ("verified" if art.signature else "unsigned")
    assert data["signature"]["key_id"] == (art.signature or {}).get("key_id")
    assert data["artifact"]["template_sha256"] == st.base.chat_template_sha256
    assert data["artifact"]["integrity_problems"] == []
    # by alias and by run id too
    assert resolve_artifact_ref(store, "tiny@production").id == st.b.artifact.id
    assert resolve_artifact_ref(store, st.a.run.id).id == art.id
    tree = lineage_tree(data)
    assert tree.splitlines()[0].startswith(art.id)
    for needle in (st.base.id, st.train.id, st.held.id, run.id, st.a.report.id,
                   f"signature {data['signature']['status']}", f"promote  {art.id} → {st.b.artifact.id}",
                   "peft  exp-"):
        assert needle in tree, needle


def test_checkpoint_artifact_lineage(lineage_store):
    from tuneops.release.lineage import artifact_lineage

    data = artifact_lineage(lineage_store.store, lineage_store.ckpt)
    assert data["artifact"]["checkpoint_step"] == 4 and data["run"]["steps"] == 4
    assert data["run"]["id"] == lineage_store.a.run.id
    assert [d["role"] for d in data["datasets"]] == ["train", "eval"]
    assert data["eval_reports"] == []


def test_reverse_from_dataset_lists_what_learned_from_it(lineage_store):
    from tuneops.release.lineage import reverse_lineage, reverse_tree

    st = lineage_store
    for ref in (st.train.id, "tiny-train"):
        data = reverse_lineage(st.store, ref)
        assert data["kind"] == "dataset" and data["matches"][0]["id"] == st.train.id
        rows = {r["id"]: r for r in data["artifacts"]}
        assert set(rows) == {st.a.artifact.id, st.b.artifact.id, st.ckpt.id, st.student.id}
        assert all(r["learned"] for r in rows.values())
        assert rows[st.a.artifact.id]["relations"] == [{"relation": "train", "of": st.train.id}]
        # the student never saw the rows, but its teacher did: it is listed through the teacher
        assert rows[st.student.id]["via"] == st.a.artifact.id and rows[st.student.id]["depth"] == 2
        assert rows[st.b.artifact.id]["aliases"] == ["tiny@production"]
        assert data["serving"] == ["tiny@production"]
    tree = reverse_tree(data)
    assert "← tiny@production" in tree and f"distilled from {st.a.artifact.id}" in tree
    student_line = next(line for line in tree.splitlines() if st.student.id in line)
    assert student_line.startswith(("│   ", "    "))  # nested under its teacher
    held = reverse_lineage(st.store, "tiny-eval")
    assert {r["id"] for r in held["artifacts"]} == {st.a.artifact.id, st.b.artifact.id, st.ckpt.id}
    assert not any(r["learned"] for r in held["artifacts"]) and held["serving"] == []
    assert all(r["relations"][0]["relation"] == "eval" for r in held["artifacts"])


def test_reverse_from_base_run_and_artifact(lineage_store):
    from tuneops.release.lineage import reverse_lineage

    st = lineage_store
    every = {st.a.artifact.id, st.b.artifact.id, st.ckpt.id, st.student.id}
    for ref in (st.base.id, "tiny-llama"):
        data = reverse_lineage(st.store, ref)
        assert data["kind"] == "base" and {r["id"] for r in data["artifacts"]} == every
    run = reverse_lineage(st.store, st.a.run.id)
    rels = {r["id"]: r["relations"][0] for r in run["artifacts"] if r["via"] is None}
    assert rels == {st.a.artifact.id: {"relation": "run_output", "of": st.a.run.id},
                    st.ckpt.id: {"relation": "checkpoint", "of": st.a.run.id, "step": 4}}
    assert {r["id"] for r in run["artifacts"]} == {st.a.artifact.id, st.ckpt.id, st.student.id}
    teacher = reverse_lineage(st.store, st.a.artifact.id)
    assert [(r["id"], r["relations"]) for r in teacher["artifacts"]] == \
        [(st.student.id, [{"relation": "teacher", "of": st.a.artifact.id}])]
    assert reverse_lineage(st.store, st.b.run.id)["learned_from"] == [st.b.artifact.id]


def test_base_mismatch_is_refused_naming_both(lineage_store):
    from tuneops.errors import TuneopsError
    from tuneops.release.lineage import IncompatibleBase, check_base_compatible
    from tuneops.store.schema import BaseModelRecord

    st = lineage_store
    with st.store.session() as s:
        if s.get(BaseModelRecord, "base-0the40ther0000") is None:
            s.add(BaseModelRecord(id="base-0the40ther0000", name="other-llama", source="test", source_digest="x",
                                  license="MIT", tree="t", weights_sha256="w", chat_template_sha256="ab" * 32,
                                  num_parameters=1))
    art = st.a.artifact
    check_base_compatible(st.store, art, st.base)  # its own base: fine
    check_base_compatible(st.store, art, st.base.id, template_sha256=st.base.chat_template_sha256)
    with pytest.raises(IncompatibleBase) as e:
        check_base_compatible(st.store, art, "base-0the40ther0000")
    msg = e.value.message
    assert isinstance(e.value, TuneopsError) and e.value.exit_code == 2
    assert f"{art.id} was trained on tiny-llama ({st.base.id})" in msg
    assert "refusing to load it on other-llama (base-0the40ther0000)" in msg
    assert st.base.chat_template_sha256[:16] in msg and "ab" * 8 in msg
    assert f"--base {st.base.id}" in e.value.hint
    # same base, another chat template: refused too, naming both templates
    with pytest.raises(IncompatibleBase, match="would be prompted with chat template cdcdcdcdcdcdcdcd") as e:
        check_base_compatible(st.store, art, st.base, template_sha256="cd" * 32)
    assert st.base.chat_template_sha256[:16] in e.value.message


def test_signature_status(lineage_store, tmp_path):
    from tuneops.release.lineage import signature_status, signing_payload
    from tuneops.release.signing import generate_key, sign_payload
    from tuneops.store.schema import ArtifactRecord, TrustedKey, utcnow

    st = lineage_store
    key, stranger, gone = (generate_key(tmp_path / n) for n in ("k1", "k2", "k3"))
    with st.store.session() as s:
        s.add(TrustedKey(key_id=key.key_id, public_key=key.public_b64, name="release bot", added_by="test"))
        s.add(TrustedKey(key_id=gone.key_id, public_key=gone.public_b64, name="old laptop", added_by="test",
                         revoked_at=utcnow()))
        rec = s.get(ArtifactRecord, st.student.id)
        rec.signature = sign_payload(signing_payload(rec), key)
    art = st.store.get_artifact(st.student.id)
    assert signature_status(st.store, art) == {"status": "verified", "key_id": key.key_id, "signer": "release bot"}
    # the rest on detached copies: the store is untouched
    art.lineage = {**art.lineage, "datasets": ["ds-smuggled"]}
    bad = signature_status(st.store, art)
    assert bad["status"] == "invalid" and bad["key_id"] == key.key_id and bad["detail"]
    for signer, state in ((stranger, "untrusted"), (gone, "revoked")):
        art = st.store.get_artifact(st.student.id)
        art.signature = sign_payload(signing_payload(art), signer)
        got = signature_status(st.store, art)
        assert got["status"] == state and got["key_id"] == signer.key_id and signer.key_id in got["detail"]
    art.signature = None
    assert signature_status(st.store, art) == {"status": "unsigned", "key_id": None}


def test_reverse_ref_errors(lineage_store):
    from tuneops.errors import InvalidInput, NotFound
    from tuneops.release.lineage import reverse_lineage
    from tuneops.store.schema import BaseModelRecord

    st = lineage_store
    with pytest.raises(NotFound, match="'ghost' is not a dataset, base, run or artifact") as e:
        reverse_lineage(st.store, "ghost")
    assert "tuneops data list" in e.value.hint
    with pytest.raises(NotFound, match="dataset 'ds-0000' not found"):
        reverse_lineage(st.store, "ds-0000")
    with st.store.session() as s:
        if s.get(BaseModelRecord, "base-0tiny0eval0000") is None:
            s.add(BaseModelRecord(id="base-0tiny0eval0000", name="tiny-eval", source="test", source_digest="x",
                                  license="MIT", tree="t", weights_sha256="w", num_parameters=1))
    try:
        with pytest.raises(InvalidInput, match="'tiny-eval' names more than one kind of record") as e:
            reverse_lineage(st.store, "tiny-eval")
        assert e.value.hint == "pass the id instead of the name"
    finally:
        with st.store.session() as s:
            s.delete(s.get(BaseModelRecord, "base-0tiny0eval0000"))


def test_lineage_cli(lineage_store):
    st = lineage_store
    out = tuneops(st.home, "registry", "lineage", "tiny@production").stdout
    assert out.splitlines()[0].startswith(st.b.artifact.id)
    assert st.train.id in out and "tiny@production" in out and "└── signature " in out
    rev = json.loads(tuneops(st.home, "registry", "lineage", "--reverse", "tiny-train", "--json").stdout)
    assert {r["id"] for r in rev["artifacts"]} == {st.a.artifact.id, st.b.artifact.id, st.ckpt.id, st.student.id}
    table = tuneops(st.home, "registry", "lineage", "--reverse", st.base.id, "--table").stdout
    assert "adapter of this base" in table and st.student.id in table
    fwd = json.loads(tuneops(st.home, "registry", "lineage", st.a.artifact.id, "--json").stdout)
    assert fwd["recipe"]["sha256"] == st.store.get_run(st.a.run.id).recipe_hash


@pytest.mark.parametrize("args, needle", [
    (("registry", "lineage", "ghost@production"), "alias ghost@production does not exist"),
    (("registry", "lineage", "--reverse", "ghost"), "'ghost' is not a dataset, base, run or artifact"),
    (("registry", "lineage", "Not An Id!"), "is not an artifact id, alias or run id"),
])
def test_lineage_cli_bad_refs_exit_2_with_the_fix(lineage_store, args, needle):
    proc = tuneops(lineage_store.home, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "fix:" in proc.stderr and proc.stdout == ""


def test_lineage_cli_needs_exactly_one_ref(lineage_store):
    proc = tuneops(lineage_store.home, "registry", "lineage", check=False)
    assert proc.returncode == 2 and "--reverse REF" in proc.stderr
