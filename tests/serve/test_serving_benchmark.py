"""benchmarks/serving.py's phases, run for a few seconds on the tiny model, so the benchmark cannot rot."""

import asyncio
import importlib.util
import json
import os
from pathlib import Path

from tests.serve.conftest import running

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def _bench():
    spec = importlib.util.spec_from_file_location("serving_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_serving_benchmark_phases_on_the_tiny_model(tmp_path, tiny_model_dir):
    from tuneops.models.base import import_local, load_base
    from tuneops.serve.app import create_app
    from tuneops.store import Store

    bench = _bench()
    store = Store(tmp_path / "store")
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    big = bench.write_adapters(tiny_model_dir, tmp_path / "adapters", 5, r=4)
    small = bench.write_adapters(tiny_model_dir, tmp_path / "small", 4, r=2, targets=bench.SMALL_TARGETS,
                                 layers=[0], seed0=100, prefix="small")
    big_ids = bench.register_all(store, base.id, big)
    small_ids = bench.register_all(store, base.id, small)
    assert len(set(big_ids + small_ids)) == 9, "random weights: every adapter is a different artifact"
    alias = bench.alias_one(store, big_ids[0])
    assert alias == "bench@production"

    machine = bench.Machine()
    model, tok = load_base(store, base)
    plain = bench.plain_generate(model, tok, 4)
    assert plain() == 8 * 4
    with running(create_app(store, base.id, max_tokens_limit=4, max_resident=2)) as url, \
            running(create_app(store, base.id, max_tokens_limit=4, max_resident=2, merge_hot=True)) as merged_url:
        configs = bench.throughput_configs(base.id, big_ids[:3], counts=(1, 3))
        assert list(configs) == ["http_base", "http_1_adapter", "http_3_adapters"]
        asyncio.run(bench._touch(merged_url, [big_ids[0]] * 64, 8, 1))
        assert bench.wait_merged(merged_url, big_ids[0], timeout=30)["merged_bytes"] > 0
        configs["http_1_adapter_merge_hot"] = [big_ids[0]]
        with machine.phase("throughput"):
            thr = asyncio.run(bench.throughput_phase(url, configs, plain, repeats=2, clients=2,
                                                     requests_per_client=1, new_tokens=4, pool_size=2,
                                                     machine=machine, urls={"http_1_adapter_merge_hot": merged_url}))
        assert set(thr["tokens_per_s"]) == {"plain_generate_batch8", *configs}
        assert all(s["errors"] == 0 and s["tokens"] > 0 for v in thr["samples"].values() for s in v)
        assert set(thr["ratios"]) >= {"single_over_plain_batch8", "mixed3_over_single", "base_over_plain_batch8",
                                      "merged_single_over_plain_batch8", "merged_single_over_single"}
        assert bench._healthz(merged_url)["pool"]["path_merged"] >= 2   # the merged configuration ran merged
        assert len(thr["ratios_per_round"]["single_over_plain_batch8"]) == 2

        cold = asyncio.run(bench.cold_phase(url, big_ids[3:]))
        assert cold["errors"] == 0 and cold["measured_by_server"] == 2 and cold["cold_load_p95_ms"] > 0

        load = asyncio.run(bench.load_phase(url, big_ids[:2] + [base.id, alias], clients=3, duration_s=1.5,
                                            max_tokens=4))
        assert load["requests"] >= 3 and load["count_5xx"] == 0 and load["no_response"] == 0
        assert load["p99_ms"] >= load["p50_ms"] > 0 and load["completion_tokens"] > 0
        assert "ttft_p50_ms" in load  # None when the random model only produced text the stream holds back

        scan = asyncio.run(bench.scan_phase(url, small_ids, os.getpid(), concurrency=2))
        assert scan["ok"] == 4 and scan["memory_after"]["rss_mb"] > 0
        assert scan["pool_after"]["adapters_resident"] <= 2

    result = bench.summarize(throughput=thr, cold=cold, load=load, scan=scan, fuzz=None, machine=machine.as_dict(),
                             settings={"clients": 2, "new_tokens": 4})
    for key in ("tokens_per_s", "single_over_plain_batch8", "mixed32_over_single", "cold_load_p95_ms",
                "load_requests", "load_5xx", "p99_ms", "ttft_p50_ms", "machine"):
        assert key in result
    assert result["machine"]["phases"]["throughput"]["load_avg_before"]
    json.dumps(result)
    bench.plot(result, load["latencies_ms"], load["ttfts_ms"], tmp_path / "serving.png")
    assert (tmp_path / "serving.png").stat().st_size > 1000
