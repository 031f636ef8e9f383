"""Routing through the whole front, over real HTTP: an alias flip (and its rollback) reaches traffic in flight
within a second without a failed request or a restart; a canary splits users stickily and, once it fails
server-side, is rolled back automatically by the monitor (logged in the alias history); a shadow never
answers but is measured; fallback to the base (or 503) when an adapter's files fail verification."""

import threading
import time

import httpx
import openai
import pytest

from tests.serve.conftest import running
from tests.serve.test_front_tenants import HI, add_adapter, chat, clone_store, wait_for

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def world(served_store, tmp_path_factory):
    """A private store with four artifacts on the session's base: a0 (the trained one) and a1-a3 (random LoRAs)."""
    src, base, trained = served_store
    root = tmp_path_factory.mktemp("front-routing")
    store = clone_store(src, root / "store")
    arts = [trained] + [add_adapter(store, trained, seed, root) for seed in (11, 12, 13)]
    return store, base, arts


@pytest.fixture(scope="module")
def server(world):
    """(app, url) of a server with default settings (fallback="error")."""
    from tuneops.serve.app import create_app

    store, base, _ = world
    app = create_app(store, base.id, max_tokens_limit=16)
    with running(app) as url:
        yield app, url


class tampered:
    """Flip the last byte of an artifact's stored weights (the file still loads; only its hash tells) until exit."""

    def __init__(self, store, artifact):
        self.path = store.blobs.tree_path(artifact.tree) / WEIGHTS

    def __enter__(self):
        self.original = self.path.read_bytes()
        self.path.chmod(0o644)
        self.path.write_bytes(self.original[:-1] + bytes([self.original[-1] ^ 0xFF]))
        return self

    def __exit__(self, *exc):
        self.path.write_bytes(self.original)


# -- alias moves -----------------------------------------------------------------------------------------

def test_alias_flip_and_rollback_mid_traffic(world, server):
    from tuneops.release.registry import promote, rollback

    store, _, (a0, a1, *_) = world
    app, url = server
    alias = "flip-bot@production"
    promote(store, a0.id, alias)
    log: list[tuple[float, int, str | None, str]] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                sent = time.monotonic()
                r = c.post("/v1/chat/completions", json={"model": "flip-bot", "messages": HI, "max_tokens": 1})
                log.append((sent, r.status_code, r.headers.get("x-tuneops-artifact"), r.text[:300]))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.8)
        promote(store, a1.id, alias)
        moved = time.monotonic()
        time.sleep(2.5)
        rollback(store, alias, reason="flip back")
        back = time.monotonic()
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    failed = [entry for entry in log if entry[1] != 200]
    assert not failed, failed[:5]
    before = [a for sent, _, a, _ in log if sent < moved - 0.2]
    after_move = [a for sent, _, a, _ in log if moved + 1.0 <= sent < back - 0.2]
    after_back = [a for sent, _, a, _ in log if sent >= back + 1.0]
    assert before and after_move and after_back, (len(before), len(after_move), len(after_back))
    assert set(before) == {a0.id}
    assert set(after_move) == {a1.id}
    assert set(after_back) == {a0.id}
    history = [(m.action, m.to_artifact) for m in store.alias_history("flip-bot", "production")]
    assert history == [("promote", a0.id), ("promote", a1.id), ("rollback", a0.id)]


def test_a_moved_alias_target_is_prefetched(world, server):
    from tuneops.release.registry import promote

    store, _, (a0, _, a2, _) = world
    app, url = server
    promote(store, a0.id, "warm-bot@production")
    time.sleep(0.7)  # the watcher has seen the alias
    misses = app.state.pool.engine.stats()["misses"]
    promote(store, a2.id, "warm-bot@production")
    wait_for(lambda: app.state.pool.engine.stats()["loads"] >= 1 and
             a2.tree not in app.state.pool.engine._loading and a2.tree in app.state.pool.engine._slots,
             5.0, "the new target loaded before any request for it")
    assert chat(url, "warm-bot").headers["x-tuneops-artifact"] == a2.id
    assert app.state.pool.engine.stats()["misses"] == misses  # the first request found it resident


# -- canary ------------------------------------------------------------------------------------------------

