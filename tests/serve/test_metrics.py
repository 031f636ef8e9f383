"""Prometheus metrics: what a scraper reads after requests are observed, parsed with prometheus_client's own
parser; two servers in one process keep separate registries."""

import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tuneops.serve.metrics import ServeMetrics
from tuneops.serve.protocol import Choice, GenResult


def scrape(metrics: ServeMetrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the text exposition."""
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def observe_mix(m: ServeMetrics) -> None:
    m.observe_request(tenant="acme", adapter="ad-1", path="batched", status=200, latency_s=0.8, ttft_s=0.2,
                      prompt_tokens=30, completion_tokens=32, gen_s=0.5, batch_size=8, queue_s=0.01,
                      cold_load_s=0.12)
    m.observe_request(tenant="acme", adapter="ad-1", path="batched", status=200, latency_s=1.5, ttft_s=0.3,
                      prompt_tokens=10, completion_tokens=16, gen_s=0.4, batch_size=3, queue_s=0.2)
    m.observe_request(tenant="globex", adapter="base", path="base", status=200, latency_s=0.3, ttft_s=0.05,
                      prompt_tokens=5, completion_tokens=4, gen_s=0.1, batch_size=1, queue_s=0.0)
    m.observe_request(tenant="globex", adapter=None, status=404, error_code="model_not_found", latency_s=0.004)
    m.observe_request(tenant="acme", adapter="ad-1", status=429, error_code="rate_limit_exceeded", latency_s=0.002)


def test_counts_and_labels_after_observing():
    m = ServeMetrics()
    observe_mix(m)
    s = scrape(m)
    assert value(s, "tuneops_requests_total", tenant="acme", adapter="ad-1", status_class="2xx") == 2
    assert value(s, "tuneops_requests_total", tenant="acme", adapter="ad-1", status_class="4xx") == 1
    assert value(s, "tuneops_requests_total", tenant="globex", adapter="base", status_class="2xx") == 1
    # a request that failed before its model resolved is labelled "-", never with the client's model string
    assert value(s, "tuneops_requests_total", tenant="globex", adapter="-", status_class="4xx") == 1
    assert value(s, "tuneops_request_errors_total", tenant="globex", adapter="-", status="404",
                 error_code="model_not_found") == 1
    assert value(s, "tuneops_request_errors_total", tenant="acme", adapter="ad-1", status="429",
                 error_code="rate_limit_exceeded") == 1
    assert not any(k[0] == "tuneops_request_errors_total" and ("status", "200") in k[1] for k in s)

    # latency: every request, errors included; TTFT only where a token came
    assert value(s, "tuneops_request_latency_seconds_count", tenant="acme", adapter="ad-1") == 3
    assert value(s, "tuneops_request_latency_seconds_bucket", tenant="acme", adapter="ad-1", le="1.0") == 2
    assert value(s, "tuneops_request_latency_seconds_bucket", tenant="acme", adapter="ad-1", le="0.05") == 1
    assert value(s, "tuneops_time_to_first_token_seconds_count", tenant="acme", adapter="ad-1") == 2
    assert value(s, "tuneops_time_to_first_token_seconds_sum", tenant="acme", adapter="ad-1") == pytest.approx(0.5)

    # tokens/s = completion tokens over generation seconds, both as counters and per request
    assert value(s, "tuneops_completion_tokens_total", tenant="acme", adapter="ad-1") == 48
    assert value(s, "tuneops_prompt_tokens_total", tenant="acme", adapter="ad-1") == 40
    assert value(s, "tuneops_generation_seconds_total", tenant="acme", adapter="ad-1") == pytest.approx(0.9)
    assert value(s, "tuneops_generation_tokens_per_second_count", tenant="acme", adapter="ad-1") == 2
    assert value(s, "tuneops_generation_tokens_per_second_sum", tenant="acme", adapter="ad-1") == pytest.approx(64 + 40)

    # batches, queue wait, engine path, cold loads
    assert value(s, "tuneops_batch_size_bucket", adapter="ad-1", le="4.0") == 1
    assert value(s, "tuneops_batch_size_bucket", adapter="ad-1", le="8.0") == 2
    assert value(s, "tuneops_queue_wait_seconds_count", adapter="ad-1") == 2
    assert value(s, "tuneops_engine_path_total", adapter="ad-1", path="batched") == 2
    assert value(s, "tuneops_engine_path_total", adapter="base", path="base") == 1
    assert value(s, "tuneops_adapter_loads_total", adapter="ad-1", outcome="ok") == 1
    assert value(s, "tuneops_adapter_load_seconds_bucket", adapter="ad-1", le="0.2") == 1
    assert value(s, "tuneops_adapter_load_seconds_bucket", adapter="ad-1", le="0.1") == 0


def test_pool_statistics_and_in_flight():
    m = ServeMetrics()
    s = scrape(m)
    assert value(s, "tuneops_adapters_resident") == 0 and value(s, "tuneops_adapter_pool_hits_total") == 0
    m.set_pool(resident=["ad-2", "ad-1"], hits=40, misses=3, evictions=1, capacity=64, memory_bytes=123456)
    m.observe_load("ad-3", None, ok=False)
    with m.track("acme", "ad-1"):
        m.request_started("acme", "ad-2")
        s = scrape(m)
        assert value(s, "tuneops_requests_in_flight", tenant="acme", adapter="ad-1") == 1
        assert value(s, "tuneops_requests_in_flight", tenant="acme", adapter="ad-2") == 1
    m.request_ended("acme", "ad-2")
    s = scrape(m)
    assert value(s, "tuneops_requests_in_flight", tenant="acme", adapter="ad-1") == 0
    assert value(s, "tuneops_adapters_resident") == 2
    assert value(s, "tuneops_adapter_resident", adapter="ad-1") == 1
    assert value(s, "tuneops_adapter_pool_hits_total") == 40
    assert value(s, "tuneops_adapter_pool_misses_total") == 3
    assert value(s, "tuneops_adapter_pool_evictions_total") == 1
    assert value(s, "tuneops_adapter_pool_capacity") == 64
    assert value(s, "tuneops_adapter_pool_memory_bytes") == 123456
    assert value(s, "tuneops_adapter_loads_total", adapter="ad-3", outcome="failed") == 1
    # the engine's running totals are set, not added: a later snapshot replaces the earlier one
    m.set_pool(resident=5, hits=41, misses=3)
    s = scrape(m)
    assert value(s, "tuneops_adapter_pool_hits_total") == 41 and value(s, "tuneops_adapters_resident") == 5
    assert not any(k[0] == "tuneops_adapter_resident" for k in s)


def test_two_servers_in_one_process_do_not_collide():
    a, b = ServeMetrics(), ServeMetrics()  # the same metric names twice: no "Duplicated timeseries"
    a.observe_request(tenant="acme", adapter="base", status=200, latency_s=0.1)
    assert value(scrape(a), "tuneops_requests_total", tenant="acme", adapter="base", status_class="2xx") == 1
    assert value(scrape(b), "tuneops_requests_total", tenant="acme", adapter="base", status_class="2xx") is None


def test_openmetrics_when_the_scraper_asks():
    m = ServeMetrics()
    observe_mix(m)
    body, ctype = m.render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert ctype.startswith("application/openmetrics-text")
    fams = {f.name: f for f in parse_openmetrics(body.decode())}
    assert fams["tuneops_requests"].type == "counter"
    assert fams["tuneops_request_latency_seconds"].type == "histogram"


def test_tracer_observes_each_request_once_and_moves_in_flight(tmp_path):
    from tuneops.serve.tracing import Tracer
    from tuneops.store import Store

    m = ServeMetrics()
    tracer = Tracer(Store(tmp_path / "store"), metrics=m)
    t = tracer.begin(tenant="acme", model="support@production")
    assert value(scrape(m), "tuneops_requests_in_flight", tenant="acme", adapter="-") == 1
    tracer.resolved(t, base_id="base-1", base_revision="f" * 64, artifact="ad-9", alias="support@production")
    s = scrape(m)
    assert value(s, "tuneops_requests_in_flight", tenant="acme", adapter="-") == 0
    assert value(s, "tuneops_requests_in_flight", tenant="acme", adapter="ad-9") == 1
    time.sleep(0.01)
    result = GenResult(choices=[Choice("hi", "length", 7), Choice("yo", "stop", 3)], path="peft", batch_size=2,
                       queue_s=0.003, ttft_s=0.02, gen_s=0.25, cold_load_s=0.09)
    tracer.finish(t, status=200, result=result, prompt_tokens=11)
    tracer.finish(t, status=200, result=result, prompt_tokens=11)  # a second end (stream close after error) is ignored
    tracer.close()
    s = scrape(m)
    assert value(s, "tuneops_requests_in_flight", tenant="acme", adapter="ad-9") == 0
    assert value(s, "tuneops_requests_total", tenant="acme", adapter="ad-9", status_class="2xx") == 1
    assert value(s, "tuneops_completion_tokens_total", tenant="acme", adapter="ad-9") == 10
    assert value(s, "tuneops_engine_path_total", adapter="ad-9", path="peft") == 1
    assert value(s, "tuneops_adapter_loads_total", adapter="ad-9", outcome="ok") == 1
    assert value(s, "tuneops_request_latency_seconds_sum", tenant="acme", adapter="ad-9") >= 0.01
    assert value(s, "tuneops_traces_written_total") == 1
    assert value(s, "tuneops_trace_queue_depth") == 0
