"""launcher: accelerate — config generation (validated by accelerate's own loaders) and a real
2-process CPU DDP run (gloo) through `accelerate launch` on the tiny model."""

import json
import sys
from unittest import mock

import pytest

from tuneops.errors import InvalidInput
from tuneops.train import launch
from tuneops.train.launch import LaunchFailed, accelerate_config, check_launcher, train_distributed, write_config
from tuneops.train.recipe import EarlyStoppingSpec, LauncherSpec, LoraSpec, ObjectiveSpec, TrainSpec


def _load(path):
    """The config as `accelerate launch --config_file` reads it, and the launch args it produces."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert ClusterConfig.from_yaml_file(str(path)).to_dict() == cfg.to_dict()
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return cfg, args


def test_ddp_on_cpu_is_multi_cpu_and_gloo_ready(tmp_path):
    from accelerate.utils import DistributedType

    spec = LauncherSpec(strategy="ddp", num_processes=2)
    cfg = accelerate_config(spec, use_cpu=True)
    assert cfg["distributed_type"] == "MULTI_CPU" and cfg["use_cpu"] is True
    assert cfg["num_processes"] == 2 and cfg["num_machines"] == 1 and cfg["machine_rank"] == 0
    assert cfg["main_training_function"] == "main" and cfg["compute_environment"] == "LOCAL_MACHINE"
    loaded, args = _load(write_config(spec, tmp_path / "a.yaml", use_cpu=True, main_process_port=29555))
    assert loaded.distributed_type == DistributedType.MULTI_CPU and loaded.num_processes == 2
    assert loaded.main_process_port == 29555 and args.num_processes == 2
    # accelerate's MULTI_CPU launcher is mpirun; tuneops takes its torchrun path instead
    cmd = launch.launch_command(tmp_path / "a.yaml", tmp_path / "job.json", distributed_type="MULTI_CPU")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[-3:] == ["-m", "tuneops.train.ddp_entry", str(tmp_path / "job.json")]
    env = launch.launch_env(spec, use_cpu=True)
    assert env["ACCELERATE_USE_CPU"] == "true" and env["CUDA_VISIBLE_DEVICES"] == ""


def test_ddp_on_gpus_is_multi_gpu(tmp_path):
    from accelerate.utils import DistributedType

    spec = LauncherSpec(strategy="ddp", num_processes=8, num_machines=2, mixed_precision="bf16")
    path = write_config(spec, tmp_path / "a.yaml", use_cpu=False, machine_rank=1, main_process_ip="10.0.0.1",
                        main_process_port=29500)
    loaded, args = _load(path)
    assert loaded.distributed_type == DistributedType.MULTI_GPU and not loaded.use_cpu
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (8, 2, 1)
    assert loaded.main_process_ip == "10.0.0.1" and loaded.mixed_precision == "bf16"
    assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp
    assert "--multi_gpu" not in launch.launch_command(path, tmp_path / "j", distributed_type="MULTI_GPU")


@pytest.mark.parametrize("strategy,stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs_load_in_accelerate(tmp_path, monkeypatch, strategy, stage):
    from accelerate.utils import DistributedType

    monkeypatch.setattr(launch, "deepspeed_available", lambda: True)
    spec = LauncherSpec(strategy=strategy, num_processes=4, mixed_precision="bf16")
    train = TrainSpec(gradient_accumulation_steps=4, max_grad_norm=0.5)
    cfg = accelerate_config(spec, use_cpu=False, train=train)
    assert cfg["distributed_type"] == "DEEPSPEED"
    ds = cfg["deepspeed_config"]
    assert ds["zero_stage"] == stage and ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    assert ds["zero3_init_flag"] is (stage == 3) and ds.get("zero3_save_16bit_model", False) is (stage == 3)
    loaded, args = _load(write_config(spec, tmp_path / "ds.yaml", use_cpu=False, train=train))
    assert loaded.distributed_type == DistributedType.DEEPSPEED and loaded.deepspeed_config["zero_stage"] == stage
    assert args.use_deepspeed and args.zero_stage == stage and args.gradient_accumulation_steps == 4


def test_fsdp_config_loads_in_accelerate_and_builds_the_plugin(tmp_path):
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    spec = LauncherSpec(strategy="fsdp", num_processes=2)
    fsdp = accelerate_config(spec, use_cpu=False)["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_reshard_after_forward"] is True and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    loaded, args = _load(write_config(spec, tmp_path / "fsdp.yaml", use_cpu=False, main_process_port=29566))
    assert loaded.distributed_type == DistributedType.FSDP and args.use_fsdp
    env = prepare_multi_gpu_env(args)  # what the ranks get: FSDP_* variables
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    with mock.patch.dict("os.environ", {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE"))}):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "fsdp"])
def test_gpu_strategies_are_refused_on_cpu(strategy, monkeypatch):
    monkeypatch.setattr(launch, "deepspeed_available", lambda: True)
    with pytest.raises(InvalidInput) as e:
        accelerate_config(LauncherSpec(strategy=strategy), use_cpu=True)
    assert "launcher.strategy" in e.value.message and "CUDA" in e.value.message
    assert "ddp" in e.value.hint


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_refused_when_not_installed(strategy, monkeypatch):
    monkeypatch.setattr(launch, "deepspeed_available", lambda: False)
    with pytest.raises(InvalidInput) as e:
        accelerate_config(LauncherSpec(strategy=strategy), use_cpu=False)
    assert e.value.message.startswith("launcher.strategy:") and "DeepSpeed" in e.value.message
    assert "pip install deepspeed" in e.value.hint


@pytest.mark.parametrize("kw,field", [
    ({"num_processes": 1}, "launcher.num_processes"),
    ({"num_processes": 3, "num_machines": 2}, "launcher.num_processes"),
    ({"mixed_precision": "fp16"}, "launcher.mixed_precision"),
    ({"num_machines": 2, "num_processes": 4}, "launcher.num_machines"),  # no main_process_ip
])
def test_other_impossible_combinations(kw, field):
    with pytest.raises(InvalidInput) as e:
        accelerate_config(LauncherSpec(**kw), use_cpu=True)
    assert e.value.message.startswith(field)


def test_check_launcher_refuses_what_cannot_cross_processes():
    with pytest.raises(InvalidInput, match="train.early_stopping"):
        check_launcher(LauncherSpec(), train=TrainSpec(early_stopping=EarlyStoppingSpec()), use_cpu=True)
    with pytest.raises(InvalidInput, match="objective.reward"):
        check_launcher(LauncherSpec(), train=TrainSpec(batch_size=4), use_cpu=True,
                       objective=ObjectiveSpec(kind="grpo", reward="ad-0123456789abcdef"))
    with mock.patch.object(launch, "_cuda_devices", return_value=1):
        with pytest.raises(InvalidInput, match="launcher.num_processes: 2 processes per machine need as many GPUs"):
            check_launcher(LauncherSpec(num_processes=2), train=TrainSpec(), use_cpu=False)
    with mock.patch.object(launch, "_cuda_devices", return_value=2):
        with pytest.raises(InvalidInput, match="launcher.strategy: fsdp .* qlora"):
            check_launcher(LauncherSpec(strategy="fsdp"), train=TrainSpec(), method=LoraSpec(kind="qlora"),
                           use_cpu=False)
    assert check_launcher(LauncherSpec(), train=TrainSpec(), use_cpu=True) is True


def test_metrics_tail_keeps_partial_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = launch._Tail(path)
    assert tail.read() == []
    path.write_text('{"event": "step", "step": 1}\n{"event": "lo')
    assert tail.read() == [{"event": "step", "step": 1}]
    with open(path, "a") as f:
        f.write('g", "loss": 2.0}\n')
    assert tail.read() == [{"event": "log", "loss": 2.0}]


def test_a_failed_launch_raises_with_the_log_tail(tmp_path, monkeypatch):
    def fake(cfg, job, *, distributed_type):
        return [sys.executable, "-c", "import sys; print('rank 1: RuntimeError: gloo exploded'); sys.exit(3)"]

    monkeypatch.setattr(launch, "launch_command", fake)
    with pytest.raises(LaunchFailed) as e:
        train_distributed(tmp_path, [], launcher=LauncherSpec(), method=LoraSpec(), spec=TrainSpec(),
                          out_dir=tmp_path / "adapter", base_id="base-x", work_dir=tmp_path / "work", use_cpu=True,
                          timeout=60)
    assert "exited with status 3" in e.value.message and "gloo exploded" in e.value.message
    assert str(tmp_path / "work" / "launch.log") in e.value.hint


def test_a_launch_past_its_timeout_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "launch_command", lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(LaunchFailed, match="limit"):
        train_distributed(tmp_path, [], launcher=LauncherSpec(), method=LoraSpec(), spec=TrainSpec(),
                          out_dir=tmp_path / "adapter", base_id="base-x", work_dir=tmp_path / "work", use_cpu=True,
                          timeout=1)


@pytest.mark.timeout(180)
def test_two_process_cpu_ddp_run(tmp_path, tiny_model_dir):
    """A real `accelerate launch` of 2 gloo processes: both ranks train, rank 0 alone writes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneops.data.bundled import json_extraction_rows

    rows, _ = json_extraction_rows(12, 0, seed=3)
    logs, steps, preflights = [], [], []
    out_dir = tmp_path / "run" / "adapter"
    result = train_distributed(
        tiny_model_dir, rows, launcher=LauncherSpec(strategy="ddp", num_processes=2),
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        spec=TrainSpec(max_steps=3, batch_size=2, threads=1, learning_rate=1e-2, warmup_ratio=0.0, max_length=128),
        out_dir=out_dir, base_id="base-tiny", work_dir=tmp_path / "run" / "launch",
        on_log=logs.append, on_step=lambda s, t: steps.append((s, t)),
        on_preflight=lambda report, example: preflights.append(report), timeout=150)

    dist = result.extra["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["distributed_type"] == "MULTI_CPU"
    assert [r["rank"] for r in dist["ranks"]] == [0, 1] and all(r["steps"] == 3 for r in dist["ranks"])
    assert all(r["tokens"] > 0 for r in dist["ranks"]) and result.tokens == sum(r["tokens"] for r in dist["ranks"])
    assert result.steps == 3 and result.model is None and result.adapter_dir == out_dir.resolve()
    # losses were relayed while training, and are what rank 0 returned
    assert [e["step"] for e in logs] == [1, 2, 3] and all(e["loss"] > 0 for e in logs)
    assert logs == result.losses and steps[-1] == (3, 3) and len(preflights) == 1
    # only rank 0 wrote: the artifact, no leftover rank folders
    assert sorted(p.name for p in out_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not list(out_dir.parent.glob(".rank*"))
    cfg = json.loads((out_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "base-tiny"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out_dir).eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # trained (B starts at zero)
