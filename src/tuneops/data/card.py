"""The data card of a dataset version: what a person reads before training on it.

Markdown or HTML, with plots: sources and licences (and what they permit), counts by tier and
purpose, PII found by type, duplicates removed, rows quarantined, erasures, leakage against the
eval sets it is checked with, and histograms of prompt and response length (in words: text bars
in markdown, an embedded PNG in HTML). Built from the stored version alone — plus, for leakage,
the eval texts the caller passes in (``against={name: [texts]}``; resolving a suite or dataset
to texts is the caller's job, since this layer does not import eval) — so it can be regenerated
at any time.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from tuneops.data.ingest import load_manifest, load_rows
from tuneops.store import Store
from tuneops.store.schema import DatasetRecord


def _text(messages: list[dict], roles: tuple[str, ...]) -> str:
    return " ".join(str(m.get("content") or "") for m in messages if m.get("role") in roles)


def length_stats(rows: list[dict]) -> dict[str, list[int]]:
    """Words per row: prompt (system + user + tool turns) and response (assistant turns)."""
    prompts, responses = [], []
    for r in rows:
        if "messages" in r:
            msgs = r["messages"]
            prompts.append(len(_text(msgs[:-1], ("system", "user", "tool", "assistant")).split()))
            responses.append(len(_text(msgs[-1:], ("assistant",)).split()))
        else:
            prompts.append(len(_text(r["prompt"], ("system", "user", "tool", "assistant")).split()))
            responses.append(len(_text(r["chosen"], ("assistant",)).split()))
    return {"prompt_words": prompts, "response_words": responses}


LEAKAGE_HOW = "tuneops data card {ref} --against SUITE_OR_DATASET"
LEAKAGE_TARGETS = "repeatable: a built-in suite such as forgetting or safety, a suite YAML file, or a dataset"
LEAKAGE_EXAMPLES = 5


def leakage_report(rows: list[dict], against: Mapping[str, Sequence[str]], examples: int = LEAKAGE_EXAMPLES) -> dict:
    """Training rows that share a 13-word passage with, or nearly duplicate, an item of each target
    (:func:`tuneops.data.dedup.find_leakage`, as a run checks before training: system prompts left
    out). ``against``: target name -> item texts. Row and item numbers are 1-based."""
    from tuneops.data.dedup import DEFAULT_THRESHOLD, find_leakage

    targets, leaking, shown = {}, set(), []
    for name, texts in against.items():
        leaks = find_leakage(rows, list(texts), roles=("user", "assistant"))
        rows_hit = {lk.train_index for lk in leaks}
        leaking |= rows_hit
        targets[name] = {"items": len(texts), "rows": len(rows_hit), "items_hit": len({lk.eval_index for lk in leaks}),
                         "pairs": len(leaks), "by_kind": dict(Counter(lk.kind for lk in leaks).most_common())}
        shown += [{"target": name, "row": lk.train_index + 1, "item": lk.eval_index + 1, "kind": lk.kind,
                   "similarity": lk.similarity, "evidence": " ".join(lk.evidence.split())[:100]}
                  for lk in leaks[:examples]]
    return {"checked": True, "rows": len(leaking), "targets": targets, "examples": shown,
            "ngram": 13, "near_duplicate_threshold": DEFAULT_THRESHOLD}


def card_data(store: Store, ds: DatasetRecord, against: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Everything the card shows, as plain data (also what `data card --json` prints). ``against``
    (target name -> eval item texts) adds the leakage check; without it the card says how to run it."""
    from tuneops.data.erasure import erased_versions

    manifest = load_manifest(store, ds)
    rows = load_rows(store, ds)
    meta = manifest["rows"]
    summary = ds.summary
    lengths = length_stats(rows)
    erased = erased_versions(store).get(ds.id)

    def pct(values, q):
        if not values:
            return None
        s = sorted(values)
        return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]

    return {
        "id": ds.id, "name": ds.name, "names": store.dataset_names().get(ds.id, [ds.name]),
        "rows": ds.num_rows, "kind": summary.get("kind", "sft"), "format": manifest["format"],
        "created_at": str(ds.created_at), "origin": summary.get("origin"),
        "sources": dict(Counter(m["source"] for m in meta).most_common()),
        "licenses": dict(Counter(m["license"] for m in meta).most_common()),
        "license": summary.get("license"), "permitted_uses": summary.get("permitted_uses"),
        "obligations": summary.get("obligations"),
        "tiers": dict(Counter(m.get("tier", "(none)") for m in meta).most_common()),
        "purposes": dict(Counter(m.get("purpose", "(none)") for m in meta).most_common()),
        "rows_with_subject": sum(1 for m in meta if m.get("subject")),
        "retention_until_min": summary.get("retention_until_min"),
        "pii": summary.get("pii"), "deduplicated": summary.get("deduplicated"),
        "duplicate_rows": summary.get("duplicate_rows"), "quarantine": summary.get("quarantine"),
        "erased": {"erasure": erased[0], "clean_version": erased[1]} if erased else None,
        "lengths": {k: {"min": min(v) if v else None, "p50": pct(v, 0.5), "p95": pct(v, 0.95),
                        "max": max(v) if v else None} for k, v in lengths.items()},
        "leakage": leakage_report(rows, against) if against else
        {"checked": False, "how": LEAKAGE_HOW.format(ref=ds.name)},
        "_lengths": lengths,
    }


