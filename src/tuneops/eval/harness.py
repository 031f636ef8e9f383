"""lm-evaluation-harness bridge: run one lm-eval task (a local YAML over local data files) on a
registered artifact and its baseline, and store the paired result as an ordinary eval report.

The model never comes from the hub: the base is loaded from the store (integrity-checked), the
artifact's adapter is attached with PEFT, and the loaded objects are handed to lm-eval's ``HFLM``.
The task never comes from the hub either: only a YAML file is accepted, its datasets must be
local (``dataset_path: json`` + ``dataset_kwargs.data_files``, or a local folder), metrics that
lm-eval would fetch from the HF ``evaluate`` hub are refused, and ``datasets`` runs offline.

Both sides answer the same documents with the same prompts, few-shot examples and seeds. Metrics
that lm-eval aggregates as a per-sample mean (acc, acc_norm, exact_match, …) get tuneops' paired
statistics (``tuneops.eval.stats.compare``: paired-bootstrap CI of the difference, McNemar for 0/1);
other aggregations (corpus BLEU, perplexity, …) get a paired bootstrap that re-runs lm-eval's own
aggregation on resampled documents. Everything is validated before any model loads: a bad file is
an ``InvalidInput`` naming the file (and line, where there is one) and the fix.
"""

import copy
import glob
import importlib
import importlib.util
import inspect
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tuneops.errors import InvalidInput, NotFound, TuneopsError
from tuneops.eval.stats import compare
from tuneops.store.ids import canonical_json, sha256_bytes, sha256_file

SIDES = ("base", "candidate")
# datasets' packaged builders that read local files (anything else named in dataset_path is a hub repo)
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})
OUTPUT_TYPES = ("generate_until", "multiple_choice", "loglikelihood", "loglikelihood_rolling")
AGG_BOOTSTRAP_SAMPLES = 1000  # non-mean aggregations are re-computed per resample: fewer, they cost more
EXAMPLE = "examples/harness/arith_mc.yaml"
LOCAL_DATA_HINT = ("use local files: `dataset_path: json` and `dataset_kwargs: {data_files: {test: items.jsonl}}` "
                   f"(paths relative to the YAML; see {EXAMPLE})")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "…"


# -- loading and checking the task file (no model, no lm-eval model code) ----------------------------


@dataclass
class _FunctionRef:
    """A ``!function module.name`` tag, resolved after the whole file has been read."""

    spec: str
    base_dir: Path
    file: Path
    line: int


@dataclass
class HarnessTask:
    """A task YAML after loading and checking: ``config`` is ready for lm-eval (functions imported,
    data paths absolute); the hashes pin what was evaluated."""

    path: Path
    name: str
    output_type: str
    config: dict
    yaml_sha256: str
    data_files: list[dict] = field(default_factory=list)      # {"split", "path", "sha256"}
    definition_files: list[dict] = field(default_factory=list)  # the YAML, its includes, !function modules

    def config_sha256(self, limit: int | None) -> str:
        """Path-independent hash of the effective task: settings (functions by source), data by content, limit."""
        cfg = copy.deepcopy(self.config)
        cfg.pop("dataset_kwargs", None)
        cfg.pop("dataset_path", None)
        dataset = {"builder": self.config.get("dataset_path") if self.config.get("dataset_path") in LOCAL_BUILDERS
                   else "local-folder",
                   "kwargs": {k: v for k, v in (self.config.get("dataset_kwargs") or {}).items()
                              if k not in ("data_files", "data_dir", "cache_dir")},
                   "data_sha256": {f"{d['split']}:{i}": d["sha256"] for i, d in enumerate(self.data_files)}}
        return sha256_bytes(canonical_json(_jsonable({"config": cfg, "dataset": dataset, "limit": limit},
                                                     functions_by_source=True)))


def _yaml_loader(path: Path):
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        return _FunctionRef(loader.construct_scalar(node), path.parent, path, node.start_mark.line + 1)

    Loader.add_constructor("!function", function)
    return Loader


