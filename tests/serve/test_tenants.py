"""Tenants: hashed keys, grants, isolation (fuzzed), rotation grace, refresh, quotas — on SQLite and PostgreSQL."""

import json
import random
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from tuneops.errors import InvalidInput, NotFound, StateError, TuneopsError
from tuneops.serve import tenants as T
from tuneops.serve.tenants import (
    OPEN, InvalidApiKey, ModelNotAllowed, ModelNotFound, QuotaLimiter, RateLimited, RequestTooLarge,
    TenantDirectory, TenantDisabled,
)
from tuneops.store.schema import AliasRecord, ArtifactRecord, AuditEvent, Base, BaseModelRecord, utcnow
from tuneops.store.schema_tenants import ApiKeyRecord, TenantGrant, TenantRecord

BASE = dict(base_id="base-0123456789abcdef", base_name="tiny-llama")
KEY_RE = re.compile(r"^tnk-[A-Za-z0-9_-]{43}$")


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class WallClock:
    """A settable UTC "now" for key expiry."""

    def __init__(self):
        self.at = utcnow()

    def __call__(self):
        return self.at


def add_alias(store, name: str, stage: str, artifact_id: str) -> None:
    """An alias row pointing at a (fake) artifact on a (fake) base: enough for authorisation, which never loads."""
    def write(s):
        if s.get(BaseModelRecord, BASE["base_id"]) is None:
            s.add(BaseModelRecord(id=BASE["base_id"], name=BASE["base_name"], source="test", source_digest="0" * 64,
                                  license="mit", tree="0" * 64, weights_sha256="0" * 64, num_parameters=1))
            s.flush()
        if s.get(ArtifactRecord, artifact_id) is None:
            s.add(ArtifactRecord(id=artifact_id, kind="adapter", method="lora", tree="0" * 64,
                                 base_id=BASE["base_id"], lineage={}))
            s.flush()
        rec = s.get(AliasRecord, (name, stage))
        if rec is None:
            s.add(AliasRecord(name=name, stage=stage, artifact_id=artifact_id))
        else:
            rec.artifact_id = artifact_id

    store.transact(write)


def everything_in(store) -> str:
    """Every row of every table, as text: what someone with a copy of the database could read."""
    out = []
    with store.session(write=False) as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)):
                out.append(json.dumps([str(v) for v in row], ensure_ascii=False))
    return "\n".join(out)


# -- keys -------------------------------------------------------------------------------------

def test_a_key_is_shown_once_and_only_its_hash_is_stored(store):
    rec, key = T.add_tenant(store, "acme", grants=["bot"])
    assert KEY_RE.match(key) and rec.id.startswith("tn-")
    new = T.rotate_key(store, "acme", grace_s=60)
    assert KEY_RE.match(new) and new != key
    dump = everything_in(store)
    for raw in (key, new):
        assert raw not in dump and raw[len("tnk-"):] not in dump
        assert T.hash_key(raw) in dump  # the verifier is there
    with store.session(write=False) as s:
        prefixes = set(s.scalars(select(ApiKeyRecord.prefix)))
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert prefixes == {key[:12], new[:12]}
    assert actions[-2:] == ["tenant.add", "tenant.rotate_key"]
    # list_tenants shows prefixes, never the key
    listing = json.dumps(T.list_tenants(store))
    assert key not in listing and new not in listing and key[:12] in listing


def test_authenticate_maps_keys_to_their_tenant(store):
    _, k1 = T.add_tenant(store, "acme", grants=["bot"], requests_per_min=5)
    _, k2 = T.add_tenant(store, "globex", allow_base=True, tokens_per_min=1000)
    d = TenantDirectory(store)
    p1, p2 = d.authenticate(k1), d.authenticate(k2)
    assert (p1.name, p1.grants, p1.requests_per_min, p1.allow_base) == ("acme", frozenset({"bot"}), 5, False)
    assert (p2.name, p2.tokens_per_min, p2.allow_base) == ("globex", 1000, True)
    assert p1.key_id and p1.key_id != p2.key_id
    near = k1[:-1] + ("A" if k1[-1] != "A" else "B")
    for bad in (None, "", near, k1 + "x", "tnk-" + "A" * 43, k1[:12], "Bearer " + k1, "\ud800"):
        with pytest.raises(InvalidApiKey) as e:
            d.authenticate(bad)
        assert e.value.http_status == 401 and e.value.error_code == "invalid_api_key"
        assert "acme" not in str(e.value) and "globex" not in str(e.value)


