"""Tenants through the whole front, over real HTTP with the official openai client: open mode, keys required
within about a second of the first tenant, grants (and a seeded fuzz that no key ever reaches another
tenant's adapter or learns its names), /v1/models per key, the base behind allow_base, request and token
quotas (429 + Retry-After), key rotation with grace, disabling.

The helpers at the top (``clone_store``, ``add_adapter``, ``wait_for``) are shared by the other
test_front_* modules."""

import random
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve.conftest import running

HI = [{"role": "user", "content": "Ada, 36, London"}]


# -- shared helpers ---------------------------------------------------------------------------------------

def clone_store(src, dest: Path):
    """A private copy of a store (files, and the SQLite database through the backup API, WAL included): tests
    that add tenants, move aliases or tamper with files must not change the session's shared store."""
    from tuneops.store import Store

    shutil.copytree(src.home, dest, ignore=shutil.ignore_patterns("tuneops.db*"))
    with sqlite3.connect(src.home / "tuneops.db") as a, sqlite3.connect(dest / "tuneops.db") as b:
        a.backup(b)
    return Store(dest)


def add_adapter(store, like, seed: int, work: Path, *, unloadable: bool = False):
    """A second (third …) promotable artifact on ``like``'s base: a LoRA with random weights (so it answers
    differently), registered from ``like``'s run with its lineage (datasets, chat template), signed by the
    session's key, with a passing gated eval report. ``unloadable``: its weights file is not safetensors (it
    verifies, being registered so, but cannot be loaded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneops.models.base import base_dir
    from tuneops.release.registry import register_adapter
    from tuneops.store.schema import EvalReportRecord

    model = AutoModelForCausalLM.from_pretrained(base_dir(store, store.get_base(like.base_id)), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
    out = work / f"adapter-{seed}"
    peft_model.save_pretrained(out)
    if unloadable:
        (out / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    skip = {"base", "datasets", "recipe_sha256", "run", "code_version", "files"}
    lineage = like.lineage
    art, created = register_adapter(store, out, base_id=like.base_id, method="lora", run_id=like.run_id,
                                    dataset_ids=list(lineage.get("datasets") or []),
                                    recipe_hash=lineage.get("recipe_sha256"),
                                    extra_lineage={k: v for k, v in lineage.items() if k not in skip})
    assert created and art.signature
    with store.session() as s:
        s.add(EvalReportRecord(id=f"ev-front-{art.id}", artifact_id=art.id, baseline=like.base_id, suites=[],
                               metrics={}, gates=[{"gate": "g", "candidate": 1.0, "threshold": 0.0, "passed": True,
                                                   "task": True}], passed=True, report_blob="x"))
    return art


def wait_for(condition, timeout: float, what: str, every: float = 0.05):
    """Poll ``condition`` until it returns something truthy; how long that took (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while True:
        value = condition()
        if value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(every)


def chat(url: str, model: str, key: str | None = None, **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "messages": HI, "max_tokens": 1, **extra})


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def is_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    assert r.headers.get("x-tuneops-trace", "").startswith("tr-")
    return err


# -- fixtures -------------------------------------------------------------------------------------------

ALIASES = ("alpha-bot", "beta-bot", "gamma-bot")


@pytest.fixture(scope="module")
def world(served_store, tmp_path_factory):
    """A private store: alpha-bot@production, beta-bot@production, gamma-bot@production and alpha-bot@staging on
    four different artifacts (the session's trained one is gamma-bot's). (store, base, {alias: artifact})."""
    from tuneops.release.registry import promote

    src, base, trained = served_store
    root = tmp_path_factory.mktemp("front-tenants")
    store = clone_store(src, root / "store")
    arts = {"alpha-bot@production": add_adapter(store, trained, 1, root),
            "beta-bot@production": add_adapter(store, trained, 2, root),
            "alpha-bot@staging": add_adapter(store, trained, 3, root),
            "gamma-bot@production": trained}
    for alias, art in arts.items():
        promote(store, art.id, alias)
    return store, base, arts


@pytest.fixture(scope="module")
def url(world):
    from tuneops.serve.app import create_app

    store, base, _ = world
    with running(create_app(store, base.id, max_tokens_limit=64)) as u:
        yield u


# -- open mode, then keys -------------------------------------------------------------------------------

