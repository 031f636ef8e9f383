"""Licences and intended use: which rows a run may train on.

Every row carries an SPDX licence id (or ``unknown``, only when given explicitly, or a
``LicenseRef-…`` for a contract). Each licence maps to the uses it permits — ``commercial``,
``internal``, ``research`` — and to obligations worth a line in the data card (attribution,
share-alike). A dataset version permits what *all* its rows permit (the most restrictive row
wins); a recipe declares its intended use, and an incompatible combination blocks the run before
training, naming the offending licences and sources.

The table is deliberately conservative and short: it is a guard against the obvious mistakes
(non-commercial rows in a commercial model, rows past their retention date), not legal advice.
A team with its own licence policy extends ``LICENSES`` (or uses ``LicenseRef-`` ids with
``register_license``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tuneops.errors import InvalidInput

USES = ("commercial", "internal", "research")
ALL = frozenset(USES)


@dataclass(frozen=True)
class License:
    spdx: str
    uses: frozenset[str]
    obligations: tuple[str, ...] = ()
    note: str = ""


def _lic(spdx: str, uses=ALL, *obligations: str, note: str = "") -> tuple[str, License]:
    return spdx, License(spdx, frozenset(uses), tuple(obligations), note)


NC_NOTE = "non-commercial: internal use by a company counts as commercial advantage"
ND_NOTE = "no-derivatives: a model trained on the rows may be a derivative; research only"
LICENSES: dict[str, License] = dict([
    *(_lic(s) for s in ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib", "PSF-2.0",
                        "CC0-1.0", "Unlicense", "PDDL-1.0", "0BSD", "BSL-1.0")),
    *(_lic(s, ALL, "attribution") for s in ("CC-BY-4.0", "CC-BY-3.0", "CC-BY-2.0", "ODC-By-1.0", "CDLA-Permissive-2.0",
                                            "CDLA-Permissive-1.0")),
    *(_lic(s, ALL, "attribution", "share-alike") for s in ("CC-BY-SA-4.0", "CC-BY-SA-3.0", "ODbL-1.0",
                                                           "CDLA-Sharing-1.0", "GPL-2.0-only", "GPL-3.0-only",
                                                           "GPL-3.0-or-later", "LGPL-3.0-only", "MPL-2.0",
                                                           "AGPL-3.0-only")),
    *(_lic(s, {"research"}, "attribution", note=NC_NOTE) for s in ("CC-BY-NC-4.0", "CC-BY-NC-3.0",
                                                                  "CC-BY-NC-SA-4.0", "CC-BY-NC-SA-3.0")),
    *(_lic(s, {"research"}, "attribution", note=ND_NOTE) for s in ("CC-BY-ND-4.0", "CC-BY-NC-ND-4.0")),
    _lic("LicenseRef-proprietary", {"commercial", "internal", "research"},
         note="the organisation's own data: every use it chooses"),
    _lic("LicenseRef-internal-only", {"internal", "research"}, note="may not ship in a product"),
    _lic("LicenseRef-research-only", {"research"}),
    _lic("unknown", {"research"}, note="licence not known: research only until someone finds out"),
])
_BY_LOWER = {k.lower(): k for k in LICENSES}


def register_license(spdx: str, uses, *obligations: str, note: str = "") -> None:
    """Add a team's own licence (a ``LicenseRef-…`` id) with the uses it permits."""
    bad = set(uses) - ALL
    if bad:
        raise InvalidInput(f"licence {spdx}: unknown use(s) {sorted(bad)}", hint=f"uses are {', '.join(USES)}")
    LICENSES[spdx] = License(spdx, frozenset(uses), tuple(obligations), note)
    _BY_LOWER[spdx.lower()] = spdx


def normalise_license(value: str, where: str = "license") -> str:
    """The canonical SPDX id for ``value`` (case-insensitive); unknown ids are refused with the fix."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{where}: a licence is required",
                           hint="give an SPDX id (e.g. --license MIT), or --license unknown explicitly")
    key = value.strip()
    if key in LICENSES:
        return key
    if key.lower() in _BY_LOWER:
        return _BY_LOWER[key.lower()]
    close = sorted(k for k in LICENSES if k.lower().startswith(key.lower()[:5]))[:5]
    raise InvalidInput(f"{where}: {value!r} is not a licence tuneops knows",
                       hint=(f"did you mean {', '.join(close)}? " if close else "")
                       + "use an SPDX id (https://spdx.org/licenses/), a LicenseRef- id registered by your team, "
                         "or 'unknown'")


def permitted_uses(licenses) -> frozenset[str]:
    """What every one of ``licenses`` permits (the most restrictive wins)."""
    uses = ALL
    for spdx in licenses:
        uses = uses & LICENSES[normalise_license(spdx)].uses
    return uses


def most_restrictive(licenses) -> str | None:
    """The licence permitting the fewest uses (ties: alphabetical), for a one-word summary."""
    found = sorted({normalise_license(s) for s in licenses})
    return min(found, key=lambda s: (len(LICENSES[s].uses), s)) if found else None


def obligations(licenses) -> list[str]:
    return sorted({o for s in licenses for o in LICENSES[normalise_license(s)].obligations})


def parse_date(value, where: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InvalidInput(f"{where}: {value!r} is not a date", hint="use ISO 8601, e.g. 2027-12-31") from None


@dataclass
class UseCheck:
    ok: bool
    blocked: list[dict]  # {"reason", "license"/"retention_until", "sources", "rows"}

    def message(self, use: str, dataset: str) -> str:
        parts = []
        for b in self.blocked:
            srcs = ", ".join(b["sources"][:5]) + (" …" if len(b["sources"]) > 5 else "")
            if b["reason"] == "license":
                lic = LICENSES[b["license"]]
                parts.append(f"{b['rows']} row(s) under {b['license']} (permits {', '.join(sorted(lic.uses))}"
                             f"{'; ' + lic.note if lic.note else ''}) from {srcs}")
            else:
                parts.append(f"{b['rows']} row(s) past retention (until {b['retention_until']}) from {srcs}")
        return f"{dataset} may not be used for {use}: " + "; ".join(parts)


def check_use(rows_meta, use: str, *, today: dt.date | None = None) -> UseCheck:
    """Can rows with this provenance (dicts with license, source, retention_until) be used for ``use``?"""
    if use not in USES:
        raise InvalidInput(f"intended use {use!r} is not one of {', '.join(USES)}")
    today = today or dt.date.today()
    by_license: dict[str, dict] = {}
    expired: dict[str, dict] = {}
    for meta in rows_meta:
        spdx = normalise_license(meta.get("license"))
        if use not in LICENSES[spdx].uses:
            b = by_license.setdefault(spdx, {"reason": "license", "license": spdx, "sources": [], "rows": 0})
            b["rows"] += 1
            if meta.get("source") not in b["sources"]:
                b["sources"].append(meta.get("source"))
        until = parse_date(meta.get("retention_until"), "retention_until")
        if until is not None and until < today:
            b = expired.setdefault(str(until), {"reason": "retention", "retention_until": str(until), "sources": [],
                                                "rows": 0})
            b["rows"] += 1
            if meta.get("source") not in b["sources"]:
                b["sources"].append(meta.get("source"))
    blocked = list(by_license.values()) + list(expired.values())
    return UseCheck(ok=not blocked, blocked=blocked)
