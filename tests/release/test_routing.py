"""Canary and shadow routes: a canary meets every promotion condition, users stay on their side, the monitor
rolls a breaching canary back once (not on noise below min_requests), and every route change is in the
alias's hash-chained history without moving the alias or its rollback list."""

import threading

import pytest

from tests.release.test_promotion import _artifact, _base
from tuneops.errors import GateFailed, InvalidInput, NotFound, StateError
from tuneops.release.registry import promote, resolve_alias, rollback
from tuneops.release.routing import (
    SLO, CanaryMonitor, RouteCache, bucket, choose_target, clear_route, get_route, judge, rollback_canary,
    route_history, set_canary, set_shadow, should_shadow, TargetStats,
)
from tuneops.release.signing import SignatureError
from tuneops.store import ledger
from tuneops.store.schema import ArtifactRecord, ErasureRecord, TaintRecord

ALIAS = "bot@production"


@pytest.fixture
def reg(store, tmp_path):
    """bot@production serves a0; a1 and a2 are promotable candidates on the same base."""
    _base(store)
    arts = [_artifact(store, tmp_path, i) for i in range(3)]
    promote(store, arts[0].id, ALIAS)
    return store, arts


def _actions(store, alias=ALIAS):
    name, stage = alias.split("@")
    return [m.action for m in store.alias_history(name, stage)]


def _verify(store):
    reports = ledger.verify_all(store)
    assert all(r.ok for r in reports), [r.summary for r in reports]


# -- refusals ----------------------------------------------------------------------------------

def test_canary_refused_without_a_passing_eval_report_naming_it(reg, tmp_path):
    store, _ = reg
    failing = _artifact(store, tmp_path, 10, passed=False)
    missing = _artifact(store, tmp_path, 11, report=False)
    with pytest.raises(GateFailed, match="cannot be the canary of bot@production: .*failed its gates") as e:
        set_canary(store, ALIAS, failing.id, 10, reason="try")
    assert "--force" not in e.value.hint and e.value.hint
    with pytest.raises(GateFailed, match="no eval report that judged gates"):
        set_canary(store, ALIAS, missing.id, 10, reason="try")
    assert get_route(store, ALIAS) is None
    assert _actions(store) == ["promote"]


def test_canary_refused_unsigned_tainted_or_on_another_base(reg, tmp_path):
    store, (_, a1, a2) = reg
    with store.session() as s:
        s.get(ArtifactRecord, a1.id).signature = None
        s.add(ErasureRecord(id="er-1", selector={"source": "crm"}, datasets={}))
        s.flush()
        s.add(TaintRecord(artifact_id=a2.id, dataset_id="ds-x", erasure_id="er-1"))
    with pytest.raises(SignatureError, match="canary of bot@production: .* is not signed"):
        set_canary(store, ALIAS, a1.id, 10, reason="try")
    with pytest.raises(GateFailed, match="tainted"):
        set_canary(store, ALIAS, a2.id, 10, reason="try")
    with pytest.raises(GateFailed, match="tainted"):
        set_shadow(store, ALIAS, a2.id, reason="try")  # a shadow needs everything but the gates
    _base(store, "base-other")
    other = _artifact(store, tmp_path, 12, base_id="base-other")
    with pytest.raises(GateFailed, match="runs one base"):
        set_canary(store, ALIAS, other.id, 10, reason="try")
    assert get_route(store, ALIAS) is None and _actions(store) == ["promote"]


def test_canary_refuses_bad_arguments_and_missing_alias(reg):
    store, (a0, a1, _) = reg
    for bad in (0, -1, 101, float("nan")):
        with pytest.raises(InvalidInput, match="percent"):
            set_canary(store, ALIAS, a1.id, bad, reason="x")
    with pytest.raises(InvalidInput, match="--reason"):
        set_canary(store, ALIAS, a1.id, 10, reason=" ")
    with pytest.raises(InvalidInput, match="sticky"):
        set_canary(store, ALIAS, a1.id, 10, sticky="ip", reason="x")
    with pytest.raises(InvalidInput, match="error_rate"):
        SLO(max_error_rate=5)
    with pytest.raises(StateError, match="already serves"):
        set_canary(store, ALIAS, a0.id, 10, reason="x")
    with pytest.raises(NotFound, match="does not exist"):
        set_canary(store, "nobody@production", a1.id, 10, reason="x")


