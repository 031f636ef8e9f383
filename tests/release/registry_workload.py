"""The registry's concurrency workload (issue 11): N writer processes × M mixed writes on one store —
ingest, register (signed, or unsigned and signed later), sign, promote (gated, and forced with a
reason), rollback, deprecate / undeprecate, run events and run state transitions — then a checker
that every write a process saw commit is there, nothing is corrupted, every alias history is a
consistent chain and no error other than a correct refusal reached a caller.

Used by tests/release/test_registry_concurrency.py (small) and benchmarks/registry.py (8 × 500).
Extends tests/release/alias_race.py (the hardening issue's alias-only workload).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing as mp
import os
import random
import statistics
import time
import traceback
from datetime import timezone
from pathlib import Path

ALIASES = ("bot@production", "bot@staging", "bot@dev")
BASE_ID = "base-race"
N_GATED = 4  # prepared artifacts with succeeded runs and passing gated eval reports
N_SHARED_ADAPTERS = 6  # adapter contents every writer may register (insert_once races)
N_SHARED_ROWSETS = 4  # row sets every writer may ingest (one dataset version each, whatever the race)
RUN_STATES = ("validating_data", "running", "evaluating", "succeeded")
# op -> weight; ops without a target (nothing to sign yet, say) fall back to an event.
MIX = {"ingest": 12, "register": 12, "sign": 8, "promote": 22, "force_promote": 5, "rollback": 15,
       "deprecate": 8, "event": 12, "run": 6}
SUNSET = (dt.date.today() + dt.timedelta(days=365)).isoformat()  # in the future: deprecated, still promotable


def _rows(tag: str, n: int = 3) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q-{tag}-{i}"},
                          {"role": "assistant", "content": f"a-{tag}-{i}"}],
             "source": "registry-race", "license": "CC0-1.0"} for i in range(n)]


def _adapter_dir(root: Path, tag: str, payload: bytes) -> Path:
    """A tiny adapter directory: the registry hashes files, it does not need a model to register them."""
    d = root / tag
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_model.safetensors").write_bytes(payload)
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1}')
    return d


def prepare(home: Path, db_url: str | None) -> list[str]:
    """A store with one base and N_GATED adapters of succeeded runs with passing task gates (signed with
    the active key, which the store trusts on first use)."""
    from tuneops.release.registry import register_adapter
    from tuneops.store import Store
    from tuneops.store.schema import BaseModelRecord, EvalReportRecord, RunRecord

    store = Store(home, db_url=db_url)
    with store.session() as s:
        s.add(BaseModelRecord(id=BASE_ID, name="b", source="test", source_digest="x", license="MIT",
                              tree="t", weights_sha256="w", num_parameters=1))
    ids = []
    for i in range(N_GATED):
        with store.session() as s:
            s.add(RunRecord(id=f"run-gated-{i}", recipe_name="r", recipe_yaml="", recipe_hash="0" * 64,
                            state="succeeded", dataset_ids=[], metrics={}))
        d = _adapter_dir(Path(home) / "src", f"gated{i}", f"gated-{i}".encode() * 16)
        art, _ = register_adapter(store, d, base_id=BASE_ID, method="lora", run_id=f"run-gated-{i}",
                                  dataset_ids=[], recipe_hash=None)
        assert art.signature, "prepare() needs a signing key (TUNEOPS_KEY_DIR with a default key)"
        with store.session() as s:
            s.add(EvalReportRecord(id=f"ev-gated-{i}", artifact_id=art.id, baseline=BASE_ID, suites=[],
                                   metrics={}, gates=[{"gate": "g", "passed": True, "task": True}], passed=True,
                                   report_blob="x"))
        ids.append(art.id)
    store.engine.dispose()
    return ids


class _Keyless:
    """Register as a user without a signing key (an empty key folder): the artifact stays unsigned."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in ("TUNEOPS_KEY_DIR", "TUNEOPS_SIGNING_KEY")}
        os.environ["TUNEOPS_KEY_DIR"] = str(self.folder)
        os.environ.pop("TUNEOPS_SIGNING_KEY", None)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker(home: str, db_url: str | None, gated: list[str], ops: int, seed: int, out, counter) -> None:
    import logging

    from tuneops.data.ingest import ingest_rows
    from tuneops.errors import StateError
    from tuneops.release.registry import deprecate, promote, register_adapter, rollback, sign_artifact
    from tuneops.store import Store
    from tuneops.store.schema import RunRecord

    logging.getLogger("tuneops").setLevel(logging.ERROR)  # "registered unsigned" notices are expected here
    rng = random.Random(seed)
    w = f"w{seed}"
    result = {"seed": seed, "ops": 0, "by_op": {}, "refusals": {}, "errors": [], "committed": [],
              "latency_ms": {}}
    try:
        store = Store(home, db_url=db_url)
    except Exception as e:  # report it instead of leaving the parent waiting for this worker
        result["errors"].append(f"open: {type(e).__name__}: {e}"[:2000])
        out.put(result)
        return
    src = Path(home) / "src" / w
    keyless = Path(home) / "keyless" / w  # an empty key folder: a user who has no signing key
    keyless.mkdir(parents=True, exist_ok=True)
    signed_own: list[str] = []  # unique artifacts of this writer, signed
    unsigned_own: list[str] = []  # registered without a key, not signed yet
    deprecated: dict[str, bool] = {}  # own artifact -> deprecated now
    runs: dict[str, int] = {}  # own run -> index into RUN_STATES of its next state (len: finished)
    commit = result["committed"].append
    names, weights = zip(*MIX.items())

    def new_run() -> str:
        run_id = f"run-{w}-{len(runs)}"
        with store.session() as s:
            s.add(RunRecord(id=run_id, recipe_name="race", recipe_yaml="", recipe_hash="0" * 64, state="queued",
                            dataset_ids=[], metrics={}))
        commit(("run", run_id))
        runs[run_id] = 0
        return run_id

    try:
        home_run = new_run()  # events and this writer's artifacts hang off it
    except Exception as e:
        result["errors"].append(f"run: {type(e).__name__}: {e}"[:2000])
        out.put(result)
        return

    for i in range(ops):
        op = rng.choices(names, weights)[0]
        if op == "sign" and not unsigned_own:
            op = "event"
        if op == "force_promote" and not signed_own:
            op = "promote"
        if op == "deprecate" and not (signed_own or unsigned_own):
            op = "event"
        t0 = time.perf_counter()
        try:
            if op == "ingest":
                if rng.random() < 0.5:
                    k = rng.randrange(N_SHARED_ROWSETS)
                    rec, _ = ingest_rows(store, _rows(f"shared{k}"), name=f"shared-{rng.randrange(3)}")
                    commit(("dataset", rec.id, f"shared{k}"))
                else:
                    name = f"{w}-{i}"
                    rec, _ = ingest_rows(store, _rows(name), name=name)
                    commit(("dataset", rec.id, name))
            elif op == "register":
                shared = rng.random() < 0.25
                tag = f"shared{rng.randrange(N_SHARED_ADAPTERS)}" if shared else f"{w}-{i}"
                payload = hashlib.sha256(tag.encode()).digest() * 8
                d = _adapter_dir(src, tag, payload)
                sign_now = shared or rng.random() < 0.5
                if sign_now:
                    art, _ = register_adapter(store, d, base_id=BASE_ID, method="lora", run_id=home_run,
                                              dataset_ids=[], recipe_hash=None)
                else:
                    with _Keyless(keyless):
                        art, _ = register_adapter(store, d, base_id=BASE_ID, method="lora", run_id=home_run,
                                                  dataset_ids=[], recipe_hash=None)
                commit(("artifact", art.id, bool(art.signature)))
                if not shared:
                    (signed_own if art.signature else unsigned_own).append(art.id)
            elif op == "sign":
                art_id = unsigned_own.pop(rng.randrange(len(unsigned_own)))
                art, changed = sign_artifact(store, art_id)
                commit(("signature", art_id, art.signature["key_id"]))
                signed_own.append(art_id)
            elif op == "promote":
                mv = promote(store, rng.choice(gated), rng.choice(ALIASES))
                commit(("move", mv.seq, mv.name, mv.stage, mv.action, mv.from_artifact, mv.to_artifact))
            elif op == "force_promote":
                mv = promote(store, rng.choice(signed_own), rng.choice(ALIASES), force=True,
                             reason=f"race {w} {i}")
                commit(("move", mv.seq, mv.name, mv.stage, mv.action, mv.from_artifact, mv.to_artifact))
            elif op == "rollback":
                mv = rollback(store, rng.choice(ALIASES), reason=f"race {w} {i}")
                commit(("move", mv.seq, mv.name, mv.stage, mv.action, mv.from_artifact, mv.to_artifact))
            elif op == "deprecate":
                art_id = rng.choice(signed_own + unsigned_own)
                undo = deprecated.get(art_id, False)
                deprecate(store, art_id, sunset=None if undo else SUNSET, reason=f"race {w} {i}", undo=undo)
                deprecated[art_id] = not undo
                commit(("deprecation", art_id, not undo))
            elif op == "event":
                nonce = f"{w}-{i}"
                store.add_run_event(home_run, "bench", nonce=nonce)
                commit(("event", home_run, nonce))
            elif op == "run":
                run_id = next((r for r, k in runs.items() if k < len(RUN_STATES) and r != home_run), None)
                if run_id is None:
                    run_id = new_run()
                else:
                    state = RUN_STATES[runs[run_id]]
                    store.transition_run(run_id, state)
                    runs[run_id] += 1
                    commit(("transition", run_id, state))
        except StateError as e:  # already points there / nothing to roll back to: a correct refusal
            result["refusals"][op] = result["refusals"].get(op, 0) + 1
            if op == "deprecate":  # a refusal changes nothing; it must not happen here (we track the state)
                result["errors"].append(f"{op}: unexpected refusal: {e}"[:2000])
        except Exception as e:  # anything else is a defect
            result["errors"].append(f"{op}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"[:2000])
        result["latency_ms"].setdefault(op, []).append((time.perf_counter() - t0) * 1000)
        result["by_op"][op] = result["by_op"].get(op, 0) + 1
        result["ops"] += 1
        if counter is not None:
            with counter.get_lock():
                counter.value += 1
    result["final_runs"] = {r: (RUN_STATES[k - 1] if k else "queued") for r, k in runs.items()}
    result["final_deprecated"] = deprecated
    store.engine.dispose()
    out.put(result)