def test_without_tenants_the_server_is_open(store):
    assert T.open_mode(store)
    d = TenantDirectory(store, refresh_s=0)
    assert d.open_mode and d.authenticate(None) is OPEN
    assert d.authorize(OPEN, "anything", **BASE) == T.Target("alias", "anything@production", "anything@production")
    assert d.authorize(OPEN, "ad-0011223344556677", **BASE).kind == "artifact"
    assert d.authorize(OPEN, BASE["base_name"], **BASE) == T.Target("base", BASE["base_id"])
    T.add_tenant(store, "acme")
    assert not T.open_mode(store)
    assert not d.open_mode  # the first tenant closes a running server's doors
    with pytest.raises(InvalidApiKey):
        d.authenticate(None)


# -- grants -----------------------------------------------------------------------------------

def test_grant_semantics_name_covers_every_stage_name_at_stage_only_that(store):
    _, key = T.add_tenant(store, "acme", grants=["bot", "summarizer@staging"])
    d = TenantDirectory(store, refresh_s=0)
    p = d.authenticate(key)
    assert d.authorize(p, "bot", **BASE) == T.Target("alias", "bot@production", "bot@production")
    assert d.authorize(p, "bot@staging", **BASE).ref == "bot@staging"
    assert d.authorize(p, "summarizer@staging", **BASE).ref == "summarizer@staging"
    with pytest.raises(ModelNotFound):  # bare name = production, not granted
        d.authorize(p, "summarizer", **BASE)
    T.set_route(store, "acme", "summarizer", "staging")  # now "summarizer" means summarizer@staging for acme
    p = d.authenticate(key)
    assert d.authorize(p, "summarizer", **BASE) == T.Target("alias", "summarizer@staging", "summarizer@staging")
    T.set_route(store, "acme", "bot", "canary")
    assert d.authorize(d.authenticate(key), "bot", **BASE).ref == "bot@canary"
    T.revoke(store, "acme", "bot")
    with pytest.raises(ModelNotFound):
        d.authorize(d.authenticate(key), "bot@canary", **BASE)
    assert T.grant(store, "acme", "bot@production") is True
    assert T.grant(store, "acme", "bot@production") is False  # already held: no second grant, no audit entry
    assert d.authorize(d.authenticate(key), "bot@production", **BASE).ref == "bot@production"


def test_a_missing_model_and_someone_elses_look_the_same(store):
    _, mine = T.add_tenant(store, "acme", grants=["bot"])
    T.add_tenant(store, "globex", grants=["secret-sauce"])
    add_alias(store, "secret-sauce", "production", "ad-00000000000000aa")
    d = TenantDirectory(store, refresh_s=0)
    p = d.authenticate(mine)
    answers = []
    for ref in ("secret-sauce", "secret-sauce@production", "does-not-exist", "ad-00000000000000aa",
                "ad-00000000000000bb", "Not An Alias!"):
        with pytest.raises(ModelNotFound) as e:
            d.authorize(p, ref, **BASE)
        assert (e.value.http_status, e.value.error_code) == (404, "model_not_found")
        answers.append(str(e.value))
    assert len(set(answers)) == 1
    assert "secret" not in answers[0] and "globex" not in answers[0]


def test_the_base_needs_allow_base(store):
    _, no = T.add_tenant(store, "acme", grants=["bot"])
    _, yes = T.add_tenant(store, "globex", allow_base=True)
    d = TenantDirectory(store, refresh_s=0)
    for ref in (BASE["base_id"], BASE["base_name"]):
        with pytest.raises(ModelNotAllowed) as e:
            d.authorize(d.authenticate(no), ref, **BASE)
        assert e.value.http_status == 403 and e.value.error_code == "model_not_allowed"
        assert d.authorize(d.authenticate(yes), ref, **BASE) == T.Target("base", BASE["base_id"])
    T.set_allow_base(store, "acme", True)
    assert d.authorize(d.authenticate(no), BASE["base_id"], **BASE).kind == "base"


