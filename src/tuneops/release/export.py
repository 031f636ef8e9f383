"""Export an artifact in the formats other stacks load: ``peft`` (the adapter folder PEFT and vLLM
load as-is, beside its base as a standard Hugging Face folder), ``merged`` (one safetensors model,
the adapter folded into the base) and ``gguf`` (the merged model for llama.cpp and its kin, F16 or
Q8_0).

Every export is checked before anything is recorded, and each check compares the export with the
artifact as tuneops itself loads it (the verified base in float32 with the verified adapter
attached, as eval and the server do): the reloaded PEFT folder must give the same logits, the
merged model must stay within ``MERGED_MAX_LOGIT_DIFF`` of the unmerged adapter, and the GGUF file
is read back (header, tokenizer, chat template) and run with transformers' GGUF loader. The export
is built in a staging folder beside DIR and renamed into place only when its checks pass; it is
then recorded (an ``exports`` row: the digest of the written files' manifest, the checks) with an
``artifact.export`` audit entry.

torch, transformers and PEFT load inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from tuneops.errors import GateFailed, InvalidInput, NotFound, TuneopsError
from tuneops.models.base import base_dir
from tuneops.release.registry import artifact_dir, code_version, resolve_alias
from tuneops.store import Store
from tuneops.store.ids import sha256_file
from tuneops.store.schema import ArtifactRecord, BaseModelRecord, ExportRecord
from tuneops.store.store import default_actor

FORMATS = ("peft", "merged", "gguf")
# --gguf-type → (GGUF tensor type name, general.file_type written by llama.cpp's converter)
GGUF_TYPES = {"f16": ("F16", 1), "q8_0": ("Q8_0", 7)}
# Merged vs unmerged in float32: HF-STACK-NOTES measured 6.5e-5 on SmolLM2, the quickstart's r=16 LoRA
# on all linear layers 1.2e-4 (12 prompts, benchmarks/results/export.json); the bound leaves room for
# bigger adapters while catching a wrong merge (a missing scaling or a skipped module moves logits by
# whole units).
MERGED_MAX_LOGIT_DIFF = 1e-3
# Reloading the very same weights with plain transformers/PEFT must reproduce them.
RELOAD_MAX_LOGIT_DIFF = 1e-5
# GGUF read back by transformers vs the merged float32 model. Rounding to 16 bits (f16) or to 8-bit
# blocks (q8_0) moves logits; a wrong conversion moves them far more. Measured on the quickstart's
# SmolLM2 adapter with the 4 default prompts (and with 12 in benchmarks/results/export.json): f16 max
# |Δlogit| 0.044 (0.069), mean KL 2.9e-6 (3.5e-6), top-1 1.0 (1.0); q8_0 max 1.78 (2.47), mean KL
# 3.7e-3 (2.9e-3), top-1 0.945 (0.968); greedy continuations identical throughout. For scale, the same model
# read with rope_theta 10,000 instead of 100,000 (the transformers-4 misreading): max 14.8, mean KL
# 0.084, top-1 0.871, greedy 1/4 identical. Top-1 agreement counts prompt positions too, where q8_0
# flips near-ties, so mean KL is the bound that separates "quantised" from "wrong" for q8_0.
GGUF_BOUNDS = {"f16": {"max_abs_logit_diff": 0.5, "max_mean_kl": 1e-4, "min_top1_agreement": 0.98},
               "q8_0": {"max_abs_logit_diff": 5.0, "max_mean_kl": 0.02, "min_top1_agreement": 0.85}}
# llama.cpp's converter is taken from this llama-cpp-python sdist (it vendors llama.cpp with its own
# gguf-py); only the Python files are used, nothing is compiled.
LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CPP_ENV = "TUNEOPS_LLAMA_CPP"
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
MERGEABLE_PEFT_TYPES = ("LORA", "IA3")  # weight deltas; prefix / prompt tuning add virtual tokens instead
CHECK_PROMPTS = (
    "What is the capital of France?",
    "Extract the name, age and city as JSON: Maria Lopez, 34, lives in Lisbon.",
    "What is 17 + 25?",
    "Write one sentence about the sea.",
)
CHECK_NEW_TOKENS = 16
_WEIGHT_FILES = ("config.json", "generation_config.json")


class ExportCheckFailed(GateFailed):
    """An export differs from the artifact by more than its stated bound: nothing was written (exit 3,
    like a failed gate: the export is worse, not broken)."""


# -- entry point -------------------------------------------------------------------------------
def export_artifact(store: Store, ref: str, fmt: str, dest: Path, *, gguf_type: str = "f16",
                    base_ref: str | None = None, force: bool = False,
                    max_logit_diff: float | None = None, prompts: list[str | list[dict]] | None = None,
                    on_step: Callable[[str], None] | None = None) -> ExportRecord:
    """Export artifact ``ref`` (id or alias) as ``fmt`` into ``dest``; returns the recorded export.

    ``base_ref`` (peft only): a name the user resolves to the base (e.g. a hub id) written as the
    adapter's ``base_model_name_or_path`` instead of exporting the base next to it.
    ``max_logit_diff`` overrides the merged-vs-unmerged bound (merged, and the merge step of gguf).
    ``prompts`` (texts or chats) replace CHECK_PROMPTS as the checks' sample inputs."""
    step = on_step or (lambda _msg: None)
    fmt = (fmt or "").strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}", hint="use --format peft, merged or gguf")
    gguf_type = (gguf_type or "").strip().lower()
    if fmt == "gguf" and gguf_type not in GGUF_TYPES:
        raise InvalidInput(f"unknown GGUF type {gguf_type!r}", hint="use --gguf-type f16 or q8_0")
    if base_ref is not None and (fmt != "peft" or not base_ref.strip()):
        raise InvalidInput("--base-ref names the base of a PEFT adapter export",
                           hint="use it with --format peft and a non-empty name, e.g. "
                                "--base-ref HuggingFaceTB/SmolLM2-135M-Instruct")
    bound = MERGED_MAX_LOGIT_DIFF if max_logit_diff is None else float(max_logit_diff)
    if not bound > 0:
        raise InvalidInput(f"--max-logit-diff must be > 0 (got {max_logit_diff})")
    dest = Path(dest).expanduser()
    _check_destination(dest, force)
    art = store.get_artifact(ref) if ref.startswith(("ad-", "mdl-")) else resolve_alias(store, ref)
    if base_ref is not None and art.kind != "adapter":
        raise InvalidInput(f"{art.id} is a full model ({art.method}), not an adapter: it has no base to refer to",
                           hint="drop --base-ref; the export is a self-contained model folder")
    art_path = artifact_dir(store, art)  # integrity first: a tampered artifact is never exported
    base = store.get_base(art.base_id)
    base_path = base_dir(store, base)
    peft_type = _peft_type(art_path) if art.kind == "adapter" else None
    if fmt in ("merged", "gguf") and peft_type is not None and peft_type not in MERGEABLE_PEFT_TYPES:
        raise InvalidInput(f"{art.id} is a {peft_type} adapter ({art.method}): it adds virtual tokens instead of "
                           "weight deltas, so it cannot be merged into the base",
                           hint="export it with --format peft (load it with PEFT on the exported base)")
    converter = None
    if fmt == "gguf":  # before any model loads: a missing converter must fail fast
        step("locating llama.cpp's converter…")
        converter = llama_cpp_converter(on_step=step)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    scratch: Path | None = None
    started = time.perf_counter()
    try:
        texts = list(prompts or CHECK_PROMPTS)
        if fmt == "peft" and art.kind == "adapter":
            details = _export_peft(store, art, art_path, base, base_path, staging, dest, base_ref, texts, step)
        elif fmt in ("peft", "merged"):
            details = _export_merged(store, art, art_path, base, base_path, staging, fmt, texts, bound, step)
        else:
            scratch = store.blobs.scratch_dir("export-merged-")
            details = _export_gguf(store, art, art_path, base, base_path, staging, scratch, converter, gguf_type,
                                   texts, bound, step)
        details["seconds"] = round(time.perf_counter() - started, 2)
        details["artifact"]["signature"] = _signature(store, art)
        payload = store.blobs.tree_manifest(staging)
        _write_docs(staging, art, base, fmt, details, payload)
        _normalise_permissions(staging)
        manifest = {**payload, **{name: sha256_file(staging / name) for name in ("EXPORT.md", "export.json")}}
        digest = store.blobs.tree_digest(dict(sorted(manifest.items())))
        _move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    try:
        return _record(store, art, fmt, dest, digest, manifest, details)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # an export nobody recorded must not look like one
        raise