def text_histogram(values: list[int], bins: int = 10, width: int = 40) -> str:
    """A histogram as lines of text: ``lo–hi | #### count`` per equal-width bin of the values."""
    if not values:
        return "(no rows)"
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))  # ceil: integer-width bins covering lo..hi
    counts = Counter((v - lo) // step for v in values)
    n_bins = (hi - lo) // step + 1
    top = max(counts.values())
    label_w = len(str(lo + n_bins * step - 1))
    lines = []
    for b in range(n_bins):
        a, z = lo + b * step, lo + (b + 1) * step - 1
        label = f"{a:>{label_w}}" if step == 1 else f"{a:>{label_w}}-{z:<{label_w}}"
        bar = "#" * (round(width * counts.get(b, 0) / top) if counts.get(b) else 0)
        lines.append(f"{label} | {bar + ' ' if bar else ''}{counts.get(b, 0)}")
    return "\n".join(lines)


def plot_lengths(lengths: dict[str, list[int]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, (key, values) in zip(axes, lengths.items()):
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#2f7ed8")
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.set_xlabel("words", fontsize=8)
        ax.set_ylabel("rows", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(head: list[str], rows: list[list], fmt: str) -> str:
    if fmt == "md":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _para(text: str, fmt: str) -> str:
    """A paragraph of card text; `code` spans become <code> in HTML, everything else is escaped."""
    if fmt == "md":
        return text
    parts = text.split("`")
    return "<p>" + "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                           for i, p in enumerate(parts)) + "</p>"


def _leakage_section(leak: dict, fmt: str) -> str:
    if not leak["checked"]:
        return _para("Not checked: this card was written without eval sets to check against. Run "
                     f"`{leak['how']}` ({LEAKAGE_TARGETS}) to show it here. `tuneops train` checks a "
                     "recipe's training data against its suites before training either way.", fmt)
    names = ", ".join(leak["targets"])
    how = (f"a {leak['ngram']}-word passage with, or nearly duplicate (Jaccard ≥ {leak['near_duplicate_threshold']} "
           "on word 5-grams),")
    head = _para(f"{leak['rows']} training row(s) share {how} an item of: {names}." if leak["rows"] else
                 f"No training row shares {how.replace('duplicate', 'duplicates')} an item of: {names}.", fmt)
    parts = [head, _table(["checked against", "items", "rows leaking", "items hit", "kinds"], [
        [k, v["items"], v["rows"], v["items_hit"], ", ".join(f"{kk} {vv}" for kk, vv in v["by_kind"].items()) or "-"]
        for k, v in leak["targets"].items()], fmt)]
    if leak["examples"]:
        parts += [_para("Examples (row of this version, item of the target):", fmt),
                  _table(["target", "row", "item", "kind", "Jaccard", "evidence"],
                         [[e["target"], e["row"], e["item"], e["kind"],
                           "-" if e["similarity"] is None else e["similarity"], e["evidence"]]
                          for e in leak["examples"]], fmt)]
    return "\n\n".join(parts) if fmt == "md" else "".join(parts)


def write_card(store: Store, ds: DatasetRecord, out_dir: Path, fmt: str = "md", *,
               against: Mapping[str, Sequence[str]] | None = None, data: dict | None = None) -> Path:
    """Write ``card.md`` or ``card.html`` (plus ``lengths.png``) for a dataset version; returns the file.
    ``against``: eval texts to check leakage against (see :func:`card_data`); ``data``: a
    :func:`card_data` result already computed (so the check is not run twice)."""
    from tuneops.data.licenses import LICENSES

    data = data if data is not None else card_data(store, ds, against)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_lengths(data["_lengths"], out_dir / "lengths.png", f"{ds.id} · {data['rows']} rows")
    leak = data["leakage"]
    sections: list[tuple[str, str]] = []
    sections.append(("Summary", _table(["field", "value"], [
        ["id", data["id"]], ["names", ", ".join(data["names"])], ["rows", data["rows"]], ["kind", data["kind"]],
        ["origin", data["origin"]], ["created", data["created_at"]],
        ["licence (most restrictive)", data["license"]],
        ["permitted uses", ", ".join(data["permitted_uses"] or [])],
        ["obligations", ", ".join(data["obligations"] or []) or "none"],
        ["rows with a subject key", data["rows_with_subject"]],
        ["earliest retention date", data["retention_until_min"] or "none"],
        ["erased", f"{data['erased']['erasure']} (clean version {data['erased']['clean_version']})"
         if data["erased"] else "no"],
        ["leakage", f"{leak['rows']} row(s) against {', '.join(leak['targets'])}" if leak["checked"]
         else "not checked (see Leakage)"]], fmt)))
    sections.append(("Sources", _table(["source", "rows"], [[k, v] for k, v in data["sources"].items()], fmt)))
    sections.append(("Licences", _table(["licence", "rows", "permits", "note"], [
        [k, v, ", ".join(sorted(LICENSES[k].uses)) if k in LICENSES else "?", LICENSES[k].note if k in LICENSES else ""]
        for k, v in data["licenses"].items()], fmt)))
    sections.append(("Tiers and purposes", _table(["field", "value", "rows"],
                                                  [["tier", k, v] for k, v in data["tiers"].items()]
                                                  + [["purpose", k, v] for k, v in data["purposes"].items()], fmt)))
    pii = data["pii"] or {}
    sep = "\n\n" if fmt == "md" else ""
    sections.append(("PII and secrets", _table(["type", "found"], [[k, v] for k, v in (pii.get("found") or {}).items()]
                                               or [["(none found)", 0]], fmt)
                     + sep + _para(f"Policy at ingest: {pii.get('policy')}." if pii else
                                   "Not scanned at ingest (rows stored through the API).", fmt)))
    dd = data["deduplicated"] or {}
    q = data["quarantine"]
    sections.append(("Duplicates and quarantine", _table(["what", "rows"], [
        [f"duplicates removed ({dd.get('mode', 'not checked')})", sum((dd.get("removed") or {}).values())],
        ["exact duplicates left in (content hash)", data["duplicate_rows"]],
        ["quarantined at ingest", q["rows"] if q else 0]], fmt)
        + (sep + _para(f"Quarantine file: {q['file']}", fmt) if q else "")))
    sections.append(("Leakage against eval sets", _leakage_section(leak, fmt)))
    stats = _table(["", "min", "p50", "p95", "max"], [
        [k] + [v[s] for s in ("min", "p50", "p95", "max")] for k, v in data["lengths"].items()], fmt)
    title = f"Data card: {ds.name} ({ds.id})"
    if fmt == "md":
        hists = "\n\n".join(f"{k.replace('_', ' ')} (rows per length):\n\n```\n{text_histogram(v)}\n```"
                             for k, v in data["_lengths"].items())
        sections.append(("Lengths (words)", f"{stats}\n\n{hists}\n\n![lengths]({plot.name})"))
        text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{b}" for h, b in sections) + "\n"
        path = out_dir / "card.md"
    else:
        png = base64.b64encode(plot.read_bytes()).decode("ascii")
        sections.append(("Lengths (words)", stats + "<img src='data:image/png;base64," + png
                         + "' alt='histograms of prompt and response length in words'>"))
        body = "".join(f"<h2>{html.escape(h)}</h2>{b}" for h, b in sections)
        text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:.2em .6em}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>{body}</body></html>")
        path = out_dir / "card.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
