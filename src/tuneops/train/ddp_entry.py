"""The program every rank of a launched run executes: ``python -m tuneops.train.ddp_entry JOB.json``
(started by ``accelerate launch``, see train/launch.py).

Each rank reads the job, trains with :func:`tuneops.train.sft.train` (the HF Trainer joins the
process group accelerate set up: DDP, DeepSpeed or FSDP), and only rank 0 writes what outlives the
run: the artifact files in the job's ``out_dir``, metrics lines in ``metrics.jsonl`` and
``result.json``. Other ranks save into a throwaway folder next to it, removed afterwards. This
module never opens the store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path


def _rows(path: str | None) -> list[dict] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _Metrics:
    """Rank 0's metrics stream: one JSON object a line, flushed at once (the launcher tails it)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def emit(self, event: str, **fields) -> None:
        self.f.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _rank() -> int:
    # Read from the environment the launcher set: creating accelerate's PartialState here, before the
    # Trainer's TrainingArguments (which passes cpu=True on CPU), would fix the shared state wrongly.
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name) is not None:
            return int(os.environ[name])
    return 0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run(job: dict) -> None:
    from tuneops.train.recipe import LoraSpec, ObjectiveSpec, TrainSpec
    from tuneops.train.sft import train

    rank = _rank()
    main = rank == 0
    final_dir = Path(job["out_dir"])
    # Ranks share the parent folder, so the Trainer's output_dir (``<parent>/trainer``) is one folder.
    out_dir = final_dir if main else final_dir.parent / f".rank{rank}-{final_dir.name}"
    metrics = _Metrics(Path(job["metrics"])) if main else None
    objective = ObjectiveSpec.model_validate(job["objective"])
    inputs: dict = {}
    if job.get("teacher_path"):
        inputs["teacher_path"] = Path(job["teacher_path"])
    if job.get("teacher_adapter"):
        inputs["teacher_adapter"] = Path(job["teacher_adapter"])
    if job.get("teacher_tokenizer"):
        inputs["teacher_tokenizer"] = Path(job["teacher_tokenizer"])
    if objective.kind in ("grpo", "rloo") and objective.reward:
        from tuneops.train.rewards import load_reward

        inputs["reward_fn"] = load_reward(objective.reward, base_dir=Path(job["template_dir"]) if
                                          job.get("template_dir") else None)

    def on_log(entry: dict) -> None:
        metrics.emit("log", **entry)

    def on_step(step: int, total: int) -> None:
        metrics.emit("step", step=step, total=total)

    def on_preflight(report: dict, example: str) -> None:
        metrics.emit("preflight", report=report, example=example)

    result = train(Path(job["base_path"]), _rows(job["rows"]), method=LoraSpec.model_validate(job["method"]),
                   spec=TrainSpec.model_validate(job["spec"]), objective=objective, out_dir=out_dir,
                   base_id=job["base_id"], eval_rows=_rows(job.get("eval_rows")),
                   replay_rows=_rows(job.get("replay_rows")), chat_template=job.get("chat_template"),
                   template_dir=Path(job["template_dir"]) if job.get("template_dir") else None,
                   on_preflight=on_preflight if main else None, on_log=on_log if main else None,
                   on_step=on_step if main else None, **inputs)

    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()  # the Trainer's, already set up
    if state.is_main_process != main:
        raise RuntimeError(f"rank {rank} from the environment disagrees with accelerate "
                           f"(process_index {state.process_index})")
    mine = {"rank": rank, "local_rank": state.local_process_index, "host": socket.gethostname(),
            "steps": result.steps, "tokens": result.tokens, "peak_memory_mb": result.peak_memory_mb,
            "train_seconds": round(result.train_seconds, 3)}
    if dist.is_available() and dist.is_initialized():
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        backend = str(dist.get_backend())
    else:
        ranks, backend = [mine], None
    if main:
        tokens = sum(r["tokens"] for r in ranks)
        extra = dict(result.extra)
        extra["distributed"] = {
            "launcher": "accelerate", "strategy": job["strategy"],
            "distributed_type": str(state.distributed_type).split(".")[-1],
            "configured_type": job["distributed_type"], "backend": backend, "world_size": state.num_processes,
            "num_machines": job["launcher"].get("num_machines", 1), "ranks": ranks,
        }
        out = {
            "adapter_dir": str(final_dir), "steps": result.steps, "train_seconds": result.train_seconds,
            "losses": result.losses, "eval_losses": result.eval_losses,
            "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
            "tokens": tokens,
            "tokens_per_s": round(tokens / result.train_seconds, 1) if result.train_seconds > 0 else 0.0,
            "peak_memory_mb": max(r["peak_memory_mb"] for r in ranks), "artifact_bytes": result.artifact_bytes,
            "template_sha256": result.template_sha256, "preflight": result.preflight,
            "stopped_early": result.stopped_early, "extra": extra,
        }
        _atomic_write(Path(job["result"]), json.dumps(out, default=str))
        metrics.close()
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
    state.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tuneops.train.ddp_entry JOB.json (started by accelerate launch)", file=sys.stderr)
        return 2
    run(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