def list_exports(store: Store, artifact_id: str | None = None) -> list[ExportRecord]:
    """Recorded exports, oldest first (of one artifact when given)."""
    from sqlalchemy import select

    with store.session(write=False) as s:
        q = select(ExportRecord).order_by(ExportRecord.created_at)
        if artifact_id:
            q = q.where(ExportRecord.artifact_id == artifact_id)
        rows = list(s.scalars(q))
        for r in rows:
            s.expunge(r)
        return rows


def export_summary(rec: ExportRecord) -> dict:
    """The export as a flat dict for tables and --json: where, what, and each check's verdict and numbers."""
    d = rec.details or {}
    checks = {}
    for name, c in (d.get("checks") or {}).items():
        checks[name] = {k: v for k, v in c.items() if k not in ("prompts",)}
    return {"id": rec.id, "artifact": rec.artifact_id, "format": rec.format, "gguf_type": d.get("gguf_type"),
            "path": rec.path, "digest": rec.digest, "files": len(d.get("files") or {}),
            "bytes": sum(f["bytes"] for f in (d.get("files") or {}).values()), "checks": checks,
            "load": d.get("load"), "actor": rec.actor}


# -- destination and record ----------------------------------------------------------------
def _check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"{dest} exists and is not a directory", hint="choose a directory path for DIR")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise InvalidInput(f"{dest} exists and is not empty; nothing was written",
                           hint="choose a new directory, or pass --force to replace its contents")


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename the finished staging folder to ``dest`` (same filesystem: atomic); a replaced folder
    (--force) is moved aside first and removed only after the new one is in place."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _record(store: Store, art: ArtifactRecord, fmt: str, dest: Path, digest: str, manifest: dict,
            details: dict) -> ExportRecord:
    from ulid import ULID

    export_id = f"ex-{str(ULID()).lower()}"
    path = str(dest.resolve())

    def write(s):
        rec = ExportRecord(id=export_id, artifact_id=art.id, format=fmt, digest=digest, path=path,
                           details={**details, "manifest_sha256": manifest}, actor=default_actor())
        s.add(rec)
        store.audit(s, "artifact.export", "artifact", art.id, export=export_id, format=fmt, digest=digest,
                    path=path, gguf_type=details.get("gguf_type"),
                    checks={k: v.get("passed") for k, v in (details.get("checks") or {}).items()})
        s.flush()
        s.expunge(rec)
        return rec

    return store.transact(write)