def test_shadow_needs_no_eval_report(reg, tmp_path):
    store, _ = reg
    unevaluated = _artifact(store, tmp_path, 13, report=False)
    route, mv = set_shadow(store, ALIAS, unevaluated.id, 25, reason="try on real traffic")
    assert route.shadow_artifact == unevaluated.id and route.shadow_percent == 25 and route.canary_artifact is None
    assert mv.action == "shadow" and mv.to_artifact == unevaluated.id


# -- history, ledger, the alias itself ---------------------------------------------------------

def test_route_moves_are_in_history_and_leave_the_alias_and_its_rollback_alone(reg):
    store, (a0, a1, a2) = reg
    promote(store, a1.id, ALIAS)  # a0 -> a1
    route, mv = set_canary(store, ALIAS, a2.id, 10, reason="try v3")
    assert resolve_alias(store, ALIAS).id == a1.id
    assert (mv.action, mv.from_artifact, mv.to_artifact) == ("canary", a1.id, a2.id)
    assert mv.reason.startswith("try v3 [10% sticky by user") and mv.actor
    set_shadow(store, ALIAS, a0.id, reason="compare the old one")
    assert resolve_alias(store, ALIAS).id == a1.id
    route = get_route(store, ALIAS)
    assert route.canary_artifact == a2.id and route.shadow_artifact == a0.id  # the shadow kept the canary
    # rollback walks promote/rollback moves only: back to a0, not to the canary or shadow
    back = rollback(store, ALIAS, reason="bad")
    assert back.to_artifact == a0.id and resolve_alias(store, ALIAS).id == a0.id
    with pytest.raises(StateError, match="no earlier target"):
        rollback(store, ALIAS)
    assert _actions(store) == ["promote", "promote", "canary", "shadow", "rollback"]
    audit = [e.action for e in store.audit_log() if e.record_type == "alias"]
    assert audit[-3:] == ["alias.canary", "alias.shadow", "alias.rollback"]
    _verify(store)


def test_clear_route_parts_and_whole(reg):
    store, (a0, a1, a2) = reg
    set_canary(store, ALIAS, a1.id, 10, reason="c")
    set_shadow(store, ALIAS, a2.id, 50, reason="s")
    moves = clear_route(store, ALIAS, reason="enough canary", part="canary")
    assert [(m.action, m.from_artifact, m.to_artifact) for m in moves] == [("route_clear", a1.id, a0.id)]
    route = get_route(store, ALIAS)
    assert route.canary_artifact is None and route.shadow_artifact == a2.id and route.shadow_percent == 50
    clear_route(store, ALIAS, reason="done")
    assert get_route(store, ALIAS) is None
    with pytest.raises(StateError, match="no active route"):
        clear_route(store, ALIAS, reason="again")
    states = [r.state for r in route_history(store, ALIAS)]
    assert states == ["replaced", "cleared", "cleared"]
    assert resolve_alias(store, ALIAS).id == a0.id
    _verify(store)


# -- the split --------------------------------------------------------------------------------

def test_sticky_split_within_two_percent_and_the_same_user_stays(reg):
    store, (a0, a1, _) = reg
    route, _ = set_canary(store, ALIAS, a1.id, 10, reason="ten percent")
    users = [f"user-{i}" for i in range(20_000)]
    sides = [choose_target(route, a0.id, tenant_id="t1", user=u) for u in users]
    share = sum(role == "canary" for _, role in sides) / len(users)
    assert abs(share - 0.10) <= 0.02
    assert all(art == (a1.id if role == "canary" else a0.id) for art, role in sides)
    again = [choose_target(route, a0.id, tenant_id="other", user=u) for u in users[:2000]]
    assert again == sides[:2000]  # the user decides, not the tenant or the call
    # no user -> the tenant decides; neither -> random
    by_tenant = {choose_target(route, a0.id, tenant_id="acme", user=None) for _ in range(50)}
    assert len(by_tenant) == 1
    import random
    rng = random.Random(0)
    anon = [choose_target(route, a0.id, rng=rng)[1] for _ in range(5000)]
    assert 0.07 < anon.count("canary") / 5000 < 0.13


