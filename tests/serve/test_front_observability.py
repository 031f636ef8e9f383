"""Observability through the whole front, over real HTTP: /metrics after mixed traffic parses with
prometheus_client's own parser and counts per tenant and adapter; every /v1 answer (errors and streams
included) names its trace, and that trace is stored with tenant, artifact, alias, base revision and status;
traced content is PII-redacted; a served trace's lineage reaches the artifact's datasets."""

import httpx
import openai
import pytest

from tests.serve.conftest import running
from tests.serve.test_front_tenants import HI, clone_store, wait_for

PII = "Write to ada.lovelace@example.com or call +1 415 555 0134 about the order."


@pytest.fixture(scope="module")
def front(served_store, tmp_path_factory):
    """(app, url, store, base, artifact, tenant id, key): content tracing on, one tenant granted tiny."""
    from tuneops.serve import tenants as T
    from tuneops.serve.app import create_app

    src, base, artifact = served_store
    store = clone_store(src, tmp_path_factory.mktemp("front-obs") / "store")
    rec, key = T.add_tenant(store, "obs-corp", grants=["tiny"], allow_base=True)
    app = create_app(store, base.id, trace_content=True, max_tokens_limit=16)
    with running(app) as url:
        yield app, url, store, base, artifact, rec.id, key


def _traffic(url: str, key: str, base_id: str) -> dict[str, httpx.Response]:
    auth = {"Authorization": f"Bearer {key}"}
    out = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        out["chat"] = c.post("/v1/chat/completions", headers=auth,
                             json={"model": "tiny", "messages": HI, "max_tokens": 2})
        out["text"] = c.post("/v1/completions", headers=auth, json={"model": "tiny", "prompt": "Ada", "max_tokens": 2})
        out["base"] = c.post("/v1/chat/completions", headers=auth,
                             json={"model": base_id, "messages": HI, "max_tokens": 1})
        with c.stream("POST", "/v1/chat/completions", headers=auth,
                      json={"model": "tiny", "messages": HI, "max_tokens": 3, "stream": True}) as r:
            r.read()
            out["stream"] = r
        out["not_found"] = c.post("/v1/chat/completions", headers=auth,
                                  json={"model": "nobody", "messages": HI, "max_tokens": 1})
        out["bad_key"] = c.post("/v1/chat/completions", headers={"Authorization": "Bearer tnk-nope"},
                                json={"model": "tiny", "messages": HI, "max_tokens": 1})
        out["invalid"] = c.post("/v1/chat/completions", headers=auth,
                                json={"model": "tiny", "messages": [], "max_tokens": 1})
        out["broken_json"] = c.post("/v1/chat/completions", headers={**auth, "content-type": "application/json"},
                                    content=b"{")
        out["unsupported"] = c.post("/v1/chat/completions", headers=auth,
                                    json={"model": "tiny", "messages": HI, "max_tokens": 1, "logprobs": True})
        out["pii"] = c.post("/v1/chat/completions", headers=auth,
                            json={"model": "tiny", "messages": [{"role": "user", "content": PII}], "max_tokens": 2})
    return out


@pytest.fixture(scope="module")
def traffic(front):
    app, url, store, base, artifact, tenant_id, key = front
    out = _traffic(url, key, base.id)
    expected = {"chat": 200, "text": 200, "base": 200, "stream": 200, "not_found": 404, "bad_key": 401,
                "invalid": 400, "broken_json": 400, "unsupported": 400, "pii": 200}
    assert {k: r.status_code for k, r in out.items()} == expected, {k: r.text[:200] for k, r in out.items()}
    return out


def test_every_v1_answer_names_a_stored_trace(front, traffic):
    from tuneops.serve.tracing import get_trace, traces

    app, url, store, base, artifact, tenant_id, key = front
    ids = {k: r.headers.get("x-tuneops-trace") for k, r in traffic.items()}
    assert all(v and v.startswith("tr-") for v in ids.values()), ids
    assert len(set(ids.values())) == len(ids)
    assert app.state.tracer.flush(10)
    recs = {k: get_trace(store, tid) for k, tid in ids.items()}
    for k in ("chat", "text", "stream", "pii"):
        t = recs[k]
        assert (t.tenant, t.artifact_id, t.alias, t.base_id, t.status) == \
            (tenant_id, artifact.id, "tiny@production", base.id, 200), k
        assert t.base_revision == base.weights_sha256 and t.latency_s > 0 and t.completion_tokens >= 1
    assert recs["stream"].stream and recs["stream"].ttft_s is not None
    assert recs["text"].endpoint == "completions" and recs["chat"].endpoint == "chat.completions"
    assert (recs["base"].artifact_id, recs["base"].base_id, recs["base"].status) == (None, base.id, 200)
    for k, status in (("not_found", 404), ("bad_key", 401), ("invalid", 400), ("broken_json", 400),
                      ("unsupported", 400)):
        assert recs[k].status == status, (k, recs[k].status)
    assert (recs["not_found"].tenant, recs["not_found"].error_code) == (tenant_id, "model_not_found")
    assert recs["bad_key"].error_code == "invalid_api_key"
    assert recs["unsupported"].error_code == "unsupported_parameter" and recs["unsupported"].tenant == tenant_id
    listed = {t.id for t in traces(store, tenant=tenant_id, limit=1000)}
    assert {ids[k] for k in ("chat", "text", "stream", "pii", "not_found", "unsupported")} <= listed
    assert ids["chat"] in {t.id for t in traces(store, artifact=artifact.id, alias="tiny", limit=1000)}
    assert ids["base"] in {t.id for t in traces(store, artifact="base", limit=1000)}