# -- the three formats -------------------------------------------------------------------------
def _export_peft(store, art, art_path, base, base_path, out: Path, dest: Path, base_ref, texts, step) -> dict:
    """DIR/adapter (the artifact's files, base reference rewritten) and DIR/base (the base as a standard
    HF folder), checked by loading both with plain transformers + PEFT against tuneops' own load."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_out = out / "adapter"
    shutil.copytree(art_path, adapter_out, copy_function=shutil.copyfile)
    base_out = out / "base"
    if base_ref is None:
        step("copying the base model…")
        shutil.copytree(base_path, base_out, copy_function=shutil.copyfile)
        compat = _add_legacy_config_keys(base_out / "config.json")
        reference = str((dest / "base").resolve())
    else:
        compat = []
        reference = base_ref.strip()
    cfg_path = adapter_out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = reference
    if cfg.get("tokenizer_name_or_path"):  # prompt tuning initialised from text names its tokenizer too
        cfg["tokenizer_name_or_path"] = reference
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    step("loading the artifact as tuneops serves it…")
    ref_model, tok, inputs = _reference(store, art, art_path, texts)
    expected = _outputs(ref_model, inputs, tok)
    del ref_model
    step("reloading the export with plain transformers + PEFT…")
    plain_base = AutoModelForCausalLM.from_pretrained(base_out if base_ref is None else base_path,
                                                      dtype=torch.float32)
    plain = PeftModel.from_pretrained(plain_base, adapter_out).eval()
    got = _outputs(plain, inputs, tok, continuations=[e["greedy"] for e in expected])
    check = _verdict(_compare(expected, got), max_abs_logit_diff=RELOAD_MAX_LOGIT_DIFF,
                     what="the exported adapter on the exported base (plain PEFT)")
    details = _common_details(art, base, "peft", art_path)
    details.update(layout={"adapter": "adapter/", "base": None if base_ref else "base/"},
                   base_reference=reference, base_reference_kind="hub name (given, not verified)" if base_ref
                   else "absolute path of DIR/base", config_compat=compat, peft_type=cfg.get("peft_type"),
                   checks={"peft_reload": {**check, "against": "tuneops load (base + adapter, float32)"}},
                   vllm=_vllm_support(cfg, art), load=_load_hint_peft(dest, reference, base_ref, cfg, art,
                                             (art_path / "chat_template.jinja").exists()))
    _raise_if_failed(check, "the exported PEFT folder does not reproduce the artifact")
    return details


def _export_merged(store, art, art_path, base, base_path, out: Path, fmt: str, texts, bound: float, step) -> dict:
    """One standard HF model folder: an adapter merged into its base (``merge_and_unload``), or a full
    fine-tune's weights with the base's tokenizer. Checked by reloading the folder with plain
    transformers against the unmerged artifact."""
    merged_check = _write_merged_folder(store, art, art_path, base_path, out, texts, bound, step)
    details = _common_details(art, base, fmt, art_path)
    details.update(layout={"model": "./"}, config_compat=merged_check.pop("config_compat"),
                   checks={"merge" if art.kind == "adapter" else "reload": merged_check}, load=_load_hint_model())
    _raise_if_failed(merged_check, "the merged model differs from the adapter by more than the bound")
    return details


def _export_gguf(store, art, art_path, base, base_path, out: Path, scratch: Path, converter: Path, gguf_type: str,
                 texts, bound: float, step) -> dict:
    """The merged model (checked as for ``merged``) converted by llama.cpp's convert_hf_to_gguf.py, then
    read back: header and tokenizer with the ``gguf`` reader, numbers with transformers' GGUF loader."""
    import torch
    from transformers import AutoModelForCausalLM

    merged_dir = scratch / "merged"
    merged_dir.mkdir()
    merged_check = _write_merged_folder(store, art, art_path, base_path, merged_dir, texts, bound, step,
                                        keep_outputs=True)
    _raise_if_failed(merged_check, "the merged model differs from the adapter by more than the bound")
    expected, inputs, tok = merged_check.pop("_outputs")
    name = f"{art.id}.{GGUF_TYPES[gguf_type][0]}.gguf"
    step(f"converting to GGUF {GGUF_TYPES[gguf_type][0]} with llama.cpp's convert_hf_to_gguf.py…")
    t0 = time.perf_counter()
    _run_converter(converter, merged_dir, out / name, gguf_type, art.id)
    convert_s = round(time.perf_counter() - t0, 2)
    step("reading the GGUF back…")
    header = _read_gguf_header(out / name, tok, gguf_type, merged_dir)
    step("generating with the GGUF (transformers' GGUF loader)…")
    gguf_model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    got = _outputs(gguf_model, inputs, tok, continuations=[e["greedy"] for e in expected])
    del gguf_model
    bounds = GGUF_BOUNDS[gguf_type]
    readback = _verdict(_compare(expected, got), what=f"the GGUF {gguf_type} file", **bounds)
    readback["header"] = header
    if not header["passed"]:
        readback["passed"] = False
        readback["failures"] = header["failures"] + readback.get("failures", [])
    readback["against"] = "the merged model (float32, transformers)"
    details = _common_details(art, base, "gguf", art_path)
    details.update(gguf_type=gguf_type, gguf_file=name, convert_seconds=convert_s,
                   converter=f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python=={LLAMA_CPP_PYTHON} "
                             "(its vendored gguf-py)",
                   config_compat=merged_check.pop("config_compat"),
                   checks={"merge" if art.kind == "adapter" else "reload": merged_check, "gguf_readback": readback},
                   load=_load_hint_gguf(name))
    _raise_if_failed(readback, f"the GGUF {gguf_type} file does not reproduce the merged model")
    return details


