"""The data card of a dataset version: what a person reads before training on it.

Markdown or HTML, with plots: sources and licences (and what they permit), counts by tier and
purpose, PII found by type, duplicates removed, rows quarantined, erasures, leakage against the
eval sets it was checked with, and histograms of prompt and response length (in words). Built
from the stored version alone, so it can be regenerated at any time.
"""

from __future__ import annotations

import html
from collections import Counter
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


def card_data(store: Store, ds: DatasetRecord) -> dict:
    """Everything the card shows, as plain data (also what `data card --json` prints)."""
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
        "_lengths": lengths,
    }


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


def write_card(store: Store, ds: DatasetRecord, out_dir: Path, fmt: str = "md") -> Path:
    """Write ``card.md`` or ``card.html`` (plus ``lengths.png``) for a dataset version; returns the file."""
    from tuneops.data.licenses import LICENSES

    data = card_data(store, ds)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_lengths(data["_lengths"], out_dir / "lengths.png", f"{ds.id} · {data['rows']} rows")
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
         if data["erased"] else "no"]], fmt)))
    sections.append(("Sources", _table(["source", "rows"], [[k, v] for k, v in data["sources"].items()], fmt)))
    sections.append(("Licences", _table(["licence", "rows", "permits", "note"], [
        [k, v, ", ".join(sorted(LICENSES[k].uses)) if k in LICENSES else "?", LICENSES[k].note if k in LICENSES else ""]
        for k, v in data["licenses"].items()], fmt)))
    sections.append(("Tiers and purposes", _table(["field", "value", "rows"],
                                                  [["tier", k, v] for k, v in data["tiers"].items()]
                                                  + [["purpose", k, v] for k, v in data["purposes"].items()], fmt)))
    pii = data["pii"] or {}
    sections.append(("PII and secrets", _table(["type", "found"], [[k, v] for k, v in (pii.get("found") or {}).items()]
                                               or [["(none found)", 0]], fmt)
                     + (f"\n\nPolicy at ingest: {pii.get('policy')}." if pii else
                        "\n\nNot scanned at ingest (rows stored through the API).")))
    dd = data["deduplicated"] or {}
    q = data["quarantine"]
    sections.append(("Duplicates and quarantine", _table(["what", "rows"], [
        [f"duplicates removed ({dd.get('mode', 'not checked')})", sum((dd.get("removed") or {}).values())],
        ["exact duplicates left in (content hash)", data["duplicate_rows"]],
        ["quarantined at ingest", q["rows"] if q else 0]], fmt)
        + (f"\n\nQuarantine file: {q['file']}" if q else "")))
    sections.append(("Lengths (words)", _table(["", "min", "p50", "p95", "max"], [
        [k] + [v[s] for s in ("min", "p50", "p95", "max")] for k, v in data["lengths"].items()], fmt)))
    title = f"Data card: {ds.name} ({ds.id})"
    if fmt == "md":
        text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{b}" for h, b in sections) + \
            f"\n\n![lengths]({plot.name})\n"
        path = out_dir / "card.md"
    else:
        body = "".join(f"<h2>{html.escape(h)}</h2>{b.replace(chr(10) + chr(10), '<p>')}" for h, b in sections)
        text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:.2em .6em}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>{body}<h2>Length histograms</h2>"
                f"<img src='{plot.name}' alt='length histograms'></body></html>")
        path = out_dir / "card.html"
    path.write_text(text, encoding="utf-8")
    return path