# -- checking -------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_alias_chains(store) -> dict:
    """Every alias's history: each move's from = the previous move's to, no no-op moves, rollbacks land
    where the history says, `at` never runs backwards, and the alias points at its last move's target."""
    from sqlalchemy import select

    from tuneops.store.schema import AliasMove, AliasRecord

    report = {"moves": 0, "inconsistent_moves": 0, "problems": []}
    with store.session(write=False) as s:
        aliases = {(a.name, a.stage): a.artifact_id for a in s.scalars(select(AliasRecord))}
        moved = {(m.name, m.stage) for m in s.scalars(select(AliasMove))}
    for name, stage in sorted(set(aliases) | moved):
        moves = store.alias_history(name, stage)
        report["moves"] += len(moves)
        stack: list[str] = []
        prev_to, prev_at = None, None
        for mv in moves:
            bad = []
            if mv.from_artifact != prev_to:
                bad.append(f"from {mv.from_artifact} but previous to {prev_to}")
            if mv.from_artifact == mv.to_artifact:
                bad.append("no-op move")
            if mv.action == "promote":
                stack.append(mv.to_artifact)
            else:
                want = stack[-2] if len(stack) >= 2 else None
                if mv.to_artifact != want:
                    bad.append(f"rollback to {mv.to_artifact}, history gives {want}")
                if stack:
                    stack.pop()
            at = mv.at if mv.at.tzinfo else mv.at.replace(tzinfo=timezone.utc)
            if prev_at is not None and at < prev_at:
                bad.append("at runs backwards")
            if bad:
                report["inconsistent_moves"] += 1
                report["problems"].append(f"{name}@{stage} seq {mv.seq}: " + "; ".join(bad))
            prev_to, prev_at = mv.to_artifact, at
        if aliases.get((name, stage)) != prev_to:
            report["inconsistent_moves"] += 1
            report["problems"].append(f"{name}@{stage} points at {aliases.get((name, stage))}, "
                                      f"last move says {prev_to}")
    return report


