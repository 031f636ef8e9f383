"""``tuneops runs events | logs | checkpoints | pause | resume``: a run's typed events, its log, the
checkpoints it kept (register one as an artifact), and pausing / resuming it from its newest complete
checkpoint. typer and rich only at import time."""

from __future__ import annotations

import os
from typing import Optional

import typer

from tuneops.cli.render import emit, emit_one, print_json, progress, record_dict, say, status

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
CKPT_COLUMNS = ("step", "epoch", "train_loss", "eval_loss", "eval_token_accuracy", "state", "digest", "location")


def _store():
    from tuneops.store import Store

    return Store.open(os.environ.get("TUNEOPS_HOME"), create=False)


def _fmt(v):
    return round(v, 4) if isinstance(v, float) else v


def register(runs_app: typer.Typer) -> None:
    @runs_app.command("events")
    def runs_events(run_id: str, type_: Optional[list[str]] = typer.Option(
                        None, "--type", help="Only events of this type (repeatable): state, metrics, eval, checkpoint, "
                                             "guard, resume, claimed, preflight, artifact, error…"),
                    as_json: bool = JSON):
        """A run's typed events, oldest first (state changes, metrics, checkpoints, guard strikes, eval…)."""
        store = _store()
        store.get_run(run_id)
        events = [e for e in store.run_events(run_id) if not type_ or e.type in type_]
        rows = [{"seq": e.seq, "at": record_dict(e, ("at",))["at"], "type": e.type, **(e.payload or {})}
                for e in events]
        if as_json:
            print_json(rows)
            return
        emit([{"seq": r["seq"], "at": r["at"], "type": r["type"],
               "details": {k: v for k, v in r.items() if k not in ("seq", "at", "type")} or None} for r in rows],
             as_json=False, title=f"events of {run_id}", columns=("seq", "at", "type", "details"))

    @runs_app.command("logs")
    def runs_logs(run_id: str, tail: int = typer.Option(0, help="Only the last N lines (0: all).")):
        """A run's log: one line per event, like a training log (step, loss, learning rate, grad norm…)."""
        store = _store()
        store.get_run(run_id)
        lines = []
        for e in store.run_events(run_id):
            p = e.payload or {}
            at = f"{e.at:%Y-%m-%d %H:%M:%S}"
            if e.type == "metrics":
                gn = p.get("grad_norm")
                lines.append(f"{at} step {p.get('step')}: loss {p.get('loss', float('nan')):.4f}  lr "
                             f"{p.get('learning_rate', 0):.3g}" + (f"  grad_norm {gn:.4g}" if gn is not None else ""))
            elif e.type == "state":
                lines.append(f"{at} state {p.get('from')} → {p.get('to')}" +
                             (f" ({p['reason']})" if p.get("reason") else ""))
            else:
                detail = " ".join(f"{k}={_fmt(v)}" for k, v in p.items() if k not in ("example", "files")
                                  and not isinstance(v, (dict, list)))
                lines.append(f"{at} {e.type} {detail}".rstrip())
        for line in lines[-tail:] if tail else lines:
            typer.echo(line)
        worker_log = store.runs_dir(run_id) / "worker.log"
        if worker_log.exists():
            typer.echo(f"(the process output of worker-run attempts: {worker_log})")

    @runs_app.command("checkpoints")
    def runs_checkpoints(run_id: str,
                         register: Optional[int] = typer.Option(None, "--register", help="Register the checkpoint at "
                                                                "this step as an artifact (verified first)."),
                         all_: bool = typer.Option(False, "--all", help="Also list checkpoints retention removed."),
                         as_json: bool = JSON):
        """The complete checkpoints a run kept, with step and metrics (train loss, held-out loss and token
        accuracy), like the OpenAI fine-tuning API's checkpoint objects; --register STEP pins one as an artifact."""
        from sqlalchemy import select

        from tuneops.store.schema import CheckpointRecord

        store = _store()
        store.get_run(run_id)
        if register is not None:
            from tuneops.pipeline import register_checkpoint

            artifact, created = register_checkpoint(store, run_id, register)
            emit_one({"artifact": artifact.id, "run": run_id, "step": register, "created": created,
                      "next": f"tuneops eval run {artifact.id} --recipe RECIPE"}, as_json=as_json,
                     title="registered checkpoint")
            return
        with store.session(write=False) as s:
            q = select(CheckpointRecord).where(CheckpointRecord.run_id == run_id)
            recs = [r for r in s.scalars(q.order_by(CheckpointRecord.step)) if all_ or r.state == "complete"]
            rows = [{"step": r.step, "epoch": _fmt(r.epoch), **{k: _fmt(v) for k, v in (r.metrics or {}).items()},
                     "state": r.state, "digest": r.digest[:12] if not as_json else r.digest, "location": r.location,
                     "path": r.path} for r in recs]
        emit(rows, as_json=as_json, title=f"checkpoints of {run_id}",
             columns=None if as_json else CKPT_COLUMNS)

    @runs_app.command("pause")
    def runs_pause(run_id: str, wait: float = typer.Option(120.0, help="Seconds to wait for the checkpoint (0: "
                                                                       "just ask)."),
                   as_json: bool = JSON):
        """Checkpoint a running run after its current step and stop it (state `paused`); `runs resume`
        continues it."""
        from tuneops.store.runs import request_pause

        with status(f"pausing {run_id} (finishing the current step, then a checkpoint)…"):
            run = request_pause(_store(), run_id, wait_s=wait)
        emit_one(record_dict(run, ("id", "state", "error", "updated_at")), as_json=as_json, title=f"run {run_id}")

    @runs_app.command("resume")
    def runs_resume(run_id: str,
                    queue: bool = typer.Option(False, "--queue", help="Put it back in the queue for `tuneops worker` "
                                                                      "instead of running it here."),
                    as_json: bool = JSON):
        """Continue an interrupted or paused run from its newest complete checkpoint (mid-epoch, from the
        exact batch); a run whose process died is reconciled first."""
        from tuneops.store.runs import requeue_for_resume

        store = _store()
        run = requeue_for_resume(store, run_id)
        if queue:
            emit_one(record_dict(run, ("id", "state", "priority")), as_json=as_json, title="queued for resume")
            return
        from tuneops.cli.main import _print_outcome, _quiet_hf
        from tuneops.pipeline import execute_run

        _quiet_hf()
        with progress() as p:
            outcome = execute_run(store, run_id, progress=p)
        _print_outcome(outcome, as_json)
        if not as_json:
            say(f"resumed run {run_id}")