def test_canary_split_is_sticky_and_a_failing_canary_is_rolled_back(world, server):
    from tuneops.release.registry import promote
    from tuneops.release.routing import SLO, choose_target, get_route, set_canary

    store, _, (a0, _, a2, _) = world
    app, url = server
    alias = "canary-bot@production"
    promote(store, a0.id, alias)
    slo = SLO(max_error_rate=0.2, max_latency_ratio=None, min_requests=10)
    route, _ = set_canary(store, alias, a2.id, 50, slo=slo, reason="try a2 on half the users")
    users = [f"user-{i}" for i in range(24)]
    expected = {u: choose_target(route, a0.id, user=u) for u in users}
    canary_users = [u for u in users if expected[u][1] == "canary"]
    assert canary_users and len(canary_users) < len(users)
    time.sleep(1.1)  # the front re-reads routes at most every second

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for _ in range(2):  # the same user lands on the same side every time
        for u in users:
            out = client.chat.completions.create(model="canary-bot", messages=HI, max_tokens=1, user=u)
            assert (out.model, out.tuneops["role"]) == expected[u], u
    streamed = list(client.chat.completions.create(model="canary-bot", messages=HI, max_tokens=1, stream=True,
                                                   user=canary_users[0]))
    assert {c.model for c in streamed} == {a2.id}

    # The canary fails server-side (its files no longer verify): 503 for its users, until the monitor has seen
    # min_requests of them and rolls it back on its own.
    with tampered(store, a2):
        failures = 0
        for i in range(60):
            history = store.alias_history("canary-bot", "production")
            if history[-1].action == "canary_rollback":
                break
            r = chat(url, "canary-bot", user=canary_users[i % len(canary_users)])
            if r.status_code == 200:  # rolled back between the check above and this request
                assert r.headers["x-tuneops-artifact"] == a0.id
                continue
            assert r.status_code == 503 and r.json()["error"]["code"] == "integrity_check_failed", r.text
            failures += 1
            time.sleep(0.02)  # the monitor records outcomes in the background
        else:
            raise AssertionError(f"no automatic rollback after {failures} failed canary requests; "
                                 f"monitor: {app.state.monitor.stats(alias)}")
        # Judged every 10th canary outcome over the window (the earlier successes included): soon, not at once.
        assert 1 <= failures <= 20, failures
        assert app.state.monitor.stats(alias)["note"] == "no active canary"
        last = store.alias_history("canary-bot", "production")[-1]
        assert (last.action, last.from_artifact, last.to_artifact) == ("canary_rollback", a2.id, a0.id)
        assert last.reason.startswith("automatic: canary") and "error rate" in last.reason
        assert get_route(store, alias) is None
        # Every user is on the primary again, at once (the monitor dropped the cached route), the tampered
        # canary's users included.
        for u in users:
            r = chat(url, "canary-bot", user=u)
            assert r.status_code == 200 and r.headers["x-tuneops-artifact"] == a0.id, (u, r.text)
            assert r.json()["tuneops"]["role"] == "primary"


def test_shadow_answers_from_the_primary_and_is_measured(world, server):
    from tuneops.release.registry import promote
    from tuneops.release.routing import set_shadow

    store, _, (a0, a1, _, _) = world
    app, url = server
    alias = "shadow-bot@production"
    promote(store, a0.id, alias)
    set_shadow(store, alias, a1.id, 100, reason="try a1 on real traffic")
    time.sleep(1.1)
    before = app.state.pool.engine.stats()["completed"]
    for i in range(5):
        r = chat(url, "shadow-bot", user=f"u{i}", max_tokens=2)
        assert r.status_code == 200 and r.headers["x-tuneops-artifact"] == a0.id
        assert r.json()["tuneops"]["role"] == "primary" and r.json()["model"] == a0.id
    monitor = app.state.monitor

    def shadow_outcomes():
        window = monitor._windows.get((alias, "shadow", a1.id)) or []
        return list(window) if len(window) >= 5 else None

    wait_for(shadow_outcomes, 10.0, "the shadow's outcomes recorded")
    assert all(ok for _, ok, _ in shadow_outcomes())
    assert app.state.pool.engine.stats()["completed"] >= before + 10  # 5 answers and 5 shadow copies ran


# -- fallback ----------------------------------------------------------------------------------------------

def test_fallback_to_the_base_or_503(world, server):
    from tuneops.release.registry import promote
    from tuneops.serve.app import create_app

    store, base, (*_, a3) = world
    _, url = server
    promote(store, a3.id, "fb-bot@production")
    assert chat(url, "fb-bot").headers["x-tuneops-artifact"] == a3.id
    with running(create_app(store, base.id, fallback="base", max_tokens_limit=16)) as fb_url:
        assert chat(fb_url, "fb-bot").headers["x-tuneops-artifact"] == a3.id
        with tampered(store, a3):
            # Default: 503, and the client is told not to retry.
            r = chat(url, "fb-bot")
            assert r.status_code == 503 and r.json()["error"]["code"] == "integrity_check_failed"
            # fallback="base": the base answers, and says so.
            r = chat(fb_url, "fb-bot")
            assert r.status_code == 200, r.text
            body = r.json()
            assert r.headers["x-tuneops-fallback"] == "base" and r.headers["x-tuneops-artifact"] == "none"
            assert body["model"] == base.id and body["tuneops"]["artifact"] is None
            assert body["tuneops"]["fallback"]["to"] == "base" and body["tuneops"]["fallback"]["artifact"] == a3.id
            assert body["tuneops"]["alias"] == "fb-bot@production"
            client = openai.OpenAI(base_url=f"{fb_url}/v1", api_key="unused", max_retries=0)
            chunks = list(client.chat.completions.create(model="fb-bot", messages=HI, max_tokens=2, stream=True,
                                                         stream_options={"include_usage": True}))
            assert {c.model for c in chunks} == {base.id}
            assert chunks[-1].tuneops["fallback"]["artifact"] == a3.id
            text = client.completions.create(model="fb-bot", prompt="Ada", max_tokens=1)
            assert text.model == base.id and text.tuneops["fallback"]["artifact"] == a3.id
        # Restored: the adapter answers again.
        wait_for(lambda: chat(fb_url, "fb-bot").headers.get("x-tuneops-artifact") == a3.id, 3.0, "restored")
        assert chat(url, "fb-bot").headers["x-tuneops-artifact"] == a3.id


