"""Training on several processes, GPUs or machines through an existing engine: `accelerate launch`.

A recipe's ``launcher:`` section (:class:`~tuneops.train.recipe.LauncherSpec`) becomes an accelerate
config file in accelerate's own YAML format (what ``accelerate config`` writes): DDP
(``MULTI_GPU``, or ``MULTI_CPU`` with gloo on a machine without CUDA), DeepSpeed ZeRO-2 / ZeRO-3
(``DEEPSPEED``) or FSDP (``FSDP``). :func:`train_distributed` writes the job (rows, specs) and that
config into a work folder and runs ``python -m accelerate.commands.launch --config_file CFG -m
tuneops.train.ddp_entry JOB``. Every rank runs the ordinary :func:`tuneops.train.sft.train` (the HF
Trainer picks the process group up from the environment accelerate sets); only rank 0 writes the
artifact files, appends metrics to ``metrics.jsonl`` and writes ``result.json``. This process tails
that file (calling ``on_log`` / ``on_step`` / ``on_preflight`` here, in the caller's thread, so a
store write in a callback happens in the process that owns the store) and returns rank 0's result.
Nothing under the launch touches the store.

On CPU, accelerate's own ``MULTI_CPU`` launcher goes through ``mpirun`` with a hostfile; without
one, tuneops asks accelerate for its torchrun path (``--multi_gpu``) and the ranks, being CPU-only
(``use_cpu``), form a gloo process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

import yaml

from tuneops.errors import InvalidInput, TuneopsError
from tuneops.train.recipe import LauncherSpec, LoraSpec, ObjectiveSpec, TrainSpec

__all__ = ["LaunchFailed", "accelerate_config", "write_config", "check_launcher", "train_distributed",
           "launch_command", "deepspeed_available"]

GPU_ONLY = {"zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP"}
LOG_TAIL_LINES = 40


class LaunchFailed(TuneopsError):
    """`accelerate launch` exited non-zero, timed out, or left no result: the message carries the tail
    of the launch log (every rank's output) and the log's path."""

    http_status = 500
    error_type = "server_error"


def deepspeed_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def _refuse(field: str, message: str, hint: str) -> InvalidInput:
    return InvalidInput(f"launcher.{field}: {message}", hint=hint)


def accelerate_config(spec: LauncherSpec, *, use_cpu: bool, train: TrainSpec | None = None,
                      machine_rank: int = 0, main_process_ip: str | None = None,
                      main_process_port: int | None = None) -> dict:
    """``spec`` as an accelerate config (the mapping ``accelerate config`` saves as YAML).

    ``use_cpu``: the processes run on CPU (gloo); DeepSpeed and FSDP are refused there. ``train``
    fills the DeepSpeed fields that must agree with the Trainer (gradient accumulation, clipping).
    Combinations that cannot work raise :class:`InvalidInput` naming the ``launcher.*`` field."""
    strategy = spec.strategy
    if strategy in GPU_ONLY and use_cpu:
        raise _refuse("strategy", f"{strategy} ({GPU_ONLY[strategy]}) shards the model across CUDA GPUs, and this "
                                  "machine has none",
                      "use launcher.strategy: ddp (gloo processes on CPU), or run on a machine with CUDA GPUs")
    if strategy in ("zero2", "zero3") and not deepspeed_available():
        raise _refuse("strategy", f"{strategy} needs DeepSpeed, which is not installed",
                      "pip install deepspeed, or use launcher.strategy: fsdp (ZeRO-3-like sharding in PyTorch) or ddp")
    if spec.num_processes % spec.num_machines:
        raise _refuse("num_processes", f"{spec.num_processes} processes do not split evenly over "
                                       f"{spec.num_machines} machines",
                      "make launcher.num_processes a multiple of launcher.num_machines (processes in all)")
    if strategy == "ddp" and spec.num_processes < 2:
        raise _refuse("num_processes", "DDP with one process is ordinary training",
                      "set launcher.num_processes: 2 or more, or remove the launcher section")
    if spec.num_machines > 1 and not main_process_ip:
        raise _refuse("num_machines", f"{spec.num_machines} machines need the address of machine 0 "
                                      "(main_process_ip)", "pass main_process_ip, or set launcher.num_machines: 1")
    if not 0 <= machine_rank < spec.num_machines:
        raise _refuse("num_machines", f"machine rank {machine_rank} is outside 0..{spec.num_machines - 1}",
                      "launch machine ranks 0 .. num_machines - 1")
    if use_cpu and spec.mixed_precision == "fp16":
        raise _refuse("mixed_precision", "fp16 needs CUDA GPUs (this run is on CPU)",
                      "use launcher.mixed_precision: bf16 or no on CPU")

    cfg: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_CPU" if use_cpu else "MULTI_GPU",
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "machine_rank": machine_rank,
        "main_training_function": "main",
        "mixed_precision": spec.mixed_precision,
        "num_machines": spec.num_machines,
        "num_processes": spec.num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": use_cpu,
    }
    if not use_cpu:
        cfg["gpu_ids"] = "all"
    if main_process_ip:
        cfg["main_process_ip"] = main_process_ip
    if main_process_port:
        cfg["main_process_port"] = int(main_process_port)
    if strategy in ("zero2", "zero3"):
        stage = 2 if strategy == "zero2" else 3
        cfg["distributed_type"] = "DEEPSPEED"
        ds = {
            "zero_stage": stage,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            # must equal the Trainer's (TrainingArguments) or accelerate refuses the mismatch
            "gradient_accumulation_steps": train.gradient_accumulation_steps if train else 1,
            "gradient_clipping": train.max_grad_norm if train else 1.0,
            "zero3_init_flag": stage == 3,
        }
        if stage == 3:
            ds["zero3_save_16bit_model"] = True  # the saved weights are whole, not ZeRO shards
        cfg["deepspeed_config"] = ds
    elif strategy == "fsdp":
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {
            "fsdp_version": 2,
            # FSDP2's sharding strategy: reshard after forward = FULL_SHARD (ZeRO-3 like); false = SHARD_GRAD_OP
            "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # wraps the model's _no_split_modules (decoder layers)
            "fsdp_offload_params": False,
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # rank 0 saves whole adapter / model files
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": False,
        }
    return cfg


def write_config(spec: LauncherSpec, path: Path, *, use_cpu: bool, **kw) -> Path:
    """Write :func:`accelerate_config` as YAML to ``path`` (the file ``accelerate launch --config_file``
    reads) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(accelerate_config(spec, use_cpu=use_cpu, **kw), sort_keys=True),
                    encoding="utf-8")
    return path


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_launcher(spec: LauncherSpec, *, train: TrainSpec, objective: ObjectiveSpec | None = None,
                   method: LoraSpec | None = None, use_cpu: bool | None = None) -> bool:
    """Refuse, before a run starts, what a launched run cannot do; returns ``use_cpu`` as decided
    (no CUDA -> CPU). Meant for the pipeline's planning step as well as :func:`train_distributed`."""
    if use_cpu is None:
        use_cpu = _cuda_devices() == 0
    accelerate_config(spec, use_cpu=use_cpu, train=train, main_process_ip="0.0.0.0" if spec.num_machines > 1 else None)
    if not use_cpu:
        per_machine = spec.num_processes // spec.num_machines
        have = _cuda_devices()
        if have < per_machine:
            raise _refuse("num_processes", f"{per_machine} processes per machine need as many GPUs; this machine "
                                           f"has {have}", f"set launcher.num_processes: {have * spec.num_machines}")
    if train.early_stopping is not None:
        raise InvalidInput("train.early_stopping: the off-domain check runs against the store in the training "
                           "process, which a launched (multi-process) run does not have",
                           hint="remove train.early_stopping, or remove the launcher section")
    if method is not None and method.kind == "qlora" and spec.strategy in ("zero3", "fsdp"):
        raise _refuse("strategy", f"{spec.strategy} shards the base weights, and qlora's 4-bit base (as tuneops "
                                  "loads it) cannot be sharded", "use launcher.strategy: ddp or zero2 with qlora, "
                                                                 "or method.kind: lora")
    objective = objective or ObjectiveSpec()
    if objective.kind in ("grpo", "rloo") and (objective.reward or "").startswith("ad-"):
        raise InvalidInput("objective.reward: a reward-model artifact is read from the store, which the launched "
                           "processes do not open", hint="use 'gsm8k' or 'module:function', or remove the launcher")
    return use_cpu


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config_path: Path, job_path: Path, *, distributed_type: str) -> list[str]:
    """The argv of the launch. ``MULTI_CPU`` is launched through accelerate's torchrun path
    (``--multi_gpu``): its own MULTI_CPU launcher needs mpirun and a hostfile."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path)]
    if distributed_type == "MULTI_CPU":
        cmd.append("--multi_gpu")
    return cmd + ["-m", "tuneops.train.ddp_entry", str(job_path)]


def launch_env(spec: LauncherSpec, *, use_cpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the tuneops package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        env["CUDA_VISIBLE_DEVICES"] = ""
        # share the cores between the local ranks (torchrun would pin every rank to 1 thread)
        per_machine = max(1, spec.num_processes // spec.num_machines)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // per_machine)))
        if spec.num_machines == 1:
            # one machine: gloo talks over loopback (the host name may resolve to an unreachable address)
            env.setdefault("GLOO_SOCKET_IFNAME", _loopback_ifname())
            env.setdefault("MASTER_ADDR", "127.0.0.1")
    return env


def _loopback_ifname() -> str:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    return "lo" if "lo" in names or not names else next((n for n in names if n.startswith("lo")), "lo")


def _write_jsonl(path: Path, rows: list[dict] | None) -> str | None:
    if rows is None:
        return None
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


class _Tail:
    """Complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path):
        self.path, self.pos, self.partial = path, 0, b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def _log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n)).rstrip()
    except FileNotFoundError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """End the launch we started: its process group (accelerate, torchrun and the ranks)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def train_distributed(base_path: Path, rows: list[dict], *, launcher: LauncherSpec, method: LoraSpec,
                      spec: TrainSpec, objective: ObjectiveSpec | None = None, out_dir: Path, base_id: str,
                      work_dir: Path, eval_rows: list[dict] | None = None, replay_rows: list[dict] | None = None,
                      chat_template: str | None = None, template_dir: Path | None = None,
                      teacher_path: Path | None = None, teacher_adapter: Path | None = None,
                      teacher_tokenizer: Path | None = None,
                      on_preflight: Callable[[dict, str], None] | None = None,
                      on_log: Callable[[dict], None] | None = None,
                      on_step: Callable[[int, int], None] | None = None,
                      timeout: float | None = None, use_cpu: bool | None = None,
                      main_process_ip: str | None = None, main_process_port: int | None = None,
                      stop_check=None, reward_fn=None):
    """Train like :func:`tuneops.train.sft.train`, but on ``launcher.num_processes`` processes through
    ``accelerate launch``; returns rank 0's :class:`~tuneops.train.sft.TrainResult` (``model`` is None:
    the trained weights are the files in ``out_dir``). ``extra["distributed"]`` records the launch:
    world size, strategy, accelerate's distributed type and backend, and per-rank tokens / steps /
    memory. ``tokens`` counts every rank's tokens.

    ``work_dir`` receives the job, rows, accelerate config, ``launch.log`` (all ranks' output),
    ``metrics.jsonl`` and ``result.json``. A failed or timed-out launch raises :class:`LaunchFailed`
    with the log's tail. The pipeline's ``stop_check`` and ``reward_fn`` cannot cross processes: an
    early-stopping recipe (a non-None ``stop_check``) or a reward-model artifact is refused
    (:func:`check_launcher`); ``reward_fn`` is accepted and not used: a 'gsm8k' / 'module:function'
    reward is resolved again in each rank from ``objective.reward``. ``use_cpu`` defaults to "no
    CUDA here"; ``timeout`` (seconds) stops the whole launch."""
    from tuneops.train.sft import TrainResult

    objective = objective or ObjectiveSpec()
    del reward_fn  # a callable cannot cross processes: each rank resolves objective.reward again
    if stop_check is not None:
        raise InvalidInput("train.early_stopping: not available with a launcher (the check needs the store)",
                           hint="remove train.early_stopping, or remove the launcher section")
    use_cpu = check_launcher(launcher, train=spec, objective=objective, method=method, use_cpu=use_cpu)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(out_dir).resolve()
    single = launcher.num_machines == 1
    port = main_process_port or (free_port() if single else 29500)
    cfg_path = write_config(launcher, work_dir / "accelerate.yaml", use_cpu=use_cpu, train=spec,
                            main_process_ip=main_process_ip or ("127.0.0.1" if single else None),
                            main_process_port=port)
    distributed_type = yaml.safe_load(cfg_path.read_text())["distributed_type"]
    metrics_path, result_path, log_path = work_dir / "metrics.jsonl", work_dir / "result.json", work_dir / "launch.log"
    for p in (metrics_path, result_path):
        p.unlink(missing_ok=True)
    job = {
        "base_path": str(Path(base_path).resolve()), "base_id": base_id, "out_dir": str(out_dir),
        "rows": _write_jsonl(work_dir / "rows.jsonl", rows),
        "eval_rows": _write_jsonl(work_dir / "eval_rows.jsonl", eval_rows),
        "replay_rows": _write_jsonl(work_dir / "replay_rows.jsonl", replay_rows),
        "method": method.model_dump(mode="json"), "spec": spec.model_dump(mode="json"),
        "objective": objective.model_dump(mode="json"), "launcher": launcher.model_dump(mode="json"),
        "chat_template": chat_template, "template_dir": str(template_dir) if template_dir else None,
        "teacher_path": str(teacher_path) if teacher_path else None,
        "teacher_adapter": str(teacher_adapter) if teacher_adapter else None,
        "teacher_tokenizer": str(teacher_tokenizer) if teacher_tokenizer else None,
        "metrics": str(metrics_path.resolve()), "result": str(result_path.resolve()),
        "distributed_type": distributed_type, "strategy": launcher.strategy,
    }
    job_path = work_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
    cmd = launch_command(cfg_path, job_path, distributed_type=distributed_type)

    tail = _Tail(metrics_path)

    def relay():
        for ev in tail.read():
            kind = ev.pop("event", None)
            if kind == "log" and on_log:
                on_log(ev)
            elif kind == "step" and on_step:
                on_step(ev["step"], ev["total"])
            elif kind == "preflight" and on_preflight:
                on_preflight(ev["report"], ev["example"])

    deadline = time.monotonic() + timeout if timeout else None
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=launch_env(launcher, use_cpu=use_cpu), cwd=work_dir, start_new_session=True)
        try:
            while proc.poll() is None:
                relay()
                if deadline is not None and time.monotonic() > deadline:
                    _stop(proc)
                    raise LaunchFailed(f"accelerate launch ({launcher.num_processes} processes, {launcher.strategy}) "
                                       f"ran past its {timeout:g} s limit and was stopped; last lines of "
                                       f"{log_path}:\n{_log_tail(log_path)}",
                                       hint="give it more time, or fewer steps")
                time.sleep(0.2)
            relay()
        finally:
            _stop(proc)  # an exception here (a callback, SIGTERM as Interrupted) must not leave ranks running
    if proc.returncode != 0:
        raise LaunchFailed(f"accelerate launch ({launcher.num_processes} processes, {launcher.strategy}, "
                           f"{distributed_type}) exited with status {proc.returncode}; last lines of "
                           f"{log_path}:\n{_log_tail(log_path)}",
                           hint=f"the whole log of every rank is {log_path}")
    if not result_path.exists():
        raise LaunchFailed(f"accelerate launch exited 0 but rank 0 wrote no {result_path.name}; last lines of "
                           f"{log_path}:\n{_log_tail(log_path)}", hint=f"see {log_path}")
    data = json.loads(result_path.read_text(encoding="utf-8"))
    data["adapter_dir"] = Path(data["adapter_dir"])
    return TrainResult(**data)