def _read_yaml(path: Path, chain: tuple[Path, ...], files: list[dict]) -> dict:
    """One YAML file with its ``include:`` files merged underneath (lm-eval's rule: local keys win)."""
    import yaml

    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (IsADirectoryError, PermissionError, FileNotFoundError) as e:
        raise InvalidInput(f"{path}: cannot read the task file ({type(e).__name__})",
                           hint=f"pass the path of an lm-eval task YAML, e.g. {EXAMPLE}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not a text (UTF-8) file", hint=f"pass an lm-eval task YAML, e.g. {EXAMPLE}") from None
    files.append({"path": str(path), "sha256": sha256_bytes(raw)})
    try:
        cfg = yaml.load(text, Loader=_yaml_loader(path))  # noqa: S506 (SafeLoader + the !function tag only)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or _one_line(e)
        raise InvalidInput(f"{path}{where}: not valid YAML: {what}",
                           hint="fix the YAML syntax (indentation, quotes, a missing colon)") from None
    if not isinstance(cfg, dict):
        raise InvalidInput(f"{path}: expected a mapping of lm-eval task settings (task:, dataset_path:, …), "
                           f"got {type(cfg).__name__}", hint=f"see {EXAMPLE}")
    includes = cfg.pop("include", None)
    merged: dict = {}
    for inc in [] if includes is None else includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise InvalidInput(f"{path}: include: expected a file name, got {inc!r}")
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise InvalidInput(f"{path}: include: {inc}: no such file ({inc_path})",
                               hint="include a YAML next to this one (built-in lm-eval templates are not bundled)")
        if inc_path.resolve() in chain:
            raise InvalidInput(f"{path}: include: {inc} includes itself (a cycle)")
        sub = _read_yaml(inc_path.resolve(), chain + (inc_path.resolve(),), files)
        sub.pop("task_list", None)
        merged.update(sub)
    merged.update(cfg)
    return merged


def _import_function(ref: _FunctionRef, files: list[dict]) -> Callable:
    """``!function utils.fn``: ``utils.py`` next to the YAML first, else an importable module (as lm-eval does)."""
    mod_path, _, fn_name = ref.spec.rpartition(".")
    where = f"{ref.file}:{ref.line}: !function {ref.spec}"
    if not mod_path:
        raise InvalidInput(f"{where}: expected module.function", hint="e.g. `!function utils.process_docs`")
    local = ref.base_dir / f"{mod_path.replace('.', '/')}.py"
    try:
        if local.is_file():
            name = f"tuneops_harness_{sha256_bytes(str(local.resolve()).encode())[:12]}_{local.stem}"
            spec = importlib.util.spec_from_file_location(name, local)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            files.append({"path": str(local), "sha256": sha256_file(local)})
        else:
            module = importlib.import_module(mod_path)
        fn = getattr(module, fn_name)
    except TuneopsError:
        raise
    except Exception as e:  # the user's module failed to import or lacks the function
        raise InvalidInput(f"{where}: {type(e).__name__}: {_one_line(e)}",
                           hint=f"put {mod_path.replace('.', '/')}.py next to the YAML and define {fn_name}()") from None
    if not callable(fn):
        raise InvalidInput(f"{where}: {fn_name} is not a function")
    return fn


def _resolve_functions(obj: Any, files: list[dict]) -> Any:
    if isinstance(obj, _FunctionRef):
        return _import_function(obj, files)
    if isinstance(obj, dict):
        return {k: _resolve_functions(v, files) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_functions(v, files) for v in obj]
    return obj