def check_store(home: Path, db_url: str | None, results: list[dict]) -> dict:
    """Lost: a write some process saw commit that is not in the store (or not as it committed it).
    Corrupted: an artifact whose files, record or signature do not verify, a dataset whose blobs do not
    match its id, a ledger chain that does not verify, an alias history that is not a chain."""
    from sqlalchemy import func, select

    from tuneops.data.ingest import load_manifest, load_rows
    from tuneops.release.registry import verify_signature
    from tuneops.store import Store, ledger
    from tuneops.store.ids import canonical_json, content_id, sha256_bytes
    from tuneops.store.schema import (
        ArtifactRecord, AuditEvent, DatasetName, DatasetRecord, RunEvent, RunRecord,
    )

    store = Store(home, db_url=db_url)
    lost: list[str] = []
    corrupted: list[str] = []
    committed = [c for r in results for c in r["committed"]]
    kinds: dict[str, list[tuple]] = {}
    for c in committed:
        kinds.setdefault(c[0], []).append(c)

    with store.session(write=False) as s:
        artifacts = {a.id: a for a in s.scalars(select(ArtifactRecord))}
        datasets = {d.id: d for d in s.scalars(select(DatasetRecord))}
        names = {(n.name, n.dataset_id) for n in s.scalars(select(DatasetName))}
        runs = {r.id: r for r in s.scalars(select(RunRecord))}
        audit = [(e.action, e.record_id, e.details) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
        bench_events: dict[str, int] = {}
        state_events: dict[str, list[str]] = {}
        for ev in s.scalars(select(RunEvent).order_by(RunEvent.seq)):
            if ev.type == "bench":
                bench_events[ev.payload.get("nonce")] = bench_events.get(ev.payload.get("nonce"), 0) + 1
            elif ev.type == "state":
                state_events.setdefault(ev.run_id, []).append(ev.payload.get("to"))
        moves = {m.seq: m for m in s.scalars(select(ledger.AliasMove))}
        for obj in list(artifacts.values()) + list(datasets.values()) + list(runs.values()) + list(moves.values()):
            s.expunge(obj)
        n_audit = s.scalar(select(func.count()).select_from(AuditEvent))
    audit_count: dict[tuple[str, str], int] = {}
    for action, record_id, _ in audit:
        audit_count[(action, record_id)] = audit_count.get((action, record_id), 0) + 1

    # datasets and their names
    for _, ds_id, name in kinds.get("dataset", []):
        if ds_id not in datasets:
            lost.append(f"dataset {ds_id} ({name})")
    for ds_id, ds in datasets.items():
        try:
            manifest = load_manifest(store, ds)
            if content_id("ds", sha256_bytes(canonical_json(manifest))) != ds_id:
                corrupted.append(f"dataset {ds_id}: its manifest does not hash to its id")
            if len(load_rows(store, ds)) != ds.num_rows:
                corrupted.append(f"dataset {ds_id}: rows blob does not hold {ds.num_rows} rows")
        except Exception as e:  # noqa: BLE001
            corrupted.append(f"dataset {ds_id}: unreadable ({type(e).__name__}: {e})")
        if audit_count.get(("dataset.ingest", ds_id), 0) != 1:
            corrupted.append(f"dataset {ds_id}: {audit_count.get(('dataset.ingest', ds_id), 0)} ingest audit events")
    linked = {(c[2], c[1]) for c in kinds.get("dataset", []) if not c[2].startswith("shared")}
    for name, ds_id in linked:
        if (name, ds_id) not in names:
            lost.append(f"dataset name {name} -> {ds_id}")

    # artifacts: files re-hashed from scratch, record matching its files, signature, audit trail
    signed_ids = {c[1] for c in kinds.get("signature", [])} | {c[1] for c in kinds.get("artifact", []) if c[2]}
    for _, art_id, _ in kinds.get("artifact", []):
        if art_id not in artifacts:
            lost.append(f"artifact {art_id}")
    unsigned_left = 0
    for art_id, art in artifacts.items():
        files = (art.lineage or {}).get("files") or {}
        if store.blobs.tree_digest(files) != art.tree or content_id("ad", art.tree) != art_id:
            corrupted.append(f"artifact {art_id}: record does not match its file list")
        tree = store.blobs.tree_path(art.tree)
        for rel, want in files.items():
            f = tree / rel
            if not f.is_file() or _sha256_file(f) != want:
                corrupted.append(f"artifact {art_id}: {rel} missing or changed")
        if art.signature:
            try:
                verify_signature(store, art)
            except Exception as e:  # noqa: BLE001
                corrupted.append(f"artifact {art_id}: signature does not verify ({e})")
        elif art_id in signed_ids:
            lost.append(f"signature of {art_id}")
        else:
            unsigned_left += 1
        if audit_count.get(("artifact.register", art_id), 0) != 1:
            corrupted.append(f"artifact {art_id}: {audit_count.get(('artifact.register', art_id), 0)} "
                             "register audit events")
    for _, art_id, _ in kinds.get("signature", []):
        if audit_count.get(("artifact.sign", art_id), 0) < 1:
            lost.append(f"sign audit event of {art_id}")

    # deprecations: the owner's last committed action is the state, one audit event per action
    for r in results:
        for art_id, dep in r.get("final_deprecated", {}).items():
            if art_id in artifacts and bool(artifacts[art_id].deprecation) != dep:
                lost.append(f"deprecation state of {art_id} (expected {'deprecated' if dep else 'not deprecated'})")
    dep_actions: dict[str, int] = {}
    for _, art_id, _ in kinds.get("deprecation", []):
        dep_actions[art_id] = dep_actions.get(art_id, 0) + 1
    for art_id, n in dep_actions.items():
        got = audit_count.get(("artifact.deprecate", art_id), 0) + audit_count.get(("artifact.undeprecate", art_id), 0)
        if got != n:
            lost.append(f"deprecation audit events of {art_id}: {got} of {n}")

    # alias moves: each committed move is there, as committed, with its audit event
    for _, seq, name, stage, action, frm, to in kinds.get("move", []):
        m = moves.get(seq)
        if m is None:
            lost.append(f"alias move seq {seq}")
        elif (m.name, m.stage, m.action, m.from_artifact, m.to_artifact) != (name, stage, action, frm, to):
            corrupted.append(f"alias move seq {seq} differs from what its writer committed")
    per_alias_moves: dict[str, int] = {}
    for m in moves.values():
        per_alias_moves[f"{m.name}@{m.stage}"] = per_alias_moves.get(f"{m.name}@{m.stage}", 0) + 1
    for alias, n in per_alias_moves.items():
        got = sum(audit_count.get((f"alias.{a}", alias), 0) for a in ("promote", "rollback"))
        if got != n:
            corrupted.append(f"{alias}: {n} moves but {got} alias audit events")

    # runs: created, every transition as committed, events exactly once
    for _, run_id in kinds.get("run", []):
        if run_id not in runs:
            lost.append(f"run {run_id}")
    for r in results:
        for run_id, state in r.get("final_runs", {}).items():
            if run_id in runs and runs[run_id].state != state:
                lost.append(f"run {run_id} is {runs[run_id].state}, its writer left it {state}")
    want_transitions: dict[str, list[str]] = {}
    for _, run_id, state in kinds.get("transition", []):
        want_transitions.setdefault(run_id, []).append(state)
    for run_id, states in want_transitions.items():
        if state_events.get(run_id, []) != states:
            lost.append(f"run {run_id}: state events {state_events.get(run_id)} != committed {states}")
    for _, _, nonce in kinds.get("event", []):
        n = bench_events.get(nonce, 0)
        if n != 1:
            (lost if n == 0 else corrupted).append(f"run event {nonce}: stored {n} times")

    # the ledger's hash chains and the alias histories
    chains = ledger.verify_all(store)
    for rep in chains:
        if not rep.ok:
            corrupted.append(rep.summary)
    alias_report = check_alias_chains(store)
    corrupted += alias_report["problems"]
    store.engine.dispose()
    return {
        "committed_writes": len(committed),
        "committed_by_kind": {k: len(v) for k, v in sorted(kinds.items())},
        "lost": len(lost), "corrupted": len(corrupted), "lost_examples": lost[:10],
        "corrupted_examples": corrupted[:10],
        "artifacts": len(artifacts), "unsigned_artifacts_left": unsigned_left, "datasets": len(datasets),
        "audit_entries": n_audit,
        "ledger": {rep.chain: {"ok": rep.ok, "entries": rep.entries, "signed_by": rep.signed_by,
                               "warnings": rep.warnings, "problem": rep.summary if not rep.ok else None}
                   for rep in chains},
        "alias_moves": alias_report["moves"], "inconsistent_moves": alias_report["inconsistent_moves"],
    }


def _shared_versions(results: list[dict]) -> dict[str, int]:
    ids: dict[str, set] = {}
    for r in results:
        for c in r["committed"]:
            if c[0] == "dataset" and c[2].startswith("shared"):
                ids.setdefault(c[2], set()).add(c[1])
    return {k: len(v) for k, v in sorted(ids.items())}


def run_workload(home: Path, db_url: str | None = None, *, writers: int = 8, ops: int = 500,
                 on_progress=None, timeout_s: float = 3600) -> dict:
    """Prepare a store, run ``writers`` processes × ``ops`` writes on it, check it. ``on_progress(done)``
    is called about every 0.2 s with the number of operations finished so far."""
    gated = prepare(home, db_url)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    counter = ctx.Value("i", 0)
    procs = [ctx.Process(target=_worker, args=(str(home), db_url, gated, ops, seed, out, counter))
             for seed in range(writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results: list[dict] = []
    deadline = time.monotonic() + timeout_s
    import queue as _queue

    while len(results) < writers:
        try:
            results.append(out.get(timeout=0.2))
        except _queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{writers - len(results)} writers did not finish in {timeout_s} s")
            if all(not p.is_alive() for p in procs) and out.empty():
                raise RuntimeError(f"{writers - len(results)} writers died without a result "
                                   f"(exit codes {[p.exitcode for p in procs]})")
        if on_progress:
            on_progress(counter.value)
    for p in procs:
        p.join(timeout=60)
    seconds = time.perf_counter() - t0
    if on_progress:
        on_progress(counter.value)
    checked = check_store(home, db_url, results)
    checked["shared_rowset_versions"] = _shared_versions(results)
    errors = [e for r in results for e in r["errors"]]
    lat: dict[str, list[float]] = {}
    for r in results:
        for op, xs in r["latency_ms"].items():
            lat.setdefault(op, []).extend(xs)
    by_op: dict[str, int] = {}
    refusals: dict[str, int] = {}
    for r in results:
        for k, v in r["by_op"].items():
            by_op[k] = by_op.get(k, 0) + v
        for k, v in r["refusals"].items():
            refusals[k] = refusals.get(k, 0) + v
    return {
        "writers": writers, "ops_per_writer": ops, "ops": sum(r["ops"] for r in results),
        "seconds": round(seconds, 1), "by_op": dict(sorted(by_op.items())),
        "expected_refusals": dict(sorted(refusals.items())),
        "errors": errors, "locked_errors": sum("locked" in e.lower() for e in errors),
        "op_latency_ms_under_contention": {op: {"median": round(statistics.median(xs), 1),
                                                "p95": round(_pct(xs, 95), 1)} for op, xs in sorted(lat.items())},
        **checked,
    }


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def measure_latency(home: Path, db_url: str | None = None, *, n: int = 100, on_progress=None) -> dict:
    """Promote / rollback latency on an otherwise idle store, one process: ``n`` promotions of a gated,
    signed artifact over another and ``n`` rollbacks back, each timed end to end (checks included)."""
    from tuneops.release.registry import promote, rollback
    from tuneops.store import Store

    a, b = prepare(home, db_url)[:2]
    store = Store(home, db_url=db_url)
    promote(store, a, "lat@production")
    promote_ms, rollback_ms = [], []
    for i in range(n):
        t0 = time.perf_counter()
        promote(store, b, "lat@production")
        promote_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        rollback(store, "lat@production", reason="latency")
        rollback_ms.append((time.perf_counter() - t0) * 1000)
        if on_progress:
            on_progress(i + 1)
    chains = check_alias_chains(store)
    store.engine.dispose()
    return {"n": n, "promote_ms_median": round(statistics.median(promote_ms), 2),
            "promote_ms_p95": round(_pct(promote_ms, 95), 2),
            "rollback_ms_median": round(statistics.median(rollback_ms), 2),
            "rollback_ms_p95": round(_pct(rollback_ms, 95), 2),
            "inconsistent_moves": chains["inconsistent_moves"]}