def test_tenant_stickiness_and_raising_the_percentage_only_moves_users_to_the_canary(reg):
    store, (a0, a1, _) = reg
    route, _ = set_canary(store, ALIAS, a1.id, 30, sticky="tenant", reason="t")
    tenants = [f"tenant-{i}" for i in range(5000)]
    roles = {t: {choose_target(route, a0.id, tenant_id=t, user=f"u{j}")[1] for j in range(3)} for t in tenants}
    assert all(len(r) == 1 for r in roles.values())  # every user of a tenant on the tenant's side
    assert abs(sum(r == {"canary"} for r in roles.values()) / len(tenants) - 0.30) <= 0.02
    wider, _ = set_canary(store, ALIAS, a1.id, 60, sticky="tenant", reason="wider")
    assert all(choose_target(wider, a0.id, tenant_id=t)[1] == "canary" for t in tenants if roles[t] == {"canary"})
    assert bucket("bot", "user:x") == bucket("bot@production", "user:x") != bucket("bot@staging", "user:x")


def test_no_canary_once_it_is_the_production_target(reg):
    store, (a0, a1, _) = reg
    route, _ = set_canary(store, ALIAS, a1.id, 100, reason="all")
    assert choose_target(route, a0.id, user="u")[1] == "canary"
    assert choose_target(route, a1.id, user="u") == (a1.id, "primary")
    assert choose_target(None, a0.id, user="u") == (a0.id, "primary")


def test_route_cache_sees_a_change_within_its_ttl(reg):
    store, (a0, a1, _) = reg
    clock = Clock()
    cache = RouteCache(store, ttl_s=1.0, clock=clock)
    assert cache.get("bot") is None
    set_canary(store, ALIAS, a1.id, 10, reason="c")
    assert cache.get(ALIAS) is None  # cached for up to a second
    clock.t += 1.0
    assert cache.get(ALIAS).canary_artifact == a1.id
    clear_route(store, ALIAS, reason="x")
    cache.invalidate(ALIAS)
    assert cache.get("bot@production") is None
    assert route_history(store, ALIAS)[0].end_reason == "x"


def test_should_shadow_samples_and_never_duplicates_what_answered(reg):
    store, (a0, a1, a2) = reg
    route, _ = set_shadow(store, ALIAS, a2.id, 20, reason="s")
    picks = [should_shadow(route, a0.id, a0.id, request_id=f"r{i}") for i in range(10_000)]
    assert abs(sum(p == a2.id for p in picks) / 10_000 - 0.20) <= 0.02
    assert set(picks) == {a2.id, None}
    full, _ = set_shadow(store, ALIAS, a2.id, 100, reason="all")
    assert should_shadow(full, a0.id, a0.id) == a2.id
    assert should_shadow(full, a0.id, a2.id) is None  # the shadow itself answered (it was a canary)
    assert should_shadow(None, a0.id, a0.id) is None


# -- the monitor ------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _feed(monitor, alias, role, art, n, *, errors=0, latency=0.1):
    """n outcomes, the first ``errors`` of them failed; the first verdict that found a breach, else the last."""
    verdicts = [v for i in range(n) if (v := monitor.record(alias, role, art, i >= errors, latency)) is not None]
    return next((v for v in verdicts if v.breach), verdicts[-1] if verdicts else None)


def test_monitor_rolls_back_an_error_rate_breach_once_and_logs_the_numbers(reg):
    store, (a0, a1, _) = reg
    slo = SLO(max_error_rate=0.05, min_requests=50, max_latency_ratio=None)
    route, _ = set_canary(store, ALIAS, a1.id, 10, slo=slo, reason="try v2")
    routes = RouteCache(store, ttl_s=0)
    monitor = CanaryMonitor(store, routes=routes, check_every=1)
    _feed(monitor, ALIAS, "primary", a0.id, 400, errors=4)
    verdict = _feed(monitor, ALIAS, "canary", a1.id, 60, errors=12)  # 20 %
    assert verdict.breach and verdict.rolled_back
    assert verdict.canary.requests == 50 and verdict.canary.errors == 12  # judged at the 50th request
    assert get_route(store, ALIAS) is None
    assert route_history(store, ALIAS)[-1].state == "rolled_back"
    name, stage = ALIAS.split("@")
    last = store.alias_history(name, stage)[-1]
    assert (last.action, last.from_artifact, last.to_artifact) == ("canary_rollback", a1.id, a0.id)
    assert "automatic" in last.reason and "error rate 24.0% (12/50) > 5.0%" in last.reason
    assert "primary 1.0%, 4/400" in last.reason
    assert resolve_alias(store, ALIAS).id == a0.id
    # one rollback per canary: more bad outcomes log nothing more
    _feed(monitor, ALIAS, "canary", a1.id, 100, errors=100)
    assert monitor.evaluate(ALIAS, route=route).rolled_back is False
    assert _actions(store).count("canary_rollback") == 1
    _verify(store)


