"""One recipe run, start to finish: validate data -> train -> register -> paired eval -> gates -> promote.

This sits above every layer it calls (train, eval, release); the CLI and quickstart call it.
The run record moves queued -> validating_data -> running -> evaluating -> succeeded | failed |
cancelled, and every step leaves typed events behind.
"""

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from rich.progress import Progress

from tuneops.data.ingest import load_manifest, load_rows
from tuneops.data.licenses import check_use
from tuneops.errors import GateFailed, Interrupted, InvalidInput, NotFound, RunPruned, RunStopped, TuneopsError
from tuneops.eval.gates import EPS as GATE_EPS, check_gates
from tuneops.eval.paired import plot_comparison, run_paired_eval, save_eval_report
from tuneops.eval.suite import EVAL_DATASET, MemorisationSource, Suite, load_suite
from tuneops.models.base import base_dir, load_base, resolve_base
from tuneops.release.lineage import check_base_compatible
from tuneops.release.registry import artifact_dir, promote, register_adapter, resolve_alias
from tuneops.store import Store
from tuneops.store.store import TERMINAL_STATES
from tuneops.store.ids import new_run_id, sha256_bytes
from tuneops.store.runs import Heartbeat, clean_scratch
from tuneops.store.schema import AliasMove, ArtifactRecord, EvalReportRecord, RunEvent, RunRecord
from tuneops.train.canaries import canary_record, check_recorded, looks_like_canary, make_canaries, plant_canaries
from tuneops.train.recipe import Recipe, parse_recipe
from tuneops.train.sft import StopCheck, planned_steps, train


@dataclass
class RunOutcome:
    run: RunRecord
    artifact: ArtifactRecord | None = None
    report: EvalReportRecord | None = None
    promotion: AliasMove | None = None
    promotion_refused: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)


def _task(progress: Progress | None, description: str, total: float | None):
    return progress.add_task(description, total=total) if progress else None


def _advance(progress: Progress | None, task, **kw):
    if progress is not None and task is not None:
        progress.update(task, **kw)