def _write_merged_folder(store, art, art_path, base_path, out: Path, texts, bound: float, step,
                         keep_outputs: bool = False) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    step("loading the artifact as tuneops serves it…")
    model, tok, inputs = _reference(store, art, art_path, texts)
    expected = _outputs(model, inputs, tok)
    if art.kind == "adapter":
        step("merging the adapter into the base (merge_and_unload)…")
        model = model.merge_and_unload()
    step("saving the merged model…")
    model.save_pretrained(out, safe_serialization=True)
    del model
    _copy_tokenizer_files(base_path, out, art_path)
    compat = _add_legacy_config_keys(out / "config.json")
    step("reloading the merged model with plain transformers…")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    got = _outputs(reloaded, inputs, tok, continuations=[e["greedy"] for e in expected])
    if keep_outputs:  # the GGUF is compared with the merged model itself
        got_self = _outputs(reloaded, inputs, tok)
    del reloaded
    check = _verdict(_compare(expected, got), max_abs_logit_diff=bound,
                     what="the merged model" if art.kind == "adapter" else "the exported model")
    check["against"] = "tuneops load (base + adapter, unmerged, float32)" if art.kind == "adapter" \
        else "tuneops load (base with the full fine-tune's weights, float32)"
    check["config_compat"] = compat
    if keep_outputs:
        check["_outputs"] = (got_self, inputs, tok)
    return check


# -- loading and comparing -------------------------------------------------------------------
def _reference(store, art, art_path, texts):
    """(model, tokenizer, input ids): the artifact exactly as tuneops loads it for eval and serving
    (``pipeline.load_paired``): the verified base in float32, the artifact's chat template if it ships
    one, the adapter attached by PEFT, or a full fine-tune's weights loaded into the base."""
    from tuneops.eval.generate import encode_chat
    from tuneops.models.base import load_base

    model, tok = load_base(store, store.get_base(art.base_id))
    tpl = art_path / "chat_template.jinja"
    if tpl.exists():
        tok.chat_template = tpl.read_text(encoding="utf-8")
    if art.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, art_path)
    else:
        import torch
        from safetensors.torch import load_file

        with torch.no_grad():
            model.load_state_dict(load_file(str(art_path / "model.safetensors")), strict=False)
    model.eval()
    chats = [list(t) if isinstance(t, (list, tuple)) else [{"role": "user", "content": t}] for t in texts]
    if tok.chat_template:
        inputs = [encode_chat(tok, chat) for chat in chats]
    else:
        inputs = [tok("\n".join(m["content"] for m in chat)).input_ids for chat in chats]
    return model, tok, inputs


def _outputs(model, inputs: list[list[int]], tok, *, continuations: list[list[int]] | None = None) -> list[dict]:
    """Per input: the greedy continuation (CHECK_NEW_TOKENS), and the logits over input + continuation
    (``continuations`` — the reference's — when given, so both sides are scored on the same tokens)."""
    import torch

    out = []
    with torch.no_grad():
        for i, ids in enumerate(inputs):
            x = torch.tensor([ids])
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=CHECK_NEW_TOKENS,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            greedy = gen[0, len(ids):].tolist()
            seq = ids + (continuations[i] if continuations is not None else greedy)
            logits = model(input_ids=torch.tensor([seq])).logits[0].float()
            out.append({"greedy": greedy, "logits": logits})
    return out


def _compare(expected: list[dict], got: list[dict]) -> dict:
    """Max |logit difference| (the worst single logit), top-1 agreement over every scored position,
    mean KL(expected ‖ got) of the next-token distributions (what llama.cpp's own quantisation
    reports use: robust where a max over 49k logits per position is dominated by the tail), and
    whether the greedy continuations are identical."""
    import torch

    max_diff, agree, positions, identical, kl_sum, kl_max, per_prompt = 0.0, 0, 0, 0, 0.0, 0.0, []
    for e, g in zip(expected, got):
        d = (e["logits"] - g["logits"]).abs().max().item()
        same_top1 = (e["logits"].argmax(-1) == g["logits"].argmax(-1))
        logp_e = torch.log_softmax(e["logits"].double(), -1)
        kl = (logp_e.exp() * (logp_e - torch.log_softmax(g["logits"].double(), -1))).sum(-1).clamp_min(0)
        max_diff = max(max_diff, d)
        kl_sum += kl.sum().item()
        kl_max = max(kl_max, kl.max().item())
        agree += int(same_top1.sum())
        positions += same_top1.numel()
        same = e["greedy"] == g["greedy"]
        identical += same
        first = next((i for i, (a, b) in enumerate(zip(e["greedy"], g["greedy"])) if a != b),
                     None if same else min(len(e["greedy"]), len(g["greedy"])))
        per_prompt.append({"max_abs_logit_diff": d, "mean_kl": kl.mean().item(), "greedy_identical": same,
                           "first_divergence": first})
    return {"max_abs_logit_diff": max_diff, "top1_agreement": agree / positions if positions else 1.0,
            "mean_kl": kl_sum / positions if positions else 0.0, "max_kl": kl_max,
            "greedy_identical": f"{identical}/{len(expected)}", "greedy_identical_fraction": identical / len(expected),
            "prompts": per_prompt, "positions": positions, "new_tokens": CHECK_NEW_TOKENS}


