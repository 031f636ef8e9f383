"""Request traces: written by a background thread on SQLite and PostgreSQL, content off unless enabled and then
PII-redacted, dropped (and counted) rather than blocking when the writer falls behind, and followed back from
a trace to the dataset rows the answering adapter learned from."""

import json
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from tuneops.serve.metrics import ServeMetrics
from tuneops.serve.protocol import Choice, GenResult
from tuneops.serve.tracing import TRACE_HEADER, Tracer, trace_lineage, traces, training_rows

EMAIL, PHONE, CARD = "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"
PII_MESSAGE = f"Email me at {EMAIL}, call {PHONE} or charge card {CARD}."


def result(text="ok", tokens=4, **kw) -> GenResult:
    return GenResult(choices=[Choice(text, "stop", tokens)], **{"path": "batched", "batch_size": 2, "queue_s": 0.01,
                                                                 "ttft_s": 0.05, "gen_s": 0.2, **kw})


def base_rec(id_="base-0123456789abcdef", rev="a" * 64):
    return SimpleNamespace(id=id_, weights_sha256=rev)


def serve_one(tracer, *, tenant="acme", model="support", artifact=None, alias=None, base=None, status=200,
              error_code=None, messages=None, answer="ok", stream=False):
    t = tracer.begin(tenant=tenant, model=model, stream=stream)
    t.set_input(messages=messages or [{"role": "user", "content": "hello"}])
    if status == 200:
        tracer.resolved(t, base=base or base_rec(), artifact=artifact, alias=alias)
        tracer.finish(t, status=200, result=result(answer), prompt_tokens=9)
    else:
        tracer.finish(t, status=status, error_code=error_code)
    return t


def test_writer_thread_persists_traces(store):
    tracer = Tracer(store, batch_size=7, flush_interval=0.05)
    a = SimpleNamespace(id="ad-aaaaaaaaaaaaaaaa", base_id="base-0123456789abcdef")
    ids = []
    for i in range(20):
        t = serve_one(tracer, tenant="acme" if i % 2 else "globex", artifact=a if i % 4 else None,
                      alias="support@production" if i % 4 else None, stream=i == 3)
        ids.append(t.id)
    bad = serve_one(tracer, tenant="acme", model="nope", status=404, error_code="model_not_found")
    assert all(i.startswith("tr-") and len(i) == 29 for i in ids) and len(set(ids)) == 20
    assert TRACE_HEADER == "X-Tuneops-Trace"
    assert tracer.flush(10)
    tracer.close()
    assert tracer.written == 21 and not tracer.dropped

    every = traces(store, limit=100)
    assert len(every) == 21
    assert [r.at for r in every] == sorted((r.at for r in every), reverse=True)  # newest first
    one = next(r for r in every if r.id == ids[1])
    assert (one.tenant, one.model, one.alias, one.artifact_id) == ("acme", "support", "support@production", a.id)
    assert (one.base_id, one.base_revision) == ("base-0123456789abcdef", "a" * 64)  # revision + adapter, paired
    assert (one.status, one.error_code, one.path, one.batch_size, one.finish_reason) == (200, None, "batched", 2,
                                                                                         "stop")
    assert (one.prompt_tokens, one.completion_tokens) == (9, 4)
    assert one.ttft_s == pytest.approx(0.05) and one.queue_s == pytest.approx(0.01) and one.latency_s >= 0
    assert one.content is None and one.pii is None  # content tracing is off by default
    assert next(r for r in every if r.id == ids[3]).stream is True
    err = next(r for r in every if r.id == bad.id)
    assert (err.status, err.error_code) == (404, "model_not_found")

    assert len(traces(store, tenant="acme")) == 11
    assert {r.artifact_id for r in traces(store, artifact=a.id)} == {a.id} and len(traces(store, artifact=a.id)) == 15
    assert len(traces(store, artifact="base")) == 5  # the bare base answered (not: nothing resolved)
    assert len(traces(store, alias="support")) == 15  # a bare name means @production
    assert [r.id for r in traces(store, errors=True)] == [bad.id]
    assert len(traces(store, since="1h")) == 21 and traces(store, since=timedelta(seconds=-60)) == []
    assert len(traces(store, limit=5)) == 5