def test_an_adapter_that_verifies_but_cannot_load_falls_back_streamed_or_not(world, server, tmp_path):
    """Files intact (their hashes match) but not loadable: the engine's load fails. fallback="base" answers from
    the base, streamed or not; the default answers 503."""
    from tuneops.release.registry import promote
    from tuneops.serve.app import create_app

    store, base, (a0, *_) = world
    _, url = server
    broken = add_adapter(store, a0, 21, tmp_path, unloadable=True)
    promote(store, broken.id, "broken-bot@production")
    for stream in (False, True):
        r = chat(url, "broken-bot", stream=stream)
        assert r.status_code == 503 and r.json()["error"]["code"] == "integrity_check_failed", (stream, r.text)
    with running(create_app(store, base.id, fallback="base", max_tokens_limit=16)) as fb_url:
        r = chat(fb_url, "broken-bot")
        assert r.status_code == 200 and r.json()["tuneops"]["fallback"]["artifact"] == broken.id, r.text
        assert r.json()["model"] == base.id and r.headers["x-tuneops-artifact"] == "none"
        assert r.headers["x-tuneops-fallback"] == "base"
        client = openai.OpenAI(base_url=f"{fb_url}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="broken-bot", messages=HI, max_tokens=2,
                                                               stream=True, stream_options={"include_usage": True})
        assert raw.headers.get("x-tuneops-fallback") == "base" and raw.headers["x-tuneops-artifact"] == "none"
        chunks = list(raw.parse())
        assert {c.model for c in chunks} == {base.id}
        assert chunks[-1].tuneops["fallback"]["artifact"] == broken.id


def test_an_alias_switched_off_answers_503_or_the_base_and_on_again_its_target(world, server):
    """`registry disable`: the next request sees it (no restart); 503 alias_disabled (not retried by the openai
    client) or, with fallback="base", the base with the reason; `enable` brings the target back. Both are moves."""
    from tuneops.release.registry import AliasDisabled, promote, resolve_alias, set_enabled
    from tuneops.serve.app import create_app

    store, base, (_, a1, *_) = world
    _, url = server
    promote(store, a1.id, "off-bot@production")
    assert chat(url, "off-bot").headers["x-tuneops-artifact"] == a1.id
    with running(create_app(store, base.id, fallback="base", max_tokens_limit=16)) as fb_url:
        set_enabled(store, "off-bot", False, reason="answers leak an internal code name")
        r = chat(url, "off-bot")
        assert r.status_code == 503 and r.json()["error"]["code"] == "alias_disabled", r.text
        assert "answers leak an internal code name" in r.json()["error"]["message"]
        assert r.headers["x-should-retry"] == "false"
        calls = []
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused",   # default retries: it must not retry
                               http_client=httpx.Client(event_hooks={"request": [calls.append]}))
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="off-bot", messages=HI, max_tokens=2)
        assert err.value.status_code == 503 and len(calls) == 1
        r = chat(fb_url, "off-bot")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == base.id and r.headers["x-tuneops-fallback"] == "base"
        assert body["tuneops"]["alias"] == "off-bot@production" and body["tuneops"]["artifact"] is None
        assert "switched off: answers leak" in body["tuneops"]["fallback"]["reason"]
        models = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert models["off-bot@production"]["tuneops"]["disabled"] == "answers leak an internal code name"
        # Resolving for anything but serving still works; switching it off twice is refused.
        assert resolve_alias(store, "off-bot").id == a1.id
        with pytest.raises(AliasDisabled):
            resolve_alias(store, "off-bot", serving=True)
        from tuneops.errors import StateError

        with pytest.raises(StateError, match="already off"):
            set_enabled(store, "off-bot", False, reason="again")
        set_enabled(store, "off-bot", True, reason="code name scrubbed")
        for u in (url, fb_url):
            r = chat(u, "off-bot")
            assert r.status_code == 200 and r.headers["x-tuneops-artifact"] == a1.id and \
                "x-tuneops-fallback" not in r.headers
    moves = [m.action for m in store.alias_history("off-bot", "production")]
    assert moves[-2:] == ["disable", "enable"]


def test_a_full_fine_tune_is_refused_with_what_to_do_instead(world, server, tiny_model_dir):
    """An artifact of kind model (method full) is not an adapter: 400 naming the export-and-import route,
    never the misleading 503 of an adapter whose files 'cannot be loaded'."""
    from tuneops.release.registry import register_adapter

    store, base, (a0, *_) = world
    _, url = server
    full, _ = register_adapter(store, tiny_model_dir, base_id=base.id, method="full", run_id=a0.run_id,
                               dataset_ids=list(a0.lineage.get("datasets") or []), recipe_hash=None)
    assert full.kind == "model"
    r = chat(url, full.id)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "full fine-tune" in err["message"] and "--format merged" in err["message"]