def _verdict(result: dict, *, what: str, max_abs_logit_diff: float, min_top1_agreement: float | None = None,
             max_mean_kl: float | None = None) -> dict:
    failures = []
    if not result["max_abs_logit_diff"] <= max_abs_logit_diff:  # NaN fails too
        failures.append(f"{what}: max |logit difference| {result['max_abs_logit_diff']:.3g} > bound "
                        f"{max_abs_logit_diff:g}")
    if min_top1_agreement is not None and not result["top1_agreement"] >= min_top1_agreement:
        failures.append(f"{what}: top-1 agreement {result['top1_agreement']:.3f} < {min_top1_agreement}")
    if max_mean_kl is not None and not result["mean_kl"] <= max_mean_kl:
        failures.append(f"{what}: mean KL {result['mean_kl']:.3g} > {max_mean_kl:g}")
    bounds = {"max_abs_logit_diff": max_abs_logit_diff}
    if min_top1_agreement is not None:
        bounds["min_top1_agreement"] = min_top1_agreement
    if max_mean_kl is not None:
        bounds["max_mean_kl"] = max_mean_kl
    return {**result, "bounds": bounds, "passed": not failures, **({"failures": failures} if failures else {})}


def _raise_if_failed(check: dict, message: str) -> None:
    if not check["passed"]:
        raise ExportCheckFailed(f"{message}: {'; '.join(check['failures'])}; nothing was written",
                                hint="inspect the artifact (`tuneops registry show`), or raise the bound with "
                                     "--max-logit-diff if the difference is expected (e.g. a very large adapter)")


# -- files ---------------------------------------------------------------------------------
def _peft_type(art_path: Path) -> str | None:
    cfg = art_path / "adapter_config.json"
    if not cfg.exists():
        return None
    try:
        return str(json.loads(cfg.read_text()).get("peft_type") or "").upper() or None
    except ValueError as e:
        raise InvalidInput(f"{cfg}: not valid JSON ({e})") from None


def _copy_tokenizer_files(base_path: Path, out: Path, art_path: Path) -> None:
    """The base's tokenizer files verbatim (not re-saved: loading may set a pad token), then the
    artifact's own chat template when it ships one (a recipe that overrode the template)."""
    for p in sorted(base_path.iterdir()):
        if p.is_file() and p.name not in _WEIGHT_FILES and not p.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copyfile(p, out / p.name)
    tpl = art_path / "chat_template.jinja"
    if tpl.exists():
        shutil.copyfile(tpl, out / "chat_template.jinja")
        tok_cfg = out / "tokenizer_config.json"
        if tok_cfg.exists():
            cfg = json.loads(tok_cfg.read_text())
            if cfg.pop("chat_template", None) is not None:  # the .jinja file must be the only template
                tok_cfg.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _add_legacy_config_keys(config_path: Path) -> list[str]:
    """transformers 5 writes ``rope_theta`` inside ``rope_parameters``; transformers 4.x does not look
    there and silently uses its default (10,000 instead of SmolLM2's 100,000), so it generates
    differently without any error. Mirror the value at the top level, where 4.x reads it (transformers
    5 reads both and ignores the copy). Returns the keys added."""
    cfg = json.loads(config_path.read_text())
    added = []
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        added.append("rope_theta")
    if added:
        config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return added


