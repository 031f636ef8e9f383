"""Many LoRA adapters in one forward pass: each batch row picks its own adapter (Punica/S-LoRA's BGMV, in torch).

``inject_multilora(model)`` replaces every ``nn.Linear`` of a causal LM (except its output head) by a
``MultiLoRALinear`` that keeps the base layer (weights shared, untouched) and per-slot LoRA weights:
``A[slot, r, in]`` and ``Bt[slot, r, out]`` (B stored transposed so a slot's first ``r`` rows are one
contiguous block), ``scale[slot]``. Slot 0 is "no adapter" and stays zero. Before each forward the
caller says which slot every batch row uses (``LoRAContext.route``); the layer computes

    y = base(x) + scale[s] * (x @ A[s, :r].T) @ Bt[s, :r]        for each row's slot s

either grouped by slot (one pair of matmuls per distinct adapter in the batch, rows gathered) or by
gathering each row's A/B and running one ``bmm`` (``LoRAContext.mode``). Both are exact: padding a
rank with zero rows adds exact zeros. Which is faster depends on the batch (benchmarks/serving_engine.py).
Each layer keeps its gathered rows (A transposed, B times the row's scale) while the batch's slots
stay the same — most decode steps run the same rows as the step before — and drops them when a slot
is written: rows x r x (in + out) floats per layer, about 156 MB for 8 rows of r=16 all-linear
SmolLM2 adapters. A SmolLM2 decode step of 8 rows, 8 distinct adapters against 1 adapter, went from
0.888x to 0.951x with it (torch 1 thread, median of 6).

Merging a hot adapter (``merge_weight`` then ``LoRAContext.hot_slot``): each layer the hot adapter
targets computes with a merged copy ``W + scale * B @ A`` instead of ``W``, the hot slot's rows take
no LoRA step at all, and every other row subtracts the hot delta again (one more low-rank product for
those rows only). A batch of only hot rows then costs what the bare base costs. The base weights are
never written: unmerging drops the copies, so merge/unmerge cycles cannot drift the base. Hot rows
match the unmerged path to float rounding (the sum is taken in a different order), not bit for bit.

``read_lora_adapter(path, model)`` reads a PEFT adapter directory (adapter_config.json +
adapter_model.safetensors) and either returns its per-module tensors or says why it cannot be served
this way (DoRA, modules_to_save, prefix/prompt tuning, IA3, rank patterns, …): such adapters go to the
PEFT path, never through this one.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# adapter_config.json keys that do not change what a LoRA adapter computes at inference, or that the
# saved weights already account for (which layers exist is read off the tensors, not the config).
_NEUTRAL_KEYS = {
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules",
    "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights", "use_rslora",
    "auto_mapping", "layers_to_transform", "layers_pattern", "loftq_config", "eva_config", "corda_config",
    "peft_version", "megatron_core", "qalora_group_size", "ensure_weight_tying", "lora_ga_config",
    "kasa_config", "monteclora_config", "velora_config",
}
_KEY_PREFIX = "base_model.model."


class LoRAContext:
    """Routing for one forward pass, shared by every ``MultiLoRALinear`` of a model.

    ``route(slots)`` before a forward: ``slots[i]`` is batch row i's slot (0 = no adapter).
    """

    def __init__(self, mode: str = "auto"):
        self.mode = mode          # "grouped" | "gather" | "auto"
        self.groups: list[tuple[int, torch.Tensor | None]] = []   # (slot, rows; None = all rows)
        self.idx: torch.Tensor | None = None                       # [batch] slot per row
        self.use_gather = False
        self.hot_slot = 0         # the slot served from merged weights (0: none); set by the engine
        # Mixed batches: layers keep their gathered per-row A/B while the rows' slots stay the same (a
        # decode step is usually the same rows as the one before); the key says which rows they were for.
        self.gather_key: int = 0
        self._last_slots: tuple | None = None
        self.unmerge: torch.Tensor | None = None   # rows that subtract the hot delta (when not all)
        self.unmerge_all = False

    def route(self, slots: list[int], device=None) -> None:
        self.unmerge, self.unmerge_all = None, False
        if self.hot_slot:
            hot = self.hot_slot
            others = [i for i, s in enumerate(slots) if s != hot]
            if len(others) == len(slots):
                self.unmerge_all = True
            elif others:
                self.unmerge = torch.tensor(others, dtype=torch.long, device=device)
            slots = [0 if s == hot else s for s in slots]
        distinct = sorted(set(s for s in slots if s != 0))
        self.groups = []
        self.idx = None
        self.use_gather = False
        if not distinct:
            return
        if len(distinct) == 1 and all(s == distinct[0] for s in slots):
            self.groups = [(distinct[0], None)]
            return
        # Mixed batches: gathering each row's A and B and one bmm beat grouping (index_select, two
        # matmuls and index_add per distinct adapter) by 3.4x at 8 adapters in 8 rows on SmolLM2 (CPU):
        # per-op overhead dominates there, not the copied bytes. "auto" gathers for every mixed batch.
        self.use_gather = self.mode in ("gather", "auto")
        if self.use_gather:
            self.idx = torch.tensor(slots, dtype=torch.long, device=device)
            if tuple(slots) != self._last_slots:
                self._last_slots = tuple(slots)
                self.gather_key += 1
        else:
            for s in distinct:
                rows = [i for i, t in enumerate(slots) if t == s]
                self.groups.append((s, torch.tensor(rows, dtype=torch.long, device=device)))

    def clear(self) -> None:
        self.groups, self.idx, self.use_gather = [], None, False
        self.unmerge, self.unmerge_all = None, False


class MultiLoRALinear(nn.Module):
    """``base(x)`` plus each row's own LoRA delta; the base layer is kept as is (its weights are shared)."""

    def __init__(self, base: nn.Linear, ctx: LoRAContext):
        super().__init__()
        self.base = base
        self.ctx = ctx
        self.in_features, self.out_features = base.in_features, base.out_features
        # Allocated on the first adapter that targets this layer: [capacity, r_cap, in] / [capacity, r_cap, out].
        self.A: torch.Tensor | None = None
        self.Bt: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.ranks: list[int] = []     # per slot: the adapter's rank on this layer (0 = not targeted)
        self.scales: list[float] = []  # per slot, as Python floats for the grouped path
        self.merged: torch.Tensor | None = None   # W + the hot slot's delta, while ctx.hot_slot is merged
        self._gathered: tuple | None = None       # (ctx.gather_key, A per row transposed, B per row scaled)

    # -- storage (engine thread only: a forward reads these) ---------------------------------------------
    def ensure(self, capacity: int, rank: int) -> None:
        """Grow the slot tensors to ``capacity`` slots and at least ``rank`` (new room is zero)."""
        ref = self.base.weight
        cur_cap = 0 if self.A is None else self.A.shape[0]
        cur_r = 0 if self.A is None else self.A.shape[1]
        if cur_cap >= capacity and cur_r >= rank:
            return
        cap, r = max(capacity, cur_cap), max(rank, cur_r)
        A = torch.zeros(cap, r, self.in_features, dtype=ref.dtype, device=ref.device)
        Bt = torch.zeros(cap, r, self.out_features, dtype=ref.dtype, device=ref.device)
        scale = torch.zeros(cap, dtype=ref.dtype, device=ref.device)
        if self.A is not None:
            A[:cur_cap, :cur_r] = self.A
            Bt[:cur_cap, :cur_r] = self.Bt
            scale[:cur_cap] = self.scale
        self.A, self.Bt, self.scale = A, Bt, scale
        self._gathered = None
        self.ranks += [0] * (cap - len(self.ranks))
        self.scales += [0.0] * (cap - len(self.scales))

    def set_slot(self, slot: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        r = A.shape[0]
        self._gathered = None
        self.A[slot].zero_()
        self.Bt[slot].zero_()
        self.A[slot, :r] = A
        self.Bt[slot, :r] = B.t()
        self.scale[slot] = scale
        self.ranks[slot], self.scales[slot] = r, float(scale)

    def clear_slot(self, slot: int) -> None:
        if self.A is not None and slot < self.A.shape[0] and self.ranks[slot]:
            self._gathered = None
            self.A[slot].zero_()
            self.Bt[slot].zero_()
            self.scale[slot] = 0.0
            self.ranks[slot], self.scales[slot] = 0, 0.0

    def storage_bytes(self) -> int:
        if self.A is None:
            return 0
        return (self.A.numel() + self.Bt.numel()) * self.A.element_size()

    def merge_weight(self, slot: int) -> torch.Tensor | None:
        """A new ``W + scale * B @ A`` for ``slot`` (None if that adapter does not touch this layer).
        Reads only the base weight and the slot's rows, so it may run off the scheduler thread while
        the slot is held."""
        if self.A is None or slot >= len(self.ranks) or not self.ranks[slot]:
            return None
        r = self.ranks[slot]
        delta = self.Bt[slot, :r].t() @ self.A[slot, :r]
        return torch.add(self.base.weight.detach(), delta, alpha=self.scales[slot])

    # -- forward -------------------------------------------------------------------------------------
    def _low_rank(self, x: torch.Tensor, slot: int, rows: torch.Tensor | None) -> torch.Tensor:
        """``scale * (x @ A.T) @ B`` of one slot, for every row of ``x`` or only ``rows``."""
        r = self.ranks[slot]
        if rows is not None:
            x = x.index_select(0, rows)
        return (x @ self.A[slot, :r].t() @ self.Bt[slot, :r]) * self.scales[slot]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        merged = self.merged if ctx.hot_slot else None
        if merged is None:
            y = self.base(x)
        else:
            y = nn.functional.linear(x, merged, self.base.bias)
            if ctx.unmerge_all:
                y = y - self._low_rank(x, ctx.hot_slot, None)
            elif ctx.unmerge is not None:
                y = y.index_add(0, ctx.unmerge, self._low_rank(x, ctx.hot_slot, ctx.unmerge), alpha=-1)
        if self.A is None or not (ctx.groups or ctx.use_gather):
            return y
        if ctx.use_gather:
            g = self._gathered
            if g is None or g[0] != ctx.gather_key:
                idx = ctx.idx
                g = self._gathered = (ctx.gather_key, self.A.index_select(0, idx).transpose(1, 2),
                                      self.Bt.index_select(0, idx) * self.scale.index_select(0, idx)[:, None, None])
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])
            delta = torch.bmm(torch.bmm(x3, g[1]), g[2])
            return y + delta.reshape(y.shape)
        for slot, rows in ctx.groups:
            if self.ranks[slot] == 0:
                continue
            delta = self._low_rank(x, slot, rows)
            y = y + delta if rows is None else y.index_add(0, rows, delta)
        return y