def _local_paths(spec: str, base_dir: Path, path: Path, key: str) -> list[Path]:
    if "://" in spec or spec.startswith("hf:"):
        raise InvalidInput(f"{path}: {key}: {spec} is a remote location; tuneops runs harness tasks on local files only",
                           hint=LOCAL_DATA_HINT)
    p = Path(spec).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if any(c in spec for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        if not matches:
            raise InvalidInput(f"{path}: {key}: {spec} matches no file (looked for {p})",
                               hint="paths are relative to the task YAML's folder")
        return matches
    if not p.exists():
        raise InvalidInput(f"{path}: {key}: {spec}: no such file ({p})", hint="paths are relative to the task YAML's folder")
    return [p]


def _files_under(p: Path) -> list[Path]:
    return [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())


def _check_dataset(cfg: dict, path: Path) -> list[dict]:
    """Rewrite the task's data locations to absolute local paths; refuse anything that needs the hub."""
    base_dir = path.parent
    data: list[dict] = []
    kwargs = cfg.get("dataset_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise InvalidInput(f"{path}: dataset_kwargs: expected a mapping, got {type(kwargs).__name__}", hint=LOCAL_DATA_HINT)
    kwargs = dict(kwargs or {})
    if callable(cfg.get("custom_dataset")):  # the task's own Python code builds the dataset (runs offline here)
        cfg["dataset_kwargs"] = kwargs
        return data
    ds_path = cfg.get("dataset_path")
    if not isinstance(ds_path, str) or not ds_path.strip():
        raise InvalidInput(f"{path}: no dataset_path: lm-eval needs to know where the documents are", hint=LOCAL_DATA_HINT)
    if ds_path not in LOCAL_BUILDERS:
        local = Path(ds_path).expanduser()
        local = local if local.is_absolute() else base_dir / local
        if "://" in ds_path or not local.exists():
            raise InvalidInput(f"{path}: dataset_path: {ds_path} is a Hugging Face hub dataset, which needs the network; "
                               "tuneops runs harness tasks on local files only", hint=LOCAL_DATA_HINT)
        cfg["dataset_path"] = str(local.resolve())
        data += [{"split": "*", "path": str(f), "sha256": sha256_file(f)} for f in _files_under(local)]
    elif not kwargs.get("data_files") and not kwargs.get("data_dir"):
        raise InvalidInput(f"{path}: dataset_path: {ds_path} needs dataset_kwargs.data_files (the local file(s) to read)",
                           hint=LOCAL_DATA_HINT)
    if "data_files" in kwargs:
        files = kwargs["data_files"]
        if isinstance(files, (str, list)):
            files = {"train": files}  # datasets' own default split name for unnamed files
            split_named = False
        elif isinstance(files, dict):
            split_named = True
        else:
            raise InvalidInput(f"{path}: dataset_kwargs.data_files: expected a file, a list or a mapping split → file(s)",
                               hint=LOCAL_DATA_HINT)
        rewritten: dict[str, list[str]] = {}
        for split, specs in files.items():
            specs = [specs] if isinstance(specs, str) else specs
            if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
                raise InvalidInput(f"{path}: dataset_kwargs.data_files{'.' + str(split) if split_named else ''}: "
                                   "expected a file name or a list of them",
                                   hint=LOCAL_DATA_HINT)
            key = f"dataset_kwargs.data_files.{split}" if split_named else "dataset_kwargs.data_files"
            paths = [m for s in specs for p in _local_paths(s, base_dir, path, key) for m in _files_under(p)]
            rewritten[str(split)] = [str(p.resolve()) for p in paths]
            data += [{"split": str(split), "path": str(p), "sha256": sha256_file(p)} for p in paths]
        kwargs["data_files"] = rewritten if split_named else rewritten["train"]
    if isinstance(kwargs.get("data_dir"), str):
        (d,) = _local_paths(kwargs["data_dir"], base_dir, path, "dataset_kwargs.data_dir")
        kwargs["data_dir"] = str(d.resolve())
        if "data_files" not in kwargs:
            data += [{"split": "*", "path": str(f), "sha256": sha256_file(f)} for f in _files_under(d)]
    cfg["dataset_kwargs"] = kwargs
    return data


def _check_splits(cfg: dict, path: Path) -> None:
    """The split names the task evaluates (and draws few-shot examples from) must exist in its data files."""
    if cfg.get("test_split") is None and cfg.get("validation_split") is None:
        raise InvalidInput(f"{path}: no test_split (or validation_split): lm-eval needs a split to evaluate",
                           hint="e.g. data_files: {test: items.jsonl} and test_split: test")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if cfg.get("dataset_path") not in LOCAL_BUILDERS or files is None or callable(cfg.get("custom_dataset")):
        return
    known = set(files) if isinstance(files, dict) else {"train"}  # datasets names unnamed files "train"
    for key in ("test_split", "validation_split", "training_split", "fewshot_split"):
        split = cfg.get(key)
        if split is not None and split not in known:
            raise InvalidInput(f"{path}: {key}: {split!r} is not a split of dataset_kwargs.data_files "
                               f"(it has {', '.join(sorted(known))})",
                               hint="name the splits in data_files, e.g. data_files: {test: items.jsonl} with "
                                    "test_split: test")


def load_harness_task(task_yaml: Path | str) -> HarnessTask:
    """Read and check a task YAML without touching a model. Errors name the file and say what to do."""
    raw = str(task_yaml)
    path = Path(task_yaml).expanduser()
    if not path.exists():
        if "/" not in raw and not raw.endswith((".yaml", ".yml")):
            raise InvalidInput(f"{raw}: no such task file; tuneops runs lm-eval tasks from local YAML files only "
                               "(a built-in lm-eval task name downloads its data from the Hugging Face hub)",
                               hint=f"write a task YAML over local data and pass its path, e.g. --task {EXAMPLE}")
        raise InvalidInput(f"{path}: no such task file", hint=f"pass the path of an lm-eval task YAML, e.g. {EXAMPLE}")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a folder; pass one task YAML in it",
                           hint=f"e.g. --task {EXAMPLE}")
    path = path.resolve()
    files: list[dict] = []
    cfg = _read_yaml(path, (path,), files)
    if "group" in cfg:
        raise InvalidInput(f"{path}: defines a group ({cfg['group']!r}); tuneops runs one task per report",
                           hint="point --task at one task's YAML (a file with `task: <name>`)")
    if "class" in cfg:
        raise InvalidInput(f"{path}: a Python task class is not supported; only YAML task settings are",
                           hint=f"describe the task in YAML (doc_to_text, doc_to_target, …), see {EXAMPLE}")
    name = cfg.get("task")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{path}: no `task:` name (got {name!r})", hint="add e.g. `task: my_task` at the top")
    output_type = cfg.setdefault("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise InvalidInput(f"{path}: output_type: {output_type!r} is not an lm-eval output type",
                           hint=f"use one of {', '.join(OUTPUT_TYPES)}")
    metric_list = cfg.get("metric_list")
    if metric_list is not None and (not isinstance(metric_list, list)
                                    or not all(isinstance(m, dict) and "metric" in m for m in metric_list)):
        raise InvalidInput(f"{path}: metric_list: expected a list of mappings with a `metric:` key",
                           hint="e.g. metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]")
    for i, m in enumerate(metric_list or []):
        if m.get("hf_evaluate"):
            raise InvalidInput(f"{path}: metric_list[{i}]: hf_evaluate: true loads {m['metric']!r} from the "
                               "Hugging Face hub, which needs the network",
                               hint="use a metric built into lm-eval (acc, acc_norm, exact_match, bleu, chrf, f1, …)")
    cfg = _resolve_functions(cfg, files)
    data = _check_dataset(cfg, path)
    _check_splits(cfg, path)
    return HarnessTask(path=path, name=name, output_type=output_type, config=cfg, yaml_sha256=files[0]["sha256"],
                       data_files=data, definition_files=files)


# -- lm-eval side ------------------------------------------------------------------------------------


@contextmanager
def _offline_and_quiet():
    """``datasets`` offline (a missed remote reference fails instead of downloading), lm-eval's chatter off."""
    import datasets
    import datasets.config as dcfg
    from datasets.utils import logging as ds_logging

    saved = {k: getattr(dcfg, k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(dcfg, k)}
    bars = ds_logging.is_progress_bar_enabled()
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    try:
        for k in saved:
            setattr(dcfg, k, True)
        datasets.disable_progress_bars()
        lm_logger.setLevel(logging.ERROR)
        yield
    finally:
        for k, v in saved.items():
            setattr(dcfg, k, v)
        if bars:
            datasets.enable_progress_bars()
        lm_logger.setLevel(level)


def _check_metrics(task: HarnessTask) -> None:
    import lm_eval.api.metrics  # noqa: F401  (fills the registry)
    from lm_eval.api.registry import METRIC_REGISTRY

    if task.config.get("process_results") is not None:
        return  # the task computes its own per-document metrics
    for i, m in enumerate(task.config.get("metric_list") or []):
        name = m["metric"]
        if isinstance(name, str) and name not in METRIC_REGISTRY:
            raise InvalidInput(f"{task.path}: metric_list[{i}]: {name!r} is not an lm-eval metric (lm-eval would "
                               "look for it on the Hugging Face hub)",
                               hint=f"use one of {', '.join(sorted(METRIC_REGISTRY.keys()))}, or `!function` a local one")


def build_task(task: HarnessTask, cache_dir: Path, limit: int | None = None, *, dry_run: bool = False):
    """An lm-eval ``ConfigurableTask`` for the checked config (a fresh one per side). With ``dry_run``
    every document that will be evaluated is rendered once (prompt, target, choices), so a template
    naming a missing field fails here, naming the file, before any model loads."""
    from lm_eval.api.task import ConfigurableTask

    cfg = copy.deepcopy(task.config)
    if cfg.get("dataset_path") in LOCAL_BUILDERS or Path(str(cfg.get("dataset_path"))).is_absolute():
        cfg["dataset_kwargs"] = {**cfg.get("dataset_kwargs", {}), "cache_dir": str(cache_dir)}
    cfg.setdefault("metadata", {})
    if not isinstance(cfg["metadata"], dict):
        cfg["metadata"] = {"_metadata": cfg["metadata"]}
    cfg["metadata"]["config_source"] = str(task.path)
    try:
        built = ConfigurableTask(config=cfg)
    except TuneopsError:
        raise
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            key = str(e).rsplit("argument", 1)[-1].strip(" '\"")
            raise InvalidInput(f"{task.path}: unknown key {key!r} for an lm-eval task",
                               hint="see lm-eval's task guide (docs/task_guide.md) for the keys a task YAML takes") from None
        raise _load_error(task, e) from None
    except Exception as e:
        raise _load_error(task, e) from None
    if dry_run:
        _dry_run(task, built, limit)
    return built


def _load_error(task: HarnessTask, e: Exception) -> InvalidInput:
    if type(e).__name__ == "UndefinedError":  # jinja: a template names a field the documents lack
        return InvalidInput(f"{task.path}: a template names a field the documents lack: {_one_line(e)}",
                            hint="doc_to_text / doc_to_target / doc_to_choice may only use fields every document has")
    return InvalidInput(f"{task.path}: lm-eval could not load task {task.name!r}: {type(e).__name__}: {_one_line(e)}",
                        hint="lm-eval renders the first document while loading a task: check doc_to_text, "
                             "doc_to_target and doc_to_choice against the data")


def _dry_run(task: HarnessTask, built, limit: int | None) -> None:
    try:
        docs = built.eval_docs
    except Exception as e:
        raise InvalidInput(f"{task.path}: no split to evaluate: {type(e).__name__}: {_one_line(e)}",
                           hint="set test_split (or validation_split) to a split named in dataset_kwargs.data_files") from None
    n = len(docs)
    if n == 0:
        raise InvalidInput(f"{task.path}: the evaluation split has no documents", hint="check its data file(s)")
    for i in range(n if limit is None else min(n, limit)):
        doc = docs[i]
        try:
            built.doc_to_text(doc)
            target = built.doc_to_target(doc)
            if task.output_type == "multiple_choice":
                choices = built.doc_to_choice(doc)
                if not isinstance(choices, list) or not choices:
                    raise ValueError(f"doc_to_choice gave {choices!r}, not a non-empty list")
                if isinstance(target, int) and not 0 <= target < len(choices):
                    raise ValueError(f"target index {target} is outside the {len(choices)} choices")
                if isinstance(target, str) and target not in choices:
                    raise ValueError(f"target {target!r} is not one of the choices {choices}")
        except Exception as e:
            raise InvalidInput(f"{task.path}: document {i} of the evaluation split: {type(e).__name__}: {_one_line(e)}",
                               hint="the templates (doc_to_text/doc_to_target/doc_to_choice) must only name "
                                    "fields every document has") from None


def _make_lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around the already-loaded model; never asks the hub for model info."""
    from lm_eval.models.huggingface import HFLM

    class StoreLM(HFLM):
        def get_model_info(self) -> dict:
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(getattr(self._model, "dtype", ""))}

    return StoreLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _evaluate_side(lm, built, *, limit: int | None, apply_chat_template: bool) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model=lm, tasks=[built], task_manager=TaskManager(include_defaults=False), limit=limit,
                          log_samples=True, bootstrap_iters=0, apply_chat_template=apply_chat_template,
                          fewshot_as_multiturn=apply_chat_template)
    if res is None:  # only non-zero ranks of a distributed run get None; this is one process
        raise RuntimeError("lm-eval returned no results")
    return res


# -- comparison --------------------------------------------------------------------------------------


def _jsonable(obj: Any, *, functions_by_source: bool = False) -> Any:
    """Plain JSON: numpy scalars to Python, tuples to lists, non-finite floats to None, functions to
    their source (for hashing) or qualified name, anything else to its string."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), functions_by_source=functions_by_source)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, functions_by_source=functions_by_source) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v, functions_by_source=functions_by_source) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), functions_by_source=functions_by_source)
    if callable(obj):
        if functions_by_source:
            try:
                return inspect.getsource(obj)
            except (OSError, TypeError):
                pass
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    return str(obj)


def _number(v: Any) -> float | None:
    if isinstance(v, (bool, int, float, np.generic)) and not isinstance(v, str):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def _shown(sample: dict, output_type: str) -> str | None:
    """What a side answered, readably: the generated text, or the choice with the highest log-likelihood."""
    fr = sample.get("filtered_resps") or []
    if output_type == "generate_until":
        v = fr[0] if fr else None
        return v if isinstance(v, str) or v is None else json.dumps(_jsonable(v))
    lls = [x[0] if isinstance(x, (list, tuple)) else x for x in fr]
    if output_type == "multiple_choice":
        args = sample.get("arguments") or []
        ctx = args[0][0] if args else None
        k = sum(1 for a in args if a[0] == ctx) or len(lls)  # acc_mutual_info appends unconditional requests
        scored = [(float(ll), i) for i, ll in enumerate(lls[:k]) if _number(ll) is not None]
        if not scored:
            return None
        best = max(scored)[1]
        return str(args[best][1]).strip() if best < len(args) else str(best)
    return f"loglik {float(lls[0]):.4f}" if lls and _number(lls[0]) is not None else None


def _prompt(sample: dict) -> str | None:
    args = sample.get("arguments") or []
    return args[0][0] if args and isinstance(args[0], (list, tuple)) and isinstance(args[0][0], str) else None


def _bootstrap_aggregate(agg: Callable, base: list, cand: list, n: int = AGG_BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Paired bootstrap of a non-mean aggregation: resample documents (pairs kept), re-aggregate both sides."""
    k = len(base)
    b_all, c_all = float(agg(list(base))), float(agg(list(cand)))
    rng = np.random.default_rng(seed)
    bs, cs = np.empty(n), np.empty(n)
    for j in range(n):
        idx = rng.integers(0, k, size=k)
        bs[j] = float(agg([base[i] for i in idx]))
        cs[j] = float(agg([cand[i] for i in idx]))
    if not (np.all(np.isfinite(bs)) and np.all(np.isfinite(cs)) and math.isfinite(b_all) and math.isfinite(c_all)):
        raise ValueError("the aggregation is not finite on some resamples")

    def ci(x):
        lo, hi = np.percentile(x, [2.5, 97.5])
        return [round(float(lo), 4), round(float(hi), 4)]

    return {"base": round(b_all, 4), "candidate": round(c_all, 4), "delta": round(c_all - b_all, 4),
            "relative_change": round((c_all - b_all) / b_all, 4) if b_all > 0 else None,
            "ci95_delta": ci(cs - bs), "ci95_base": ci(bs), "ci95_candidate": ci(cs), "n": k,
            "ci_method": f"paired bootstrap of the aggregation ({n} resamples of documents)"}


def compare_sides(task: HarnessTask, built, runs: dict[str, dict]) -> dict:
    """Pair the two sides' per-sample records by (document, filter) and compare every metric."""
    from lm_eval.api.registry import AGGREGATION_REGISTRY

    agg_names = {v: k for k, v in AGGREGATION_REGISTRY.items()}
    aggregations = built.aggregation()
    higher = built.higher_is_better()
    by_side = {side: {(s["doc_id"], s["filter"]): s for s in runs[side]["samples"][task.name]} for side in SIDES}
    keys = sorted(set(by_side["base"]) & set(by_side["candidate"]), key=lambda k: (str(k[1]), k[0]))
    unmatched = len(set(by_side["base"]) ^ set(by_side["candidate"]))
    metric_keys = list(dict.fromkeys((m, k[1]) for k in keys for m in by_side["candidate"][k].get("metrics", [])))

    def mname(metric: str, flt: str) -> str:
        return f"{task.name}.{metric}" + ("" if flt == "none" else f".{flt}")

    metrics, per_item, unpaired = {}, {}, {}
    for metric, flt in metric_keys:
        docs = [k for k in keys if k[1] == flt and metric in by_side["base"][k] and metric in by_side["candidate"][k]]
        b = [by_side["base"][k][metric] for k in docs]
        c = [by_side["candidate"][k][metric] for k in docs]
        name = mname(metric, flt)
        agg = aggregations.get(metric)
        agg_name = agg_names.get(agg, getattr(agg, "__name__", str(agg)))
        lm_values = {side: runs[side]["results"][task.name].get(f"{metric},{flt}") for side in SIDES}
        extra = {"higher_is_better": bool(higher.get(metric, True)), "aggregation": agg_name,
                 "lm_eval": _jsonable(lm_values)}
        nb, nc = [_number(v) for v in b], [_number(v) for v in c]
        if agg_name == "mean" and docs and None not in nb and None not in nc:
            binary = all(v in (0.0, 1.0) for v in nb + nc)
            metrics[name] = compare(nb, nc, binary=binary) | extra | {"ci_method": "paired bootstrap (tuneops.eval.stats)"}
            per_item[name] = (nb, nc)
            continue
        try:
            if not docs or agg is None:
                raise ValueError("no per-document values to resample" if not docs else "no aggregation function")
            metrics[name] = _bootstrap_aggregate(agg, b, c) | extra
        except Exception as e:  # reported with lm-eval's own numbers, but no CI is claimed
            unpaired[name] = extra | {"base": _jsonable(lm_values["base"]), "candidate": _jsonable(lm_values["candidate"]),
                                      "why_no_ci": _one_line(e)}

    items = []
    for k in keys:
        sb, sc = by_side["base"][k], by_side["candidate"][k]

        def scores(s, flt=k[1]):
            return {mname(m, flt): _jsonable(s.get(m)) for m in s.get("metrics", [])}

        items.append({"index": k[0], "filter": k[1], "doc": _jsonable(sc.get("doc")), "prompt": _prompt(sc),
                      "target": _jsonable(sc.get("target")),
                      "base": _shown(sb, task.output_type), "candidate": _shown(sc, task.output_type),
                      "base_scores": scores(sb), "candidate_scores": scores(sc),
                      "base_resps": _jsonable(sb.get("resps")), "candidate_resps": _jsonable(sc.get("resps")),
                      "base_filtered": _jsonable(sb.get("filtered_resps")),
                      "candidate_filtered": _jsonable(sc.get("filtered_resps")),
                      "doc_hash": sc.get("doc_hash"), "prompt_hash": sc.get("prompt_hash"),
                      "target_hash": sc.get("target_hash"),
                      "same_prompt": sb.get("prompt_hash") == sc.get("prompt_hash")})
    return {"metrics": metrics, "per_item": per_item, "unpaired": unpaired, "items": items, "unmatched": unmatched}


# -- the bridge --------------------------------------------------------------------------------------


def _recorded_config(cfg: dict | None) -> dict | None:
    """lm-eval's effective config, less the scratch cache folder this run used (gone after the run)."""
    if not isinstance(cfg, dict):
        return cfg
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg.get("dataset_kwargs"), dict):
        cfg["dataset_kwargs"].pop("cache_dir", None)
    return cfg


def check_harness_args(limit: int | None, batch_size: int) -> None:
    """Refuse bad limits and a missing lm-eval before anything is loaded."""
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InvalidInput(f"limit: expected a whole number ≥ 1, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size: expected a whole number ≥ 1, got {batch_size!r}")
    if importlib.util.find_spec("lm_eval") is None:
        raise NotFound("lm-evaluation-harness (the lm-eval package) is not installed",
                       hint="pip install 'tuneops[harness]' (or 'lm-eval>=0.4.9,<0.5')")


def evaluate_task_paired(task: HarnessTask, *, load: Callable[[], tuple], scratch: Path, side_ids: dict[str, str],
                         limit: int | None = None, batch_size: int = 8, apply_chat_template: bool = False,
                         say: Callable[[str], None] = lambda _msg: None) -> dict:
    """Run ``task`` on both sides and compare them; returns the report body (metrics, items, suite record).

    ``load() -> (model, tokenizer, sides)`` is called only after the task's metrics and data have been
    checked, so a bad task never costs a model load; ``side_ids`` names what each side is."""
    with _offline_and_quiet():
        _check_metrics(task)
        build_task(task, scratch, limit, dry_run=True)
        say("loading the model")
        model, tokenizer, sides = load()
        lm = _make_lm(model, tokenizer, batch_size)
        runs, built = {}, None
        for side in SIDES:
            say(f"{task.name} · {side} ({side_ids[side]})")
            built = build_task(task, scratch, limit)
            with sides[side]():
                runs[side] = _evaluate_side(lm, built, limit=limit, apply_chat_template=apply_chat_template)
    compared = compare_sides(task, built, runs)

    import lm_eval

    cand = runs["candidate"]
    gen = task.config.get("generation_kwargs") or {}
    decoding = {k: v for k, v in {"max_new_tokens": gen.get("max_gen_toks"), "stop": gen.get("until"),
                                  "do_sample": gen.get("do_sample"), "temperature": gen.get("temperature"),
                                  "batch_size": batch_size}.items() if v is not None}
    config_sha = task.config_sha256(limit)
    suite = {
        "name": task.name, "kind": "lm-eval-harness", "source": str(task.path), "sha256": config_sha, "task": False,
        "items": (cand.get("n-samples", {}).get(task.name) or {}).get("effective", len(compared["items"])),
        "decoding": decoding,
        "harness": {
            "lm_eval_version": getattr(lm_eval, "__version__", None) or cand.get("lm_eval_version"),
            "transformers_version": cand.get("transformers_version"),
            "task": task.name, "output_type": task.output_type, "config_sha256": config_sha,
            "yaml_sha256": task.yaml_sha256, "definition_files": task.definition_files, "data_files": task.data_files,
            "task_config": _recorded_config(cand.get("configs", {}).get(task.name)), "task_version": cand.get("versions", {}).get(task.name),
            "num_fewshot": cand.get("n-shot", {}).get(task.name), "n_samples": cand.get("n-samples", {}).get(task.name),
            "limit": limit, "batch_size": batch_size, "apply_chat_template": apply_chat_template,
            "seeds": {k: (cand.get("config") or {}).get(k) for k in ("random_seed", "numpy_seed", "torch_seed",
                                                                       "fewshot_seed")},
            "results": {side: runs[side]["results"].get(task.name) for side in SIDES},
            "sides": dict(side_ids),
            "unpaired_metrics": compared["unpaired"], "unmatched_samples": compared["unmatched"],
            "prompts_identical": all(it["same_prompt"] for it in compared["items"]),
        },
    }
    result = _jsonable({"metrics": compared["metrics"], "slices": {}, "items": {task.name: compared["items"]},
                        "suites": [suite]})
    result["per_item"] = compared["per_item"]
    return result


__all__ = ["HarnessTask", "build_task", "check_harness_args", "compare_sides", "evaluate_task_paired",
           "load_harness_task"]
