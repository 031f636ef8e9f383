"""vLLM behind tuneops' front: ``tuneops serve --engine vllm``.

Three pieces, each usable on its own:

- :func:`build_command` turns the registry into a ``vllm serve`` command line (a :class:`VLLMPlan`):
  the base exported once as a standard Hugging Face folder, every alias target exported as a plain
  PEFT folder, each LoRA module named by its **artifact id** (``ad-…``, the content hash) — never by
  an alias, so no cache in vLLM (its LoRA LRU, its prefix cache, the ``lora_name`` → id map of its
  API server) can ever serve one artifact's weights under a name that has since moved. Only
  artifacts that are intact, validly signed by a key the store trusts and before their sunset
  (:func:`check_release`) are served, and adapters vLLM cannot load (DoRA, IA3, prefix / prompt
  tuning, ``modules_to_save``, a bias, a full fine-tune) are refused by name before anything starts.
- :class:`VLLMProcess` runs that command in its own process group, waits for ``GET /health``, logs to
  a file, and stops it (SIGTERM, then SIGKILL).
- :class:`VLLMBackend` is the front's async client: runtime LoRA loading
  (``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``, which vLLM only serves with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), an LRU bound on what is registered, alias moves that
  load the new target before unloading the old one once its in-flight requests finished, and
  chat / completion forwarding (JSON or SSE) whose upstream failures always come back as
  OpenAI-shaped errors — an engine that is down or broken is a 503 with Retry-After, never a 500.

vLLM facts this relies on (checked against vLLM's source; see docs/serving.md, "Serving with vLLM"):
``--max-lora-rank`` accepts only 1, 8, 16, 32, 64, 128, 256, 320, 512 (default 16); ``--max-loras``
(LoRAs in one batch) defaults to 1; ``--max-cpu-loras`` defaults to ``max_loras`` and must be >= it;
``--lora-modules`` takes ``name=path`` items or JSON ``{"name", "path", "base_model_name"}``; PEFT
configs with ``use_dora``, ``modules_to_save`` or a bias are rejected by vLLM's PEFTHelper.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Mapping

from tuneops.errors import InvalidInput, NotFound, TuneopsError
from tuneops.store import Store
from tuneops.store.schema import ArtifactRecord, BaseModelRecord

log = logging.getLogger("tuneops.serve.vllm")

RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
DEFAULT_PORT = 8001
DEFAULT_MAX_LORAS = 8          # vLLM's own default is 1 LoRA per batch; SGLang's --max-loras-per-batch is 8
RETRY_AFTER_S = 5
BASE_MARKER = ".tuneops-vllm-base.json"
ADAPTER_MARKER = ".tuneops-vllm-adapter.json"
_SERVABLE_PEFT = "LORA"


# -- errors ------------------------------------------------------------------------------------

class VLLMNotInstalled(TuneopsError):
    """``vllm`` is not on PATH (and not importable): say so, with how to get it."""

    http_status = 503
    error_type = "server_error"
    error_code = "engine_not_installed"


class VLLMStartFailed(TuneopsError):
    """The vLLM process exited, or never answered /health in time."""

    http_status = 503
    error_type = "server_error"
    error_code = "engine_start_failed"


class Unservable(InvalidInput):
    """Alias targets that vLLM cannot serve (or that may not be served at all); ``problems`` lists
    (alias, artifact id, why) for each."""

    def __init__(self, message: str, *, hint: str | None = None, problems: list[tuple[str, str, str]]):
        super().__init__(message, hint=hint)
        self.problems = problems


class UpstreamError(TuneopsError):
    """An error from (or about reaching) the vLLM server, already in the shape the client gets:
    ``http_status``, ``error_type``, ``error_code``, ``message``, and ``retry_after`` (seconds) for
    503s. ``body()`` is the OpenAI error object; ``headers`` (a dict) carries Retry-After."""

    def __init__(self, status: int, message: str, *, type_: str = "server_error", code: str | None = None,
                 param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.http_status = status
        self.error_type = type_
        self.error_code = code
        self.param = param
        self.retry_after = retry_after
        # an attribute, as the front's TuneopsError handler reads it (``getattr(exc, "headers")``)
        self.headers: dict[str, str] = {"Retry-After": str(retry_after)} if retry_after is not None else {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.error_code}}


# -- what vLLM can load ------------------------------------------------------------------------

def read_adapter_config(path: Path) -> dict:
    cfg = Path(path) / "adapter_config.json"
    if not cfg.exists():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except ValueError as e:
        raise InvalidInput(f"{cfg}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def adapter_rank(cfg: Mapping) -> int:
    """The largest LoRA rank in the adapter: ``r`` and any per-module ``rank_pattern`` override."""
    ranks = [int(cfg.get("r") or 0)]
    pattern = cfg.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += [int(v) for v in pattern.values() if isinstance(v, (int, float))]
    return max(ranks)


def vllm_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise InvalidInput(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def vllm_problems(artifact: ArtifactRecord, cfg: Mapping) -> list[str]:
    """Why vLLM cannot serve this artifact as a LoRA module (empty: it can). Mirrors vLLM's
    PEFTHelper (``use_dora``, ``modules_to_save``, ``bias``) and its LoRA-only loader."""
    if artifact.kind != "adapter":
        return [f"it is a full fine-tune ({artifact.method}), not an adapter: serve it as its own base "
                "(`tuneops registry export --format merged`, then `vllm serve DIR`)"]
    why = []
    peft_type = str(cfg.get("peft_type") or "").upper()
    if peft_type != _SERVABLE_PEFT:
        kind = {"PREFIX_TUNING": "prefix tuning", "PROMPT_TUNING": "prompt tuning", "P_TUNING": "p-tuning",
                "IA3": "IA3", "ADALORA": "AdaLoRA", "LOHA": "LoHa", "LOKR": "LoKr"}.get(peft_type, peft_type or "?")
        why.append(f"it is a {kind} adapter (peft_type {peft_type or 'missing'}); vLLM loads LoRA adapters only")
    if cfg.get("use_dora"):
        why.append("it is DoRA (use_dora); vLLM does not support DoRA")
    if cfg.get("modules_to_save"):
        why.append(f"it trains whole modules (modules_to_save {cfg['modules_to_save']}); vLLM needs none")
    if cfg.get("bias") not in (None, "none"):
        why.append(f"it trains biases (bias {cfg['bias']!r}); vLLM does not load adapter biases")
    if peft_type == _SERVABLE_PEFT and adapter_rank(cfg) > VLLM_LORA_RANKS[-1]:
        why.append(f"its rank {adapter_rank(cfg)} is above vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")
    return why


# -- the plan ----------------------------------------------------------------------------------

@dataclass
class LoRAModule:
    """One adapter as vLLM serves it: named by its artifact id, loaded from its exported folder."""

    artifact_id: str
    path: Path                      # the exported PEFT folder (adapter_config.json + weights)
    rank: int
    method: str
    aliases: list[str] = field(default_factory=list)
    chat_template: str | None = None   # the artifact's own template, when it ships one

    def cli_item(self) -> str:
        """``name=path`` (vLLM's short form) unless the path could be misread by its parser, which
        splits on ``=`` and takes anything with a comma for JSON: then the JSON form."""
        p = str(self.path)
        if "=" in p or "," in p:
            return json.dumps({"name": self.artifact_id, "path": p})
        return f"{self.artifact_id}={p}"


@dataclass
class VLLMPlan:
    """What ``tuneops serve --engine vllm`` starts: ``argv`` with ``env`` added to the environment."""

    argv: list[str]
    env: dict[str, str]
    base_id: str
    base_path: Path
    served_model_name: str          # the base's name in vLLM (= base id): requests for the bare base use it
    host: str
    port: int
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    dtype: str
    export_root: Path
    modules: dict[str, LoRAModule]  # artifact id -> module
    aliases: dict[str, str]         # "name@stage" -> artifact id
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (alias, artifact, why) not served
    request_chat_templates: bool = True  # started with --trust-request-chat-template

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    def command_line(self) -> str:
        """The command as one shell line (env included), for logs and docs."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}".strip()

    def backend(self, *, adapter_path: Callable[[ArtifactRecord | str], Path] | None = None, **kw) -> "VLLMBackend":
        """A client for the server this plan starts, knowing its static modules and alias targets."""
        return VLLMBackend(self.url, base_name=self.served_model_name, max_cpu_loras=self.max_cpu_loras,
                           modules=self.modules, alias_targets=self.aliases, adapter_path=adapter_path,
                           request_chat_templates=self.request_chat_templates, **kw)


def build_command(store: Store, base_id: str, *, aliases: Iterable[str] | None = None,
                  host: str = "127.0.0.1", port: int = DEFAULT_PORT, max_loras: int = DEFAULT_MAX_LORAS,
                  max_cpu_loras: int | None = None, max_lora_rank: int | None = None, dtype: str = "auto",
                  extra_args: Iterable[str] = (), export_root: Path | None = None, executable: str = "vllm",
                  checked_exports: bool = True, on_unservable: str = "refuse",
                  request_chat_templates: bool = True,
                  on_step: Callable[[str], None] | None = None) -> VLLMPlan:
    """Export the base and every alias target on it, and build the ``vllm serve`` command.

    ``aliases``: ``name@stage`` refs to serve (default: every alias whose target is on this base;
    aliases of other bases are left out). Each target must be an intact, validly signed, non-sunset
    LoRA adapter on ``base_id`` that vLLM can load; otherwise :class:`Unservable` names each one and
    why (``on_unservable="skip"`` leaves them out instead, listed in ``plan.skipped``).

    ``max_lora_rank`` defaults to the smallest value vLLM accepts that holds the largest adapter rank
    (at least vLLM's default 16, so adapters promoted later with ranks up to 16 load at runtime);
    a given value below an adapter's rank is refused. ``max_cpu_loras`` defaults to enough for every
    module (and at least ``max_loras``).

    Exports go to ``export_root`` (default ``STORE/exports/vllm/BASE_ID``): ``base/`` once, and
    ``adapters/ARTIFACT_ID/adapter`` per artifact, reused while their files still match what was
    written. ``checked_exports`` runs them through ``registry export --format peft`` (recorded, and
    checked to give the same logits as tuneops' own load: loads the base on CPU, so for big bases
    pass False to copy the verified files instead).

    ``request_chat_templates`` adds ``--trust-request-chat-template`` (vLLM >= 0.10.2 honours a
    request's ``chat_template`` only with it): an adapter that ships its own chat template is then
    prompted with it (the backend sends it per request; a client's own template is never forwarded).
    Without it such adapters are refused, since vLLM would prompt them with the base's template."""
    from tuneops.models.base import resolve_base
    from tuneops.release.registry import aliases as all_aliases, parse_alias, resolve_alias

    step = on_step or (lambda _m: None)
    if on_unservable not in ("refuse", "skip"):
        raise InvalidInput(f"on_unservable must be 'refuse' or 'skip', not {on_unservable!r}")
    if not isinstance(max_loras, int) or max_loras < 1:
        raise InvalidInput(f"--max-loras must be an integer >= 1 (got {max_loras!r})")
    if max_cpu_loras is not None and max_cpu_loras < max_loras:
        raise InvalidInput(f"--max-cpu-loras ({max_cpu_loras}) must be >= --max-loras ({max_loras}); vLLM refuses "
                           "to start otherwise")
    if max_lora_rank is not None and max_lora_rank not in VLLM_LORA_RANKS:
        raise InvalidInput(f"--max-lora-rank {max_lora_rank} is not one vLLM accepts",
                           hint=f"use one of {', '.join(map(str, VLLM_LORA_RANKS))}")
    if not (1 <= int(port) <= 65535):
        raise InvalidInput(f"port {port} is not a TCP port")
    base = resolve_base(store, base_id)

    if aliases is None:
        refs = [f"{a.name}@{a.stage}" for a in all_aliases(store)]
        explicit = False
    else:
        refs = []
        for ref in aliases:
            name, stage = parse_alias(ref)
            refs.append(f"{name}@{stage}")
        explicit = True

    problems: list[tuple[str, str, str]] = []
    targets: dict[str, ArtifactRecord] = {}
    alias_map: dict[str, str] = {}
    for ref in dict.fromkeys(refs):
        try:
            art = resolve_alias(store, ref)
        except NotFound as e:
            problems.append((ref, "-", e.message))
            continue
        if art.base_id != base.id:
            if explicit:
                problems.append((ref, art.id, f"it is trained on {art.base_id}, not on the served base {base.id}"))
            continue
        why = _release_problems(store, art)
        if not why:
            art_dir = _artifact_dir(store, art)
            why = vllm_problems(art, read_adapter_config(art_dir) if art.kind == "adapter" else {})
            if not why and not request_chat_templates and (art_dir / "chat_template.jinja").exists():
                why = [_OWN_TEMPLATE]
        if why:
            problems.append((ref, art.id, "; ".join(why)))
            continue
        targets[art.id] = art
        alias_map[ref] = art.id
    if problems and on_unservable == "refuse":
        lines = "\n  ".join(f"{alias} -> {aid}: {why}" for alias, aid, why in problems)
        raise Unservable(f"{len(problems)} alias target(s) cannot be served by vLLM:\n  {lines}",
                         hint="promote a LoRA adapter to those aliases (or roll them back), serve them with the "
                              "embedded engine, or leave them out with --skip-unservable", problems=problems)

    ranks = {aid: adapter_rank(read_adapter_config(_artifact_dir(store, art))) for aid, art in targets.items()}
    needed = vllm_rank(max([16, *ranks.values()]))
    if max_lora_rank is None:
        max_lora_rank = needed
    else:
        too_big = [f"{aid} (rank {r})" for aid, r in ranks.items() if r > max_lora_rank]
        if too_big:
            raise InvalidInput(f"--max-lora-rank {max_lora_rank} is below the rank of {', '.join(too_big)}",
                               hint=f"use --max-lora-rank {vllm_rank(max(ranks.values()))} or leave it out")
    if max_cpu_loras is None:
        max_cpu_loras = max(max_loras, len(targets))

    root = Path(export_root) if export_root is not None else store.home / "exports" / "vllm" / base.id
    step(f"exporting the base {base.id} for vLLM…")
    base_path = export_base(store, base, root / "base")
    modules: dict[str, LoRAModule] = {}
    for aid, art in targets.items():
        step(f"exporting {aid} for vLLM…")
        path = export_adapter(store, art, base_path, root / "adapters" / aid, checked=checked_exports)
        tpl = path / "chat_template.jinja"
        modules[aid] = LoRAModule(artifact_id=aid, path=path, rank=ranks[aid], method=art.method,
                                  aliases=sorted(a for a, t in alias_map.items() if t == aid),
                                  chat_template=tpl.read_text(encoding="utf-8") if tpl.exists() else None)

    argv = [executable, "serve", str(base_path), "--served-model-name", base.id, "--host", host,
            "--port", str(int(port)), "--dtype", dtype, "--enable-lora", "--max-loras", str(max_loras),
            "--max-cpu-loras", str(max_cpu_loras), "--max-lora-rank", str(max_lora_rank)]
    if modules:
        argv += ["--lora-modules", *(m.cli_item() for m in modules.values())]
    if request_chat_templates:
        # An adapter that ships its own template gets it per request (VLLMBackend adds it); newer vLLM
        # only honours a request's chat_template with this flag. The front never forwards a client's.
        argv.append("--trust-request-chat-template")
    argv += [str(a) for a in extra_args]
    return VLLMPlan(argv=argv, env={RUNTIME_LORA_ENV: "True"}, base_id=base.id, base_path=base_path,
                    served_model_name=base.id, host=host, port=int(port), max_loras=max_loras,
                    max_cpu_loras=max_cpu_loras, max_lora_rank=max_lora_rank, dtype=dtype, export_root=root,
                    modules=modules, aliases=alias_map, skipped=problems,
                    request_chat_templates=request_chat_templates)


_OWN_TEMPLATE = ("it ships its own chat template, which vLLM applies only per request "
                 "(--trust-request-chat-template, left out here); it would be prompted with the base's")


def _artifact_dir(store: Store, art: ArtifactRecord) -> Path:
    from tuneops.release.registry import artifact_dir

    return artifact_dir(store, art)


def _release_problems(store: Store, art: ArtifactRecord) -> list[str]:
    """Intact files, a valid trusted signature, a sunset not passed: what any serving path requires."""
    from tuneops.release.registry import check_release

    try:
        _artifact_dir(store, art)
        check_release(store, art)
    except TuneopsError as e:
        return [e.message.splitlines()[0]]
    return []


# -- exports -----------------------------------------------------------------------------------

def _files(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    from tuneops.store.blobs import verified_sha256

    return {str(p.relative_to(directory)): verified_sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in skip}


def _marker_ok(dest: Path, marker: str, expect: dict) -> bool:
    m = dest / marker
    if not m.is_file():
        return False
    try:
        recorded = json.loads(m.read_text())
    except ValueError:
        return False
    if any(recorded.get(k) != v for k, v in expect.items()):
        return False
    return recorded.get("files") == _files(dest, skip=(marker,))


def _publish(staging: Path, dest: Path) -> None:
    """Rename a finished staging folder into place (replacing a stale one)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(dest, old)
    os.replace(staging, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_base(store: Store, base: BaseModelRecord, dest: Path) -> Path:
    """The base as a standard Hugging Face folder vLLM loads (the store's verified files, with the
    config keys older transformers read added, as ``registry export`` writes it). Reused while its
    files match what was written; rebuilt otherwise."""
    from tuneops.models.base import base_dir
    from tuneops.release.export import _add_legacy_config_keys, _normalise_permissions

    dest = Path(dest)
    expect = {"base_id": base.id, "weights_sha256": base.weights_sha256}
    if _marker_ok(dest, BASE_MARKER, expect):
        return dest.resolve()
    src = base_dir(store, base)  # verified against the hashes recorded at import
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        shutil.copytree(src, staging, copy_function=shutil.copyfile, dirs_exist_ok=True)
        if (staging / "config.json").exists():
            _add_legacy_config_keys(staging / "config.json")
        _normalise_permissions(staging)
        (staging / BASE_MARKER).write_text(json.dumps({**expect, "files": _files(staging)}, indent=1))
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest.resolve()


def export_adapter(store: Store, art: ArtifactRecord, base_path: Path, dest: Path, *, checked: bool = True) -> Path:
    """The artifact as a plain PEFT folder whose config names ``base_path``; returns the folder vLLM
    loads (``dest/adapter``). ``checked``: through ``registry export --format peft`` (recorded, logits
    compared with tuneops' own load); else the verified files copied. Reused while the files match."""
    dest = Path(dest)
    adapter = dest / "adapter"
    reference = str(Path(base_path).resolve())
    if checked:
        from tuneops.release.export import export_artifact, list_exports

        for rec in reversed(list_exports(store, art.id)):
            d = rec.details or {}
            if rec.format == "peft" and rec.path == str(dest.resolve()) and d.get("base_reference") == reference \
                    and adapter.is_dir() and _files(dest) == d.get("manifest_sha256"):
                return adapter.resolve()
        export_artifact(store, art.id, "peft", dest, base_ref=reference, force=True)
        return adapter.resolve()
    expect = {"artifact_id": art.id, "base_reference": reference}
    if _marker_ok(dest, ADAPTER_MARKER, expect):
        return adapter.resolve()
    src = _artifact_dir(store, art)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        shutil.copytree(src, staging / "adapter", copy_function=shutil.copyfile)
        cfg_path = staging / "adapter" / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = reference
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (staging / ADAPTER_MARKER).write_text(json.dumps({**expect, "files": _files(staging)}, indent=1))
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return adapter.resolve()


def runtime_exporter(store: Store, plan: VLLMPlan, *, checked: bool = True) -> Callable[[ArtifactRecord | str], Path]:
    """``adapter_path`` for :class:`VLLMBackend`: the exported folder of an artifact that was not in
    the plan (promoted after start, a canary, a request by artifact id), checked like the plan's:
    release checks, vLLM support, same base, rank within the server's ``--max-lora-rank``.
    Blocking (it may export): the backend runs it in a thread."""

    def path_for(art: ArtifactRecord | str) -> Path:
        aid = art if isinstance(art, str) else art.id
        known = plan.modules.get(aid)
        if known is not None:
            return known.path
        art = store.get_artifact(aid)  # fresh: a deprecation or a signature may have changed since
        if art.base_id != plan.base_id:
            raise InvalidInput(f"{art.id} is trained on {art.base_id}; this vLLM server runs {plan.base_id}")
        why = _release_problems(store, art)
        if why:
            raise InvalidInput(f"{art.id} cannot be served: {why[0]}")
        cfg = read_adapter_config(_artifact_dir(store, art)) if art.kind == "adapter" else {}
        why = vllm_problems(art, cfg)
        if not why and adapter_rank(cfg) > plan.max_lora_rank:
            why = [f"its rank {adapter_rank(cfg)} is above this server's --max-lora-rank {plan.max_lora_rank}"]
        if not why and not plan.request_chat_templates and (_artifact_dir(store, art) / "chat_template.jinja").exists():
            why = [_OWN_TEMPLATE]
        if why:
            raise InvalidInput(f"vLLM cannot serve {art.id}: {'; '.join(why)}",
                               hint="serve it with the embedded engine, or restart the vLLM server with a larger "
                                    "--max-lora-rank" if "rank" in why[0] else None)
        return export_adapter(store, art, plan.base_path, plan.export_root / "adapters" / art.id, checked=checked)

    return path_for


# -- the process -------------------------------------------------------------------------------

class VLLMProcess:
    """The vLLM server as a child process in its own process group, logging to ``log_path``."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str] | None = None, url: str,
                 log_path: Path, health_path: str = "/health"):
        self.argv = list(argv)
        self.env = dict(env or {})
        self.url = url.rstrip("/")
        self.log_path = Path(log_path)
        self.health_path = health_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @classmethod
    def from_plan(cls, plan: VLLMPlan, log_path: Path) -> "VLLMProcess":
        return cls(plan.argv, env=plan.env, url=plan.url, log_path=log_path)

    def _resolve_executable(self) -> str:
        exe = self.argv[0]
        found = shutil.which(exe)
        if found is None:
            raise VLLMNotInstalled(
                f"vLLM is not installed here: {exe!r} is not on PATH, so `tuneops serve --engine vllm` cannot start it",
                hint="install it where a supported GPU is (`pip install vllm`), or serve with the embedded engine "
                     "(`tuneops serve` without --engine vllm)")
        return found

    def start(self) -> "VLLMProcess":
        if self.proc is not None and self.proc.poll() is None:
            return self
        exe = self._resolve_executable()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"--- tuneops starting: {shlex.join(self.argv)}\n".encode())
        self._log.flush()
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen([exe, *self.argv[1:]], env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("started vLLM (pid %s): %s; log %s", self.proc.pid, shlex.join(self.argv), self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def healthy(self, timeout: float = 2.0) -> bool:
        import httpx

        try:
            return httpx.get(self.url + self.health_path, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 900.0, poll: float = 0.5) -> None:
        """Until ``GET /health`` answers 200; VLLMStartFailed (with the log's tail) if the process exits
        first or ``timeout`` passes (the process is then stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None:
                raise VLLMStartFailed("vLLM was not started")
            code = self.proc.poll()
            if code is not None:
                raise VLLMStartFailed(f"vLLM exited with status {code} before it was ready; the end of its log "
                                      f"({self.log_path}):\n{self.log_tail()}",
                                      hint="see the log for the cause (a GPU, a flag, the model folder)")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise VLLMStartFailed(f"vLLM did not answer {self.url}{self.health_path} within {timeout:.0f} s; "
                                      f"stopped it. The end of its log ({self.log_path}):\n{self.log_tail()}")
            time.sleep(poll)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout``; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("vLLM (pid %s) did not exit within %.0f s of %s", self.proc.pid, wait, sig.name)
        code = self.proc.poll()
        # the group may outlive its leader (vLLM's engine-core / worker processes)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> "VLLMProcess":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the client --------------------------------------------------------------------------------

def _upstream_message(resp_body: bytes | str) -> tuple[str, str | None, str | None]:
    """(message, type, param) from a vLLM error body: ``{"error": {...}}`` (current) or the older
    ``{"object": "error", "message", "type", ...}``, or plain text."""
    text = resp_body.decode("utf-8", "replace") if isinstance(resp_body, bytes) else resp_body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "(empty)", None, None
    if isinstance(data, dict):
        err = data.get("error") if isinstance(data.get("error"), dict) else data
        msg = err.get("message") or err.get("detail") or text
        return str(msg)[:2000], err.get("type"), err.get("param")
    return text[:500], None, None


def map_upstream_error(status: int, body: bytes | str) -> UpstreamError:
    """vLLM's answer -> what the client gets. 4xx keep their status and message (the request is at
    fault); 5xx become 503 ``engine_error`` with Retry-After (the engine is, and a 500 never reaches
    a client)."""
    message, type_, param = _upstream_message(body)
    if 400 <= status < 500:
        openai_type = "invalid_request_error"
        code = {404: "model_not_found", 429: "rate_limit_exceeded", 413: "request_too_large"}.get(status)
        if status == 400 and "maximum context length" in message:
            code = "context_length_exceeded"
        err = UpstreamError(status, message, type_=openai_type, code=code, param=param,
                            retry_after=RETRY_AFTER_S if status == 429 else None)
        err.upstream_type = type_
        return err
    return UpstreamError(503, f"the vLLM engine failed this request ({status}): {message}", type_="server_error",
                         code="engine_error", retry_after=RETRY_AFTER_S)


def _unavailable(url: str, exc: Exception) -> UpstreamError:
    return UpstreamError(503, f"the vLLM engine at {url} is not reachable ({type(exc).__name__})", type_="server_error",
                         code="engine_unavailable", retry_after=RETRY_AFTER_S)


class _InFlight:
    """Per-artifact in-flight counts, with a way to wait for one to reach 0."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.cond = asyncio.Condition()

    async def enter(self, key: str) -> None:
        async with self.cond:
            self.counts[key] = self.counts.get(key, 0) + 1

    async def leave(self, key: str) -> None:
        async with self.cond:
            n = self.counts.get(key, 0) - 1
            if n <= 0:
                self.counts.pop(key, None)
            else:
                self.counts[key] = n
            self.cond.notify_all()

    def busy(self, key: str) -> bool:
        return self.counts.get(key, 0) > 0

    async def wait_idle(self, key: str, timeout: float) -> bool:
        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(lambda: not self.busy(key)), timeout)
                return True
            except asyncio.TimeoutError:
                return False


class VLLMBackend:
    """The front's async client to one vLLM OpenAI server.

    Adapters are registered in vLLM under their artifact id. ``loaded`` is what this client has
    registered, in LRU order; past ``max_cpu_loras`` the least recently used one that is neither an
    alias target nor in flight is unloaded. ``adapter_path(artifact) -> Path`` gives the exported
    folder of an artifact that is not among ``modules`` (see :func:`runtime_exporter`)."""

    def __init__(self, url: str, *, base_name: str, max_cpu_loras: int = DEFAULT_MAX_LORAS,
                 modules: Mapping[str, LoRAModule] | None = None, alias_targets: Mapping[str, str] | None = None,
                 adapter_path: Callable[[ArtifactRecord | str], Path] | None = None, timeout: float = 600.0,
                 connect_timeout: float = 5.0, drain_timeout: float = 600.0, request_chat_templates: bool = True,
                 preloaded: Iterable[str] | None = None, client=None):
        import httpx

        self.url = url.rstrip("/")
        self.base_name = base_name
        self.max_cpu_loras = max_cpu_loras
        self.modules: dict[str, LoRAModule] = dict(modules or {})
        self.adapter_path = adapter_path
        self.drain_timeout = drain_timeout
        self.request_chat_templates = request_chat_templates
        self.client = client or httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout,
                                                                                             connect=connect_timeout))
        # the static --lora-modules are registered by vLLM at start (``preloaded``: which; default all)
        ids = self.modules if preloaded is None else list(preloaded)
        self.loaded: OrderedDict[str, Path] = OrderedDict((aid, self.modules[aid].path) for aid in ids)
        self.alias_targets: dict[str, str] = dict(alias_targets or {})
        self.inflight = _InFlight()
        self._locks: dict[str, asyncio.Lock] = {}
        self._evict_lock = asyncio.Lock()
        self._pending_unloads: set[asyncio.Task] = set()
        self.events: list[tuple[str, str]] = []  # ("load"|"unload", artifact id), in order: for logs and tests

    # -- plumbing
    async def aclose(self) -> None:
        for t in list(self._pending_unloads):
            t.cancel()
        await self.client.aclose()

    async def _post(self, path: str, payload: dict):
        import httpx

        try:
            return await self.client.post(path, json=payload)
        except httpx.HTTPError as e:
            raise _unavailable(self.url, e) from None

    async def health(self) -> bool:
        import httpx

        try:
            return (await self.client.get("/health", timeout=5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def models(self) -> list[dict]:
        import httpx

        try:
            resp = await self.client.get("/v1/models")
        except httpx.HTTPError as e:
            raise _unavailable(self.url, e) from None
        if resp.status_code != 200:
            raise map_upstream_error(resp.status_code, resp.content)
        return resp.json().get("data", [])

    # -- adapters
    def _pinned(self) -> set[str]:
        return set(self.alias_targets.values())

    async def _path_of(self, artifact: ArtifactRecord | str) -> tuple[str, Path]:
        aid = artifact if isinstance(artifact, str) else artifact.id
        if aid in self.modules:
            return aid, self.modules[aid].path
        if aid in self.loaded:
            return aid, self.loaded[aid]
        if self.adapter_path is None:
            raise UpstreamError(404, f"artifact {aid} is not exported for this vLLM server", type_="invalid_request_error",
                                code="model_not_found", param="model")
        try:
            path = Path(await asyncio.to_thread(self.adapter_path, artifact))
        except TuneopsError as e:
            raise UpstreamError(e.http_status if e.http_status < 500 else 503, e.message,
                                type_=e.error_type, code=e.error_code or "adapter_unservable", param="model",
                                retry_after=RETRY_AFTER_S if e.http_status >= 500 else None) from None
        tpl = path / "chat_template.jinja"
        self.modules[aid] = LoRAModule(artifact_id=aid, path=path, rank=adapter_rank(read_adapter_config(path)),
                                       method=getattr(artifact, "method", "lora"),
                                       chat_template=tpl.read_text(encoding="utf-8") if tpl.is_file() else None)
        return aid, path

    async def ensure_loaded(self, artifact: ArtifactRecord | str) -> bool:
        """Register the artifact in vLLM under its id (``POST /v1/load_lora_adapter``) unless it is
        already; True when this call loaded it. Idempotent, also across front restarts (vLLM's
        "has already been loaded" counts as loaded). Then unloads LRU adapters past ``max_cpu_loras``."""
        aid, path = await self._path_of(artifact)
        lock = self._locks.setdefault(aid, asyncio.Lock())
        async with lock:
            if aid in self.loaded:
                self.loaded.move_to_end(aid)
                return False
            resp = await self._post("/v1/load_lora_adapter", {"lora_name": aid, "lora_path": str(path)})
            if resp.status_code != 200:
                message, _, _ = _upstream_message(resp.content)
                if not (resp.status_code == 400 and "already been loaded" in message):
                    err = map_upstream_error(resp.status_code, resp.content)
                    if 400 <= resp.status_code < 500:  # the folder or its config: the adapter cannot be loaded
                        raise UpstreamError(503, f"vLLM could not load {aid}: {err.message}", type_="server_error",
                                            code="adapter_load_failed", retry_after=RETRY_AFTER_S) from None
                    raise err
            self.loaded[aid] = path
            self.events.append(("load", aid))
            log.info("vLLM: loaded %s from %s", aid, path)
        await self._evict()
        return True

    async def unload(self, artifact_id: str) -> bool:
        """``POST /v1/unload_lora_adapter``; True if vLLM had it (its 404 "cannot be found" is not an error)."""
        lock = self._locks.setdefault(artifact_id, asyncio.Lock())
        async with lock:
            resp = await self._post("/v1/unload_lora_adapter", {"lora_name": artifact_id})
            self.loaded.pop(artifact_id, None)
            if resp.status_code == 404:
                return False
            if resp.status_code != 200:
                raise map_upstream_error(resp.status_code, resp.content)
            self.events.append(("unload", artifact_id))
            log.info("vLLM: unloaded %s", artifact_id)
            return True

    async def _evict(self) -> None:
        async with self._evict_lock:
            while len(self.loaded) > self.max_cpu_loras:
                pinned = self._pinned()
                victim = next((aid for aid in self.loaded if aid not in pinned and not self.inflight.busy(aid)), None)
                if victim is None:
                    log.warning("vLLM: %d adapters registered, above max_cpu_loras %d, but all are alias targets or "
                                "in flight", len(self.loaded), self.max_cpu_loras)
                    return
                await self.unload(victim)

    async def sync_aliases(self, targets: Mapping[str, ArtifactRecord | str], *, wait: bool = False) -> dict:
        """Apply alias moves: ``targets`` is every served alias -> its target now. New targets are
        loaded first (a failure raises and changes nothing); then the mapping switches; then each old
        target no alias points at any more is unloaded once its in-flight requests finished (in the
        background unless ``wait``; at most ``drain_timeout`` seconds). Returns what moved."""
        new_ids = {alias: (t if isinstance(t, str) else t.id) for alias, t in targets.items()}
        moved = {a: (self.alias_targets.get(a), t) for a, t in new_ids.items() if self.alias_targets.get(a) != t}
        removed = {a: (t, None) for a, t in self.alias_targets.items() if a not in new_ids}
        for alias, target in targets.items():
            if alias in moved:
                await self.ensure_loaded(target)
        before = set(self.alias_targets.values())
        self.alias_targets = dict(new_ids)
        retired = [aid for aid in before - set(new_ids.values()) if aid in self.loaded]
        tasks = [self._spawn_unload(aid) for aid in retired]
        if wait and tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return {"moved": {**moved, **removed}, "retiring": retired}

    def _spawn_unload(self, aid: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._unload_when_idle(aid))
        self._pending_unloads.add(task)
        task.add_done_callback(self._pending_unloads.discard)
        return task

    async def _unload_when_idle(self, aid: str) -> None:
        if not await self.inflight.wait_idle(aid, self.drain_timeout):
            log.warning("vLLM: %s still has requests in flight after %.0f s; unloading it anyway", aid,
                        self.drain_timeout)
        if aid in self._pinned():  # moved back meanwhile
            return
        try:
            await self.unload(aid)
        except UpstreamError as e:
            log.warning("vLLM: unloading %s failed: %s", aid, e.message)

    async def wait_unloads(self) -> None:
        """Until every background unload of retired alias targets is done (tests, shutdown)."""
        while self._pending_unloads:
            await asyncio.gather(*list(self._pending_unloads), return_exceptions=True)

    # -- generation
    async def chat(self, body: dict, artifact: ArtifactRecord | str | None, *, stream: bool = False):
        """Forward an OpenAI chat request; ``model`` becomes the artifact id (or the base). Returns the
        response JSON, or (``stream``) an :class:`SSEStream` of SSE events (bytes, each ``data: …\\n\\n``).
        Errors: :class:`UpstreamError` (OpenAI-shaped, 503 + Retry-After when the engine is at fault)."""
        return await self._forward("/v1/chat/completions", body, artifact, stream, chat=True)

    async def completion(self, body: dict, artifact: ArtifactRecord | str | None, *, stream: bool = False):
        """As :meth:`chat`, for ``/v1/completions``."""
        return await self._forward("/v1/completions", body, artifact, stream, chat=False)

    def _payload(self, body: dict, aid: str | None, stream: bool, chat: bool) -> dict:
        payload = {k: v for k, v in body.items() if k not in ("chat_template",)}  # never a client's template
        payload["model"] = aid or self.base_name
        payload["stream"] = bool(stream)
        module = self.modules.get(aid) if aid else None
        if chat and self.request_chat_templates and module is not None and module.chat_template:
            payload["chat_template"] = module.chat_template
        return payload

    async def _forward(self, path: str, body: dict, artifact, stream: bool, *, chat: bool):
        aid = None
        if artifact is not None:
            aid = artifact if isinstance(artifact, str) else artifact.id
            await self.ensure_loaded(artifact)
        key = aid or ""
        await self.inflight.enter(key)
        handed_off = False
        try:
            if not stream:
                try:
                    return await self._once(path, self._payload(body, aid, False, chat))
                except _Missing:
                    await self._reload(artifact)
                    return await self._once(path, self._payload(body, aid, False, chat))
            try:
                resp = await self._open_stream(path, self._payload(body, aid, True, chat))
            except _Missing:
                await self._reload(artifact)
                resp = await self._open_stream(path, self._payload(body, aid, True, chat))
            handed_off = True
            return SSEStream(self, resp, key)
        finally:
            if not handed_off:
                await self.inflight.leave(key)

    async def _reload(self, artifact) -> None:
        """vLLM answered "model does not exist" for an adapter this client thought loaded (vLLM was
        restarted, or someone unloaded it): register it again, once."""
        aid = artifact if isinstance(artifact, str) else artifact.id
        log.warning("vLLM no longer knows %s; loading it again", aid)
        self.loaded.pop(aid, None)
        await self.ensure_loaded(artifact)

    async def _once(self, path: str, payload: dict) -> dict:
        import httpx

        try:
            resp = await self.client.post(path, json=payload)
        except httpx.HTTPError as e:
            raise _unavailable(self.url, e) from None
        if resp.status_code == 404 and payload["model"] != self.base_name:
            raise _Missing()
        if resp.status_code != 200:
            raise map_upstream_error(resp.status_code, resp.content)
        try:
            return resp.json()
        except ValueError:
            raise UpstreamError(503, "the vLLM engine answered with something that is not JSON",
                                code="engine_error", retry_after=RETRY_AFTER_S) from None

    async def _open_stream(self, path: str, payload: dict):
        import httpx

        req = self.client.build_request("POST", path, json=payload)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise _unavailable(self.url, e) from None
        if resp.status_code != 200:
            try:
                content = await resp.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await resp.aclose()
            if resp.status_code == 404 and payload["model"] != self.base_name:
                raise _Missing()
            raise map_upstream_error(resp.status_code, content)
        return resp


class SSEStream:
    """A streamed answer: iterate it for vLLM's SSE events (bytes, one ``data: …\n\n`` each); a
    stream cut short ends with an OpenAI error event and ``data: [DONE]``. It holds the upstream
    connection and counts as in flight until exhausted or ``aclose()``d (call that when the client
    goes away, started or not)."""

    def __init__(self, backend: "VLLMBackend", resp, key: str):
        self._backend, self._resp, self._key = backend, resp, key
        self._gen = self._relay()
        self._released = False

    def __aiter__(self) -> "SSEStream":
        return self

    async def __anext__(self) -> bytes:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()
        await self._release()

    async def _release(self) -> None:
        if not self._released:
            self._released = True
            await self._resp.aclose()
            await self._backend.inflight.leave(self._key)

    async def _relay(self) -> AsyncIterator[bytes]:
        import httpx

        buf = b""
        done = False
        try:
            async for chunk in self._resp.aiter_bytes():
                buf += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.strip():
                        continue
                    done = done or event.strip() == b"data: [DONE]"
                    yield event + b"\n\n"
            if buf.strip():
                done = done or buf.strip() == b"data: [DONE]"
                yield buf.rstrip(b"\n") + b"\n\n"
            if not done:
                raise httpx.RemoteProtocolError("stream ended without [DONE]")
        except httpx.HTTPError as e:
            err = UpstreamError(503, f"the vLLM engine stopped mid-stream ({type(e).__name__})",
                                code="engine_unavailable", retry_after=RETRY_AFTER_S)
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            await self._release()


class _Missing(Exception):
    """vLLM does not know the adapter a request named."""


def parse_sse_event(event: bytes) -> dict | str | None:
    """One SSE event from :meth:`VLLMBackend.chat` (stream) -> its JSON, ``"[DONE]"``, or None."""
    data = b"".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))
    if not data:
        return None
    if data.strip() == b"[DONE]":
        return "[DONE]"
    try:
        return json.loads(data)
    except ValueError:
        return None


def format_sse_event(obj: dict | str) -> bytes:
    """The inverse of :func:`parse_sse_event` (for a front that rewrites chunks)."""
    return b"data: " + (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()) + b"\n\n"


__all__ = [
    "RUNTIME_LORA_ENV", "VLLM_LORA_RANKS", "LoRAModule", "SSEStream", "Unservable", "UpstreamError", "VLLMBackend",
    "VLLMNotInstalled", "VLLMPlan", "VLLMProcess", "VLLMStartFailed", "adapter_rank", "build_command",
    "export_adapter", "export_base", "format_sse_event", "map_upstream_error", "parse_sse_event",
    "read_adapter_config", "runtime_exporter", "vllm_problems", "vllm_rank",
]
