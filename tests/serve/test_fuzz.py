"""Fuzz the running server from its own OpenAPI schema plus hostile mutations, on chat and text completions,
in open mode and with a tenant's key: never a 5xx."""

import httpx

from tests.serve.conftest import running
from tests.serve.fuzzing import COMPLETIONS, fuzz


def test_fuzzed_requests_never_get_a_server_error(served_store):
    from tuneops.serve.app import create_app

    store, base, artifact = served_store
    # Completions of at most 8 tokens keep ~150 requests, most of them generating, within a minute.
    with running(create_app(store, base.id, max_tokens_limit=8)) as url:
        result = fuzz(url, ["tiny", "tiny@production", artifact.id, base.id], n_requests=150, seed=0)
        assert result["count_5xx"] == 0, result["server_errors"]
        assert result["generated"] >= 10, result  # generation itself was exercised, not only validation
        assert result["generated_by_path"].get(COMPLETIONS, 0) >= 3, result  # text completions too
        health = httpx.get(url + "/healthz").json()
        assert health["status"] == "ok" and not health["busy"] and health["waiting"] == 0


def test_fuzzed_requests_with_a_tenant_key_never_get_a_server_error(served_store, tmp_path):
    """The same workload through tenants, quotas and traces (content traced): a key with a request quota it
    runs into, a grant for the adapter only (so the base is refused)."""
    from tests.serve.test_front_tenants import clone_store
    from tuneops.serve import tenants as T
    from tuneops.serve.app import create_app

    src, base, artifact = served_store
    store = clone_store(src, tmp_path / "store")
    _, key = T.add_tenant(store, "fuzz-corp", grants=["tiny"], requests_per_min=60, tokens_per_min=20_000)
    with running(create_app(store, base.id, max_tokens_limit=8, trace_content=True)) as url:
        result = fuzz(url, ["tiny", "tiny@production", artifact.id, base.id], n_requests=90, seed=1, api_key=key)
        assert result["count_5xx"] == 0, result["server_errors"]
        assert result["generated"] >= 5, result
        assert {401, 403, 404} & set(result["by_status"]) or 429 in result["by_status"], result
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