def _normalise_permissions(out: Path) -> None:
    """Store trees and temp dirs are private (0700); an export is for others to read: the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [out, *out.rglob("*")]:
        if p.is_dir():
            p.chmod(0o777 & ~mask)
        elif p.is_file():
            p.chmod(0o666 & ~mask)


# -- GGUF: the converter and the read-back ---------------------------------------------------
def _cache_root() -> Path:
    root = os.environ.get("TUNEOPS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "tuneops"
    return Path(root)


def _fetch_hint() -> str:
    return (f"where PyPI is reachable run `pip download --no-deps --no-binary :all: llama-cpp-python=={LLAMA_CPP_PYTHON} "
            f"-d DIR`, then set {LLAMA_CPP_ENV}=DIR/llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz "
            "(or point it at a llama.cpp checkout that has convert_hf_to_gguf.py)")


def llama_cpp_converter(*, on_step: Callable[[str], None] | None = None) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py with its ``conversion`` package and
    ``gguf-py``. ``$TUNEOPS_LLAMA_CPP`` may name a llama.cpp checkout or a llama-cpp-python sdist;
    otherwise the pinned sdist is fetched with pip into the cache on first use (~77 MB; nothing is
    built) and only the converter's Python files are kept."""
    _require_sentencepiece()
    given = os.environ.get(LLAMA_CPP_ENV)
    if given:
        p = Path(given).expanduser()
        if p.is_dir() and (p / "convert_hf_to_gguf.py").is_file():
            return p
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            return _unpack_converter(p, _cache_root() / f"llama-cpp-{_sha256_short(p)}")
        raise NotFound(f"{LLAMA_CPP_ENV}={given} is neither a llama.cpp folder with convert_hf_to_gguf.py nor a "
                       "llama-cpp-python sdist (.tar.gz)", hint=_fetch_hint())
    target = _cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    if (target / ".complete").exists():
        return target / "llama.cpp"
    (on_step or (lambda _m: None))(f"fetching the llama-cpp-python {LLAMA_CPP_PYTHON} sdist for its converter "
                                   "(first use only, ~77 MB)…")
    _cache_root().mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix="llama-cpp-sdist-", dir=_cache_root()))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(download)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NotFound(f"could not fetch the llama-cpp-python {LLAMA_CPP_PYTHON} sdist ({e})",
                           hint=_fetch_hint()) from None
        sdists = sorted(download.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            last = next((ln for ln in reversed((proc.stderr or proc.stdout or "").splitlines()) if ln.strip()), "")
            raise NotFound(f"could not fetch the llama-cpp-python {LLAMA_CPP_PYTHON} sdist for llama.cpp's GGUF "
                           f"converter (pip exit {proc.returncode}: {last.strip()[:300]})", hint=_fetch_hint())
        return _unpack_converter(sdists[0], target)
    finally:
        shutil.rmtree(download, ignore_errors=True)


def _sha256_short(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def _unpack_converter(sdist: Path, target: Path) -> Path:
    """Extract the converter's files from an sdist into ``target/llama.cpp`` (atomically: a half-done
    extraction is never used)."""
    if (target / ".complete").exists():
        return target / "llama.cpp"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                parts = m.name.split("/vendor/llama.cpp/", 1)
                if len(parts) == 2 and parts[0].count("/") == 0 and (m.isfile() or m.isdir()) and \
                        any(parts[1] == p or parts[1].startswith(p) for p in _CONVERTER_PARTS):
                    m.name = "llama.cpp/" + parts[1]
                    members.append(m)
            if not any(m.name == "llama.cpp/convert_hf_to_gguf.py" for m in members):
                raise NotFound(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py", hint=_fetch_hint())
            tar.extractall(tmp, members=members, filter="data")
        (tmp / ".complete").write_text(json.dumps({"sdist": sdist.name, "sha256": _sha256_short(sdist)}) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / ".complete").exists():  # nobody else finished it either
                raise
    except (tarfile.TarError, OSError) as e:
        raise NotFound(f"could not unpack llama.cpp's converter from {sdist}: {e}", hint=_fetch_hint()) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "llama.cpp"


def _require_sentencepiece() -> None:
    # llama.cpp's Llama converter tries a sentencepiece vocabulary first and needs the module even
    # for BPE tokenizers such as SmolLM2's.
    if importlib.util.find_spec("sentencepiece") is None:
        raise NotFound("GGUF export needs the sentencepiece package (llama.cpp's converter imports it)",
                       hint="pip install 'sentencepiece>=0.2,<0.3'")


def _run_converter(converter: Path, model_dir: Path, outfile: Path, gguf_type: str, name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_LOCAL_GGUF")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONIOENCODING="utf-8")
    cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(outfile),
           "--outtype", gguf_type, "--model-name", name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(converter), timeout=3600)
    except subprocess.TimeoutExpired:
        raise TuneopsError("llama.cpp's convert_hf_to_gguf.py did not finish within an hour") from None
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n    ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise TuneopsError(f"llama.cpp's convert_hf_to_gguf.py failed (exit {proc.returncode}):\n    {tail}",
                           hint=f"the converter is llama-cpp-python=={LLAMA_CPP_PYTHON}'s vendored llama.cpp; "
                                f"a newer architecture may need a newer one ({LLAMA_CPP_ENV}=a llama.cpp checkout)")


def _read_gguf_header(path: Path, tok, gguf_type: str, merged_dir: Path) -> dict:
    """What a GGUF runtime will use, read with the ``gguf`` reader: architecture, file type, tensor
    types, rope base, vocabulary (every token of the HF tokenizer at its id), BOS/EOS and the chat
    template; each compared with the merged model's."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    cfg = json.loads((merged_dir / "config.json").read_text())
    arch = field("general.architecture")
    failures = []
    want_type_name, want_file_type = GGUF_TYPES[gguf_type]
    tensor_types = dict(Counter(t.tensor_type.name for t in reader.tensors))
    if arch != cfg.get("model_type"):
        failures.append(f"architecture {arch!r} != config model_type {cfg.get('model_type')!r}")
    if field("general.file_type") != want_file_type:
        failures.append(f"general.file_type {field('general.file_type')} != {want_file_type} ({want_type_name})")
    if want_type_name not in tensor_types:
        failures.append(f"no {want_type_name} tensors ({tensor_types})")
    rope = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    freq_base = field(f"{arch}.rope.freq_base")
    if rope is not None and (freq_base is None or abs(float(freq_base) - float(rope)) > 1e-6 * float(rope)):
        failures.append(f"{arch}.rope.freq_base {freq_base} != rope_theta {rope}")
    tokens = field("tokenizer.ggml.tokens") or []
    hf_tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    mismatched = [i for i, t in enumerate(hf_tokens) if i >= len(tokens) or tokens[i] != t]
    if mismatched:
        failures.append(f"{len(mismatched)} tokenizer ids differ from the HF tokenizer (first: id {mismatched[0]})")
    for key, want in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id)):
        have = field(f"tokenizer.ggml.{key}_token_id")
        if want is not None and have != want:
            failures.append(f"{key} token id {have} != {want}")
    template = field("tokenizer.chat_template")
    if (tok.chat_template or None) != (template or None):
        failures.append("the chat template in the GGUF differs from the one the artifact is served with")
    return {"passed": not failures, **({"failures": failures} if failures else {}),
            "architecture": arch, "file_type": field("general.file_type"), "tensor_count": len(reader.tensors),
            "tensor_types": tensor_types, "rope_freq_base": freq_base, "vocab_size": len(tokens),
            "tokens_identical": not mismatched, "chat_template_identical": (tok.chat_template or None) == (template or None),
            "bytes": path.stat().st_size}


# -- what the export says about itself ---------------------------------------------------------
def _signature(store: Store, art: ArtifactRecord) -> dict:
    """The artifact's signature status (verified by a trusted key, unsigned, …), recorded with the export
    so a consumer of the files can tell whether a key vouched for what they came from."""
    try:
        from tuneops.release.lineage import signature_status
    except ImportError:
        return {"status": "unknown"}
    return signature_status(store, art)



def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "safetensors", "gguf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _common_details(art: ArtifactRecord, base: BaseModelRecord, fmt: str, artifact_dir_path: Path) -> dict:
    lineage = art.lineage or {}
    return {
        "export_format_version": 1, "format": fmt, "tuneops": code_version(),
        "artifact": {"id": art.id, "kind": art.kind, "method": art.method, "run": art.run_id,
                     "datasets": lineage.get("datasets"), "recipe_sha256": lineage.get("recipe_sha256"),
                     "chat_template_sha256": lineage.get("chat_template_sha256")},
        "base": {"id": base.id, "name": base.name, "license": base.license, "source": base.source,
                 "weights_sha256": base.weights_sha256},
        "exported_with": _versions(), "compatibility": _compatibility(fmt),
        "chat_template": "artifact" if (artifact_dir_path / "chat_template.jinja").exists() else "base",
    }


def _compatibility(fmt: str) -> dict:
    v = _versions()
    if fmt == "gguf":
        return {"llama.cpp": f"written by the convert_hf_to_gguf.py vendored in llama-cpp-python=={LLAMA_CPP_PYTHON} "
                             "(GGUF v3); runtimes built on llama.cpp read that format (no llama.cpp binary is run by "
                             "tuneops: the file is checked with the gguf reader and transformers' GGUF loader)",
                "transformers": f"reads it with gguf_file= (tested transformers {v.get('transformers')}, "
                                f"gguf {v.get('gguf')}); it de-quantizes to float32"}
    out = {"transformers": f">=5.0 (tested {v.get('transformers')}); 4.x only through the top-level rope_theta "
                           "this export adds", "torch": f"tested {v.get('torch')}",
           "rope_theta_note": "the config is written by transformers 5, which keeps rope_theta inside "
                              "rope_parameters; transformers 4.x does not look there and silently uses rope_theta "
                              "10,000 instead of the model's value (SmolLM2: 100,000), so it generates differently "
                              "without any error. This export also writes the value at the top level "
                              "(config_compat), where 4.x reads it; transformers 5 reads the same value either way."}
    if fmt == "peft":
        out["peft"] = (f">={v.get('peft')} (tested); adapter_config.json is written by PEFT {v.get('peft')} and "
                       "older PEFT releases may refuse keys they do not know")
    out["vllm"] = ("not run by tuneops (no vLLM on CPU machines). vLLM reads the config through its own transformers "
                   "(see rope_theta). " + ("Adapters: --enable-lora --lora-modules NAME=DIR/adapter on DIR/base, for "
                                          "LoRA / rsLoRA only (vLLM loads no DoRA, IA3, prefix or prompt-tuning "
                                          "adapters, and no modules_to_save)" if fmt == "peft" else
                                          "A merged model is a plain model folder: vllm serve DIR"))
    return out


def _vllm_support(cfg: dict, art: ArtifactRecord) -> dict:
    why = []
    if cfg.get("peft_type") != "LORA":
        why.append(f"peft_type {cfg.get('peft_type')} (vLLM loads LoRA only)")
    if cfg.get("use_dora"):
        why.append("DoRA")
    if cfg.get("modules_to_save"):
        why.append(f"modules_to_save {cfg['modules_to_save']}")
    if cfg.get("bias") not in (None, "none"):
        why.append(f"bias {cfg['bias']!r}")
    r = int(cfg.get("r") or 0)
    rank = next((x for x in (8, 16, 32, 64, 128, 256, 320, 512) if x >= r), r)
    return {"supported": not why, **({"why_not": why} if why else {}), "max_lora_rank": rank if not why else None,
            "method": art.method}


def _load_hint_peft(dest: Path, reference: str, base_ref: str | None, cfg: dict, art: ArtifactRecord,
                    own_template: bool) -> list[str]:
    base = reference if base_ref else str(dest / "base")
    lines = [f"AutoPeftModelForCausalLM.from_pretrained({str(dest / 'adapter')!r})",
             f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {str(dest / 'adapter')!r})"]
    vllm = _vllm_support(cfg, art)
    if vllm["supported"]:
        lines.append(f"vllm serve {base} --enable-lora --max-lora-rank {vllm['max_lora_rank']} "
                     f"--lora-modules {art.id}={dest / 'adapter'}"
                     + (f" --chat-template {dest / 'adapter' / 'chat_template.jinja'}" if own_template else ""))
    return lines


def _load_hint_model() -> list[str]:
    return ["AutoModelForCausalLM.from_pretrained(DIR)", "vllm serve DIR"]


def _load_hint_gguf(name: str) -> list[str]:
    return [f"llama-cli -m DIR/{name}", f"AutoModelForCausalLM.from_pretrained(DIR, gguf_file={name!r})"]


def _write_docs(out: Path, art: ArtifactRecord, base: BaseModelRecord, fmt: str, details: dict,
                payload: dict[str, str]) -> None:
    """export.json (everything recorded, with each file's size and sha256) and EXPORT.md (how to load
    it, what was checked, which versions) beside the exported files."""
    details["files"] = {rel: {"bytes": (out / rel).stat().st_size, "sha256": sha} for rel, sha in payload.items()}
    (out / "export.json").write_text(json.dumps(details, indent=2, sort_keys=True, default=str) + "\n")
    (out / "EXPORT.md").write_text(_export_md(art, base, fmt, details), encoding="utf-8")


def _fmt_check(name: str, c: dict) -> str:
    b = c.get("bounds", {})
    line = (f"- **{name}** ({'passed' if c.get('passed') else 'FAILED'}), against {c.get('against', '?')}: "
            f"max |logit difference| {c['max_abs_logit_diff']:.3g} (bound {b.get('max_abs_logit_diff', '—')}), "
            f"top-1 agreement {c['top1_agreement']:.4f} over {c['positions']} positions"
            + (f" (bound ≥ {b['min_top1_agreement']})" if "min_top1_agreement" in b else "")
            + f", mean KL {c['mean_kl']:.2g}" + (f" (bound {b['max_mean_kl']:g})" if "max_mean_kl" in b else "")
            + f", greedy continuations ({c['new_tokens']} tokens) identical {c['greedy_identical']}")
    h = c.get("header")
    if h:
        line += (f"; header: {h['architecture']}, file type {h['file_type']}, {h['tensor_count']} tensors "
                 f"{h['tensor_types']}, rope base {h['rope_freq_base']}, tokenizer ids identical: "
                 f"{h['tokens_identical']}, chat template identical: {h['chat_template_identical']}")
    return line


def _export_md(art: ArtifactRecord, base: BaseModelRecord, fmt: str, d: dict) -> str:
    sig = d["artifact"].get("signature") or {}
    lines = [f"# {art.id} — {fmt} export", "",
             f"Artifact `{art.id}` ({art.kind}, method {art.method}) on base `{base.id}` ({base.name}, licence "
             f"{base.license}), exported by tuneops {d['tuneops']}. `export.json` lists every file with its size and "
             "sha256 (check them with `sha256sum`); the export is recorded in the store with the digest of that "
             "manifest (`tuneops registry exports`). Artifact signature: "
             + (f"verified (key {sig.get('key_id')}" + (f", {sig['signer']}" if sig.get("signer") else "") + ")."
                if sig.get("status") == "verified" else f"{sig.get('status', 'unknown')}."), ""]
    if fmt == "peft" and d.get("layout", {}).get("adapter"):
        ref = d["base_reference"]
        lines += ["## Layout", "",
                  "- `adapter/`: the PEFT adapter, as trained (weights unchanged). Its `adapter_config.json` "
                  f"names the base as `{ref}` ({d['base_reference_kind']}).",
                  "- `base/`: the base model as a standard Hugging Face folder (float32 safetensors, tokenizer, "
                  "chat template)." if d["layout"].get("base") else
                  f"- no `base/`: you named the base `{ref}`; make sure it is the same weights (sha256 of the "
                  f"base's safetensors: `{base.weights_sha256}`).", "",
                  "If you move the folder, `base_model_name_or_path` no longer resolves: load the base "
                  "yourself and attach the adapter (second line below).", ""]
    elif fmt == "gguf":
        lines += ["## Layout", "", f"- `{d['gguf_file']}`: the merged model as GGUF {d['gguf_type'].upper()}, with "
                  "the tokenizer and chat template inside.", ""]
    else:
        lines += ["## Layout", "", "- a standard Hugging Face model folder (safetensors, config, tokenizer, chat "
                  "template)" + (": the adapter merged into its base with PEFT's `merge_and_unload`."
                                 if art.kind == "adapter" else ": the full fine-tune's weights."), ""]
    lines += ["## Load it", "", "```", *d.get("load", []), "```", ""]
    where = "inside the GGUF file" if fmt == "gguf" else "shipped in the folder"
    tpl = "the artifact's own chat template (a recipe override)" if d["chat_template"] == "artifact" \
        else "the base's chat template"
    lines += [f"Prompt it with {tpl} ({where}): it is the one the artifact was "
              "evaluated and served with" + (" (SmolLM2's adds a default system prompt when a chat has none)."
                                              if "smollm" in base.name.lower() else "."), ""]
    if d.get("vllm"):
        v = d["vllm"]
        lines += ["vLLM: " + ("supported (LoRA)." if v["supported"] else
                              "not loadable by vLLM: " + ", ".join(v["why_not"]) + "; use --format merged."), ""]
    lines += ["## Checks (all passed before anything was written)", ""]
    lines += [_fmt_check(name, c) for name, c in d.get("checks", {}).items()]
    lines += ["", "## Supported versions", ""]
    lines += [f"- {k}: {v}" for k, v in d["compatibility"].items() if k != "rope_theta_note"]
    if "rope_theta_note" in d["compatibility"]:
        lines += ["", "**rope_theta and transformers 4.x.** " + d["compatibility"]["rope_theta_note"], ""]
    if d.get("config_compat") and fmt != "gguf":
        lines += [f"Added to config.json for older readers: {', '.join(d['config_compat'])}.", ""]
    lines += ["Exported with: " + ", ".join(f"{k} {v}" for k, v in d["exported_with"].items()) + ".", ""]
    return "\n".join(lines)