def plot_losses(losses: list[dict], path: Path, title: str, eval_losses: list[dict] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([x["step"] for x in losses], [x["loss"] for x in losses], marker=".", color="#2f7ed8", label="train")
    if eval_losses:
        ax.plot([x["step"] for x in eval_losses], [x["eval_loss"] for x in eval_losses], marker="o",
                color="#d8572f", label="eval")
        ax.legend()
    rewards = [x for x in losses if x.get("reward") is not None]
    if rewards:  # RL: the policy loss is ~0 by construction; the reward is the curve to watch
        ax2 = ax.twinx()
        ax2.plot([x["step"] for x in rewards], [x["reward"] for x in rewards], marker=".", color="#2e9e4f")
        ax2.set_ylabel("mean reward", color="#2e9e4f")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (trained tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _named(recipe: Recipe, field: str, err: TuneopsError) -> TuneopsError:
    """The same error, prefixed with the recipe file and the field that led to it."""
    return type(err)(f"{recipe.source}: {field}: {err.message}", hint=err.hint)


def validate_inputs(store: Store, recipe: Recipe):
    """Resolve base and datasets and check everything that can be checked before spending compute."""
    src = recipe.source
    try:
        base = resolve_base(store, recipe.base)
    except TuneopsError as e:
        raise _named(recipe, "base", e) from None
    datasets = {}
    for key in ("train", "eval"):
        try:
            datasets[key] = store.resolve_dataset(getattr(recipe.data, key))
        except TuneopsError as e:
            raise _named(recipe, f"data.{key}", e) from None
    train_ds, eval_ds = datasets["train"], datasets["eval"]
    if recipe.train.canaries.count:
        # A dataset row that looks like a planted canary would blur what the canaries measure.
        for key, ds in (("train", train_ds), ("eval", eval_ds)):
            bad = [i for i, row in enumerate(load_rows(store, ds), start=1) if looks_like_canary(row)]
            if bad:
                raise InvalidInput(f"{src}: data.{key}: row(s) {bad[:5]} of {ds.id} look like tuneops canaries "
                                   "('The secret code of tuneops canary N is'); canaries are planted at training "
                                   "time and are never data", hint="remove those rows and ingest the data again")
    check_objective_data(recipe, train_ds)
    train_manifest = load_manifest(store, train_ds)
    allowed = check_use(train_manifest["rows"], recipe.data.use)
    if not allowed.ok:
        raise InvalidInput(f"{src}: data.use: {allowed.message(recipe.data.use, f'training data {train_ds.id}')}",
                           hint="train on rows whose licences permit this use (see `tuneops data show`), or "
                                "declare the use the model really has (data.use: research|internal|commercial)")
    train_hashes = {r["sha256"] for r in train_manifest["rows"]}
    leaked = sum(1 for r in load_manifest(store, eval_ds)["rows"] if r["sha256"] in train_hashes)
    if leaked:
        raise InvalidInput(f"{src}: data.eval: {leaked} row(s) of {eval_ds.id} also appear in the training set "
                           f"{train_ds.id}; the eval would reward memorisation",
                           hint="remove the overlap and ingest the eval set again")
    suites = check_eval_plan(store, recipe)
    check_leakage(store, recipe, train_ds, suites)
    return base, train_ds, eval_ds, suites


def check_objective_data(recipe: Recipe, train_ds) -> None:
    """The objective needs the kind of rows it trains on: preference pairs for dpo/ipo/orpo/kto/simpo/
    cpo/reward, chat rows for sft/grpo/rloo/distill."""
    kind = train_ds.summary.get("kind", "sft")
    objective = recipe.objective.kind
    if recipe.objective.needs_preference_rows and kind != "preference":
        raise InvalidInput(f"{recipe.source}: objective.kind {objective} needs preference pairs (prompt / chosen / "
                           f"rejected) but data.train {train_ds.id} holds chat rows",
                           hint="ingest a preference dataset (`tuneops data ingest pairs.jsonl --format preference`) "
                                "or use objective.kind: sft")
    if not recipe.objective.needs_preference_rows and kind != "sft":
        raise InvalidInput(f"{recipe.source}: data.train: {train_ds.id} holds {kind} rows; objective.kind {objective} "
                           "needs chat rows (messages)",
                           hint="give a dataset of SFT rows, or a preference objective (objective.kind: dpo) for pairs")


@dataclass
class TrainingPlan:
    """What a run needs besides its rows, resolved and checked before any model loads."""

    replay_rows: list[dict] | None = None
    replay_dataset: str | None = None
    teacher_path: Path | None = None
    teacher_adapter: Path | None = None
    teacher_tokenizer: Path | None = None  # the teacher base's directory, when teacher_path holds weights only
    teacher: dict | None = None  # {"ref", "artifact", "base"}: recorded in the artifact's lineage
    reward_model: str | None = None  # a reward-model artifact id (grpo / rloo), recorded likewise
    reward_fn: Callable | None = None
    template_dir: Path | None = None


def _same_tokenizer(a: Path, b: Path) -> bool:
    from tuneops.store.ids import sha256_bytes

    def digest(d: Path) -> str | None:
        f = Path(d) / "tokenizer.json"
        return sha256_bytes(f.read_bytes()) if f.exists() else None

    da, db = digest(a), digest(b)
    return da is not None and da == db


def plan_training(store: Store, recipe: Recipe, base) -> TrainingPlan:
    """Method, objective and forgetting controls checked against what exists: bitsandbytes for qlora,
    the replay set, the chat-template override, the reward function, the teacher (same tokenizer)."""
    from tuneops.train.methods import check_method_supported, check_optimizer_supported
    from tuneops.train.template import apply_template_override

    src = recipe.source
    src_path = Path(src)
    plan = TrainingPlan(template_dir=src_path.parent if src_path.is_file() else Path.cwd())
    try:
        check_method_supported(recipe.method)
    except TuneopsError as e:
        raise _named(recipe, "method.kind", e) from None
    try:
        check_optimizer_supported(recipe.train.optimizer)
    except TuneopsError as e:
        raise _named(recipe, "train.optimizer", e) from None
    from tuneops.train.objectives import check_method_objective

    try:
        check_method_objective(recipe.method, recipe.objective)
    except TuneopsError as e:
        raise type(e)(f"{src}: {e.message}", hint=e.hint) from None
    if recipe.launcher is not None:
        from tuneops.train.launch import check_launcher

        try:
            check_launcher(recipe.launcher, train=recipe.train, objective=recipe.objective, method=recipe.method)
        except TuneopsError as e:
            raise type(e)(f"{src}: {e.message}", hint=e.hint) from None
    if recipe.method.kind == "full" and recipe.train.learning_rate > 1e-3:
        raise InvalidInput(f"{src}: train.learning_rate: {recipe.train.learning_rate:g} would wreck a full fine-tune "
                           "(every weight moves)", hint="use 1e-5 .. 1e-4 with method.kind full")
    if recipe.train.chat_template:
        class _Probe:
            chat_template = None
        apply_template_override(_Probe(), recipe.train.chat_template, base_dir=plan.template_dir,
                                where=f"{src}: train.chat_template")
    if recipe.train.canaries.count and recipe.objective.kind != "sft":
        raise InvalidInput(f"{src}: train.canaries: canaries are planted as chat rows, so they need objective.kind "
                           f"sft (not {recipe.objective.kind})", hint="remove train.canaries")
    if recipe.train.replay:
        try:
            ds = store.resolve_dataset(recipe.train.replay.dataset)
        except TuneopsError as e:
            raise _named(recipe, "train.replay.dataset", e) from None
        if ds.summary.get("kind", "sft") != "sft":
            raise InvalidInput(f"{src}: train.replay.dataset: {ds.id} holds {ds.summary['kind']} rows",
                               hint="replay a dataset of chat rows")
        plan.replay_rows, plan.replay_dataset = load_rows(store, ds), ds.id
    obj = recipe.objective
    if obj.kind in ("grpo", "rloo"):
        if obj.reward.startswith("ad-"):
            try:
                reward_art = store.get_artifact(obj.reward)
            except TuneopsError as e:
                raise _named(recipe, "objective.reward", e) from None
            trained_as = (reward_art.lineage or {}).get("objective")
            if trained_as != "reward":
                raise InvalidInput(f"{src}: objective.reward: {reward_art.id} is not a reward model (trained with "
                                   f"objective.kind {trained_as or 'unknown'})",
                                   hint="train one with objective.kind: reward on preference pairs, and name its id")
            plan.reward_fn = reward_model_fn(store, reward_art)
            plan.reward_model = reward_art.id
        else:
            from tuneops.train.rewards import load_reward

            try:
                plan.reward_fn = load_reward(obj.reward, base_dir=plan.template_dir)
            except TuneopsError as e:  # its message already names objective.reward
                raise type(e)(f"{src}: {e.message}", hint=e.hint) from None
        if recipe.train.batch_size % obj.num_generations:
            raise InvalidInput(f"{src}: objective.num_generations: {obj.num_generations} does not divide "
                               f"train.batch_size {recipe.train.batch_size}",
                               hint="make train.batch_size a multiple of objective.num_generations")
    if obj.kind == "distill":
        teacher_ref = obj.teacher
        try:
            if teacher_ref.startswith("ad-") or "@" in teacher_ref:
                art = store.get_artifact(teacher_ref) if teacher_ref.startswith("ad-") else resolve_alias(store,
                                                                                                         teacher_ref)
                teacher_base = store.get_base(art.base_id)
                if art.kind == "model":  # a full fine-tune: its own weights, on its base's tokenizer
                    plan.teacher_path = artifact_dir(store, art)
                    plan.teacher_tokenizer = base_dir(store, teacher_base)
                else:  # an adapter on its base
                    plan.teacher_adapter = artifact_dir(store, art)
                plan.teacher = {"ref": teacher_ref, "artifact": art.id, "base": teacher_base.id}
            else:
                teacher_base = resolve_base(store, teacher_ref)
                plan.teacher = {"ref": teacher_ref, "artifact": None, "base": teacher_base.id}
        except TuneopsError as e:
            raise _named(recipe, "objective.teacher", e) from None
        if plan.teacher_path is None:
            plan.teacher_path = base_dir(store, teacher_base)
        if obj.mode == "logits" and not _same_tokenizer(base_dir(store, teacher_base), base_dir(store, base)):
            raise InvalidInput(f"{src}: objective.teacher: {teacher_ref} does not share the student's tokenizer, so "
                               "their next-token distributions cannot be compared (logit distillation)",
                               hint="pick a teacher with the same tokenizer, or objective.mode: responses")
    return plan


def reward_model_fn(store: Store, artifact: ArtifactRecord) -> Callable:
    """A reward function scoring completions with a reward model (an artifact trained with
    objective.kind reward), for GRPO / RLOO."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = base_dir(store, store.get_base(artifact.base_id))
    state: dict = {}

    def reward(prompts, completions, **_):
        if not state:
            tok = AutoTokenizer.from_pretrained(path)

            def scorer(src):
                m = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
                m.config.pad_token_id = tok.pad_token_id or tok.eos_token_id
                return m

            files = artifact_dir(store, artifact)  # a full fine-tune holds its own weights and score head
            model = scorer(files) if artifact.kind == "model" else PeftModel.from_pretrained(scorer(path), files)
            state["model"] = model.eval()
            state["tok"] = tok
        tok, model = state["tok"], state["model"]
        texts = []
        for p, c in zip(prompts, completions):
            chat = (p if isinstance(p, list) else [{"role": "user", "content": str(p)}]) + \
                   (c if isinstance(c, list) else [{"role": "assistant", "content": str(c)}])
            texts.append(tok.apply_chat_template(chat, tokenize=False))
        batch = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            return model(**batch).logits[:, 0].float().tolist()

    return reward


def early_stop_check(store: Store, recipe: Recipe, plan: TrainingPlan) -> StopCheck | None:
    """train.early_stopping as a training callback: score the off-domain suite at step 0 and every N
    steps; stop when its metric falls more than ``max_drop`` below the step-0 value."""
    spec = recipe.train.early_stopping
    if spec is None:
        return None
    from tuneops.eval.paired import score_model

    try:
        suite = load_suite(spec.suite, base_dir=plan.template_dir, rows_of=lambda ref: (
            store.resolve_dataset(ref).id, load_rows(store, store.resolve_dataset(ref))),
            where=f"{recipe.source}: train.early_stopping.suite")
    except TuneopsError as e:
        raise _named(recipe, "train.early_stopping.suite", e) from None
    if spec.max_items:
        suite.limit(spec.max_items)
    names = suite.metric_names()
    metric = suite.metric(spec.metric) if spec.metric and not spec.metric.startswith(suite.name + ".") else \
        (spec.metric or names[0])
    if metric not in names:
        raise InvalidInput(f"{recipe.source}: train.early_stopping.metric: {spec.metric!r} is not a metric of suite "
                           f"{suite.name}", hint=f"use one of {names}")
    higher = suite.direction().get(metric, True)
    start: dict = {}
    tokenizer_box: dict = {}

    def check(model, step: int) -> str | None:
        from transformers import AutoTokenizer

        if "tok" not in tokenizer_box:
            tok = AutoTokenizer.from_pretrained(base_dir(store, resolve_base(store, recipe.base)))
            if recipe.train.chat_template:
                from tuneops.train.template import apply_template_override

                apply_template_override(tok, recipe.train.chat_template, base_dir=plan.template_dir)
            tokenizer_box["tok"] = tok
        value = score_model(model, tokenizer_box["tok"], suite, batch_size=recipe.eval.batch_size,
                            default_max_new_tokens=recipe.eval.max_new_tokens)[metric]
        if step == 0:
            start["v"] = value
            return None
        drop = (start["v"] - value) if higher else (value - start["v"])
        # a drop of exactly max_drop is within bounds: 1.0 - 0.95 is 0.05000000000000004 in floats, which stopped
        # runs that lost 2 of 40 items under max_drop 0.05 (the gates compare with the same tolerance)
        if drop > spec.max_drop + GATE_EPS:
            return (f"early stop at step {step}: {metric} moved from {start['v']:.3f} to {value:.3f} "
                    f"(more than max_drop {spec.max_drop:g})")
        return None

    return StopCheck(spec.every, check, restore_best=spec.restore_best)


def check_leakage(store: Store, recipe: Recipe, train_ds, suites: list[Suite]) -> list[dict]:
    """Decontamination before training: a training row sharing a 13-word passage with (or nearly
    duplicating) an item of any suite the recipe evaluates — its own eval set included — inflates
    that suite's score. Refused unless ``data.waive_leakage`` gives a reason. System prompts are left
    out: an instruction every row shares is not leakage."""
    from tuneops.data.dedup import find_leakage

    train_rows = [r if "messages" in r else {"messages": [*r["prompt"], *r["chosen"]]}  # preference pairs
                  for r in load_rows(store, train_ds)]
    found = []
    for suite in suites:
        if suite.name == "memorisation":  # built from the training rows on purpose
            continue
        texts = [" ".join(m["content"] for m in suite.chat(i) if m["role"] != "system")
                 for i in range(len(suite.items))]
        for leak in find_leakage(train_rows, texts, roles=("user", "assistant")):
            found.append({"suite": suite.name, "train_row": leak.train_index + 1, "item": leak.eval_index + 1,
                          "kind": leak.kind, "evidence": leak.evidence[:80]})
    if found and not recipe.data.waive_leakage:
        shown = "; ".join(f"{f['suite']} item {f['item']} ~ train row {f['train_row']} ({f['kind']}: "
                          f"{f['evidence']!r})" for f in found[:5])
        raise InvalidInput(f"{recipe.source}: data.train: {len(found)} training row(s) of {train_ds.id} leak eval "
                           f"items: {shown}" + (" …" if len(found) > 5 else ""),
                           hint="drop those rows from the training data, or set data.waive_leakage: '<reason>' "
                                "to train anyway (recorded with the run)")
    return found


NO_EVAL_DATA = "-"  # an eval-only plan with no eval set: suites over `$eval` are refused by name


def memorisation_source(store: Store, recipe: Recipe, artifact: ArtifactRecord | None = None) -> MemorisationSource:
    """What a memorisation suite probes: the canaries planted and the rows trained on.

    For an artifact of a tuneops run, from that run (what the adapter was really trained on): the
    canaries regenerated from its saved recipe and checked against the hashes it recorded, and the
    training dataset of its lineage. Otherwise from the recipe (a run plans its suites this way
    before it trains): its train.canaries and data.train."""
    run = None
    if artifact is not None and artifact.run_id:
        try:
            run = store.get_run(artifact.run_id)
        except NotFound:
            run = None
    if run is not None:
        saved = yaml.safe_load(run.recipe_yaml) or {}
        train = saved.get("train") or {}
        spec = train.get("canaries") or {}
        canaries = make_canaries(int(train.get("seed", 0)), int(spec.get("count", 0)))
        recorded = store.run_events(run.id, "canaries")
        try:
            check_recorded(canaries, recorded[-1].payload if recorded else None)
        except ValueError as e:
            raise InvalidInput(f"run {run.id}: {e}", hint="evaluate it with the tuneops version that trained it")
        origin = f"run {run.id}"
    else:
        canaries = make_canaries(recipe.train.seed, recipe.train.canaries.count)
        origin = f"recipe {recipe.source}"
    datasets = (artifact.lineage or {}).get("datasets") if artifact is not None else None
    train_ref = datasets[0] if datasets else (None if recipe.data.train == NO_EVAL_DATA else recipe.data.train)
    rows, train_id = None, None
    if train_ref is not None:
        try:
            ds = store.resolve_dataset(train_ref)
        except TuneopsError as e:
            raise _named(recipe, f"artifact {artifact.id}: lineage" if datasets else "data.train", e) from None
        train_id, rows = ds.id, load_rows(store, ds)
    return MemorisationSource(origin=origin, canaries=canaries, train_dataset_id=train_id, train_rows=rows)


def plan_suites(store: Store, recipe: Recipe, artifact: ArtifactRecord | None = None) -> list[Suite]:
    """The recipe's suites, loaded and validated (items, template slots, scorer parameters, a dry run
    of every scorer on every item): nothing here loads a model. A memorisation suite probes
    ``artifact``'s run when given (see :func:`memorisation_source`), else the recipe's own training."""
    cache: dict[str, tuple[str, list[dict]]] = {}
    memo: list[MemorisationSource] = []

    def memorisation_of() -> MemorisationSource:
        if not memo:
            memo.append(memorisation_source(store, recipe, artifact))
        return memo[0]

    def rows_of(ref: str) -> tuple[str, list[dict]]:
        if ref not in cache:
            if ref == EVAL_DATASET:
                if recipe.data.eval == NO_EVAL_DATA:
                    raise InvalidInput("this suite scores the eval set (`$eval`), and none was given",
                                       hint="pass --data DATASET or --recipe RECIPE")
                try:
                    ds = store.resolve_dataset(recipe.data.eval)
                except TuneopsError as e:
                    raise _named(recipe, "data.eval", e) from None
            else:
                ds = store.resolve_dataset(ref)
            cache[ref] = (ds.id, load_rows(store, ds))
        return cache[ref]

    eval_id = None
    if recipe.data.eval != NO_EVAL_DATA:
        try:
            eval_id = store.resolve_dataset(recipe.data.eval).id
        except TuneopsError:
            eval_id = None  # reported by name if a suite needs it

    refs: list = list(recipe.eval.suites)
    if recipe.eval.scorer is not None:
        scorers = recipe.eval.scorer if isinstance(recipe.eval.scorer, list) else [recipe.eval.scorer]
        refs.append({"name": recipe.eval.name, "dataset": EVAL_DATASET,
                     "scorers": [{"name": sc} if isinstance(sc, str) else sc for sc in scorers]})
    src_path = Path(recipe.source)
    folder = src_path.parent if src_path.is_file() else Path.cwd()
    suites, seen = [], set()
    for i, ref in enumerate(refs):
        where = f"{recipe.source}: eval.suites[{i}]" if i < len(recipe.eval.suites) else f"{recipe.source}: eval.scorer"
        if isinstance(ref, dict) and not {"use", "items", "dataset", "memorisation"} & set(ref):
            ref = {**ref, "dataset": EVAL_DATASET}  # an inline suite scores the recipe's eval set by default
        try:
            suite = load_suite(ref, base_dir=folder, rows_of=rows_of, eval_dataset_id=eval_id, where=where,
                               memorisation_of=memorisation_of)
        except TuneopsError as e:
            if e.message.startswith(recipe.source):
                raise
            raise type(e)(f"{where}: {e.message}", hint=e.hint) from None
        if suite.name in seen:
            raise InvalidInput(f"{where}: a second suite named {suite.name!r}; metric names would collide",
                               hint="give each suite its own name")
        seen.add(suite.name)
        if recipe.eval.max_items:
            suite.limit(recipe.eval.max_items)
        suites.append(suite)
    return suites


def check_eval_plan(store: Store, recipe: Recipe, artifact: ArtifactRecord | None = None) -> list[Suite]:
    """Before any model loads: every suite can score its items, every gate names a metric the suites
    produce, and a promoting recipe gates its own task. Returns the suites."""
    src = recipe.source
    suites = plan_suites(store, recipe, artifact)
    measurable = {m for s in suites for m in s.metric_names()}
    task_metrics = {m for s in suites if s.is_task for m in s.metric_names()}
    for i, gate in enumerate(recipe.gates):
        if gate.metric not in measurable:
            raise InvalidInput(f"{src}: gates[{i}]: {gate.metric!r} is not produced by the suites "
                               f"{[s.name for s in suites]}", hint=f"use one of {sorted(measurable)}")
    if recipe.target is not None and not any(g.metric in task_metrics for g in recipe.gates):
        raise InvalidInput(
            f"{src}: gates: the recipe promotes to {recipe.target.alias}@{recipe.target.stage} but no gate judges "
            "a metric computed on its own eval data, so the task would never be tested",
            hint=(f"add a gate on one of {sorted(task_metrics)}" if task_metrics else
                  "add a suite over the eval set (e.g. eval.suites: [json_extraction], or eval.scorer: numeric) "
                  "and gate one of its metrics") + ", or remove `target` to train without promoting")
    return suites


def resolve_baseline(store: Store, artifact: ArtifactRecord, ref: str | None) -> ArtifactRecord | None:
    """``None``/"base": the artifact's own base (adapter off); else an alias or artifact id on the same base."""
    if ref in (None, "base", artifact.base_id):
        return None
    other = store.get_artifact(ref) if ref.startswith("ad-") else resolve_alias(store, ref)
    if other.id == artifact.id:
        raise InvalidInput(f"--baseline {ref} is the candidate itself", hint="compare against base or another artifact")
    if other.base_id != artifact.base_id:
        raise InvalidInput(f"baseline {other.id} was trained on {other.base_id}, the candidate on {artifact.base_id}; "
                           "a paired comparison needs the same base", hint="use --baseline base or an artifact of "
                                                                          f"{artifact.base_id}")
    return other


def evaluate_artifact(store: Store, artifact: ArtifactRecord, recipe: Recipe, *, baseline: str | None = None,
                      suites: list[Suite] | None = None,
                      progress: Progress | None = None) -> tuple[EvalReportRecord, dict]:
    """Paired eval of an artifact against a baseline (its own base by default, or another artifact on
    that base) with the recipe's suites and gates, same items, same decoding; stores the report."""
    base = store.get_base(artifact.base_id)
    # A run passes the suites it validated before training: the items evaluated are the items checked.
    suites = suites if suites is not None else check_eval_plan(store, recipe, artifact)
    other = resolve_baseline(store, artifact, baseline)
    model, tokenizer, sides = load_paired(store, artifact, other)
    task = _task(progress, "eval baseline vs candidate", None)
    result = run_paired_eval(
        model, tokenizer, suites=suites, sides=sides,
        batch_size=recipe.eval.batch_size, default_max_new_tokens=recipe.eval.max_new_tokens,
        on_progress=lambda label, done, total: _advance(progress, task, completed=done, total=total,
                                                        description=f"eval {label}"))
    verdicts = check_gates(recipe.gates, result["per_item"], set(result["task_metrics"]))
    report = save_eval_report(store, artifact_id=artifact.id, baseline_id=other.id if other else base.id,
                              suites=[s.name for s in suites], result=result, verdicts=verdicts)
    return report, result


def recipe_artifact(store: Store, recipe: Recipe, ref: str | None = None) -> ArtifactRecord:
    """``ref`` (artifact id or alias), else the recipe's target alias, else its newest succeeded run's artifact."""
    from sqlalchemy import select

    if ref:
        return store.get_artifact(ref) if ref.startswith("ad-") else resolve_alias(store, ref)
    if recipe.target is not None:
        try:
            return resolve_alias(store, f"{recipe.target.alias}@{recipe.target.stage}")
        except NotFound:
            pass
    with store.session(write=False) as s:
        art_id = s.scalars(select(RunRecord.artifact_id).where(
            RunRecord.recipe_name == recipe.name, RunRecord.state == "succeeded", RunRecord.artifact_id.is_not(None))
            .order_by(RunRecord.created_at.desc())).first()
    if art_id is None:
        raise NotFound(f"no artifact of recipe {recipe.name!r} to evaluate",
                       hint=f"train it first (`tuneops train {recipe.source}`) or pass --artifact")
    return store.get_artifact(art_id)


def load_paired(store: Store, artifact: ArtifactRecord, other: ArtifactRecord | None):
    """The base once, with the candidate adapter (and the baseline's, when it is another artifact)
    attached: (model, tokenizer, sides), where ``sides["base"|"candidate"]()`` is a context that
    makes that side's weights active. Integrity first: a tampered artifact never costs a model load.

    A full fine-tune (artifact kind ``model``) is a whole set of weights: its side swaps them in
    (and the other side's back) on the one model. A chat template shipped with an artifact (a recipe
    that overrode it) is the template both sides are prompted with: the pair differs in weights only."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    paths = {"candidate": artifact_dir(store, artifact)}
    if other is not None:
        paths["baseline"] = artifact_dir(store, other)
    base = store.get_base(artifact.base_id)
    templates = [path / "chat_template.jinja" for path in paths.values() if (path / "chat_template.jinja").exists()]
    # Both sides are prompted with one template (the last shipped one, else the base's): each adapter must have
    # been trained on this base with that template, or it is refused before any model loads.
    prompted_with = sha256_bytes(templates[-1].read_bytes()) if templates else None
    for art in (artifact, other):
        if art is not None:
            check_base_compatible(store, art, base, template_sha256=prompted_with)
    model, tokenizer = load_base(store, base)
    if templates:
        tokenizer.chat_template = templates[-1].read_text(encoding="utf-8")
    full = {name: load_file(str(path / "model.safetensors")) for name, path in paths.items()
            if (path / "model.safetensors").exists() and not (path / "adapter_config.json").exists()}
    adapters = [name for name in paths if name not in full]
    if adapters:
        first = adapters[0]
        model = PeftModel.from_pretrained(model, paths[first], adapter_name=first)
        for name in adapters[1:]:
            model.load_adapter(paths[name], adapter_name=name)
    model.eval()
    inner = model.get_base_model() if adapters else model
    base_weights = {k: v.detach().clone() for k, v in inner.state_dict().items()} if full else None
    current = {"weights": "base"}

    def weights(name: str):
        if current["weights"] != name:
            with torch.no_grad():
                inner.load_state_dict(full[name] if name in full else base_weights, strict=False)
            current["weights"] = name

    @contextmanager
    def use(name: str):
        weights(name if name in full else "base")
        if name in full:
            ctx = model.disable_adapter() if adapters else nullcontext()
        else:
            model.set_adapter(name)
            ctx = nullcontext()
        with ctx:
            yield

    @contextmanager
    def plain_base():
        weights("base")
        with (model.disable_adapter() if adapters else nullcontext()):
            yield

    sides = {"base": plain_base if other is None else (lambda: use("baseline")),
             "candidate": lambda: use("candidate")}
    return model, tokenizer, sides


def run_harness(store: Store, artifact_ref: str | ArtifactRecord, *, task_yaml: Path | str,
                baseline: str | None = None, limit: int | None = None, batch_size: int = 8,
                apply_chat_template: bool = False,
                on_progress: Callable[[str], None] | None = None) -> tuple[EvalReportRecord, dict]:
    """Run an lm-eval task YAML on an artifact (id or alias) and its baseline; store the paired report
    (see tuneops.eval.harness).

    ``baseline``: ``None`` or ``"base"`` — the artifact's own base with the adapter off (tuneops never
    reports one model's score alone); or an alias / artifact id trained on the same base.
    ``limit``: only the first N documents (both sides get the same ones). Returns (report, result)."""
    import shutil

    from tuneops.eval import harness

    harness.check_harness_args(limit, batch_size)
    task = harness.load_harness_task(task_yaml)  # a bad file never costs a model load (nor heavy imports)
    artifact = artifact_ref if isinstance(artifact_ref, ArtifactRecord) else (
        store.get_artifact(artifact_ref) if artifact_ref.startswith("ad-") else resolve_alias(store, artifact_ref))
    other = resolve_baseline(store, artifact, baseline)
    baseline_id = other.id if other is not None else artifact.base_id
    scratch = store.blobs.scratch_dir("harness-")
    try:
        result = harness.evaluate_task_paired(
            task, load=lambda: load_paired(store, artifact, other), scratch=scratch,
            side_ids={"base": baseline_id, "candidate": artifact.id}, limit=limit, batch_size=batch_size,
            apply_chat_template=apply_chat_template, say=on_progress or (lambda _msg: None))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = save_eval_report(store, artifact_id=artifact.id, baseline_id=baseline_id, suites=[f"harness:{task.name}"],
                              result=result, verdicts=[])
    return report, result


def ladder_for_recipe(store: Store, recipe: Recipe, artifact: ArtifactRecord, *, k: int = 3, margin: float = 0.02,
                      docs: list[str] | None = None, max_items: int | None = None,
                      progress: Progress | None = None) -> dict:
    """The prompt → few-shot → RAG → fine-tune ladder on the recipe's task suite (see eval/ladder.py)."""
    from tuneops.eval.ladder import run_ladder

    suites = check_eval_plan(store, recipe, artifact)
    task = [s for s in suites if s.is_task]
    if not task:
        raise InvalidInput(f"{recipe.source}: eval.suites: no suite scores the task's eval set, so there is no "
                           "ladder to climb", hint="add e.g. json_extraction or eval.scorer to the recipe")
    suite = task[0]
    if max_items:
        suite.limit(max_items)
    gated = [g.metric for g in recipe.gates if g.metric in suite.metric_names()]
    metric = gated[0] if gated else suite.metric_names()[0]
    try:
        train_rows = load_rows(store, store.resolve_dataset(recipe.data.train))
    except TuneopsError as e:
        raise _named(recipe, "data.train", e) from None
    examples = [(next(m["content"] for m in reversed(r["messages"][:-1]) if m["role"] == "user"),
                 r["messages"][-1]["content"]) for r in train_rows]
    model, tokenizer, sides = load_paired(store, artifact, None)
    bar = _task(progress, "ladder", None)
    result = run_ladder(model, tokenizer, suite, metric, examples, k=k, margin=margin, docs=docs,
                        max_new_tokens=recipe.eval.max_new_tokens, sides=sides,
                        on_progress=lambda label, done, total: _advance(progress, bar, completed=done, total=total,
                                                                        description=label))
    return result | {"artifact": artifact.id, "base": artifact.base_id}


def create_run(store: Store, recipe: Recipe, *, priority: int | None = None, claim: bool = False) -> str:
    """Record a new run of ``recipe`` in state ``queued`` (a worker, or :func:`run_recipe`, executes it).
    ``claim``: this process takes it in the same transaction, so no worker can grab it first."""
    import os
    import socket

    from tuneops.store.schema import utcnow

    run_id = new_run_id()
    mine = dict(host=socket.gethostname(), pid=os.getpid(), worker=f"{socket.gethostname()}:{os.getpid()}",
                heartbeat_at=utcnow(), attempts=1) if claim else {}
    with store.session() as s:
        s.add(RunRecord(id=run_id, recipe_name=recipe.name, recipe_yaml=recipe.to_yaml(),
                        recipe_hash=recipe.hash(), state="queued", dataset_ids=[], metrics={}, priority=priority,
                        **mine))
        s.flush()  # the event's foreign key needs the run row first
        s.add(RunEvent(run_id=run_id, type="created", payload={"source": str(recipe.source), "priority": priority}))
        store.audit(s, "run.create", "run", run_id, recipe=recipe.name, recipe_sha256=recipe.hash())
    (store.runs_dir(run_id) / "recipe.yaml").write_text(recipe.to_yaml())
    return run_id


def run_recipe_of(store: Store, run_id: str) -> Recipe:
    """The recipe a run was created with (relative paths in it resolve against its original file)."""
    run = store.get_run(run_id)
    created = store.run_events(run_id, "created")
    source = created[0].payload.get("source") if created else None
    import yaml

    recipe = parse_recipe(yaml.safe_load(run.recipe_yaml), source=source or f"run {run_id}")
    return recipe


def run_recipe(store: Store, recipe: Recipe, *, progress: Progress | None = None,
               trial_hook: Callable[[int, float], None] | None = None) -> RunOutcome:
    """Execute a validated recipe as a new run; promotion happens only if every gate passes."""
    run_id = create_run(store, recipe, claim=True)
    return execute_run(store, run_id, recipe=recipe, progress=progress, trial_hook=trial_hook)


def execute_run(store: Store, run_id: str, *, recipe: Recipe | None = None, progress: Progress | None = None,
                trial_hook: Callable[[int, float], None] | None = None) -> RunOutcome:
    """Execute a ``queued`` run in this process (resuming from its newest complete checkpoint if it has
    one). ``trial_hook(step, eval_loss)`` is called on every held-out loss (HPO pruning raises from it).

    The run heartbeats while this process works on it. However it ends — success, error,
    Ctrl-C (cancelled), SIGTERM (interrupted, after a checkpoint), pause — its state says so and its
    scratch folders go; its checkpoints stay."""
    recipe = recipe or run_recipe_of(store, run_id)
    work = store.runs_dir(run_id)
    try:
        with Heartbeat(store, run_id) as beat:
            outcome = RunOutcome(run=store.get_run(run_id))
            _execute(store, recipe, run_id, work, outcome, progress, trial_hook=trial_hook, heartbeat=beat)
    except BaseException as e:
        _mark_ended(store, run_id, e)
        raise
    finally:
        clean_scratch(store, run_id)
    return outcome


def _mark_ended(store: Store, run_id: str, e: BaseException) -> None:
    """Record why a run stopped: cancelled (Ctrl-C), interrupted (SIGTERM) or failed (an error)."""
    if isinstance(e, RunStopped):
        state, why = e.state, e.reason
        try:  # `tuneops runs cancel` interrupts the process too: what the user asked for is a cancel
            if store.get_run(run_id).control == "cancel":
                asked = store.run_events(run_id, "cancel_requested")
                state = "cancelled"
                why = (asked[-1].payload.get("reason") if asked else None) or "cancelled by the user"
        except Exception:  # noqa: BLE001  (bookkeeping never hides the stop itself)
            pass
    elif isinstance(e, RunPruned):
        state, why = "cancelled", e.reason
    elif isinstance(e, KeyboardInterrupt):
        state, why = "cancelled", "cancelled by the user (SIGINT / Ctrl-C)"
    elif isinstance(e, Interrupted):
        state, why = "interrupted", f"interrupted by signal {e.signum}"
    else:
        state, why = "failed", f"{type(e).__name__}: {getattr(e, 'message', e)}"
    try:
        run = store.get_run(run_id)
        if run.state in TERMINAL_STATES:
            return
        store.transition_run(run_id, state, error=why)
        if state == "failed":
            store.add_run_event(run_id, "error", type=type(e).__name__, message=str(getattr(e, "message", e)))
    except BaseException:  # bookkeeping must never hide the original error; reconcile catches it later
        pass


def run_control(store: Store, recipe: Recipe, run_id: str, work: Path, *, heartbeat: Heartbeat | None = None,
                trial_hook: Callable[[int, float], None] | None = None):
    """The run's RunControl (train/control.py): checkpoints recorded in the store, resume from the newest
    complete one, guards whose strikes become run events, pause requests seen by the heartbeat, held-out
    losses relayed to a study. Fault injection for tests and benchmarks/fault_injection.py comes from
    TUNEOPS_FAULT_NAN_STEPS (comma-separated steps), TUNEOPS_FAULT_KILL_AT_STEP and
    TUNEOPS_FAULT_KILL_DURING_SAVE."""
    import os

    from tuneops.store.schema import CheckpointRecord
    from tuneops.train.control import RunControl, find_resume

    spec = recipe.train.checkpoints
    location = f"{spec.location.rstrip('/')}/{run_id}" if spec.location else None
    root = work / "checkpoints"

    def skipped(path: Path, why: str):
        store.add_run_event(run_id, "checkpoint_skipped", path=str(path), reason=why)

    resume = find_resume(root, location, on_skip=skipped)

    def on_checkpoint(rec: dict):
        def save(s):
            row = s.get(CheckpointRecord, f"{run_id}:{rec['step']}")
            if row is None:
                row = CheckpointRecord(id=f"{run_id}:{rec['step']}", run_id=run_id, step=rec["step"], path=rec["path"],
                                       files={}, digest="")
                s.add(row)
            row.epoch, row.location, row.files = rec["epoch"], rec["location"], rec["files"]
            row.digest, row.metrics, row.state = rec["digest"], rec["metrics"], "complete"
        store.transact(save)
        store.add_run_event(run_id, "checkpoint", step=rec["step"], epoch=rec["epoch"], digest=rec["digest"],
                            location=rec["location"], **rec["metrics"])

    def on_removed(step: int):
        def mark(s):
            row = s.get(CheckpointRecord, f"{run_id}:{step}")
            if row is not None:
                row.state = "removed"
        store.transact(mark)

    def on_guard(event: dict):
        store.add_run_event(run_id, "guard", **event)

    def on_eval(entry: dict):
        store.add_run_event(run_id, "eval", **entry)
        if trial_hook is not None:
            trial_hook(entry["step"], entry["eval_loss"])

    def stop_requested():
        asked = heartbeat.requested if heartbeat is not None else None
        return {"pause": "paused", "cancel": "cancelled"}.get(asked)

    quarantined = {e.payload["batch"] for e in store.run_events(run_id, "guard") if e.payload.get("batch")}
    strikes = sum(1 for e in store.run_events(run_id, "guard") if e.payload.get("strike"))

    def env_int(name):
        v = os.environ.get(name)
        return int(v) if v else None

    nan_steps = frozenset(int(x) for x in os.environ.get("TUNEOPS_FAULT_NAN_STEPS", "").split(",") if x.strip())
    return RunControl(checkpoint_dir=root, every=spec.every or recipe.train.save_steps, epoch_end=spec.epoch_end,
                      keep=spec.keep, location=location, resume_from=resume, select=spec.select,
                      guards=recipe.train.guards, on_checkpoint=on_checkpoint, on_checkpoint_removed=on_removed,
                      on_guard=on_guard, on_eval=on_eval, stop_requested=stop_requested, quarantined=quarantined,
                      strikes=strikes, inject_nan_steps=nan_steps, kill_at_step=env_int("TUNEOPS_FAULT_KILL_AT_STEP"),
                      kill_during_save=env_int("TUNEOPS_FAULT_KILL_DURING_SAVE"))


def _execute(store: Store, recipe: Recipe, run_id: str, work: Path, outcome: RunOutcome,
             progress: Progress | None, *, trial_hook: Callable[[int, float], None] | None = None,
             heartbeat: Heartbeat | None = None) -> None:
    t0 = time.perf_counter()
    store.transition_run(run_id, "validating_data")
    base, train_ds, eval_ds, suites = validate_inputs(store, recipe)
    plan = plan_training(store, recipe, base)
    store.transition_run(run_id, "running", base_id=base.id, dataset_ids=[train_ds.id, eval_ds.id])
    train_rows = load_rows(store, train_ds)
    canaries = recipe.train.canaries
    if canaries.count:
        # Planted in memory only: the dataset version stays the user's data. The run records which
        # canaries (prefix, sha256 of the secret) and how many rows; its recipe holds the spec.
        store.add_run_event(run_id, "canaries", **canary_record(recipe.train.seed, canaries.count, canaries.repeats,
                                                               dataset_rows=len(train_rows)))
        train_rows = plant_canaries(train_rows, make_canaries(recipe.train.seed, canaries.count), canaries.repeats)
    outcome.phases["validate"] = time.perf_counter() - t0

    # best effort: an estimate that cannot be made never stops a run (the preflight in training names the problem)
    try:
        est, example = run_estimate(store, recipe, base, train_rows, plan)
    except TuneopsError:
        est = None
    if est is not None:
        store.add_run_event(run_id, "estimate", **est)
        if progress is not None:  # the template check's evidence, before step one: what the loss will see
            progress.console.print(example_caption(recipe.objective) + "\n" + example.rstrip(), markup=False,
                                   highlight=False)
            progress.console.print(describe_estimate(est), style="dim", highlight=False)
    t0 = time.perf_counter()
    label = f"train {recipe.objective.kind} · {recipe.method.describe()}"
    steps = planned_steps(len(train_rows) + (round(recipe.train.replay.ratio * len(train_rows))
                                             if recipe.train.replay else 0), recipe.train, recipe.objective)
    task = _task(progress, label, steps)
    last_loss = {"v": float("nan")}

    def on_log(entry):
        last_loss["v"] = entry["loss"]
        store.add_run_event(run_id, "metrics", **entry)

    # No earlier run timed this kind of run: the run's own first steps are the probe (no extra compute); the
    # estimate is recorded again, timed, two steps after the first one seen (a resumed run starts later).
    probe = {"first": None, "done": est is None or est.get("train_seconds") is not None}

    def on_step(step, total):
        _advance(progress, task, completed=step, total=total, description=f"{label} · loss {last_loss['v']:.3f}")
        if probe["done"]:
            return
        now = time.perf_counter()
        if probe["first"] is None:
            probe["first"] = (step, now)  # the first step carries warm-up: timing starts after it
            return
        first_step, t_first = probe["first"]
        if step - first_step >= 2 or step >= total:
            per_step = (now - t_first) / max(1, step - first_step)
            timed = est | {"seconds_per_step": round(per_step, 2), "train_seconds": round(per_step * total),
                           "from": f"steps {first_step + 1}-{step} of this run"}
            store.add_run_event(run_id, "estimate", **timed)
            if progress is not None:
                progress.console.print(describe_estimate(timed), style="dim", highlight=False)
            probe["done"] = True

    def on_preflight(report: dict, example: str):
        store.add_run_event(run_id, "preflight", **report, example=example[:4000])
        (work / "preflight.txt").write_text(example + "\n")

    eval_rows = load_rows(store, eval_ds) if recipe.train.eval_steps else None
    from tuneops.train.control import environment

    threads = recipe.train.threads or (1 if recipe.train.deterministic else None)
    store.add_run_event(run_id, "environment", deterministic=recipe.train.deterministic, **environment(threads))
    kwargs = dict(method=recipe.method, spec=recipe.train, objective=recipe.objective, out_dir=work / "adapter",
                  base_id=base.id, eval_rows=eval_rows, replay_rows=plan.replay_rows,
                  chat_template=recipe.train.chat_template, template_dir=plan.template_dir,
                  on_preflight=on_preflight, on_log=on_log, on_step=on_step, teacher_path=plan.teacher_path,
                  teacher_adapter=plan.teacher_adapter, teacher_tokenizer=plan.teacher_tokenizer)
    if recipe.launcher is not None:
        from tuneops.train.launch import train_distributed

        result = train_distributed(base_dir(store, base), train_rows, launcher=recipe.launcher, work_dir=work / "launch",
                                   **kwargs)
        control = None
    else:
        control = run_control(store, recipe, run_id, work, heartbeat=heartbeat, trial_hook=trial_hook)
        if control.resume_from is not None:
            store.add_run_event(run_id, "resume", checkpoint=str(control.resume_from),
                                step=int(control.resume_from.name.rsplit("-", 1)[-1]))
        result = train(base_dir(store, base), train_rows, stop_check=early_stop_check(store, recipe, plan),
                       reward_fn=plan.reward_fn, control=control, **kwargs)
        if control.selected:
            result.extra["selected_checkpoint"] = control.selected
    result.model = None  # eval loads the registered copy; free the trained one
    outcome.plots["loss"] = str(plot_losses(result.losses, work / "loss.png", f"{recipe.name} · {run_id}",
                                            eval_losses=result.eval_losses))
    lineage = {"objective": recipe.objective.kind, "template_sha256": result.template_sha256}
    if plan.replay_dataset:
        lineage["replay_dataset"] = plan.replay_dataset
    if plan.teacher:  # an alias in the recipe moves; the lineage keeps what it pointed at (tuneops registry lineage)
        lineage["teacher"] = plan.teacher
    if plan.reward_model:
        lineage["reward_model"] = plan.reward_model
    artifact, _ = register_adapter(store, result.adapter_dir, base_id=base.id, method=recipe.method.kind,
                                   run_id=run_id, dataset_ids=[train_ds.id, eval_ds.id] + (
                                       [plan.replay_dataset] if plan.replay_dataset else []),
                                   recipe_hash=recipe.hash(), extra_lineage=lineage)
    outcome.artifact = artifact
    store.add_run_event(run_id, "artifact", artifact=artifact.id, steps=result.steps,
                        train_seconds=round(result.train_seconds, 2),
                        trainable_parameters=result.trainable_parameters,
                        total_parameters=result.total_parameters, tokens=result.tokens,
                        tokens_per_s=result.tokens_per_s, peak_memory_mb=result.peak_memory_mb,
                        artifact_bytes=result.artifact_bytes, template_sha256=result.template_sha256,
                        stopped_early=result.stopped_early, **result.extra)
    outcome.phases["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store.transition_run(run_id, "evaluating", artifact_id=artifact.id)
    report, evald = evaluate_artifact(store, artifact, recipe, suites=suites, progress=progress)
    outcome.report = report
    outcome.plots["eval"] = str(plot_comparison(evald["metrics"], work / "eval.png",
                                                f"{artifact.id} vs {base.id}"))
    outcome.phases["eval"] = time.perf_counter() - t0

    summary = {k: v["candidate"] for k, v in evald["metrics"].items()}
    if canaries.count:
        summary.update(canaries=canaries.count, canary_rows=canaries.count * canaries.repeats)
    summary.update(train_steps=result.steps, train_seconds=round(result.train_seconds, 2),
                   tokens_per_s=result.tokens_per_s, trainable_parameters=result.trainable_parameters,
                   peak_memory_mb=result.peak_memory_mb,
                   final_loss=result.losses[-1]["loss"] if result.losses else None,
                   eval_report=report.id, gates_passed=report.passed)
    if result.stopped_early:
        summary["stopped_early"] = result.stopped_early
    outcome.run = store.transition_run(run_id, "succeeded", metrics=summary)
    clean_scratch(store, run_id)  # the registered copy is the artifact

    if recipe.target is not None:
        alias = f"{recipe.target.alias}@{recipe.target.stage}"
        try:
            outcome.promotion = promote(store, artifact.id, alias)
        except TuneopsError as e:  # gates, signature, licence, taint…: not a failure of the run
            outcome.promotion_refused = e.message
            store.add_run_event(run_id, "promotion_refused", alias=alias, reason=e.message, hint=e.hint)


def leakage_targets(store: Store, refs: list[str], *, where: str = "--against") -> dict[str, list[str]]:
    """Eval texts to check a dataset for leakage against (``tuneops data card --against``): each ref
    is a built-in suite name, a suite YAML file, or a dataset version (id or name), tried in that
    order. An item's text is what a run checks (:func:`check_leakage`): its prompt turns, system
    prompts left out. Returns {target name: [item texts]}."""
    from tuneops.eval.suite import builtin_names

    out: dict[str, list[str]] = {}
    for ref in refs:
        at = f"{where} {ref}"
        if ref in builtin_names() or Path(ref).is_file():
            def rows_of(dataset: str, at=at) -> tuple[str, list[dict]]:
                if dataset == EVAL_DATASET:
                    raise InvalidInput(f"{at}: this suite scores a recipe's eval set ($eval) and has no items of "
                                       "its own", hint=f"check against the eval dataset itself: {where} DATASET")
                ds = store.resolve_dataset(dataset)
                return ds.id, load_rows(store, ds)

            def no_memorisation(at=at):
                raise InvalidInput(f"{at}: a memorisation suite is built from the training rows themselves, so "
                                   "leakage against it means nothing",
                                   hint="check against forgetting, safety, a suite YAML or the eval dataset")

            suite = load_suite(ref, rows_of=rows_of, memorisation_of=no_memorisation, where=at)
            name = suite.name
            texts = [" ".join(str(m.get("content") or "") for m in suite.chat(i) if m.get("role") != "system")
                     for i in range(len(suite.items))]
        else:
            try:
                ds = store.resolve_dataset(ref)
            except NotFound:
                raise InvalidInput(f"{at}: not a built-in suite, a suite file or a dataset in {store.home}",
                                   hint=f"built-in suites: {', '.join(builtin_names())}; or a path to a suite YAML; or a "
                                        "dataset id or name (`tuneops data list`)") from None
            name = ref
            texts = [" ".join(str(m.get("content") or "") for m in (r["messages"][:-1] if "messages" in r
                                                                   else r["prompt"]) if m.get("role") != "system")
                     for r in load_rows(store, ds)]
        if name in out:
            raise InvalidInput(f"{at}: {name!r} is named twice", hint="name each suite or dataset once")
        out[name] = texts
    return out


def _as_chats(rows: list[dict]) -> list[dict]:
    """Chat rows as they are; a preference pair as its two chats (prompt + chosen, prompt + rejected)."""
    out = []
    for r in rows:
        if "messages" in r:
            out.append(r)
        else:
            out += [{"messages": [*r["prompt"], *r["chosen"]]}, {"messages": [*r["prompt"], *r["rejected"]]}]
    return out


def dry_run(store: Store, recipe: Recipe, *, probe_steps: int = 0) -> dict:
    """`tuneops recipe validate`: everything a run checks before training — base, datasets, licences,
    leakage, suites, gates, method and objective against the data — then the template preflight on
    every row (tokenizer only, no model): steps, tokens, rows over ``max_length`` and an estimated
    time. With ``probe_steps`` it also trains that many steps on a sample to time this machine."""
    import shutil

    base, train_ds, eval_ds, suites = validate_inputs(store, recipe)
    plan = plan_training(store, recipe, base)
    early_stop_check(store, recipe, plan)  # resolves and checks the suite; runs nothing
    rows = load_rows(store, train_ds)
    obj = recipe.objective
    steps, per_step, planned_tokens, report = _planned_work(store, recipe, base, rows, plan)
    out = {
        "recipe": recipe.source, "base": base.id, "train": train_ds.id, "eval": eval_ds.id,
        "rows": len(rows), "kind": train_ds.summary.get("kind", "sft"), "method": recipe.method.describe(),
        "objective": obj.kind, "steps": steps, "rows_per_step": per_step, "planned_tokens": planned_tokens,
        "suites": [s.name for s in suites], "gates": [g.describe() for g in recipe.gates],
        "preflight": report.to_dict(), "example": report.example,
    }
    estimate = _tokens_per_s_estimate(store, base.id, recipe)
    if probe_steps:
        from tuneops.train.recipe import TrainSpec

        probe_spec = TrainSpec(**{**recipe.train.model_dump(), "max_steps": probe_steps, "save_steps": None,
                                  "eval_steps": None, "early_stopping": None, "replay": None})
        tmp = store.blobs.scratch_dir("probe-")
        try:
            if not rows:
                raise InvalidInput("no rows to probe")
            sample = rows[: per_step * probe_steps]
            result = train(base_dir(store, base), sample, method=recipe.method, spec=probe_spec, objective=obj,
                           out_dir=tmp / "adapter", base_id=base.id, chat_template=recipe.train.chat_template,
                           template_dir=plan.template_dir, reward_fn=plan.reward_fn, teacher_path=plan.teacher_path,
                           teacher_adapter=plan.teacher_adapter, teacher_tokenizer=plan.teacher_tokenizer)
            estimate = {"tokens_per_s": result.tokens_per_s, "seconds_per_step": round(
                result.train_seconds / max(1, result.steps), 2), "from": f"a {result.steps}-step probe now"}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if estimate:
        if estimate.get("seconds_per_step"):
            seconds = estimate["seconds_per_step"] * steps
        else:
            seconds = planned_tokens / estimate["tokens_per_s"] if estimate.get("tokens_per_s") else None
        out["estimate"] = estimate | {"train_seconds": round(seconds) if seconds else None}
    return out


def _planned_work(store: Store, recipe: Recipe, base, rows: list[dict], plan: TrainingPlan, *,
                  sample: int | None = None):
    """(steps, rows per step, planned tokens, preflight report) of a run over ``rows``: the tokenizer and
    template only, no model (a second or two for thousands of rows). ``sample``: tokenize only the first
    N rows and scale (a run's start-up estimate; training's own preflight then checks every row)."""
    from transformers import AutoTokenizer

    from tuneops.train.template import apply_template_override, preflight, tokenize_rows

    tokenizer = AutoTokenizer.from_pretrained(base_dir(store, base))
    apply_template_override(tokenizer, recipe.train.chat_template, base_dir=plan.template_dir)
    chats = _as_chats(rows[:sample] if sample else rows)
    obj = recipe.objective
    report = preflight(tokenizer, chats, max_length=recipe.train.max_length, all_turns=obj.all_turns,
                       train_on_prompt=obj.train_on_prompt)
    tokenize_rows(tokenizer, chats, max_length=recipe.train.max_length, all_turns=obj.all_turns,
                  train_on_prompt=obj.train_on_prompt, report=report)
    n_rows = len(rows) + (round(recipe.train.replay.ratio * len(rows)) if recipe.train.replay else 0)
    steps = planned_steps(n_rows, recipe.train, obj)
    per_step = recipe.train.batch_size * recipe.train.gradient_accumulation_steps
    tokens_per_row = report.tokens / max(1, len(chats))
    planned_tokens = round(tokens_per_row * per_step * steps * (2 if obj.needs_preference_rows else 1))
    return steps, per_step, planned_tokens, report


def run_estimate(store: Store, recipe: Recipe, base, rows: list[dict],
                 plan: TrainingPlan) -> tuple[dict, str]:
    """What a run is about to do, before its first step: steps, tokens and (from the newest run of the same
    base, method and objective on this store) the time. Without such a run the time is left out; the
    progress bar's ETA measures it from the first steps, and `tuneops recipe validate --probe N` times a
    short probe up front. Returns (estimate, one rendered example with the trained part marked)."""
    steps, per_step, tokens, report = _planned_work(store, recipe, base, rows, plan, sample=512)
    out = {"steps": steps, "rows_per_step": per_step, "planned_tokens": tokens}
    measured = _tokens_per_s_estimate(store, base.id, recipe)
    if measured and measured.get("tokens_per_s"):
        out |= {"tokens_per_s": measured["tokens_per_s"], "from": measured["from"],
                "train_seconds": round(tokens / measured["tokens_per_s"])}
    return out, report.example


def example_caption(objective) -> str:
    """What the [[…]] of a rendered example is, for this objective."""
    if objective.kind in ("grpo", "rloo"):
        return ("one training row as the model sees it ([[…]] is the reference reply, which the reward gets as "
                "`answer`; the model trains on its own sampled completions):")
    if objective.kind == "distill" and objective.mode == "responses":
        return "one training row as the model sees it ([[…]] is replaced by the teacher's reply before training):"
    if objective.needs_preference_rows:
        return "one training row as the model sees it (prompt + chosen reply; [[…]] is what the loss scores):"
    return "one training row as the model sees it ([[…]] is trained, the rest is context):"


def describe_estimate(est: dict) -> str:
    """One line for stderr: 'estimate: 38 steps, ~36,200 tokens, ~4.4 min (138 tokens/s in run-…)'."""
    text = f"estimate: {est['steps']} steps, ~{est['planned_tokens']:,} tokens"
    if est.get("train_seconds") is not None:
        secs = est["train_seconds"]
        when = f"{secs} s" if secs < 120 else f"{secs / 60:.1f} min" if secs < 7200 else f"{secs / 3600:.1f} h"
        rate = f"{est['seconds_per_step']:g} s a step" if est.get("seconds_per_step") is not None else \
            f"{est['tokens_per_s']:.0f} tokens/s"
        text += f", ~{when} of training ({rate} measured in {est['from']})"
    else:
        text += " (no earlier run of this base, method and objective here: timed after its first steps)"
    return text


def _tokens_per_s_estimate(store: Store, base_id: str, recipe: Recipe) -> dict | None:
    """The newest measured training throughput of a run on the same base, method and objective."""
    from sqlalchemy import select

    from tuneops.store.schema import RunEvent

    with store.session(write=False) as s:
        runs = s.scalars(select(RunRecord).where(RunRecord.base_id == base_id, RunRecord.state == "succeeded")
                         .order_by(RunRecord.created_at.desc()).limit(50)).all()
        for run in runs:
            saved = yaml.safe_load(run.recipe_yaml) or {}
            if (saved.get("method") or {}).get("kind", "lora") != recipe.method.kind or \
                    (saved.get("objective") or {}).get("kind", "sft") != recipe.objective.kind:
                continue
            ev = s.scalars(select(RunEvent).where(RunEvent.run_id == run.id, RunEvent.type == "artifact")).first()
            if ev is not None and ev.payload.get("tokens_per_s"):
                return {"tokens_per_s": ev.payload["tokens_per_s"], "from": f"run {run.id}"}
    return None


def register_checkpoint(store: Store, run_id: str, step: int | None = None) -> tuple[ArtifactRecord, bool]:
    """Register a kept checkpoint of a run as an artifact (verified against its recorded hashes first), so
    it can be evaluated and promoted like the run's final weights. ``step`` None: the newest."""
    import json
    import shutil
    import tempfile

    from sqlalchemy import select

    from tuneops.errors import IntegrityError
    from tuneops.store.schema import CheckpointRecord
    from tuneops.train.control import verify
    from tuneops.train.methods import ADAPTER_FILES, FULL_MODEL_FILES

    run = store.get_run(run_id)
    with store.session(write=False) as s:
        q = select(CheckpointRecord).where(CheckpointRecord.run_id == run_id, CheckpointRecord.state == "complete")
        rows = {r.step: r for r in s.scalars(q)}
        for r in rows.values():
            s.expunge(r)
    if not rows:
        raise NotFound(f"run {run_id} has no kept checkpoint", hint=f"see `tuneops runs checkpoints {run_id}`")
    if step is None:
        step = max(rows)
    if step not in rows:
        raise NotFound(f"run {run_id} has no kept checkpoint at step {step} (kept: {', '.join(map(str, sorted(rows)))})",
                       hint=f"see `tuneops runs checkpoints {run_id}`")
    ckpt = rows[step]
    why = verify(Path(ckpt.path))
    if why:
        raise IntegrityError(f"checkpoint {ckpt.id} does not verify: {why}", hint="register another checkpoint")
    recipe = run_recipe_of(store, run_id)
    full = recipe.method.kind == "full"
    with tempfile.TemporaryDirectory(dir=store.runs_dir(run_id)) as tmp:
        out = Path(tmp)
        for name in FULL_MODEL_FILES if full else ADAPTER_FILES:
            if (Path(ckpt.path) / name).exists():
                shutil.copy2(Path(ckpt.path) / name, out / name)
        if recipe.train.chat_template and (Path(ckpt.path) / "chat_template.jinja").exists():
            shutil.copy2(Path(ckpt.path) / "chat_template.jinja", out / "chat_template.jinja")
        cfg_name = "config.json" if full else "adapter_config.json"
        cfg = json.loads((out / cfg_name).read_text())
        cfg["_name_or_path" if full else "base_model_name_or_path"] = run.base_id
        if not full:
            cfg["revision"] = None
        (out / cfg_name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return register_adapter(store, out, base_id=run.base_id, method=recipe.method.kind, run_id=run_id,
                                dataset_ids=list(run.dataset_ids or []), recipe_hash=run.recipe_hash,
                                extra_lineage={"objective": recipe.objective.kind, "checkpoint_step": step,
                                               "checkpoint_digest": ckpt.digest})