def test_monitor_does_not_judge_noise_below_min_requests(reg):
    store, (a0, a1, _) = reg
    set_canary(store, ALIAS, a1.id, 10, slo=SLO(max_error_rate=0.05, min_requests=100), reason="try")
    monitor = CanaryMonitor(store, routes=RouteCache(store, ttl_s=0), check_every=1)
    _feed(monitor, ALIAS, "primary", a0.id, 200)
    # the first 3 canary requests fail (100 %, then 75 %, …): noise, not judged before 100 requests
    early = [monitor.record(ALIAS, "canary", a1.id, i >= 3, 0.1) for i in range(99)]
    assert early[0].canary.error_rate == 1.0 and not any(v.judged or v.breach for v in early)
    assert "99 of 100" in early[-1].note
    assert get_route(store, ALIAS) is not None and "canary_rollback" not in _actions(store)
    healthy = _feed(monitor, ALIAS, "canary", a1.id, 400, errors=0)  # 3/499 < 1 %: within the SLO
    assert healthy.judged and not healthy.breach and healthy.canary.errors == 3
    assert get_route(store, ALIAS) is not None


def test_monitor_latency_ratio_and_window(reg):
    store, (a0, a1, _) = reg
    clock = Clock()
    slo = SLO(max_error_rate=None, max_latency_ratio=1.5, min_requests=20, window_s=60)
    route, _ = set_canary(store, ALIAS, a1.id, 10, slo=slo, reason="try")
    monitor = CanaryMonitor(store, routes=lambda alias: route, check_every=1, clock=clock, auto_rollback=False)
    _feed(monitor, ALIAS, "canary", a1.id, 30, latency=1.0)
    assert monitor.evaluate(ALIAS).judged and not monitor.evaluate(ALIAS).breach  # no primary numbers yet
    _feed(monitor, ALIAS, "primary", a0.id, 30, latency=0.5)
    v = monitor.evaluate(ALIAS)
    assert v.breach and "2.00× the primary's 500 ms" in v.reasons[0] and not v.rolled_back
    clock.t += 61  # everything slides out of the window
    assert not monitor.evaluate(ALIAS).judged
    assert get_route(store, ALIAS) is not None  # auto_rollback off


def test_judge_limits():
    slo = SLO(max_error_rate=None, max_error_rate_delta=0.02, max_p99_ms=800, max_latency_ratio=None, min_requests=10)
    ok, reasons = judge(slo, TargetStats("c", 100, 5, 700), TargetStats("p", 100, 4, 600))
    assert ok and reasons == []
    ok, reasons = judge(slo, TargetStats("c", 100, 8, 900), TargetStats("p", 100, 4, 600))
    assert len(reasons) == 2 and "by more than 2.0%" in reasons[0] and "900 ms > 800 ms" in reasons[1]


def test_concurrent_judges_log_one_rollback(reg):
    store, (a0, a1, _) = reg
    route, _ = set_canary(store, ALIAS, a1.id, 10, slo=SLO(min_requests=10, max_latency_ratio=None), reason="x")
    monitors = [CanaryMonitor(store, routes=lambda alias: route, check_every=1) for _ in range(4)]  # 4 "processes"
    for m in monitors:
        _feed(m, ALIAS, "canary", a1.id, 10, errors=10)
    threads = [threading.Thread(target=m.evaluate, args=(ALIAS,)) for m in monitors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _actions(store).count("canary_rollback") == 1
    with pytest.raises(StateError, match="no active canary"):
        rollback_canary(store, ALIAS, reason="by hand")
    _verify(store)


def test_a_new_canary_after_a_rollback_is_judged_afresh(reg):
    store, (a0, a1, a2) = reg
    slo = SLO(min_requests=10, max_latency_ratio=None)
    set_canary(store, ALIAS, a1.id, 10, slo=slo, reason="first")
    monitor = CanaryMonitor(store, routes=RouteCache(store, ttl_s=0), check_every=1)
    assert _feed(monitor, ALIAS, "canary", a1.id, 10, errors=10).rolled_back
    set_canary(store, ALIAS, a2.id, 10, slo=slo, reason="second")
    assert _feed(monitor, ALIAS, "canary", a2.id, 10, errors=10).rolled_back
    assert _actions(store) == ["promote", "canary", "canary_rollback", "canary", "canary_rollback"]