def test_an_artifact_id_only_while_a_granted_alias_points_at_it(store):
    _, key = T.add_tenant(store, "acme", grants=["bot@production"])
    add_alias(store, "bot", "production", "ad-000000000000000a")
    add_alias(store, "bot", "staging", "ad-000000000000000b")
    d = TenantDirectory(store, refresh_s=0)
    p = d.authenticate(key)
    assert d.authorize(p, "ad-000000000000000a", **BASE) == T.Target("artifact", "ad-000000000000000a")
    with pytest.raises(ModelNotFound):  # bot@staging's target: not covered by a bot@production grant
        d.authorize(p, "ad-000000000000000b", **BASE)
    add_alias(store, "bot", "production", "ad-000000000000000b")  # the alias moves on: the old id goes with it
    with pytest.raises(ModelNotFound):
        d.authorize(p, "ad-000000000000000a", **BASE)
    assert d.authorize(p, "ad-000000000000000b", **BASE).kind == "artifact"


def test_models_listing_shows_only_what_the_key_may_call(store):
    _, key = T.add_tenant(store, "acme", grants=["bot", "x@staging"])
    d = TenantDirectory(store, refresh_s=0)
    entries = [{"id": BASE["base_id"]}] + [{"id": f"{n}@{s}"} for n in ("bot", "x", "theirs")
                                           for s in ("production", "staging")]
    shown = [e["id"] for e in d.visible_models(d.authenticate(key), entries, base_id=BASE["base_id"])]
    assert shown == ["bot@production", "bot@staging", "x@staging"]
    assert len(d.visible_models(OPEN, entries, base_id=BASE["base_id"])) == len(entries)


def test_isolation_fuzz_a_key_never_reaches_another_tenants_alias(store):
    """Many tenants with random grants, keys and aliases: every (key, model) pair is allowed exactly when the
    key's own grants cover it, and no refusal mentions any tenant name or alias."""
    rng = random.Random(12)
    words = ["alpha", "bravo", "carbon", "delta", "ember", "fjord", "gamma", "harbor", "iris", "jade", "koi", "lumen"]
    stages = ["production", "staging", "canary"]
    alias_names = [f"{w}-{rng.randrange(1000):03d}" for w in words]
    tenants = {}
    for i in range(10):
        name = f"tenant-{rng.choice(words)}-{i}"
        picks = rng.sample(alias_names, rng.randint(0, 3))
        grants = [a if rng.random() < 0.5 else f"{a}@{rng.choice(stages)}" for a in picks]
        routing = {a: rng.choice(stages) for a in rng.sample(alias_names, 2)}
        _, key = T.add_tenant(store, name, grants=grants, routing=routing, allow_base=rng.random() < 0.3)
        if rng.random() < 0.4:
            key = T.rotate_key(store, name, grace_s=rng.choice([0, 3600]))
        tenants[name] = (key, set(grants), routing)
    artifacts = {}
    for n, a in enumerate(alias_names):
        for s in rng.sample(stages, 2):
            artifacts[(a, s)] = f"ad-{n:08x}{stages.index(s):08x}"
            add_alias(store, a, s, artifacts[(a, s)])
    secrets_ = set(tenants) | set(alias_names)

    d = TenantDirectory(store, refresh_s=0)
    refs = ([a for a in alias_names] + [f"{a}@{s}" for a in alias_names for s in stages]
            + list(artifacts.values()) + ["ad-ffffffffffffffff", "nobody-has-this", BASE["base_id"]])
    checked = 0
    for name, (key, grants, routing) in tenants.items():
        p = d.authenticate(key)
        assert p.name == name
        for ref in refs + [rng.choice(refs) + rng.choice(["", "@staging", "x"]) for _ in range(30)]:
            if ref == BASE["base_id"]:
                continue
            if ref.startswith("ad-"):
                owners = [k for k, v in artifacts.items() if v == ref]
                allowed = any(a in grants or f"{a}@{s}" in grants for a, s in owners)
            else:
                m = T.ALIAS_RE.match(ref)
                a, s = (m["name"], m["stage"] or routing.get(m["name"], "production")) if m else (None, None)
                allowed = m is not None and (a in grants or f"{a}@{s}" in grants)
            try:
                target = d.authorize(p, ref, **BASE)
            except ModelNotFound as e:
                assert not allowed, (name, ref)
                text = str(e)
                assert not any(word in text for word in secrets_), text
            else:
                assert allowed, (name, ref)
                assert target.kind in ("alias", "artifact")
                if target.alias:
                    a, s = target.alias.split("@")
                    assert a in grants or target.alias in grants
            checked += 1
    assert checked > 500
    # A random key never authenticates, and its refusal names no one.
    for _ in range(200):
        with pytest.raises(InvalidApiKey) as e:
            d.authenticate(T.new_key())
        assert not any(word in str(e.value) for word in secrets_)


