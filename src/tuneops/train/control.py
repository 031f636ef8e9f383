"""What keeps a training run from being lost: atomic, verified checkpoints with exact resume, NaN and
spike guards, a graceful stop (SIGTERM / SIGINT / pause) after a checkpointed step, and deterministic
mode. The pipeline builds a :class:`RunControl` and every objective's trainer runs through
:func:`run_trainer`; the train layer never touches the store (records go out through callbacks).

HF Trainer writes ``checkpoint-N`` in place, resumes from the highest number even when it is
half-written, and silently starts a fresh optimizer when ``optimizer.pt`` is missing (see
HF-STACK-NOTES). Here a checkpoint counts only once complete: after the Trainer wrote it, every file is
fsynced and hashed, and a marker (``tuneops-checkpoint.json``, the manifest of sha256s) is written
atomically last. Resume takes the newest checkpoint whose marker exists and whose files still match
it; ``trainer.train(resume_from_checkpoint=…)`` then restores weights, optimizer, scheduler, RNG
states and the data position (bit-exact on CPU, tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneops.errors import RunStopped, TuneopsError

MARKER = "tuneops-checkpoint.json"
PREFIX = "checkpoint-"
REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


class GuardTripped(TuneopsError):
    """Too many bad steps (non-finite loss or gradients, loss spikes): the run failed on purpose."""

    exit_code = 4


# -- files ------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _manifest_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(ckpt: Path, *, step: int, epoch: float | None, metrics: dict) -> dict:
    """Make a checkpoint the Trainer just wrote count: fsync and hash every file, then write the marker
    atomically (temp file, fsync, rename, fsync the folder). Returns the marker's content."""
    ckpt = Path(ckpt)
    missing = [n for n in REQUIRED if not (ckpt / n).exists()]
    if missing:
        raise TuneopsError(f"checkpoint {ckpt} lacks {', '.join(missing)}; it does not count",
                           hint="this is a bug in how the trainer saved it; the previous checkpoint stays the one "
                                "to resume from")
    files = {}
    for p in sorted(ckpt.rglob("*")):
        if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp"):
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
            files[str(p.relative_to(ckpt))] = _sha256(p)
    for d in {p.parent for p in ckpt.rglob("*")} | {ckpt}:
        _fsync_dir(d)
    marker = {"step": step, "epoch": epoch, "files": files, "digest": _manifest_digest(files), "metrics": metrics}
    tmp = ckpt / (MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(marker, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / MARKER)
    _fsync_dir(ckpt)
    return marker


def read_marker(ckpt: Path) -> dict | None:
    try:
        return json.loads((Path(ckpt) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint is complete and every file matches its marker; else why not."""
    marker = read_marker(ckpt)
    if marker is None:
        return "no completion marker (it was being written when the run stopped)"
    files = marker.get("files") or {}
    if _manifest_digest(files) != marker.get("digest"):
        return "its marker does not match its own digest"
    for rel, digest in files.items():
        p = Path(ckpt) / rel
        if not p.exists():
            return f"{rel} is missing"
        if _sha256(p) != digest:
            return f"{rel} changed since it was saved"
    return None


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX):])
    except ValueError:
        return -1


def local_checkpoints(root: Path) -> list[Path]:
    """checkpoint-N folders under ``root``, newest (highest N) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and _step_of(p) >= 0]
    return sorted(found, key=_step_of, reverse=True)


# -- fsspec copies ----------------------------------------------------------------------------
def upload(ckpt: Path, url: str) -> str:
    """Copy a sealed checkpoint to ``url``/checkpoint-N (any fsspec filesystem); the marker goes last,
    so a copy without one is incomplete there too. Returns the copy's URL."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    dest = f"{root.rstrip('/')}/{ckpt.name}"
    marker = read_marker(ckpt) or {}
    for rel in marker.get("files", {}):
        target = f"{dest}/{rel}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(ckpt / rel), target)
    fs.put_file(str(ckpt / MARKER), f"{dest}/{MARKER}")
    return f"{url.rstrip('/')}/{ckpt.name}"


def download_newest(url: str, into: Path) -> Path | None:
    """Fetch the newest complete checkpoint under ``url`` into ``into``; None if there is none."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return None
    for name in sorted((n for n in names if n.startswith(PREFIX) and _step_of(Path(n)) >= 0),
                       key=lambda n: _step_of(Path(n)), reverse=True):
        src = f"{root.rstrip('/')}/{name}"
        if not fs.exists(f"{src}/{MARKER}"):
            continue
        dest = Path(into) / name
        tmp = Path(into) / (name + ".download")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fs.get_file(f"{src}/{MARKER}", str(tmp / MARKER))
        for rel in (read_marker(tmp) or {}).get("files", {}):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{src}/{rel}", str(tmp / rel))
        if verify(tmp) is None:
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            return dest
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def find_resume(root: Path, location: str | None = None,
                on_skip: Callable[[Path, str], None] | None = None) -> Path | None:
    """The newest complete, verified checkpoint under ``root`` (fetched from ``location`` when none is
    here); incomplete or corrupted ones are reported through ``on_skip`` and moved aside."""
    for ckpt in local_checkpoints(root):
        why = verify(ckpt)
        if why is None:
            return ckpt
        if on_skip:
            on_skip(ckpt, why)
        aside = ckpt.with_name(f"incomplete-{ckpt.name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(ckpt, aside)
    if location:
        return download_newest(location, Path(root))
    return None


# -- the control object --------------------------------------------------------------------------
@dataclass
class RunControl:
    """Everything the pipeline injects into a trainer beyond data and model.

    ``on_checkpoint(record)`` gets each sealed checkpoint ({step, epoch, path, location, files, digest,
    metrics}); ``on_checkpoint_removed(step)`` each one retention deletes; ``on_guard(event)`` each
    guard strike; ``on_eval({step, eval_loss, ...})`` each held-out evaluation; ``stop_requested()``
    returns "paused"/"interrupted" (or None) and is polled after every step. ``quarantined`` holds
    fingerprints of batches a guard rejected (restored on resume, so a rollback never replays them)."""

    checkpoint_dir: Path
    every: int | None = None
    epoch_end: bool = True
    keep: int = 2
    location: str | None = None
    resume_from: Path | None = None
    select: str = "last"  # or "best": register the kept checkpoint with the lowest held-out loss
    guards: object | None = None  # GuardSpec
    on_checkpoint: Callable[[dict], None] | None = None
    on_checkpoint_removed: Callable[[int], None] | None = None
    on_guard: Callable[[dict], None] | None = None
    on_eval: Callable[[dict], None] | None = None
    stop_requested: Callable[[], str | None] | None = None
    quarantined: set[str] = field(default_factory=set)
    strikes: int = 0
    inject_nan_steps: frozenset[int] = frozenset()  # fault injection (tests, benchmarks/fault_injection.py)
    kill_at_step: int | None = None  # fault injection: SIGKILL this process after that step
    kill_during_save: int | None = None  # fault injection: SIGKILL while checkpoint N is half-written
    selected: dict | None = None  # the checkpoint select: best picked
    _signal: str | None = None
    _last_saved: int | None = None
    _lr_factor: float = 1.0
    _rollback_to: Path | None = None

    def request_stop(self, state: str) -> None:
        self._signal = self._signal or state

    def pending_stop(self) -> str | None:
        if self._signal:
            return self._signal
        return self.stop_requested() if self.stop_requested else None


def batch_fingerprint(inputs: dict) -> str:
    ids = inputs.get("input_ids")
    if ids is None:
        ids = next((v for v in inputs.values() if hasattr(v, "cpu")), None)
    if ids is None:
        return "unknown"
    return hashlib.sha256(ids.detach().cpu().numpy().tobytes()).hexdigest()[:16]


class Guard:
    """Per-micro-batch loss check and per-step gradient check; see GuardSpec."""

    def __init__(self, control: RunControl):
        self.control = control
        self.spec = control.guards
        self.recent: list[float] = []
        self.step = 0

    def _strike(self, kind: str, value: float | None, fingerprint: str) -> None:
        c = self.control
        c.strikes += 1
        c.quarantined.add(fingerprint)
        action = getattr(self.spec, "on_nan", "skip")
        event = {"kind": kind, "step": self.step, "value": value, "batch": fingerprint, "strike": c.strikes,
                 "max_strikes": getattr(self.spec, "max_strikes", 3), "action": action}
        if getattr(self.spec, "lr_factor", None):
            c._lr_factor *= self.spec.lr_factor
            event["lr_factor"] = c._lr_factor
        if c.on_guard:
            c.on_guard(event)
        if c.strikes >= getattr(self.spec, "max_strikes", 3):
            raise GuardTripped(f"training stopped after {c.strikes} bad steps (last: {kind} at step {self.step}, "
                               f"batch {fingerprint})",
                               hint="see `tuneops runs events RUN` for each strike; lower the learning rate or "
                                    "inspect the quarantined batches")
        if action == "fail":
            raise GuardTripped(f"{kind} at step {self.step} (batch {fingerprint}); guards.on_nan is 'fail'",
                               hint="set train.guards.on_nan: skip or rollback to continue past bad batches")
        if action == "rollback":
            c._rollback_to = True  # resolved to the newest complete checkpoint by run_trainer

    def check_loss(self, loss, inputs: dict):
        """The loss to backpropagate: a zero (no update from this micro-batch) when it is bad."""
        import torch

        fp = None
        if self.control.quarantined:
            fp = batch_fingerprint(inputs)
            if fp in self.control.quarantined:  # a rejected batch met again (after a rollback or a resume)
                return loss * 0 if torch.isfinite(loss).all() else torch.zeros((), device=loss.device,
                                                                                requires_grad=True)
        value = float(loss.detach().float().item())
        bad = None
        if not math.isfinite(value):
            bad = "non-finite loss"
        elif self.spec is not None and self.spec.spike_factor and len(self.recent) >= self.spec.spike_min_steps:
            med = statistics.median(self.recent[-self.spec.spike_window:])
            if med > 0 and value > self.spec.spike_factor * med:
                bad = f"loss spike ({value:.4g} > {self.spec.spike_factor} × median {med:.4g})"
        if bad is None:
            self.recent.append(value)
            return loss
        self._strike(bad, value if math.isfinite(value) else None, fp or batch_fingerprint(inputs))
        return torch.zeros((), device=loss.device, requires_grad=True)

    def check_grads(self, model) -> bool:
        """True (and the gradients dropped, so the optimizer step changes nothing) when any is non-finite."""
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or all(torch.isfinite(g).all() for g in grads):
            return False
        for p in model.parameters():
            p.grad = None
        self._strike("non-finite gradient", None, f"step-{self.step}")
        return True


def _metrics_at(state, step: int) -> dict:
    out = {}
    for entry in state.log_history:
        if entry.get("step") != step:
            continue
        if "loss" in entry:
            out["train_loss"] = entry["loss"]
        for k in ("eval_loss", "eval_mean_token_accuracy"):
            if k in entry:
                out[k.replace("eval_mean_token_accuracy", "eval_token_accuracy")] = entry[k]
    return out


def callbacks(control: RunControl, guard: Guard) -> list:
    """The TrainerCallbacks: when to save, sealing and retention, guards, stops, fault injection."""
    from transformers import TrainerCallback

    class _Checkpoints(TrainerCallback):
        def on_step_begin(self, args, state, control_, **kw):
            guard.step = state.global_step + 1
            if control._lr_factor != 1.0:
                trainer_sched = kw.get("lr_scheduler")
                if trainer_sched is not None and hasattr(trainer_sched, "base_lrs"):
                    if not hasattr(trainer_sched, "_tuneops_base"):
                        trainer_sched._tuneops_base = list(trainer_sched.base_lrs)
                    trainer_sched.base_lrs = [b * control._lr_factor for b in trainer_sched._tuneops_base]

        def on_pre_optimizer_step(self, args, state, control_, model=None, **kw):
            if model is not None:
                guard.check_grads(model)

        def on_step_end(self, args, state, control_, **kw):
            step = state.global_step
            if control.kill_at_step is not None and step == control.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if control.every and step % control.every == 0:
                control_.should_save = True
            if control._rollback_to is not None:
                control_.should_training_stop = True
            elif control.pending_stop():
                control_.should_save = True  # checkpoint the step just finished, then stop
                control_.should_training_stop = True
            if control_.should_save and control._last_saved == step:
                control_.should_save = False
            if control_.should_save:
                control_.should_evaluate = control_.should_evaluate or bool(args.eval_strategy != "no")

        def on_epoch_end(self, args, state, control_, **kw):
            stopping = control._rollback_to is not None or control.pending_stop()
            if control.epoch_end and control._last_saved != state.global_step and not stopping:
                control_.should_save = True

        def on_save(self, args, state, control_, **kw):
            ckpt = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            if not ckpt.is_dir():
                return
            if control.kill_during_save is not None and state.global_step == control.kill_during_save:
                (ckpt / "optimizer.pt").write_bytes(b"half-written")  # a torn write, then the process dies
                os.kill(os.getpid(), signal.SIGKILL)
            control._last_saved = state.global_step
            metrics = _metrics_at(state, state.global_step)
            marker = seal(ckpt, step=state.global_step, epoch=state.epoch, metrics=metrics)
            location = upload(ckpt, control.location) if control.location else None
            if control.on_checkpoint:
                control.on_checkpoint({"step": state.global_step, "epoch": state.epoch, "path": str(ckpt),
                                       "location": location, "files": marker["files"], "digest": marker["digest"],
                                       "metrics": metrics})
            self._retain(Path(args.output_dir))

        def _retain(self, root: Path):
            complete = [p for p in local_checkpoints(root) if read_marker(p) is not None]
            keep = set(complete[: control.keep])
            scored = [(m["metrics"]["eval_loss"], p) for p in complete
                      if (m := read_marker(p)) and "eval_loss" in m.get("metrics", {})]
            if scored:
                keep.add(min(scored, key=lambda t: t[0])[1])
            newest = complete[0] if complete else None
            for p in local_checkpoints(root):
                if p in keep:
                    continue
                if p not in complete and newest is not None and _step_of(p) > _step_of(newest):
                    continue  # newer than every complete one: never delete what may still be written
                shutil.rmtree(p, ignore_errors=True)
                if p in complete and control.on_checkpoint_removed:
                    control.on_checkpoint_removed(_step_of(p))

    return [_Checkpoints()]


def training_args(control: RunControl | None) -> dict:
    """TrainingArguments overrides: tuneops decides when to save (the callback), HF never rotates."""
    if control is None:
        return {}
    return {"output_dir": str(control.checkpoint_dir), "save_strategy": "no", "save_total_limit": None,
            "save_only_model": False, "ignore_data_skip": False}


@contextlib.contextmanager
def graceful_signals(control: RunControl):
    """While training: SIGTERM / SIGINT ask for a stop after the current step (checkpointed), instead of
    unwinding mid-step; a second signal falls back to the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    first = {}

    def handler(signum, frame):
        import time

        # A supervisor and a worker may both forward the same SIGTERM: a repeat within 3 s is the same request.
        if control._signal and time.monotonic() - first.get("at", 0) < 3.0:
            return
        if control._signal:
            signal.signal(signum, previous[signum])
            old = previous[signum]
            if callable(old):
                old(signum, frame)
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            else:
                raise SystemExit(128 + signum)
            return
        first["at"] = time.monotonic()
        control.request_stop("interrupted:" + signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_trainer(trainer, control: RunControl | None) -> None:
    """``trainer.train()`` under the run control: resumes from ``control.resume_from``, installs the
    graceful signal handlers, rolls back to the newest complete checkpoint when a guard asks (the
    offending batch stays quarantined, so the replay skips it), and raises RunStopped after a
    checkpointed stop."""
    if control is None:
        trainer.train()
        return
    resume = control.resume_from
    with graceful_signals(control):
        while True:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            if control._rollback_to is None:
                break
            control._rollback_to = None
            resume = find_resume(control.checkpoint_dir)
            if resume is None:
                raise GuardTripped("a guard asked to roll back, but the run has no complete checkpoint yet",
                                   hint="set train.checkpoints.every (or guards.on_nan: skip)")
            if control.on_guard:
                control.on_guard({"kind": "rollback", "to_step": _step_of(resume)})
    if control.select == "best":
        _load_best(trainer, control)
    stop = control.pending_stop()
    finished = trainer.state.max_steps and trainer.state.global_step >= trainer.state.max_steps
    if stop and not finished:
        state, _, detail = stop.partition(":")
        reason = {"paused": "paused by the user (tuneops runs pause)",
                  "cancelled": "cancelled by the user (tuneops runs cancel)"}.get(state, f"interrupted by {detail or state}")
        code = 128 + int(getattr(signal, detail, 0)) if state == "interrupted" and detail else (
            130 if state == "cancelled" else 0)
        raise RunStopped(state, f"{reason}; checkpointed at step {trainer.state.global_step}, resume with "
                                f"`tuneops runs resume`", exit_code=code)


def best_checkpoint(root: Path) -> tuple[Path, dict] | None:
    """The complete checkpoint with the lowest held-out loss recorded in its marker."""
    scored = [(m["metrics"]["eval_loss"], p, m) for p in local_checkpoints(root)
              if (m := read_marker(p)) and "eval_loss" in (m.get("metrics") or {}) and verify(p) is None]
    if not scored:
        return None
    _, path, marker = min(scored, key=lambda t: t[0])
    return path, marker


def _load_best(trainer, control: RunControl) -> None:
    best = best_checkpoint(control.checkpoint_dir)
    if best is None:
        if control.on_guard:
            control.on_guard({"kind": "selection", "note": "no checkpoint has a held-out loss; kept the last step's "
                                                           "weights (set train.eval_steps)"})
        return
    path, marker = best
    if marker["step"] != trainer.state.global_step:
        trainer._load_from_checkpoint(str(path))
    control.selected = {"step": marker["step"], "eval_loss": marker["metrics"]["eval_loss"], "path": str(path)}


def wrap_compute_loss(trainer, guard: Guard, control: RunControl) -> None:
    """Route the trainer's loss through the guard (and the NaN fault injection)."""
    inner = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        out = inner(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training:
            return out
        loss, rest = (out[0], out[1]) if return_outputs else (out, None)
        if control.inject_nan_steps and guard.step in control.inject_nan_steps:
            loss = loss * float("nan")
        loss = guard.check_loss(loss, inputs)
        return (loss, rest) if return_outputs else loss

    trainer.compute_loss = compute_loss


def deterministic_setup(seed: int, threads: int | None) -> dict:
    """Deterministic mode: fixed threads, deterministic algorithms, seeded everything. Returns what the
    run should record about the environment."""
    import torch
    from transformers import enable_full_determinism

    torch.set_num_threads(threads or 1)
    enable_full_determinism(seed, warn_only=True)
    return environment()


def environment(threads: int | None = None) -> dict:
    """What affects a run's numbers: library versions, threads (``threads``: what the run will use, when
    it differs from this process's current setting), device."""
    import platform

    import torch

    versions = {}
    for mod in ("torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return {"versions": versions, "python": platform.python_version(), "threads": threads or torch.get_num_threads(),
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "platform": platform.platform(), "cpu_count": os.cpu_count()}