def test_content_off_keeps_nothing_in_memory_either(sqlite_store):
    tracer = Tracer(sqlite_store, start=False)
    t = tracer.begin(tenant="acme", model="m")
    t.set_input(messages=[{"role": "user", "content": PII_MESSAGE}])
    t.set_output([PII_MESSAGE])
    assert t.keep_content is False and t._input is None and t._answers is None


def test_content_on_is_pii_redacted_before_it_is_stored(store):
    tracer = Tracer(store, content=lambda tenant: tenant == "acme", flush_interval=0.05)
    on = serve_one(tracer, tenant="acme", messages=[{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": PII_MESSAGE, "name": EMAIL}],
                   answer=f"Noted: {EMAIL}")
    off = serve_one(tracer, tenant="globex", messages=[{"role": "user", "content": PII_MESSAGE}])
    tracer.close()
    rows = {r.id: r for r in traces(store)}
    stored = rows[on.id].content
    assert stored["messages"][0] == {"role": "system", "content": "be brief"}
    user = stored["messages"][1]["content"]
    assert "<EMAIL>" in user and "<PHONE>" in user and "<CREDIT_CARD>" in user
    assert stored["completion"] == ["Noted: <EMAIL>"]
    assert rows[on.id].pii == {"CREDIT_CARD": 1, "EMAIL": 2, "PHONE": 1}
    dumped = json.dumps([stored, rows[on.id].extra])
    for raw in (EMAIL, PHONE, CARD, "4111", "7946"):
        assert raw not in dumped  # not in the content, not in a kept `name` field, nowhere
    assert rows[off.id].content is None  # content is per tenant


def test_hash_redaction_needs_a_salt_and_links_values(sqlite_store):
    from tuneops.errors import InvalidInput

    with pytest.raises(InvalidInput, match="salt"):
        Tracer(sqlite_store, content=True, redaction="hash", start=False)
    tracer = Tracer(sqlite_store, content=True, redaction="hash", salt="s3cret", flush_interval=0.05)
    t = serve_one(tracer, messages=[{"role": "user", "content": f"I am {EMAIL}"}], answer=f"hi {EMAIL}")
    tracer.close()
    rec = traces(sqlite_store)[0]
    assert rec.id == t.id
    tag = rec.content["messages"][0]["content"].removeprefix("I am ")
    assert tag.startswith("<EMAIL:") and rec.content["completion"] == [f"hi {tag}"] and EMAIL not in tag


def test_a_full_queue_drops_and_counts_without_blocking(sqlite_store):
    metrics = ServeMetrics()
    tracer = Tracer(sqlite_store, metrics=metrics, max_queue=3, start=False)  # a writer that has fallen behind
    started = time.monotonic()
    accepted = [tracer.finish(tracer.begin(tenant="acme"), status=200) for _ in range(10)]
    assert time.monotonic() - started < 1.0
    assert accepted == [True] * 3 + [False] * 7
    assert tracer.dropped == {"queue_full": 7}
    body = metrics.render()[0].decode()
    assert 'tuneops_traces_dropped_total{reason="queue_full"} 7.0' in body
    assert "tuneops_trace_queue_depth 3.0" in body
    # every request was still observed, dropped trace or not
    assert 'tuneops_requests_total{adapter="-",status_class="2xx",tenant="acme"} 10.0' in body
    tracer.start()
    tracer.close()
    assert tracer.written == 3 and len(traces(sqlite_store)) == 3
    assert tracer.finish(tracer.begin(tenant="acme"), status=200) is False  # after close: dropped, counted
    assert tracer.dropped == {"queue_full": 7, "closed": 1}


def test_a_store_error_drops_the_batch_and_the_writer_goes_on(sqlite_store, monkeypatch):
    metrics = ServeMetrics()
    tracer = Tracer(sqlite_store, metrics=metrics, flush_interval=0.05)
    real = sqlite_store.transact
    fail = threading.Event()
    fail.set()

    def flaky(fn, **kw):
        if fail.is_set():
            raise RuntimeError("database went away")
        return real(fn, **kw)

    monkeypatch.setattr(sqlite_store, "transact", flaky)
    tracer.finish(tracer.begin(tenant="acme"), status=200)
    assert tracer.flush(5)
    fail.clear()
    kept = tracer.begin(tenant="acme")
    tracer.finish(kept, status=200)
    tracer.close()
    assert tracer.dropped == {"write_error": 1} and tracer.written == 1
    assert [r.id for r in traces(sqlite_store)] == [kept.id]
    assert 'tuneops_traces_dropped_total{reason="write_error"} 1.0' in metrics.render()[0].decode()


# -- lineage --------------------------------------------------------------------------------------------
def registered_artifact(store, tiny_model_dir, tmp_path):
    """The tiny base, a train and a held-out dataset, and an adapter registered with them as its lineage."""
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_local
    from tuneops.release.registry import register_adapter

    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    train_rows, eval_rows = json_extraction_rows(12, 4, seed=5)
    train, _ = ingest_rows(store, train_rows, name="support-train")
    held, _ = ingest_rows(store, eval_rows, name="support-eval")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights for the trace test")
    (adapter / "adapter_config.json").write_text("{}")
    art, _ = register_adapter(store, adapter, base_id=base.id, method="lora", run_id=None,
                              dataset_ids=[train.id, held.id], recipe_hash=None)
    return SimpleNamespace(base=base, train=train, held=held, artifact=art, train_rows=train_rows)


def test_lineage_from_a_trace_reaches_the_training_rows(store, tiny_model_dir, tmp_path):
    from tuneops.data.ingest import load_rows

    env = registered_artifact(store, tiny_model_dir, tmp_path)
    tracer = Tracer(store, flush_interval=0.05)
    t = serve_one(tracer, base=env.base, artifact=env.artifact, alias="support@production", model="support")
    b = serve_one(tracer, base=env.base, artifact=None, model="base")
    tracer.close()

    data = trace_lineage(store, t.id)
    assert data["trace"]["id"] == t.id and data["trace"]["artifact_id"] == env.artifact.id
    assert data["base"]["id"] == env.base.id and data["base"]["revision_matches"] is True
    assert data["base"]["revision_served"] == env.base.weights_sha256
    assert data["artifact"]["id"] == env.artifact.id
    roles = {d["role"]: d for d in data["datasets"]}
    assert roles["train"]["id"] == env.train.id and roles["train"]["rows"] == 12
    assert roles["train"]["licenses"] == {"Apache-2.0": 12}
    assert roles["train"]["sources"] == {"tuneops:bundled/json-extraction": 12}
    assert roles["eval"]["id"] == env.held.id  # shown, but not what it learned from
    assert data["rows"]["dataset_versions"] == [env.train.id] and data["rows"]["total"] == 12
    assert data["rows"]["list"] == [f"tuneops data show {env.train.id} --rows 12"]

    got = list(training_rows(store, t.id))
    assert [ds for ds, _ in got] == [env.train.id] * 12
    assert [r["messages"] for _, r in got] == [r["messages"] for r in load_rows(store, env.train)]
    assert [r["messages"] for _, r in got] == [r["messages"] for r in env.train_rows]

    base_only = trace_lineage(store, b.id)
    assert base_only["artifact"] is None and base_only["datasets"] == [] and base_only["rows"]["total"] == 0
    assert base_only["base"]["id"] == env.base.id


def test_lineage_flags_a_base_revision_that_changed(sqlite_store, tiny_model_dir, tmp_path):
    env = registered_artifact(sqlite_store, tiny_model_dir, tmp_path)
    tracer = Tracer(sqlite_store, flush_interval=0.05)
    t = serve_one(tracer, base=SimpleNamespace(id=env.base.id, weights_sha256="0" * 64), artifact=env.artifact)
    tracer.close()
    assert trace_lineage(sqlite_store, t.id)["base"]["revision_matches"] is False


def test_lineage_of_a_trained_artifact_names_its_run_and_recipe(served_store):
    store, base, artifact = served_store
    tracer = Tracer(store, flush_interval=0.05)
    t = serve_one(tracer, base=base, artifact=artifact, alias="tiny@production", model="tiny")
    tracer.close()
    data = trace_lineage(store, t.id)
    assert data["run"]["id"] == artifact.run_id and data["run"]["state"] == "succeeded"
    assert data["recipe"]["name"] == "tiny"
    train = next(d for d in data["datasets"] if d["role"] == "train")
    assert data["rows"]["dataset_versions"] == [train["id"]] and data["rows"]["total"] == train["rows"] == 8
    assert len(list(training_rows(store, t.id))) == 8


def test_an_unknown_trace_says_where_ids_come_from(sqlite_store):
    from tuneops.errors import NotFound

    with pytest.raises(NotFound, match="trace 'tr-nope' not found") as e:
        trace_lineage(sqlite_store, "tr-nope")
    assert "X-Tuneops-Trace" in e.value.hint


def test_a_content_backlog_keeps_the_metadata_and_drops_the_content(sqlite_store):
    metrics = ServeMetrics()
    tracer = Tracer(sqlite_store, content=True, metrics=metrics, max_queued_content=len(PII_MESSAGE) + 10,
                    start=False)
    first = serve_one(tracer, messages=[{"role": "user", "content": PII_MESSAGE}], answer="")
    second = serve_one(tracer, messages=[{"role": "user", "content": PII_MESSAGE}], answer="")
    assert tracer.dropped == {"content_backlog": 1}
    tracer.start()
    tracer.close()
    rows = {r.id: r for r in traces(sqlite_store)}
    assert "<EMAIL>" in rows[first.id].content["messages"][0]["content"]
    assert rows[second.id].content is None and rows[second.id].status == 200
    assert rows[second.id].extra == {"content": "not traced: the trace writer's backlog was full"}
    assert tracer._content_queued == 0


def test_one_bad_trace_does_not_take_its_batch_with_it(store):
    tracer = Tracer(store, start=False)
    good = [serve_one(tracer, tenant="acme") for _ in range(3)]
    odd = tracer.begin(tenant="t" * 500, model="m" * 1000)  # cut to the columns' widths, not refused
    tracer.finish(odd, status=200, fallback=object())          # not JSON: stored as its text
    clash = tracer.begin(tenant="acme")
    clash.id = good[0].id                                     # the same primary key twice: this one row fails
    tracer.finish(clash, status=200)
    tracer.start()
    tracer.close()
    assert tracer.written == 4 and tracer.dropped == {"write_error": 1}
    rows = {r.id: r for r in traces(store)}
    assert set(rows) == {t.id for t in good} | {odd.id}
    assert len(rows[odd.id].tenant) == 200 and len(rows[odd.id].model) == 300
    assert rows[odd.id].extra["fallback"].startswith("<object object")


def test_prune_drops_old_traces_or_only_their_content_and_is_audited(store):
    from sqlalchemy import update

    from tuneops.errors import InvalidInput
    from tuneops.serve.tracing import prune_traces
    from tuneops.store.schema_traces import TraceRecord

    tracer = Tracer(store, content=True, flush_interval=0.05)
    old = [serve_one(tracer, tenant="acme", messages=[{"role": "user", "content": PII_MESSAGE}]) for _ in range(3)]
    new = [serve_one(tracer, tenant=t) for t in ("acme", "globex")]
    assert tracer.flush(10)
    tracer.close()
    from datetime import datetime, timezone

    long_ago = datetime(2020, 1, 1, tzinfo=timezone.utc)
    with store.session() as s:
        s.execute(update(TraceRecord).where(TraceRecord.id.in_([t.id for t in old])).values(at=long_ago))
    with pytest.raises(InvalidInput, match="say which traces"):
        prune_traces(store)
    assert prune_traces(store, older_than="30d", content_only=True, dry_run=True) == 3
    assert prune_traces(store, older_than="30d", content_only=True) == 3
    rows = {r.id: r for r in traces(store)}
    assert len(rows) == 5 and all(rows[t.id].content is None and rows[t.id].pii is None for t in old)
    assert rows[old[0].id].artifact_id is None and rows[old[0].id].tenant == "acme"   # metadata kept
    assert rows[new[0].id].content is not None                                        # newer content kept
    assert prune_traces(store, older_than="30d", content_only=True) == 0              # nothing left to drop
    assert prune_traces(store, older_than="2021-01-01") == 3
    assert {r.id for r in traces(store)} == {t.id for t in new}
    assert prune_traces(store, tenant="globex") == 1                                  # a tenant that leaves
    assert [r.id for r in traces(store)] == [new[0].id]
    events = [e for e in store.audit_log() if e.action == "traces.prune"]
    assert [(e.details["count"], e.details["content_only"], e.details["tenant"]) for e in events] == \
        [(3, True, None), (3, False, None), (1, False, "globex")]