def test_traced_content_is_redacted(front, traffic):
    from tuneops.serve.tracing import get_trace

    app, url, store, base, artifact, tenant_id, key = front
    assert app.state.tracer.flush(10)
    rec = get_trace(store, traffic["pii"].headers["x-tuneops-trace"])
    stored = str(rec.content)
    assert rec.content and "ada.lovelace@example.com" not in stored and "555 0134" not in stored
    assert "about the order" in stored  # the rest of the message is kept
    assert rec.pii and sum(rec.pii.values()) >= 2, rec.pii
    plain = get_trace(store, traffic["chat"].headers["x-tuneops-trace"])
    assert "Ada, 36, London" in str(plain.content)


def test_a_served_trace_leads_to_the_artifacts_datasets(front, traffic):
    from tuneops.serve.tracing import trace_lineage

    app, url, store, base, artifact, tenant_id, key = front
    assert app.state.tracer.flush(10)
    lin = trace_lineage(store, traffic["chat"].headers["x-tuneops-trace"])
    assert lin["artifact"]["id"] == artifact.id and lin["base"]["revision_matches"]
    datasets = {d["id"] for d in lin["datasets"]}
    assert set(artifact.lineage["datasets"]) <= datasets
    assert lin["rows"]["dataset_versions"] and lin["rows"]["total"] > 0


def test_metrics_parse_and_count_per_tenant_and_adapter(front, traffic):
    from prometheus_client.parser import text_string_to_metric_families

    app, url, store, base, artifact, tenant_id, key = front
    body = httpx.get(f"{url}/metrics").text
    samples = {}
    families = {}
    for fam in text_string_to_metric_families(body):
        families[fam.name] = fam
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def total(name: str, **labels) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    # chat, text, stream, pii on the adapter; one on the base; all by the tenant
    assert total("tuneops_requests_total", tenant=tenant_id, adapter=artifact.id) >= 4
    assert total("tuneops_requests_total", tenant=tenant_id, adapter="base") >= 1
    assert total("tuneops_request_errors_total", tenant=tenant_id) >= 2  # 404 and the refused parameter
    assert families["tuneops_request_latency_seconds"].type == "histogram"
    assert total("tuneops_request_latency_seconds_count", tenant=tenant_id, adapter=artifact.id) >= 4
    assert families["tuneops_time_to_first_token_seconds"].type == "histogram"
    assert total("tuneops_time_to_first_token_seconds_count", tenant=tenant_id, adapter=artifact.id) >= 1
    assert total("tuneops_completion_tokens_total", tenant=tenant_id, adapter=artifact.id) >= 4
    assert total("tuneops_adapter_pool_hits_total") + total("tuneops_adapter_pool_misses_total") >= 1
    assert total("tuneops_adapter_pool_misses_total") >= 1  # the adapter's first load
    assert "tuneops_adapters_resident" in families
    assert total("tuneops_adapters_resident") >= 1


def test_healthz_and_metrics_name_the_resident_adapter(front, traffic):
    app, url, store, base, artifact, tenant_id, key = front
    assert artifact.id in httpx.get(f"{url}/healthz").json()["adapters_loaded"]
    assert f'tuneops_adapter_resident{{adapter="{artifact.id}"}}' in httpx.get(f"{url}/metrics").text


def test_the_openai_client_sees_the_trace_header_on_errors_too(front):
    app, url, store, base, artifact, tenant_id, key = front
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=HI, max_tokens=1)
    assert raw.headers["x-tuneops-trace"] == raw.parse().tuneops["request_id"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nobody", messages=HI, max_tokens=1)
    assert e.value.response.headers["x-tuneops-trace"].startswith("tr-")
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{url}/v1", api_key="tnk-x", max_retries=0).completions.create(
            model="tiny", prompt="x", max_tokens=1)
    assert e.value.response.headers["x-tuneops-trace"].startswith("tr-")
    wait_for(lambda: app.state.tracer.flush(1), 10, "traces written")