# -- rotation, disabling, refresh ------------------------------------------------------------

def test_rotation_grace_keeps_the_old_key_until_it_ends(store):
    now = WallClock()
    _, old = T.add_tenant(store, "acme")
    d = TenantDirectory(store, refresh_s=0, now=now)
    new = T.rotate_key(store, "acme", grace_s=30)
    assert d.authenticate(old).name == d.authenticate(new).name == "acme"
    now.at += timedelta(seconds=29)
    assert d.authenticate(old).name == "acme"
    now.at += timedelta(seconds=2)
    with pytest.raises(InvalidApiKey):
        d.authenticate(old)
    assert d.authenticate(new).name == "acme"
    newest = T.rotate_key(store, "acme")  # grace 0: the previous key stops at once
    with pytest.raises(InvalidApiKey):
        d.authenticate(new)
    assert d.authenticate(newest).name == "acme"
    assert [len(t["keys"]) for t in T.list_tenants(store)] == [1]


def test_a_rotation_never_extends_an_earlier_grace(store):
    _, first = T.add_tenant(store, "acme")
    T.rotate_key(store, "acme", grace_s=10)
    T.rotate_key(store, "acme", grace_s=3600)
    keys = {k["prefix"]: k["expires_at"] for k in T.list_tenants(store)[0]["keys"]}
    assert keys[first[:12]] < min(v for p, v in keys.items() if p != first[:12] and v)


def test_changes_reach_a_directory_within_its_refresh_interval(store):
    clock = Clock()
    _, key = T.add_tenant(store, "acme", grants=["bot"])
    _, other = T.add_tenant(store, "globex")
    d = TenantDirectory(store, refresh_s=1.0, clock=clock)
    assert d.authenticate(key).grants == {"bot"}
    T.revoke(store, "acme", "bot")
    T.disable(store, "globex")
    clock.t += 0.5  # still the cached view
    assert d.authenticate(key).grants == {"bot"} and d.authenticate(other).name == "globex"
    clock.t += 0.5  # one refresh interval: reloaded
    assert d.authenticate(key).grants == frozenset()
    with pytest.raises(TenantDisabled) as e:
        d.authenticate(other)
    assert e.value.http_status == 403 and e.value.error_code == "tenant_disabled"
    T.enable(store, "globex")
    T.rotate_key(store, "acme")
    clock.t += 1.0
    assert d.authenticate(other).name == "globex"
    with pytest.raises(InvalidApiKey):
        d.authenticate(key)


def test_a_revoked_key_stops_on_a_real_clock(store):
    import time

    _, key = T.add_tenant(store, "acme")
    d = TenantDirectory(store)  # the server's default: 1 s
    d.authenticate(key)
    T.rotate_key(store, "acme")
    changed = time.monotonic()
    while True:
        try:
            d.authenticate(key)
        except InvalidApiKey:
            break
        assert time.monotonic() - changed < 3.0, "the revoked key still worked after 3 s"
        time.sleep(0.05)


def test_pinned_aliases_follow_routing_and_skip_disabled_tenants(store):
    T.add_tenant(store, "acme", grants=["bot"], routing={"bot": "staging"}, pinned=["bot"])
    T.add_tenant(store, "globex", pinned=["x@canary"])
    d = TenantDirectory(store, refresh_s=0)
    assert d.pinned_aliases() == {"bot@staging", "x@canary"}
    T.set_pinned(store, "globex", "x@canary", False)
    T.disable(store, "acme")
    assert d.pinned_aliases() == set()


# -- admin ------------------------------------------------------------------------------------