def test_open_mode_until_the_first_tenant_then_keys_within_a_second(world, url):
    from tuneops.serve import tenants as T

    store, base, arts = world
    open_client = client(url, "anything")
    assert {"alpha-bot@production", "beta-bot@production", base.id} <= {m.id for m in open_client.models.list()}
    out = open_client.chat.completions.create(model="beta-bot", messages=HI, max_tokens=1)
    assert out.model == arts["beta-bot@production"].id
    assert chat(url, "gamma-bot").status_code == 200  # no key at all

    _, key = T.add_tenant(store, "first-corp", grants=["gamma-bot"])
    took = wait_for(lambda: chat(url, "gamma-bot").status_code == 401, 3.0, "keys required after add_tenant")
    assert took <= 2.0
    for bad in (None, "tnk-" + "A" * 43, key[:-1] + ("A" if key[-1] != "A" else "B"), "anything"):
        err = is_openai_error(chat(url, "gamma-bot", bad), 401, "invalid_api_key")
        assert "first-corp" not in err["message"]
    r = chat(url, "gamma-bot")
    assert r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        client(url, "tnk-wrong").chat.completions.create(model="gamma-bot", messages=HI, max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        client(url, "tnk-wrong").models.list()
    ok = client(url, key).chat.completions.create(model="gamma-bot", messages=HI, max_tokens=1)
    assert ok.model == arts["gamma-bot@production"].id


# -- grants --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tenants(world, url):
    """name -> (key, grants, allow_base, routing), on the module's server (keys work once this returns)."""
    from tuneops.serve import tenants as T

    store, _, _ = world
    spec = {
        "acme-corp": (["alpha-bot@production"], False, None),
        "globex-inc": (["beta-bot"], True, None),
        "initech-llc": (["alpha-bot", "gamma-bot@production"], False, {"alpha-bot": "staging"}),
        "umbrella-co": (["gamma-bot"], True, None),
    }
    out = {}
    for name, (grants, allow_base, routing) in spec.items():
        _, key = T.add_tenant(store, name, grants=grants, allow_base=allow_base, routing=routing)
        out[name] = (key, grants, allow_base, routing or {})
    last = next(iter(out.values()))[0]
    wait_for(lambda: chat(url, "alpha-bot", last).status_code == 200, 3.0, "new keys work")
    return out


def _covers(grants, name: str, stage: str) -> bool:
    return name in grants or f"{name}@{stage}" in grants


def _allowed(world, tenant) -> dict[str, str]:
    """model string -> artifact id, for every alias and artifact id the tenant may call."""
    _, _, arts = world
    _, grants, _, routing = tenant
    out = {}
    for alias, art in arts.items():
        name, stage = alias.split("@")
        if _covers(grants, name, stage):
            out[alias] = art.id
            out[art.id] = art.id
            if routing.get(name, "production") == stage:
                out[name] = art.id
    return out


def test_a_key_reaches_only_its_granted_aliases(world, url, tenants):
    store, base, arts = world
    acme = client(url, tenants["acme-corp"][0])
    out = acme.chat.completions.create(model="alpha-bot", messages=HI, max_tokens=1)
    assert out.model == arts["alpha-bot@production"].id and out.tuneops["alias"] == "alpha-bot@production"
    by_id = acme.chat.completions.create(model=arts["alpha-bot@production"].id, messages=HI, max_tokens=1)
    assert by_id.model == arts["alpha-bot@production"].id
    for refused in ("beta-bot", "alpha-bot@staging", "gamma-bot@production", arts["beta-bot@production"].id,
                    arts["alpha-bot@staging"].id, "nobody-bot"):
        with pytest.raises(openai.NotFoundError) as e:
            acme.chat.completions.create(model=refused, messages=HI, max_tokens=1)
        message = str(e.value)
        assert refused not in message and "beta-bot" not in message and "globex" not in message
        assert e.value.body["code"] == "model_not_found"
    # The same words for "not yours" and "does not exist".
    words = {chat(url, m, tenants["acme-corp"][0]).json()["error"]["message"] for m in ("beta-bot", "nobody-bot")}
    assert len(words) == 1
    # A routed tenant: its bare alias name means the stage its routing says.
    initech = client(url, tenants["initech-llc"][0])
    assert initech.chat.completions.create(model="alpha-bot", messages=HI, max_tokens=1).model == \
        arts["alpha-bot@staging"].id
    # Completions and streams go through the same door.
    with pytest.raises(openai.NotFoundError):
        acme.completions.create(model="beta-bot", prompt="x", max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        list(acme.chat.completions.create(model="beta-bot", messages=HI, max_tokens=1, stream=True))
    chunks = list(acme.chat.completions.create(model="alpha-bot", messages=HI, max_tokens=2, stream=True))
    assert {c.model for c in chunks} == {arts["alpha-bot@production"].id}


def test_models_lists_only_what_the_key_may_call(world, url, tenants):
    _, base, _ = world
    assert {m.id for m in client(url, tenants["acme-corp"][0]).models.list()} == {"alpha-bot@production"}
    assert {m.id for m in client(url, tenants["globex-inc"][0]).models.list()} == \
        {"beta-bot@production", base.id}
    assert {m.id for m in client(url, tenants["initech-llc"][0]).models.list()} == \
        {"alpha-bot@production", "alpha-bot@staging", "gamma-bot@production"}
    acme = client(url, tenants["acme-corp"][0])
    assert acme.models.retrieve("alpha-bot@production").id == "alpha-bot@production"
    with pytest.raises(openai.NotFoundError) as e:
        acme.models.retrieve("beta-bot@production")
    assert "beta-bot" not in str(e.value)


def test_the_base_needs_allow_base(world, url, tenants):
    _, base, _ = world
    for model in (base.id, base.name):
        with pytest.raises(openai.PermissionDeniedError) as e:
            client(url, tenants["acme-corp"][0]).chat.completions.create(model=model, messages=HI, max_tokens=1)
        assert e.value.status_code == 403 and e.value.body["code"] == "model_not_allowed"
    out = client(url, tenants["globex-inc"][0]).chat.completions.create(model=base.id, messages=HI, max_tokens=1)
    assert out.model == base.id and out.tuneops["artifact"] is None


def test_isolation_fuzz(world, url, tenants):
    """Seeded random keys (real, wrong, missing) × models (aliases, stages, artifact ids, the base, unknown and
    tenant names) × endpoints, four at a time so requests of different tenants share batches: every answer
    comes from an artifact the key's grants cover, and no error text names another tenant or an alias (or
    artifact) the key was not granted."""
    store, base, arts = world
    rng = random.Random(1234)
    names = list(tenants)
    models = [*arts, *{a.split("@")[0] for a in arts}, *(a.id for a in arts.values()), base.id, base.name,
              "nobody-bot", "alpha-bot@canary", *names, "ad-0000000000000000"]
    alias_names = {a.split("@")[0] for a in arts}
    plan = []
    for _ in range(200):
        who = rng.choice(names + ["<wrong>", "<none>"])
        plan.append((who, rng.choice(models), rng.choice(["chat", "chat", "text", "stream", "models"])))

    def one(item):
        who, model, kind = item
        key = tenants[who][0] if who in tenants else ("tnk-" + "B" * 43 if who == "<wrong>" else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            if kind == "models":
                r = c.get("/v1/models")
            elif kind == "text":
                r = c.post("/v1/completions", json={"model": model, "prompt": "Ada, 36", "max_tokens": 1})
            else:
                r = c.post("/v1/chat/completions", json={"model": model, "messages": HI, "max_tokens": 2,
                                                         "stream": kind == "stream"})
            return item, r.status_code, dict(r.headers), r.text

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, plan))

    served = 0
    for (who, model, kind), status, headers, text in results:
        assert status < 500, (who, model, kind, status, text)
        if who not in tenants:
            assert status == 401, (who, model, kind, status, text)
            assert not any(n in text for n in names)
            continue
        allowed = _allowed(world, tenants[who])
        granted_names = {n for n in alias_names if any(k.startswith(n + "@") for k in allowed)}
        others = [n for n in names if n != who]
        assert not any(n in text for n in others), (who, model, text)
        if kind == "models":
            assert status == 200
            listed = {m["id"] for m in httpx.Response(200, text=text).json()["data"]}
            assert listed <= {k for k in allowed if "@" in k} | {base.id}
            continue
        if status == 200:
            artifact = headers["x-tuneops-artifact"]
            if model in (base.id, base.name):
                assert tenants[who][2] and artifact == "none"
            else:
                assert model in allowed and artifact == allowed[model], (who, model, artifact)
            served += 1
            continue
        # Refused: never a name, alias or artifact the key was not granted.
        assert status in (403, 404), (who, model, kind, status, text)
        for alias_name in alias_names - granted_names:
            assert alias_name not in text, (who, model, text)
        for art in arts.values():
            assert art.id not in text or art.id in allowed.values(), (who, model, text)
        if model in allowed:
            raise AssertionError(f"{who} was refused {model}, which it may call: {text}")
    assert served >= 25, served


# -- quotas ---------------------------------------------------------------------------------------------

def test_requests_per_minute_quota(world, url):
    from tuneops.serve import tenants as T

    store, _, _ = world
    _, key = T.add_tenant(store, "rpm-corp", grants=["gamma-bot"], requests_per_min=3)
    wait_for(lambda: chat(url, "gamma-bot", key).status_code == 200, 3.0, "the new key works")  # 1 of 3
    assert [chat(url, "gamma-bot", key).status_code for _ in range(2)] == [200, 200]
    r = chat(url, "gamma-bot", key)
    err = is_openai_error(r, 429, "rate_limit_exceeded")
    assert int(r.headers["retry-after"]) >= 1 and "rpm-corp" not in err["message"]
    with pytest.raises(openai.RateLimitError) as e:
        client(url, key).chat.completions.create(model="gamma-bot", messages=HI, max_tokens=1)
    assert e.value.response.headers["retry-after"]
    with pytest.raises(openai.RateLimitError):
        list(client(url, key).completions.create(model="gamma-bot", prompt="x", max_tokens=1, stream=True))


def test_tokens_per_minute_quota(world, url, tenants):
    from tuneops.serve import tenants as T

    store, _, _ = world
    probe = client(url, tenants["umbrella-co"][0]).chat.completions.create(model="gamma-bot", messages=HI,
                                                                           max_tokens=2)
    one = probe.usage.prompt_tokens + 2  # what one request reserves: its prompt and its max_tokens
    _, key = T.add_tenant(store, "tpm-corp", grants=["gamma-bot"], tokens_per_min=one + 1)
    wait_for(lambda: chat(url, "gamma-bot", key, max_tokens=2).status_code == 200, 3.0, "the new key works")
    r = chat(url, "gamma-bot", key, max_tokens=2)
    is_openai_error(r, 429, "rate_limit_exceeded")
    assert int(r.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        client(url, key).chat.completions.create(model="gamma-bot", messages=HI, max_tokens=2)
    # More than the whole minute's budget can never fit: 400, not a 429 to retry forever.
    is_openai_error(chat(url, "gamma-bot", key, max_tokens=one + 10), 400, "request_too_large")


# -- keys: rotation with grace, disabling ------------------------------------------------------------------

def test_rotate_key_with_grace_then_without(world, url):
    from tuneops.serve import tenants as T

    store, _, _ = world
    _, old = T.add_tenant(store, "rotor-inc", grants=["gamma-bot"])
    wait_for(lambda: chat(url, "gamma-bot", old).status_code == 200, 3.0, "the new key works")
    new = T.rotate_key(store, "rotor-inc", grace_s=4)
    rotated = time.monotonic()
    wait_for(lambda: chat(url, "gamma-bot", new).status_code == 200, 2.0, "the rotated key works")
    assert chat(url, "gamma-bot", old).status_code == 200  # within its grace
    wait_for(lambda: chat(url, "gamma-bot", old).status_code == 401, 7.0, "the old key ends after its grace")
    assert time.monotonic() - rotated >= 3.5
    assert chat(url, "gamma-bot", new).status_code == 200
    newer = T.rotate_key(store, "rotor-inc")  # no grace: the old key stops within a second
    took = wait_for(lambda: chat(url, "gamma-bot", new).status_code == 401, 3.0, "the replaced key stops")
    assert took <= 2.0
    assert chat(url, "gamma-bot", newer).status_code == 200


def test_disable_and_enable(world, url):
    from tuneops.serve import tenants as T

    store, _, _ = world
    _, key = T.add_tenant(store, "sleepy-co", grants=["gamma-bot"])
    wait_for(lambda: chat(url, "gamma-bot", key).status_code == 200, 3.0, "the new key works")
    T.disable(store, "sleepy-co")
    took = wait_for(lambda: chat(url, "gamma-bot", key).status_code == 403, 3.0, "disabled")
    assert took <= 2.0
    err = is_openai_error(chat(url, "gamma-bot", key), 403, "tenant_disabled")
    assert "sleepy-co" not in err["message"]
    with pytest.raises(openai.PermissionDeniedError):
        client(url, key).models.list()
    T.enable(store, "sleepy-co")
    wait_for(lambda: chat(url, "gamma-bot", key).status_code == 200, 3.0, "enabled again")