def inject_multilora(model: nn.Module, ctx: LoRAContext) -> dict[str, MultiLoRALinear]:
    """Wrap every ``nn.Linear`` of ``model`` except its output head, in place; {module name: wrapper}."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) is nn.Linear and mod is not head]
    wrapped = {}
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = MultiLoRALinear(mod, ctx)
        setattr(parent, child, wrapper)
        wrapped[name] = wrapper
    return wrapped


@dataclass
class LoRAWeights:
    """A LoRA adapter read off disk, ready to copy into a slot; or the reason it needs the PEFT path."""

    rank: int = 0
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)  # name -> (A, B, scale)
    unsupported: str | None = None   # why the batched path cannot serve it (then: PEFT path)
    nbytes: int = 0
    peft_type: str = "LORA"


def _truthy(value) -> bool:
    return value not in (None, False, 0, "", "none", {}, []) and value != {}


def read_lora_adapter(path: Path, wrapped: dict[str, MultiLoRALinear], *, max_rank: int,
                      dtype: torch.dtype = torch.float32) -> LoRAWeights:
    """Read a PEFT adapter directory for the batched path; ``unsupported`` says why not, when it cannot be.

    Raises on unreadable or malformed files (missing config, truncated safetensors, shapes that do not fit
    this base): those adapters must not be served at all.
    """
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "adapter_config.json").read_text())
    peft_type = str(config.get("peft_type", ""))
    if peft_type != "LORA":
        return LoRAWeights(unsupported=f"peft_type {peft_type or '?'} is not LoRA", peft_type=peft_type)
    if config.get("use_dora"):
        return LoRAWeights(unsupported="DoRA (use_dora) needs the weight-norm path")
    if config.get("bias", "none") != "none":
        return LoRAWeights(unsupported=f"bias={config.get('bias')!r} changes base biases")
    for key, value in config.items():
        if key not in _NEUTRAL_KEYS and key not in ("use_dora", "bias") and _truthy(value):
            return LoRAWeights(unsupported=f"adapter_config.json sets {key}={value!r}")
    r = int(config["r"])
    if r > max_rank:
        return LoRAWeights(unsupported=f"rank {r} > max_lora_rank {max_rank}")
    alpha = float(config.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r

    weights_file = path / "adapter_model.safetensors"
    if not weights_file.exists():
        raise FileNotFoundError(f"{weights_file} is missing (only safetensors adapters are served)")
    tensors = load_file(str(weights_file), device="cpu")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name = key[len(_KEY_PREFIX):] if key.startswith(_KEY_PREFIX) else key
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[:-len(suffix)], {})[part] = t
                break
        else:
            return LoRAWeights(unsupported=f"tensor {key} is not a plain LoRA A/B weight")
    out = LoRAWeights(rank=r)
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{weights_file}: {name} has lora_{'A' if 'A' in ab else 'B'} without its pair")
        layer = wrapped.get(name)
        if layer is None:
            return LoRAWeights(unsupported=f"targets {name}, which is not a linear layer the batched path wraps")
        A, B = ab["A"], ab["B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != layer.in_features or B.shape[0] != layer.out_features \
                or A.shape[0] != B.shape[1]:
            raise ValueError(f"{weights_file}: {name} has shapes A{tuple(A.shape)} B{tuple(B.shape)}, which do not "
                             f"fit this base's {layer.in_features}->{layer.out_features} layer")
        if A.shape[0] > max_rank:
            return LoRAWeights(unsupported=f"{name} has rank {A.shape[0]} > max_lora_rank {max_rank}")
        out.modules[name] = (A.to(dtype), B.to(dtype), scale)
        out.rank = max(out.rank, A.shape[0])
        out.nbytes += (A.numel() + B.numel()) * torch.tensor([], dtype=dtype).element_size()
    if not out.modules:
        raise ValueError(f"{weights_file} holds no LoRA weights")
    return out