def test_admin_changes_are_audited_and_bad_input_writes_nothing(store):
    T.add_tenant(store, "acme", requests_per_min=10)
    with pytest.raises(StateError, match="already exists"):
        T.add_tenant(store, "acme")
    for bad in dict(name="Acme Corp"), dict(name="ok", grants=["bot", "NOT VALID"]), \
            dict(name="ok", requests_per_min=0), dict(name="ok", routing={"bot": "Bad Stage"}):
        with pytest.raises(InvalidInput):
            T.add_tenant(store, **{"name": bad.pop("name"), **bad})
    with pytest.raises(NotFound, match="tenant 'ghost' not found"):
        T.grant(store, "ghost", "bot")
    with pytest.raises(NotFound, match="has no grant"):
        T.revoke(store, "acme", "bot")
    with pytest.raises(InvalidInput):
        T.rotate_key(store, "acme", grace_s=-1)
    with pytest.raises(InvalidInput):
        T.set_limits(store, "acme")
    rec = T.set_limits(store, "acme", tokens_per_min=500)
    assert (rec.requests_per_min, rec.tokens_per_min) == (10, 500)
    rec = T.set_limits(store, "acme", requests_per_min=None)
    assert (rec.requests_per_min, rec.tokens_per_min) == (None, 500)
    T.grant(store, "acme", "bot")
    T.revoke(store, "acme", "bot")
    T.disable(store, "acme")
    T.disable(store, "acme")  # already disabled: no second entry
    with store.session(write=False) as s:
        assert [t.name for t in s.scalars(select(TenantRecord))] == ["acme"]
        assert s.scalars(select(TenantGrant)).all() == []
        assert len(s.scalars(select(ApiKeyRecord)).all()) == 1
        events = [(e.action, e.record_id) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))
                  if e.record_type == "tenant"]
    assert events == [("tenant.add", "acme"), ("tenant.limits", "acme"), ("tenant.limits", "acme"),
                      ("tenant.grant", "acme"), ("tenant.revoke", "acme"), ("tenant.disable", "acme")]


# -- quotas -----------------------------------------------------------------------------------

def principal(rpm=None, tpm=None, tenant="tn-a"):
    return T.Principal(tenant_id=tenant, name=tenant, allow_base=False, grants=frozenset(), routing={},
                       requests_per_min=rpm, tokens_per_min=tpm)


def test_requests_per_minute():
    clock = Clock()
    q = QuotaLimiter(clock)
    p = principal(rpm=3)
    for _ in range(3):
        q.check_request(p)
    with pytest.raises(RateLimited) as e:
        q.check_request(p)
    err = e.value
    assert (err.http_status, err.error_code, err.error_type) == (429, "rate_limit_exceeded", "requests")
    assert err.retry_after == 20 and err.headers == {"Retry-After": "20"}  # one request refills every 60/3 s
    q.check_request(principal(rpm=3, tenant="tn-b"))  # another tenant has its own bucket
    clock.t += 19.5
    with pytest.raises(RateLimited) as e:
        q.check_request(p)
    assert e.value.retry_after == 1  # never 0
    clock.t += 0.6
    q.check_request(p)
    q.check_request(principal())  # no limit
    q.check_request(OPEN)


def test_tokens_per_minute_reserve_and_settle():
    clock = Clock()
    q = QuotaLimiter(clock)
    p = principal(tpm=120)  # 2 tokens a second
    r = q.reserve(p, 100)
    with pytest.raises(RateLimited) as e:
        q.reserve(p, 50)
    assert e.value.error_type == "tokens" and e.value.retry_after == 15  # 30 missing at 2/s
    r.settle(40)  # used 40 of 100: 60 come back
    r.settle(0)  # settling twice changes nothing
    q.reserve(p, 50).release()  # 80 there: fits; released, so all 50 come back
    q.reserve(p, 80)
    with pytest.raises(RateLimited):
        q.reserve(p, 1)
    with pytest.raises(RequestTooLarge) as e:  # can never fit: not worth retrying
        q.reserve(p, 121)
    assert e.value.http_status == 400
    over = q.reserve(principal(tpm=60, tenant="tn-c"), 10)
    over.settle(70)  # used more than reserved: the bucket goes below zero
    with pytest.raises(RateLimited) as e:
        q.reserve(principal(tpm=60, tenant="tn-c"), 1)
    assert e.value.retry_after == 11  # from -10 up to 1 at 1 token/s
    assert q.reserve(OPEN, 10**9) is not None


def test_quota_is_exact_under_concurrency():
    q = QuotaLimiter(Clock())  # frozen time: nothing refills
    p = principal(rpm=50, tpm=500)
    ok, refused = [], []

    def hit():
        for _ in range(20):
            try:
                q.check_request(p)
                ok.append(1)
            except RateLimited:
                refused.append(1)

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 50 and len(refused) == 110


def test_errors_map_to_http():
    assert all(issubclass(c, TuneopsError) for c in (InvalidApiKey, TenantDisabled, ModelNotAllowed, ModelNotFound,
                                                     RateLimited, RequestTooLarge))
    assert InvalidApiKey.headers == {"WWW-Authenticate": "Bearer"}
    assert issubclass(ModelNotFound, NotFound)  # the server answers param "model" for these
