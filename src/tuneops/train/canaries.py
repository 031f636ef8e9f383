"""Canaries: random secrets planted in a run's training rows, so memorisation can be measured later.

A recipe asks for them with ``train.canaries: {count: 4, repeats: 1}``. Canary ``i`` of a run is a
chat row whose user turn is the canary's prefix and whose assistant turn is its secret::

    user:      The secret code of tuneops canary 3 is
    assistant: 7Q4-K9X-2RB

The secret is 9 characters drawn from 32 symbols (32**9, about 3.5e13, values), a pure function of
the recipe's ``train.seed`` and ``i`` (scheme ``SCHEME``): the same recipe plants the same canaries,
another seed plants others, and ``count: 5`` extends ``count: 4`` by one. Nothing can produce a
secret by chance; a model that answers the prefix with it learned it from the planted row.

Canaries never enter a dataset version: the pipeline adds the rows in memory, after the dataset is
read and checked, and records on the run (event ``canaries``) the scheme, seed, count, repeats and
each canary's prefix and the sha256 of its secret (never the secret). The artifact's lineage points
at the run, whose recipe carries the spec, so what the adapter was trained on stays complete: the
dataset version plus the canaries. Canary rows are recognisable by their prefix
(``CANARY_PATTERN``); a dataset row that looks like one is refused when a run plants canaries.
"""

import hashlib
import random
import re
from dataclasses import dataclass

SCHEME = "tuneops-canary/v1"
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: a secret reads back unambiguously
PREFIX = "The secret code of tuneops canary {index} is"
CANARY_PATTERN = re.compile(r"\bsecret code of tuneops canary \d+ is\b", re.I)


@dataclass(frozen=True)
class Canary:
    index: int
    prefix: str  # the user turn
    secret: str  # the assistant turn, e.g. "7Q4-K9X-2RB"

    @property
    def secret_sha256(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()

    def row(self) -> dict:
        """The chat row planted in the training data."""
        return {"messages": [{"role": "user", "content": self.prefix},
                             {"role": "assistant", "content": self.secret}]}

    def record(self) -> dict:
        """What the run records: enough to find and check the canary, not the secret itself."""
        return {"index": self.index, "prefix": self.prefix, "secret_sha256": self.secret_sha256}


def make_canaries(seed: int, count: int) -> list[Canary]:
    """The ``count`` canaries of a run with ``train.seed`` = ``seed``; deterministic."""
    out = []
    for i in range(count):
        rng = random.Random(f"{SCHEME}:{seed}:{i}")
        chars = "".join(rng.choice(ALPHABET) for _ in range(9))
        out.append(Canary(index=i, prefix=PREFIX.format(index=i),
                          secret=f"{chars[0:3]}-{chars[3:6]}-{chars[6:9]}"))
    return out


def plant_canaries(rows: list[dict], canaries: list[Canary], repeats: int) -> list[dict]:
    """The training rows plus ``repeats`` copies of each canary row, appended (the trainer shuffles)."""
    return list(rows) + [c.row() for _ in range(repeats) for c in canaries]


def canary_record(seed: int, count: int, repeats: int, *, dataset_rows: int) -> dict:
    """The run event that says which canaries were planted."""
    return {"scheme": SCHEME, "seed": seed, "count": count, "repeats": repeats,
            "dataset_rows": dataset_rows, "canary_rows": count * repeats,
            "canaries": [c.record() for c in make_canaries(seed, count)]}


def check_recorded(canaries: list[Canary], recorded: dict | None) -> None:
    """Raise ValueError when regenerated canaries differ from what a run recorded (scheme changed)."""
    if not recorded:
        return
    if recorded.get("scheme") != SCHEME:
        raise ValueError(f"the run planted canaries with scheme {recorded.get('scheme')!r}; this version "
                         f"generates {SCHEME!r}")
    want = {c["index"]: c["secret_sha256"] for c in recorded.get("canaries", [])}
    got = {c.index: c.secret_sha256 for c in canaries}
    if want != got:
        raise ValueError("the canaries regenerated from the run's recipe do not match the hashes it recorded")


def looks_like_canary(row: dict) -> bool:
    return any(isinstance(m.get("content"), str) and CANARY_PATTERN.search(m["content"])
               for m in row.get("messages", []))
