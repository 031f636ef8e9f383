"""A tenant's pinned alias stays resident in the adapter pool while other adapters come and go."""

import httpx

from tests.serve.conftest import running
from tests.serve.test_front_tenants import add_adapter, clone_store, wait_for


def test_a_tenants_pinned_alias_is_never_evicted(served_store, tmp_path):
    from tuneops.release.registry import promote
    from tuneops.serve.app import create_app
    from tuneops.serve.tenants import add_tenant, set_pinned

    src, base, trained = served_store
    store = clone_store(src, tmp_path / "store")
    pinned, a, b = (add_adapter(store, trained, seed, tmp_path) for seed in (11, 12, 13))
    for alias, art in (("kept@production", pinned), ("a@production", a), ("b@production", b)):
        promote(store, art.id, alias)
    _, key = add_tenant(store, "acme", grants=["kept", "a", "b"])
    app = create_app(store, base.id, max_resident=2, max_tokens_limit=8)
    with running(app) as url:
        set_pinned(store, "acme", "kept", True)
        # The watcher pins and prefetches the target without any request for it.
        wait_for(lambda: pinned.id in httpx.get(url + "/healthz").json()["adapters_loaded"], 15, "kept prefetched")
        headers = {"Authorization": f"Bearer {key}"}
        for model in ("a", "b", "a", "b"):  # two slots: a and b evict each other, never the pinned one
            r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=60,
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            assert r.status_code == 200, r.text
            loaded = httpx.get(url + "/healthz").json()["adapters_loaded"]
            assert pinned.id in loaded, loaded
        pool = httpx.get(url + "/healthz").json()["pool"]
        assert pool["evictions"] >= 2 and pool["pinned"] == 1


def test_merge_hot_through_the_server_says_which_path_served_each_request(served_store, tmp_path):
    """create_app(merge_hot=True): the dominant alias ends up merged; responses, /healthz and /metrics say so."""
    from tuneops.serve.app import create_app

    src, base, trained = served_store
    store = clone_store(src, tmp_path / "store")
    app = create_app(store, base.id, max_tokens_limit=8, merge_hot=True)
    with running(app) as url:
        def ask():
            r = httpx.post(url + "/v1/completions", timeout=60,
                           json={"model": "tiny", "prompt": "hi", "max_tokens": 1})
            assert r.status_code == 200, r.text
            return r.json()["tuneops"]["path"]

        paths = [ask() for _ in range(64)]          # the default window: 64 rows
        assert set(paths) == {"batched"}
        wait_for(lambda: httpx.get(url + "/healthz").json()["pool"]["merged_tree"] == trained.tree, 30, "merge")
        assert ask() == "merged"
        pool = httpx.get(url + "/healthz").json()["pool"]
        assert pool["merges"] == 1 and pool["merged_bytes"] > 0 and "64 rows" in pool["last_switch"]["why"]
        body = httpx.get(url + "/metrics").text
        assert 'tuneops_engine_path_total{adapter="%s",path="merged"} 1.0' % trained.id in body
        assert "tuneops_adapter_pool_merged_bytes %s" % float(pool["merged_bytes"]) in body
