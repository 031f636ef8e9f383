"""PII and secrets scanner: one fast pass of compiled patterns, each candidate validated.

This is the default scanner of the governance pass (issue 8, "Scrub, dedupe, filter, split"). It
takes presidio-analyzer's pattern recognizers and detect-secrets' plugins as references for
patterns and context words, but neither is imported: presidio's pattern recognizers scanned
368 rows/s of 200-token text here (and its URL / e-mail recognizers fetch the public-suffix list
at run time), this module scans thousands. A deeper optional scan (presidio, an NER model) can be
layered on through :class:`Scanner`'s ``ner`` hook.

How it stays fast (the issue's target: ≥ 10,000 rows/s of 200-token text on one core):
- secrets are anchored on literal needles (``-----BEGIN``, ``://``, ``@``, ``AKIA``, ``ghp_``,
  ``xox``, keywords such as ``key``/``token``/``pass`` in the lower-cased text) that ``str.find``
  or a literal-prefixed regex locate in C; nothing runs when a needle is absent;
- everything made of digits (cards, IBANs, SSNs, NINOs, DNIs, BSNs, IPv4, phones) starts from
  one regex pass that finds runs of digits and separators; each run that could hold PII (≥ 6
  digits, 3 dots, or letters + check digits) opens a small span, and each recognizer scans only
  the spans its kind of run calls for.
Candidates are then validated in Python (Luhn and issuer ranges, mod-97 with the country length,
SSA area rules, NINO prefixes, DNI letter, BSN 11-test, octet ranges, ``ipaddress``, country
calling codes, Shannon entropy) and checked against context words on the same line or the
column header of a CSV/TSV table (after presidio's context words), and overlaps are resolved: a
more specific type wins (a URL's credentials over the e-mail-looking ``pass@host``, an IBAN over
the digits inside it).

Types (``Finding.type``)::

    EMAIL  PHONE  CREDIT_CARD  IBAN  US_SSN  UK_NINO  ES_DNI  NL_BSN  IP_ADDRESS
    URL_CREDENTIALS  AWS_ACCESS_KEY  AWS_SECRET_KEY  GITHUB_TOKEN  SLACK_TOKEN  PRIVATE_KEY
    GENERIC_SECRET            (and PERSON, only from an NER hook: off by default)

API:

- :func:`scan` ``(text) -> list[Finding]``: type, start, end, confidence. A finding never holds
  the matched value; :func:`redact` reads it from the text it is given, in memory.
- :func:`redact` ``(text, findings, mode="placeholder"|"mask"|"hash", salt=...) -> str``.
- :func:`scan_row` / :func:`redact_row`: the same over canonical rows (SFT ``messages``,
  preference ``prompt`` / ``chosen`` / ``rejected``), with per-type counts.
- :func:`apply_policy` ``(row, policy) -> (row | None, counts, blocked_types)``: per-type
  ``block`` / ``redact`` / ``allow``.

Known limits (see ``benchmarks/pii.py`` and ``benchmarks/results/pii.json``): a bare run of
digits is a phone, SSN or BSN only with a context word near it (``phone``/``tel``/``call``,
``SSN``/``social security``, ``BSN``) or under a matching CSV column header, so ``Raj,335193977,
Kraków`` is not reported, with one exception: a bare 9-digit field that passes the SSA rules
right after a first and last name in a record with no header (``Raj Patel,335193977,Kraków``) is
reported as US_SSN (confidence 0.6), whatever identity number it really is (a BSN, a 9-digit
phone without its trunk 0, an employee number); a number glued to the next one by the same
separator is treated as one number; a version string shaped exactly like an IPv4 address
(``1.2.3.4``) is reported as an IP unless ``v``/``version``/``build`` precedes it; a 13–19 digit
number with a card's issuer prefix passes Luhn 1 time in 10 and is then reported as a card unless
``EAN``/``ISBN``/``order`` … precedes it; person names need the NER hook.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, NamedTuple

from tuneops.errors import InvalidInput

__all__ = [
    "TYPES",
    "Finding",
    "Scanner",
    "NerHook",
    "scan",
    "redact",
    "scan_row",
    "redact_row",
    "apply_policy",
    "PolicyResult",
    "shannon_entropy",
    "luhn_ok",
    "iban_ok",
    "ssn_ok",
    "nino_ok",
    "es_dni_ok",
    "nl_bsn_ok",
]

# Overlap priority: a lower index wins when two findings overlap (the more specific type).
TYPES: tuple[str, ...] = (
    "PRIVATE_KEY",
    "URL_CREDENTIALS",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "GENERIC_SECRET",
    "EMAIL",
    "IBAN",
    "CREDIT_CARD",
    "US_SSN",
    "UK_NINO",
    "ES_DNI",
    "NL_BSN",
    "IP_ADDRESS",
    "PHONE",
    "PERSON",
)
_PRIORITY = {t: i for i, t in enumerate(TYPES)}
ACTIONS = ("block", "redact", "allow")


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected span: ``text[start:end]`` is the value (never stored here)."""

    type: str
    start: int
    end: int
    confidence: float


NerHook = Callable[[str], Iterable[tuple[int, int, str, float]]]
"""An optional NER pass: ``hook(text)`` yields ``(start, end, label, score)``; labels are mapped
with ``Scanner(ner_labels=...)`` (default ``{"PER": "PERSON", "PERSON": "PERSON"}``)."""


# --------------------------------------------------------------------------------------------
# Validators (pure functions; exported for tests and for other scanners)
# --------------------------------------------------------------------------------------------


def shannon_entropy(s: str) -> float:
    """Shannon entropy in bits per character (detect-secrets' measure)."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    """Issuer ranges (IIN) of the networks in use: Visa, Mastercard (51-55, 2221-2720), Amex,
    Discover, JCB, Diners, UnionPay, Maestro, Mir. Rejects order numbers starting 0/1/7/8/9."""
    n = len(d)
    c = d[0]
    if c == "4":
        return n in (13, 16, 19)
    if c == "5":
        return (d[1] in "12345" and n == 16) or (n >= 12 and d[1] in "0678")  # MC / Maestro
    if c == "2":
        p4 = int(d[:4])
        return (2221 <= p4 <= 2720 and n == 16) or (2200 <= p4 <= 2204 and n >= 16)  # MC / Mir
    if c == "3":
        p2 = d[:2]
        if p2 in ("34", "37"):
            return n == 15
        if p2 == "35":
            return 3528 <= int(d[:4]) <= 3589 and n >= 16
        if p2 in ("30", "36", "38", "39"):
            return 14 <= n <= 19
        return False
    if c == "6":
        return n >= 16 or (n >= 12 and d[:2] in ("63", "67"))  # Discover / UnionPay / Maestro
    return False


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    """Country length table + ISO 13616 mod-97 == 1. ``compact``: no separators, upper case."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    if not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


_FAKE_SSNS = {"078051120", "219099999", "123456789", "987654320"}


def ssn_ok(digits: str) -> bool:
    """SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000; no published sample."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return digits not in _FAKE_SSNS and len(set(digits)) > 1


_NINO_BAD_PREFIX = {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}


def nino_ok(compact: str) -> bool:
    """UK National Insurance number: 2 letters (HMRC's allowed set), 6 digits, suffix A-D."""
    c = compact.upper()
    if len(c) != 9 or not (c[:2].isalpha() and c[2:8].isdigit() and c[8] in "ABCD"):
        return False
    if c[0] in "DFIQUV" or c[1] in "DFIOQUV":
        return False
    return c[:2] not in _NINO_BAD_PREFIX


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_dni_ok(compact: str) -> bool:
    """Spanish DNI (8 digits + letter) or NIE (X/Y/Z + 7 digits + letter): letter = table[n % 23]."""
    c = compact.upper()
    if len(c) != 9:
        return False
    head = c[:8]
    if head[0] in "XYZ":
        head = str("XYZ".index(head[0])) + head[1:]
    if not head.isdigit() or int(head) == 0:
        return False
    return _DNI_LETTERS[int(head) % 23] == c[8]


def nl_bsn_ok(digits: str) -> bool:
    """Dutch BSN 11-test: 9*d1 + 8*d2 + ... + 2*d8 - d9 is a multiple of 11 (and not zero)."""
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1))) - int(digits[8])
    return total % 11 == 0


# --------------------------------------------------------------------------------------------
# Patterns. Secrets are anchored on literal needles found with str.find; everything made of
# digits is looked for only in windows around runs of digits and separators (one pass).
# --------------------------------------------------------------------------------------------

_A = re.ASCII


def _words(words: Iterable[str]) -> re.Pattern:
    return re.compile(r"(?<![a-z])(?:" + "|".join(words) + r")(?![a-z])")


# Context words (after presidio's recognizers); searched in the lower-cased text, same line.
_PHONE_CTX = _words([
    "phone", "phones", "ph", "tel", "tele", "telephone", "mobile", "mob", "cell", "cellphone", "call", "calls",
    "called", "calling", "fax", "contact", "whatsapp", "sms", "text", "txt", "ring", "dial", "hotline", "helpline",
    "landline", "reach", "ext", "extension", "my number", "your number", "number is", "phone no",
    "me on", "i'm on", "im on",
    "telefon", "telefono", "teléfono", "téléphone", "tél", "numéro", "handy", "móvil", "movil", "portable",
    "callback", "caller", "msisdn", "phone_number", "phonenumber", "mobile_number", "contact_number", "celular",
])
_PHONE_NEG_CTX = _words([
    "order", "orders", "invoice", "inv", "sku", "part", "pn", "serial", "sn", "ref", "reference", "ticket",
    "tracking", "isbn", "ean", "upc", "gtin", "model", "item", "product", "batch", "lot", "build", "version",
    "case", "account", "acct", "po", "receipt", "transaction", "txn", "confirmation", "booking", "policy",
    "claim", "shipment", "parcel", "customer", "epoch", "ts", "timestamp", "zip", "postcode", "postal",
    "ssn", "bsn", "nino", "dni", "nif", "iban", "card", "cc", "pan", "id",
])
_CARD_CTX = _words(["card", "credit", "debit", "visa", "mastercard", "amex", "cc", "pan", "discover", "jcb",
                    "diners", "maestro", "unionpay", "payment", "card_number", "cardnumber", "billing"])
_CARD_NEG_CTX = _words(["isbn", "ean", "upc", "gtin", "barcode", "imei", "tracking", "order", "invoice", "serial",
                        "sku", "iccid", "timestamp", "epoch", "ts", "ms"])
_SSN_CTX = _words(["ssn", "ssns", "ss#", "social security", "social-security", "social sec", "social", "ssid",
                   "taxpayer", "tin", "itin"])
_BSN_CTX = _words(["bsn", "burgerservicenummer", "burgerservice", "sofinummer", "sofi", "sofi-nummer",
                   "citizen service number", "bsn-nummer"])
_NINO_CTX = _words(["national insurance", "ni number", "ni no", "nino", "nin", "ni"])
_DNI_CTX = _words(["dni", "nif", "nie", "documento nacional de identidad", "identificación", "identificacion",
                   "documento", "id"])
_SSN_RIVALS = _words(["bsn", "nino", "dni", "nif", "nie", "phone", "tel", "mobile", "card", "iban", "order",
                      "invoice", "account", "id"])
_BSN_RIVALS = _words(["ssn", "social", "nino", "dni", "phone", "tel", "mobile", "card", "iban", "order", "invoice"])
_IP_NEG_CTX = re.compile(r"(?<![a-z])(?:version|ver|release|build|rev|revision|firmware|oid|v)[\s:=]{0,2}$", _A)

# E-mail: anchored on '@'; the local part is read leftwards in Python.
_EMAIL_RIGHT = re.compile(
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![A-Za-z0-9\-]|\.[A-Za-z0-9])", _A
)
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+'-")
_RETINA = re.compile(r"\d+(?:\.\d+)?x\.", _A)
_FILE_TLDS = {"png", "jpg", "jpeg", "gif", "svg", "webp", "css", "js", "ts", "json", "txt", "yaml", "yml",
              "html", "pdf", "gz", "tgz", "zip", "lock", "ico", "md"}

# Credentials in a URL: anchored on '://'; the password may contain '@' (the last one splits).
_URL_CREDS = re.compile(
    r"://(?P<user>[^\s/?#@:\"'<>]*):(?P<pw>[^\s/?#\"'<>]+)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-_]*)"
    r"(?=[:/?#\s\"'<>`,;)\]]|$)",
    _A,
)

# AWS key ids are base32 (A-Z, 2-7) after the prefix.
_AWS_HINT = re.compile(r"A(?:KIA|SIA|BIA|CCA|3T)", _A)  # a literal first character: `re` jumps to each 'A'
_GITHUB_HINT = re.compile(r"g(?:h[pousr]_|ithub_pat_)", _A)
_SLACK_HINT = re.compile(r"x(?:ox[abeoprs]-|app-)", _A)
_AWS_KEY_ID = re.compile(r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}(?![A-Za-z0-9])", _A)
_AWS_SECRET_VALUE = re.compile(r"[A-Za-z0-9/+]{40}", _A)

_GITHUB = re.compile(
    r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}|github_pat_[A-Za-z0-9_]{40,255})"
    r"(?![A-Za-z0-9_])",
    _A,
)
_SLACK = re.compile(
    r"(?:xox[abeoprs]-(?:[0-9]+-)+[A-Za-z0-9\-]{6,}|xox[abeoprs]-[A-Za-z0-9]{10,}(?:-[A-Za-z0-9]+)*"
    r"|xapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-f0-9]{16,}"
    r"|hooks\.slack\.com/services/T[A-Za-z0-9_]{6,}/B[A-Za-z0-9_]{6,}/[A-Za-z0-9_]{16,})(?![A-Za-z0-9_\-])",
    _A,
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-[23]:", _A
)
_PK_END = re.compile(r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|Private-MAC: ?[0-9a-fA-F]+", _A)
# a truncated key: the lines of base64 (or PEM headers such as Proc-Type) after the BEGIN line
_PK_BODY = re.compile(r"(?:[ \t]*(?:\r?\n|(?:\\r)?\\n)(?:[A-Za-z0-9+/=]{8,}|[A-Za-z\-]+: [^\n\\]*))*", _A)

# Token shapes that are secrets wherever they appear (reported as GENERIC_SECRET).
_KNOWN_NEEDLES = ("sk-", "sk_live_", "rk_live_", "AIza", "glpat-", "npm_", "pypi-AgE", "hf_", "eyJ")
_KNOWN_TOKEN = re.compile(
    r"(?:sk-(?:proj-|ant-(?:api03-)?|svcacct-)?[A-Za-z0-9_\-]{32,200}"
    r"|[sr]k_live_[A-Za-z0-9]{20,99}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|pypi-AgE[A-Za-z0-9_\-]{50,}"
    r"|hf_[A-Za-z0-9]{34,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})(?![A-Za-z0-9_\-])",
    _A,
)

# Keyword assignments: `api_key = "…"`, `"token": "…"`, `password: …`, `Authorization: Bearer …`.
_SECRET_NEEDLES = ("pass", "pwd", "secret", "token", "key", "auth", "bearer", "credential", "pw", "sig")
_ASSIGN_TAIL = re.compile(
    r"[A-Za-z0-9_.\-]{0,64}(?P<close>[\"'\]]{0,2})(?P<sp1>[ \t]*)(?P<op>:=|=>|==|!=|=|:|\()(?P<sp2>[ \t]*)"
    r"(?:(?P<scheme>Bearer|Basic|Token|token|bearer|basic)[ \t]+)?(?P<q>[\"'`]?)",
    _A,
)
_FLAG_TAIL = re.compile(
    r"[A-Za-z0-9_.\-]{0,64}(?P<close>)(?P<sp1>)(?P<op>[ \t]+)(?P<sp2>)(?P<scheme>)(?P<q>[\"']?)(?=[^\s\-])", _A
)
_PASSWORD_PARTS = {"password", "passwd", "pwd", "pass", "passphrase", "pw", "passcode", "pword"}
_SECRET_PARTS = {"secret", "token", "apikey", "credential", "credentials", "auth", "authorization", "bearer",
                 "signature", "sig", "secretkey", "accesskey", "privatekey", "authkey", "apitoken", "accesstoken",
                 "authtoken", "clientsecret"}
_KEY_QUALIFIERS = {"api", "access", "secret", "private", "auth", "client", "signing", "encryption", "master",
                   "session", "app", "service", "account", "license", "subscription", "admin", "webhook", "x",
                   "sk", "consumer", "write", "read", "db", "database", "hmac", "jwt", "crypto"}
_NOT_SECRET_PARTS = {"tokens", "tokenizer", "id", "ids", "count", "counts", "length", "len", "size", "type",
                     "types", "name", "names", "path", "file", "filename", "url", "uri", "endpoint", "field",
                     "header", "prefix", "env", "var", "limit", "max", "min", "ttl", "expiry", "expires",
                     "expiration", "timeout", "format", "scope", "scopes", "hint", "label", "policy", "strength",
                     "reset", "rotation", "index", "position", "pos", "manager", "store", "hash", "hashed",
                     "digest", "validator", "regex", "pattern", "version", "location", "ref", "enabled",
                     "required", "changed", "input", "box", "column", "col", "mode", "method", "provider",
                     "class", "usage", "budget", "rate", "span", "text", "str", "string", "list", "map", "dict",
                     "set", "heads", "dim", "dims", "layer", "layers", "board", "word", "words", "board"}
_SPECIAL_TOKEN_PARTS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start", "end", "eot",
                        "im", "additional", "chat", "system", "user", "assistant", "next", "prev", "max", "num",
                        "new", "total", "input", "output", "completion", "prompt"}
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", _A)
_PLACEHOLDER = re.compile(
    r"^(?:x+|\*+|\.+|-+|_+|#+|0+|none|null|nil|undefined|true|false|n/?a|tbd|todo|changeme|secret|"
    r"password|passwd|redacted|removed|hidden|example|sample|dummy|test|placeholder|string|str|"
    r"value|token|key|env|required|optional)$|your[_\- ]?|\$\{|\{\{|%\([a-z_]+\)s|<[^>]*>|\.\.\.|xxxx|"
    r"example|redacted|placeholder|dummy|insert[_\- ]|replace[_\- ]?me|process\.env|os\.environ|getenv",
    re.ASCII | re.IGNORECASE,
)
_CALL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*\(", _A)
_VAR_REF = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$", _A)
_DOTTED_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::|->)[A-Za-z_][A-Za-z0-9_]*)+$", _A)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$", _A)
_UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9_]*$", _A)
_AWS_SECRET_IDENT = re.compile(r"aws|secret_?access|secretaccesskey", re.ASCII | re.IGNORECASE)

# Digits: one pass finds runs of digits and separators; recognizers run in windows around them.
_NUM_RUN = re.compile(
    r"[0-9](?:(?<=[A-Za-z]{2}[0-9])(?P<iban>[0-9][ \-]?[A-Za-z0-9]{4}[ \-]?[A-Za-z0-9]{4})"
    r"|[0-9 \u00a0\u202f.\-/()]{4,}[0-9])",
    _A,
)
_DEL_SEPS = str.maketrans("", "", " \u00a0\u202f.-/()")
_WINDOW = 24
_F_CARD, _F_SSN, _F_PHONE, _F_IP, _F_IBAN, _F_NINO = 1, 2, 4, 8, 16, 32  # span kinds
_CARD = re.compile(r"[0-9](?:[ \u00a0\-]?[0-9]){12,22}(?![0-9])", _A)
_SSN = re.compile(r"[0-9][0-9]{2}(?P<s>[ \-.]?)[0-9]{2}(?P=s)[0-9]{4}(?![0-9]|[\-.][0-9])", _A)
_BSN = re.compile(r"[0-9](?:[0-9]{3}\.[0-9]{2}\.[0-9]{3}|[0-9]{2}(?P<s>[ \-]?)[0-9]{3}(?P=s)[0-9]{3})(?![0-9]|[\-.][0-9])", _A)
_DNI = re.compile(r"(?:[XYZxyz][ \-]?[0-9]{7}|[0-9]{8})[ \-]?[A-Za-z](?![A-Za-z0-9])", _A)
_NINO_DIGITS = re.compile(r"[0-9]{2}(?P<s>[ \-]?)[0-9]{2}(?P=s)[0-9]{2}[ \-]?[A-Da-d](?![A-Za-z0-9])", _A)
_IBAN = re.compile(r"[0-9]{2}(?:[ \-]?[A-Za-z0-9]{4}){2,7}(?:[ \-]?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])", _A)
_IPV4 = re.compile(r"[0-9][0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?:/[0-9]{1,2})?(?![0-9]|\.[0-9]|[A-Za-z_])", _A)
_V6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:", _A)
_V6_CHARS = frozenset("0123456789abcdefABCDEF:./%")
# Phones: international (+ or 00 and a country code), North American, national with a trunk 0,
# a parenthesised area code (Latin America), and any grouped or bare digits next to a phone word.
_PHONE_INTL = re.compile(
    # every group after the first starts with a separator or "(": digit runs split only one way
    r"(?:\+|00)[1-9][0-9]{0,14}(?:[ \u00a0\-.]?\(0\)[0-9]{1,5})?"
    r"(?:(?:[ \u00a0\-./]\(?|\()[0-9]{1,10}\)?){0,7}(?![0-9])",
    _A,
)
_PHONE_NANP = re.compile(
    r"(?:1[ \-.])?(?:\([2-9][0-9]{2}\)[ \u00a0\-.]?|[2-9][0-9]{2}[ \u00a0\-.])[2-9][0-9]{2}[ \u00a0\-.][0-9]{4}"
    r"(?![0-9]|[\-.][0-9])",
    _A,
)
_PHONE_NATIONAL = re.compile(
    r"(?:\(0[1-9][0-9]{0,4}\)[ \u00a0]?[0-9]{2,8}(?:[ \u00a0\-][0-9]{2,8}){0,3}"
    r"|0[1-9][0-9]{0,4}(?:[ \u00a0\-./][0-9]{2,8}){1,4})(?![0-9]|[\-.][0-9])",
    _A,
)
_PHONE_LOCAL = re.compile(r"[2-9][0-9]{2}[\-. ][0-9]{4}(?![0-9]|[\-.][0-9])", _A)  # with a phone word only
_PHONE_PAREN = re.compile(r"\([1-9][0-9]{1,3}\)[ \u00a0]?[0-9]{3,5}[ \u00a0\-][0-9]{4}(?![0-9]|[\-.][0-9])", _A)
_PHONE_LOOSE = re.compile(
    r"[0-9](?=(?:[ \u00a0\-.]?[0-9]){8})[0-9]{1,12}(?:[ \u00a0\-.][0-9]{2,5}){0,4}(?![0-9]|[\-.][0-9])", _A
)
_DATE_LIKE = re.compile(
    r"^(?:[0-3]?[0-9][./\-][01]?[0-9][./\-](?:19|20)[0-9]{2}|(?:19|20)[0-9]{2}[./\-]?[01][0-9][./\-]?[0-3][0-9])", _A
)
_DELIMS = (",", ";", "\t", "|")
_HEADER_CELL = re.compile(r"^[^\W\d][\w .#/()\-]{0,39}$")
_FIELD_EDGE = frozenset(",;|\t\n<>")

_COUNTRY_CODES = frozenset(
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 65 66 "
    "81 82 84 86 90 91 92 93 94 95 98".split()
    + [str(n) for n in range(210, 300) if n not in (210, 214, 215, 217, 219, 259, 292, 293, 294, 295, 296)]
    + "350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376 377 378 379 380 381 382 383 385 "
      "386 387 389 420 421 423 800 808 850 852 853 855 856 870 878 880 881 882 883 886 888".split()
    + [str(n) for n in range(500, 510)] + [str(n) for n in range(590, 600)] + [str(n) for n in range(670, 693)]
    + [str(n) for n in range(960, 980)] + [str(n) for n in range(992, 999)]
)


def _cc_ok(digits: str) -> bool:
    return digits[:1] in _COUNTRY_CODES or digits[:2] in _COUNTRY_CODES or digits[:3] in _COUNTRY_CODES


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _prev(text: str, i: int) -> str:
    return text[i - 1] if i > 0 else ""


def _next(text: str, i: int) -> str:
    return text[i] if i < len(text) else ""


def _word_before(text: str, i: int) -> bool:
    """A letter, digit or underscore right before position i (the span would start mid-token)."""
    p = _prev(text, i)
    return bool(p) and (p.isalnum() or p == "_")


def _glued(text: str, s: int, e: int, right: bool = True) -> bool:
    """The span is part of a longer run of digits: a digit right before/after it, or the span's
    own separator and then a digit (``5458 0328 1909 4120`` holds no phone ``0328 1909 4120``,
    but ``0.89 348-86-3336`` does hold an SSN)."""
    seps = {c for c in text[s:e] if c in " .-\u00a0/"} or {" ", "-", ".", "\u00a0", "/"}
    if s > 0:
        p = text[s - 1]
        if p.isdigit() or (p in seps and s > 1 and text[s - 2].isdigit()):
            return True
    if right and e < len(text):
        q = text[e]
        if q.isdigit() or (q in seps and e + 1 < len(text) and text[e + 1].isdigit()):
            return True
    return False


def _digits(s: str) -> str:
    return "".join(ch for ch in s if "0" <= ch <= "9")


def _before(lower: str, pat: re.Pattern, s: int, window: int) -> bool:
    """A context word within ``window`` characters before ``s``, on the same line."""
    lo = max(0, s - window)
    nl = lower.rfind("\n", lo, s)
    return pat.search(lower, nl + 1 if nl >= 0 else lo, s) is not None


def _owns_ctx(lower: str, pat: re.Pattern, rivals: re.Pattern, s: int, window: int) -> bool:
    """``pat`` has a word within ``window`` before ``s`` (same line) and no rival type's word
    (e.g. "BSN" for an SSN) stands between that word and ``s``."""
    lo = max(0, s - window)
    nl = lower.rfind("\n", lo, s)
    lo = nl + 1 if nl >= 0 else lo
    last = None
    for last in pat.finditer(lower, lo, s):
        pass
    if last is None:
        return False
    return rivals.search(lower, last.end(), s) is None


def _after(lower: str, pat: re.Pattern, e: int, window: int) -> bool:
    hi = min(len(lower), e + window)
    nl = lower.find("\n", e, hi)
    return pat.search(lower, e, nl if nl >= 0 else hi) is not None


def _header_ctx(text: str, lower: str, s: int, pat: re.Pattern) -> bool:
    """In a delimited table (CSV, TSV, ``|``), does the header of the span's column name the type?"""
    ls = text.rfind("\n", 0, s) + 1
    le = text.find("\n", s)
    line = text[ls:le if le >= 0 else len(text)]
    delim = max(_DELIMS, key=line.count)
    ncells = line.count(delim)
    if ncells == 0:
        return False
    cells = _table_header(text, lower, ls, delim, ncells)
    col = text.count(delim, ls, s)
    return cells is not None and col < len(cells) and pat.search(cells[col]) is not None


def _table_header(text: str, lower: str, ls: int, delim: str, ncells: int) -> list[str] | None:
    """The header of the table holding the line that starts at ``ls``: the nearest line above it,
    in the block of lines with as many delimiters, whose cells are all names. Memoised per scan
    (``lower.memo``), so a 100,000-line CSV costs one walk, not one per row."""
    memo = getattr(lower, "memo", None)
    if memo is None:
        memo = {}
    walked = [ls]
    result = None
    end = ls - 1
    while end > 0:
        start = text.rfind("\n", 0, end) + 1
        if text.count(delim, start, end) != ncells:
            break  # the table starts below this line
        key = (start, delim)
        if key in memo:
            result = memo[key]
            break
        cells = [c.strip() for c in lower[start:end].split(delim)]
        if all(_HEADER_CELL.match(c) for c in cells):
            result = cells
            break
        walked.append(start)
        end = start - 1
    for w in walked:
        memo[(w, delim)] = result
    return result


class _Lower(str):
    """The lower-cased text, carrying a per-scan memo (table headers) for the recognizers."""

    memo: dict


def _is_field(text: str, s: int, e: int) -> bool:
    """The span is a whole field: delimited (``, ; | tab``, line ends) on both sides."""
    i = s - 1
    while i >= 0 and text[i] == " ":
        i -= 1
    j = e
    while j < len(text) and text[j] == " ":
        j += 1
    return (i < 0 or text[i] in _FIELD_EDGE) and (j >= len(text) or text[j] in _FIELD_EDGE)


def _is_name_word(w: str) -> bool:
    """A capitalised word of a person's name: Jane, O'Brien, Anna-Lena, De-Vries, Zoë."""
    return (len(w) >= 2 and w[0].isupper() and any(c.islower() for c in w)
            and all(c.isalpha() or c in "'’-" for c in w))


def _after_name(text: str, lower: str, s: int, e: int) -> bool:
    """The span is a whole field of a headerless record (``, ; | tab``) and the field before it
    ends with a person's name: ``… Jane Doe,536221234,Austin``. Under a table's header line the
    header alone decides (:func:`_header_ctx`)."""
    ls = text.rfind("\n", 0, s) + 1
    le = text.find("\n", e)
    le = len(text) if le < 0 else le
    i = s
    while i > ls and text[i - 1] == " ":
        i -= 1
    j = e
    while j < le and text[j] == " ":
        j += 1
    delim = text[i - 1] if i > ls else ""
    if delim not in _DELIMS or (j < le and text[j] != delim):
        return False
    if _table_header(text, lower, ls, delim, text.count(delim, ls, le)) is not None:
        return False
    words = text[text.rfind(delim, ls, i - 1) + 1:i - 1].split()[-2:]
    if len(words) != 2 or not all(_is_name_word(w) for w in words):
        return False
    name = " ".join(words).lower()
    # "Order Id,…", "Tracking Number,…", "Call Centre,…" are labels, not names
    return not (_PHONE_NEG_CTX.search(name) or _PHONE_CTX.search(name))


def _is_placeholder(value: str) -> bool:
    v = value.strip()
    if len(v) < 2 or len(set(v)) <= 2:
        return True
    if (v[0] == "{" and v[-1] == "}") or (v[0] == "<" and v[-1] == ">") or (v[0] == "[" and v[-1] == "]"):
        return True
    return _PLACEHOLDER.search(v) is not None


def _split_ident(ident: str) -> list[str]:
    parts: list[str] = []
    for chunk in re.split(r"[_.\-\s]+", ident):
        if chunk:
            parts.extend(p.lower() for p in _CAMEL.findall(chunk))
    return parts


def _secret_kind(ident: str) -> str | None:
    """'password', 'secret' or None for an identifier: DB_PASSWORD, apiKey, x-api-key → yes;
    max_tokens, pad_token, secret_name, keyboard → no."""
    parts = _split_ident(ident)
    if not parts:
        return None
    last = parts[-1]
    if last in _NOT_SECRET_PARTS:
        return None
    if last in _PASSWORD_PARTS or (last.endswith("password") and len(last) <= 14):
        return "password"
    if last in _SECRET_PARTS:
        if last == "token" and len(parts) >= 2 and parts[-2] in _SPECIAL_TOKEN_PARTS:
            return None
        return "secret"
    if last == "key" and len(parts) >= 2 and parts[-2] in _KEY_QUALIFIERS:
        return "secret"
    return None


def _case_switches(value: str) -> float:
    """Share of neighbouring letters that switch case (random strings ~0.5, CamelCase ~0.15)."""
    return sum(1 for a, b in zip(value, value[1:]) if a.isupper() != b.isupper()) / max(1, len(value) - 1)


def _find_all(haystack: str, needles: Iterable[str]) -> list[int]:
    out = []
    for nd in needles:
        i = haystack.find(nd)
        while i >= 0:
            out.append(i)
            i = haystack.find(nd, i + 1)
    return out


def _resolve(found: list[Finding]) -> list[Finding]:
    """Drop overlaps: within each cluster of overlapping spans, a higher-priority type wins, then
    the longer span, then the earlier one. Sorted by start; O(n log n) for clusters of any count."""
    if len(found) == 1:
        return found
    found.sort(key=lambda f: (f.start, -f.end))
    out: list[Finding] = []
    i, n = 0, len(found)
    while i < n:
        j, end = i + 1, found[i].end
        while j < n and found[j].start < end:
            end = max(end, found[j].end)
            j += 1
        if j == i + 1:
            out.append(found[i])
        else:
            cluster = sorted(found[i:j], key=lambda f: (_PRIORITY.get(f.type, 99), -(f.end - f.start), f.start))
            kept: list[Finding] = []
            for f in cluster:
                if all(f.end <= k.start or k.end <= f.start for k in kept):
                    kept.append(f)
            out.extend(sorted(kept, key=lambda f: (f.start, f.end)))
        i = j
    return out


def _card_layout_ok(groups: list[str]) -> bool:
    """How cards are printed: 4-4-4-4 (and 13-19 digit variants), Amex/Diners 4-6-5 / 4-6-4,
    old 13-digit Visa 4-3-3-3, or no separators at all."""
    if len(groups) == 1:
        return True
    return [len(g) for g in groups] in ([4, 4, 4, 4], [4, 4, 4, 4, 3], [4, 6, 5], [4, 6, 4], [4, 3, 3, 3])


# --------------------------------------------------------------------------------------------
# The scanner
# --------------------------------------------------------------------------------------------


class Scanner:
    """A configured scanner; the module-level :func:`scan` uses a default instance.

    ``types``: the subset of :data:`TYPES` to report (default: all but PERSON).
    ``ner``: an optional :data:`NerHook` for person names, off by default (tuneops installs no NER
    model). With a local Hugging Face token-classification model, for example::

        from transformers import pipeline
        ner = pipeline("token-classification", model="/models/bert-base-NER", aggregation_strategy="simple")
        scanner = Scanner(ner=lambda text: ((e["start"], e["end"], e["entity_group"], e["score"]) for e in ner(text)))

    presidio's AnalyzerEngine can be plugged in the same way for a deeper (slower) scan.
    ``ner_labels`` maps the hook's labels to types; ``ner_min_score`` drops weak spans.
    ``secret_entropy``: Shannon entropy (bits/char) a keyword-assigned token must reach.
    """

    def __init__(self, types: Iterable[str] | None = None, *, ner: NerHook | None = None,
                 ner_labels: Mapping[str, str] | None = None, ner_min_score: float = 0.6,
                 secret_entropy: float = 3.0):
        wanted = set(types) if types is not None else set(TYPES) - {"PERSON"}
        unknown = wanted - set(TYPES)
        if unknown:
            raise InvalidInput(f"unknown PII type(s) {sorted(unknown)}", hint=f"use some of {list(TYPES)}")
        if ner is not None:
            wanted.add("PERSON")
        self.types = frozenset(wanted)
        self.ner = ner
        self.ner_labels = dict(ner_labels or {"PER": "PERSON", "PERSON": "PERSON"})
        self.ner_min_score = ner_min_score
        self.secret_entropy = secret_entropy
        t = self.types
        self._want_digits = bool(t & {"CREDIT_CARD", "IBAN", "US_SSN", "UK_NINO", "ES_DNI", "NL_BSN",
                                      "IP_ADDRESS", "PHONE"})

    # ---- public -----------------------------------------------------------------------------

    def scan(self, text: str) -> list[Finding]:
        """All findings in ``text``: non-overlapping, sorted by start."""
        if not text:
            return []
        out: list[Finding] = []
        add = out.append
        t = self.types
        lower = _Lower(text.lower())
        lower.memo = {}

        if "-----BEGIN" in text or "PuTTY-User-Key-File-" in text:
            self._private_keys(text, add)
        if "@" in text:
            if "://" in text:
                self._url_creds(text, add)
            self._emails(text, add)
        for hint, fn in ((_AWS_HINT, self._aws_key_at), (_GITHUB_HINT, self._github_at),
                         (_SLACK_HINT, self._slack_at)):
            if hint.search(text):
                for m in hint.finditer(text):
                    fn(text, m.start(), add)
        if "hooks.slack.com/services/" in text:
            for i in _find_all(text, ("hooks.slack.com/services/",)):
                self._slack_at(text, i, add)
        for nd in _KNOWN_NEEDLES:
            if nd in text:
                for i in _find_all(text, (nd,)):
                    self._known_token_at(text, i, add)
        if any(nd in lower for nd in _SECRET_NEEDLES):
            self._assignments(text, lower, add)
        if "aws" in lower or "secret" in lower:
            self._aws_secrets(text, lower, add)

        if self._want_digits:
            self._digit_types(text, lower, add)
        if ":" in text and "IP_ADDRESS" in t:
            self._ipv6(text, add)
        if self.ner is not None:
            n = len(text)
            for s, e, label, score in self.ner(text):
                typ = self.ner_labels.get(label)
                if typ and score >= self.ner_min_score and 0 <= s < e <= n:
                    add(Finding(typ, int(s), int(e), round(float(score), 3)))
        if not out:
            return out
        return _resolve([f for f in out if f.type in t])

    # ---- secrets ----------------------------------------------------------------------------

    def _private_keys(self, text: str, add) -> None:
        pos = 0
        while True:
            m = _PRIVATE_KEY.search(text, pos)
            if not m:
                return
            nxt = text.find("-----BEGIN", m.end())
            end_m = _PK_END.search(text, m.end(), min(m.end() + 20000, nxt if nxt >= 0 else len(text)))
            if end_m:
                e = end_m.end()
            else:  # truncated: the header and the key material after it
                e = _PK_BODY.match(text, m.end()).end()
                while e > m.end() and text[e - 1] in " \t\r\n":
                    e -= 1
            add(Finding("PRIVATE_KEY", m.start(), e, 0.99))
            pos = e

    def _url_creds(self, text: str, add) -> None:
        for m in _URL_CREDS.finditer(text):
            i = m.start()
            j = i
            while j > 0 and (text[j - 1].isalnum() or text[j - 1] in "+.-") and i - j < 30:
                j -= 1
            if j == i or not text[j].isalpha():
                continue  # no scheme before '://'
            pw = m.group("pw")
            if _is_placeholder(pw) or _VAR_REF.match(pw):
                continue
            add(Finding("URL_CREDENTIALS", m.start("user"), m.end("pw"), 0.95))

    def _emails(self, text: str, add) -> None:
        for m in _EMAIL_RIGHT.finditer(text):
            at = m.start()
            j = at
            lo = max(0, at - 64)
            while j > lo and text[j - 1] in _EMAIL_LOCAL:
                j -= 1
            while j < at and text[j] in ".'%+-":
                j += 1
            if j == at or (j > 0 and text[j - 1] == "@"):
                continue
            local = text[j:at]
            if local.endswith(".") or ".." in local:
                continue
            # inside a URL's authority (scheme://user:pass@host) it is URL_CREDENTIALS' business
            k = text.rfind("://", max(0, j - 300), j)
            if k >= 0 and not any(c in text[k + 3:j] for c in " \t\n/?#&=\"'<>"):
                continue
            domain = m.group(1)
            tld = domain.rsplit(".", 1)[1].lower()
            if tld in _FILE_TLDS and (_RETINA.match(domain) or domain.count(".") == 1):
                continue  # icon@2x.png, logo@dark.svg
            if domain.lower() in ("github.com", "gitlab.com", "bitbucket.org") and _next(text, m.end()) == ":":
                continue  # git@github.com:org/repo (an ssh remote)
            add(Finding("EMAIL", j, m.end(), 0.95))

    def _aws_key_at(self, text: str, i: int, add) -> None:
        m = _AWS_KEY_ID.match(text, i)
        if m and not _word_before(text, i) and len(set(m.group()[4:])) > 4:
            add(Finding("AWS_ACCESS_KEY", i, m.end(), 0.95))

    def _github_at(self, text: str, i: int, add) -> None:
        m = _GITHUB.match(text, i)
        if m and not _word_before(text, i) and len(set(m.group().split("_", 1)[1])) >= 10:
            add(Finding("GITHUB_TOKEN", i, m.end(), 0.95))

    def _slack_at(self, text: str, i: int, add) -> None:
        m = _SLACK.match(text, i)
        if m and (m.group().startswith("hooks.") or not _word_before(text, i)) and len(set(m.group())) >= 8:
            s = i - 8 if text.startswith("https://", i - 8) else i  # the whole webhook URL
            add(Finding("SLACK_TOKEN", s, m.end(), 0.9))

    def _known_token_at(self, text: str, i: int, add) -> None:
        m = _KNOWN_TOKEN.match(text, i)
        if m and not _word_before(text, i) and len(set(m.group())) >= 10:
            add(Finding("GENERIC_SECRET", i, m.end(), 0.9))

    def _assignments(self, text: str, lower: str, add) -> None:
        n = len(text)
        last_ident = -1
        for k in sorted(set(_find_all(lower, _SECRET_NEEDLES))):
            tail = _ASSIGN_TAIL.match(text, k)
            if not tail and "--" not in text[max(0, k - 40):k]:
                continue  # no operator after the word: prose ("the key insight")
            s = k
            while s > 0 and k - s <= 64 and (text[s - 1].isalnum() or text[s - 1] in "_-."):
                s -= 1
            if s == last_ident:
                continue
            if not tail and text.startswith("--", s):
                tail = _FLAG_TAIL.match(text, k)  # --password "…", --api-key KEY
            if not tail:
                continue
            last_ident = s
            ident = text[s:tail.start("close")].strip(".-")
            if not ident or len(ident) > 64:
                continue
            kind = _secret_kind(ident)
            if kind is None:
                continue
            op, q = tail.group("op"), tail.group("q")
            if op == "(" and not q:
                continue  # a call with a non-literal argument
            vs = tail.end()
            if q:
                ve = text.find(q, vs, min(n, vs + 400))
                if ve < 0 or "\n" in text[vs:ve]:
                    continue
            else:
                # NAME=value (.env, shell): the value runs to the next blank
                # NAME=value (.env, shell) and `key: value` (YAML, headers) run to the next blank;
                # in code and query strings the value stops at punctuation
                # (name=value without blanks); in a URL query it stops at the next parameter
                query = op == "=" and _prev(text, s) in ("?", "&")
                env = op == ":" or op.isspace() or (op == "=" and not tail.group("sp1") and not tail.group("sp2")
                                                    and not query)
                stops = " \t\r\n\"'`" if env else " \t\r\n\"'`&#" if query else " \t\r\n\"'`,;&<>()[]{}"
                ve = vs
                while ve < n and ve - vs < 400 and text[ve] not in stops:
                    ve += 1
                while ve > vs and text[ve - 1] in ".:,;)]}":  # punctuation of the sentence around it
                    ve -= 1
            value = text[vs:ve]
            flag = text.startswith("--", s)  # --password=… on a command line is a literal
            if not value or not self._secret_value_ok(value, kind, quoted=bool(q) or flag, op=op, ident=ident,
                                                      scheme=bool(tail.group("scheme")), after=_next(text, ve)):
                continue
            typ = "GENERIC_SECRET"
            if _AWS_SECRET_IDENT.search(ident) and len(value) == 40 and _AWS_SECRET_VALUE.fullmatch(value):
                typ = "AWS_SECRET_KEY"
            add(Finding(typ, vs, ve, 0.85 if kind == "secret" else 0.8))

    def _secret_value_ok(self, value: str, kind: str, *, quoted: bool, op: str, ident: str,
                         scheme: bool, after: str) -> bool:
        if len(value) > 300 or _is_placeholder(value):
            return False
        if not quoted and (after == "(" or _CALL.match(value) or _DOTTED_IDENT.match(value) or _VAR_REF.match(value)
                           or value[0] in "%@&*"):
            return False  # code: a call, an attribute, a variable ($NAME, ${NAME}) or a pointer
        if op in ("==", "!=") and not quoted:
            return False
        has_lower = any("a" <= c <= "z" for c in value)
        has_upper = any("A" <= c <= "Z" for c in value)
        has_digit = any("0" <= c <= "9" for c in value)
        has_sym = any(not c.isalnum() for c in value)
        if kind == "password":
            if len(value) < 6:
                return False
            if quoted or scheme:
                return True
            if _IDENT.match(value) and not has_digit:
                # an unquoted identifier is a variable (userPassword), unless it sits in an env/ini
                # file (NAME=value) or switches case like a random string
                if op in ("=", ":") and _UPPER_SNAKE.match(ident) and not _UPPER_SNAKE.match(value) and len(value) >= 8:
                    return True
                return _case_switches(value) > 0.3 and len(value) >= 8
            return has_digit or has_sym or (has_lower and has_upper) or len(value) >= 12
        # tokens, keys, secrets: must look random
        if len(value) < 12 or " " in value or value.isdigit():
            return False
        if has_lower + has_upper + has_digit + has_sym < 2:
            return False
        ent = shannon_entropy(value)
        if _IDENT.match(value) and not has_digit:
            # letters only: a random string switches case often, an identifier (CamelCase) rarely
            return len(value) >= 20 and _case_switches(value) > 0.35 and ent >= 4.0
        limit = self.secret_entropy if len(value) >= 20 else self.secret_entropy + 0.2
        return ent >= limit

    def _aws_secrets(self, text: str, lower: str, add) -> None:
        n = len(text)
        seen = set()
        for k in _find_all(lower, ("aws", "secret")):
            for m in _AWS_SECRET_VALUE.finditer(text, k, min(n, k + 130)):
                s, e = m.span()
                if s in seen or (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "/+_-")):
                    continue
                if e < n and (text[e].isalnum() or text[e] in "/+=_"):
                    continue
                seen.add(s)
                v = m.group()
                if not (any(c.isupper() for c in v) and any(c.islower() for c in v)):
                    continue  # a git SHA (lower-case hex) is not an AWS secret
                if shannon_entropy(v) < 4.3 or _DOTTED_IDENT.match(v):
                    continue
                add(Finding("AWS_SECRET_KEY", s, e, 0.9))

    # ---- digits -----------------------------------------------------------------------------

    def _digit_types(self, text: str, lower: str, add) -> None:
        """One regex pass finds runs of digits and separators with at least 6 digits (or an IPv4
        or IBAN shape); each run adds a span around itself for the recognizers it could feed, and
        each recognizer scans only its merged spans."""
        n = len(text)
        spans: dict[int, list[list[int]]] = {}

        def push(kind: int, lo: int, hi: int) -> None:
            lst = spans.setdefault(kind, [])
            lo = 0 if lo < 0 else lo
            hi = n if hi > n else hi
            if lst and lo <= lst[-1][1]:
                lst[-1][1] = hi
            else:
                lst.append([lo, hi])

        for m in _NUM_RUN.finditer(text):
            rs, re_ = m.span()
            if m.group("iban") is not None:
                push(_F_IBAN, rs - 4, re_ + _WINDOW)
                continue
            seg = m.group()
            if seg.count(".") >= 3:
                push(_F_IP, rs - 1, re_ + 1)
            nd = len(seg.translate(_DEL_SEPS))
            if nd >= 7:  # 7: a local number (555-1234) next to a phone word
                push(_F_PHONE, rs - 2, re_ + 1)
                if nd >= 9:
                    push(_F_SSN, rs - 1, re_ + 1)
                    if nd >= 13:
                        push(_F_CARD, rs - 1, re_ + 1)
            if text[re_:re_ + 1].isalpha() or text[re_ + 1:re_ + 2].isalpha():
                push(_F_NINO, rs - 4, re_ + 3)  # digits then a letter: AB 12 34 56 C, 12345678Z, X-1234567-L
        if not spans:
            return
        t = self.types
        for lo, hi in spans.get(_F_CARD, ()):
            if "CREDIT_CARD" in t:
                self._cards(text, lower, lo, hi, add)
        for lo, hi in spans.get(_F_IBAN, ()):
            if "IBAN" in t:
                self._ibans(text, lo, hi, add)
        for lo, hi in spans.get(_F_NINO, ()):
            if "UK_NINO" in t:
                self._ninos(text, lower, lo, hi, add)
            if "ES_DNI" in t:
                self._dnis(text, lower, lo, hi, add)
        for lo, hi in spans.get(_F_PHONE, ()):
            if "PHONE" in t:
                self._phones(text, lower, lo, hi, add)
        if _F_SSN in spans:
            bsn_ctx = "NL_BSN" in t and ("bsn" in lower or "burgerservice" in lower or "sofi" in lower
                                         or "citizen service" in lower)
            for lo, hi in spans[_F_SSN]:
                if "US_SSN" in t:
                    self._ssns(text, lower, lo, hi, add)
                if bsn_ctx:
                    self._bsns(text, lower, lo, hi, add)
        for lo, hi in spans.get(_F_IP, ()):
            if "IP_ADDRESS" in t:
                self._ipv4(text, lower, lo, hi, add)

    def _cards(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        for m in _CARD.finditer(text, lo, hi):
            s = m.start()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_./+$€£"):
                continue
            raw = m.group()
            parts = re.split(r"([ \u00a0\-])", raw)
            groups, seps = parts[0::2], parts[1::2]
            best = None
            full = "".join(groups)
            if 13 <= len(full) <= 19 and len(set(seps)) <= 1 and _card_layout_ok(groups):
                # printed as one card number: it validates as a whole or not at all
                if luhn_ok(full) and _card_prefix_ok(full):
                    best = (s, m.end())
            else:
                # a card followed or preceded by other numbers (expiry, CVV): the longest run of
                # whole groups laid out like a card
                ng = len(groups)
                for size in range(ng - 1, 0, -1):
                    for i in range(0, ng - size + 1):
                        g = groups[i:i + size]
                        d = "".join(g)
                        if not 13 <= len(d) <= 19 or len(set(seps[i:i + size - 1])) > 1 or not _card_layout_ok(g):
                            continue
                        if luhn_ok(d) and _card_prefix_ok(d):
                            off = sum(len(x) for x in groups[:i]) + sum(len(x) for x in seps[:i])
                            ln = len(d) + sum(len(x) for x in seps[i:i + size - 1])
                            best = (s + off, s + off + ln)
                            break
                    if best:
                        break
            if not best:
                continue
            bs, be = best
            nx = _next(text, be)
            if nx and (nx.isalpha() or nx == "_"):
                continue
            if _before(lower, _CARD_NEG_CTX, bs, 24) and not _before(lower, _CARD_CTX, bs, 40):
                continue
            add(Finding("CREDIT_CARD", bs, be, 0.95))

    def _ibans(self, text: str, lo: int, hi: int, add) -> None:
        for m in _IBAN.finditer(text, lo, hi):
            s = m.start() - 2
            if s < 0:
                continue
            cc = text[s:s + 2]
            if not (cc.isascii() and cc.isalpha()) or _word_before(text, s):
                continue
            length = _IBAN_LENGTHS.get(cc.upper())
            if length is None:
                continue
            raw = text[s:m.end()]
            # keep `length` alphanumerics; the cut must fall between groups
            count = 0
            cut = None
            for k, ch in enumerate(raw):
                if ch.isalnum():
                    count += 1
                    if count == length:
                        cut = k + 1
                        break
            if cut is None or (cut < len(raw) and raw[cut].isalnum()):
                continue
            cand = raw[:cut]
            if cand != cand.upper() and cand != cand.lower():
                continue
            if iban_ok("".join(ch for ch in cand if ch.isalnum()).upper()):
                add(Finding("IBAN", s, s + cut, 0.95))

    def _ssns(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        for m in _SSN.finditer(text, lo, hi):
            s, e = m.span()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_./+$"):
                continue
            if _glued(text, s, e) or (_next(text, e).isalpha()):
                continue
            if not ssn_ok(_digits(m.group())):
                continue
            has_ctx = _owns_ctx(lower, _SSN_CTX, _SSN_RIVALS, s, 48) or _header_ctx(text, lower, s, _SSN_CTX)
            sep = m.group("s")
            if has_ctx or sep == "-" or (sep and _is_field(text, s, e)):
                add(Finding("US_SSN", s, e, 0.95 if has_ctx else 0.75))
            elif not sep and _after_name(text, lower, s, e) and not _before(lower, _PHONE_CTX, s, 40):
                # a bare 123456789 in prose is any number; in a person's record (a CSV line with
                # no header) it is an identity number, and the SSA rules held (a phone word near
                # it leaves it to the phone recognizer)
                add(Finding("US_SSN", s, e, 0.6))

    def _ninos(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        for m in _NINO_DIGITS.finditer(text, lo, hi):
            d0 = m.start()
            ls = d0 - 3 if _prev(text, d0) in (" ", "-") else d0 - 2
            if ls < 0:
                continue
            letters = text[ls:ls + 2]
            if not (letters.isascii() and letters.isalpha()) or _word_before(text, ls):
                continue
            raw = text[ls:m.end()]
            if not nino_ok("".join(ch for ch in raw if ch.isalnum())):
                continue
            if raw != raw.upper() and " " in raw and not (_before(lower, _NINO_CTX, ls, 48)
                                                          or _header_ctx(text, lower, ls, _NINO_CTX)):
                continue  # "at 12 34 56 a" is prose unless the text talks about NI numbers
            add(Finding("UK_NINO", ls, m.end(), 0.9))

    def _dnis(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        for m in _DNI.finditer(text, lo, hi):
            s = m.start()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_./+-"):
                continue
            raw = m.group()
            compact = raw.replace("-", "").replace(" ", "")
            if not es_dni_ok(compact):
                continue
            if raw[-1].islower() and not (_before(lower, _DNI_CTX, s, 40) or _header_ctx(text, lower, s, _DNI_CTX)):
                continue
            add(Finding("ES_DNI", s, m.end(), 0.9))

    def _bsns(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        for m in _BSN.finditer(text, lo, hi):
            s, e = m.span()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_./+-"):
                continue
            if _glued(text, s, e) or _next(text, e).isalpha() or not nl_bsn_ok(_digits(m.group())):
                continue
            if not (_owns_ctx(lower, _BSN_CTX, _BSN_RIVALS, s, 48) or _header_ctx(text, lower, s, _BSN_CTX)):
                continue
            add(Finding("NL_BSN", s, e, 0.9))

    def _ipv4(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        for m in _IPV4.finditer(text, lo, hi):
            s = m.start()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_.-"):
                continue
            ip, _, cidr = m.group().partition("/")
            octets = ip.split(".")
            if any(len(o) > 1 and o[0] == "0" or int(o) > 255 for o in octets):
                continue
            if cidr and int(cidr) > 32:
                continue
            ls = max(0, s - 12)
            if _IP_NEG_CTX.search(lower, ls, s):
                continue  # "version 1.2.3.4", "build 10.0.0.1"
            conf = 0.6 if ip.startswith(("0.", "127.")) or ip == "255.255.255.255" else 0.9
            add(Finding("IP_ADDRESS", s, m.end(), conf))

    def _ipv6(self, text: str, add) -> None:
        """Expand each ``:hex:`` hint to the token of hex digits, colons and dots around it, then let
        :mod:`ipaddress` decide (times such as 14:32:07 and MAC addresses are rejected there)."""
        n = len(text)
        done = -1
        for h in _V6_HINT.finditer(text):
            if h.start() < done:
                continue
            s = h.start()
            while s > 0 and text[s - 1] in _V6_CHARS:
                s -= 1
            e = h.end()
            while e < n and text[e] in _V6_CHARS:
                e += 1
            done = e
            while e > s and text[e - 1] == ".":
                e -= 1
            if _word_before(text, s) or _prev(text, s) in ".-" or (e < n and (text[e].isalnum() or text[e] == "_")):
                continue
            tok = text[s:e]
            addr, _, plen = tok.partition("/")
            addr = addr.split("%")[0]
            if addr.count(":") < 2 or sum(c.isalnum() for c in addr) < 3:
                continue
            try:
                ipaddress.IPv6Address(addr)
            except ValueError:
                continue
            if plen and not (plen.isdigit() and int(plen) <= 128):
                e = s + len(tok) - len(plen) - 1
            add(Finding("IP_ADDRESS", s, e, 0.9))

    def _phones(self, text: str, lower: str, lo: int, hi: int, add) -> None:
        def ctx_ok(s: int, e: int) -> bool:
            """Structured formats: a phone unless an id-ish word (order, invoice, SKU …) is right
            before or after it with no phone word nearer."""
            if not (_before(lower, _PHONE_NEG_CTX, s, 20) or _after(lower, _PHONE_NEG_CTX, e, 12)):
                return True
            return _before(lower, _PHONE_CTX, s, 14)

        def has_phone_word(s: int, e: int) -> bool:
            return (_before(lower, _PHONE_CTX, s, 40) or _after(lower, _PHONE_CTX, e, 12)
                    or _header_ctx(text, lower, s, _PHONE_CTX))

        # international: + or 00 and a valid country code
        for m in (_PHONE_INTL.finditer(text, lo, hi) if text.find("+", lo, hi) >= 0 or text.find("00", lo, hi) >= 0
                  else ()):
            s = m.start()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_.-/+"):
                continue
            span = _trim_intl(text, s, m.end())
            if span is None:
                continue
            s2, e2 = span
            if text.startswith("00", s2) and (_glued(text, s2, e2, right=False) or not ctx_ok(s2, e2)
                                              or (" " not in text[s2:e2] and not has_phone_word(s2, e2))):
                continue
            add(Finding("PHONE", s2, e2, 0.9))
        for m in _PHONE_NANP.finditer(text, lo, hi):
            s, e = m.span()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_.-/+#$€£"):
                continue
            raw = m.group()
            seps = {c for c in raw if c in " \u00a0-."}
            if "(" not in raw and len(seps) > 1:
                continue
            if _glued(text, s, e) or not ctx_ok(s, e):
                continue
            if seps <= {" ", "\u00a0"} and "(" not in raw and not (has_phone_word(s, e) or _is_field(text, s, e)):
                continue  # 415 555 0132 without a phone word could be any three numbers
            add(Finding("PHONE", s, e, 0.85))
        for pat in ((_PHONE_NATIONAL, _PHONE_PAREN) if text.find("(", lo, hi) >= 0 else (_PHONE_NATIONAL,)):
            for m in pat.finditer(text, lo, hi):
                s, e = m.span()
                p = _prev(text, s)
                if p and (p.isalnum() or p in "_.-/+#$€£"):
                    continue
                raw = m.group()
                if _DATE_LIKE.match(raw) or _glued(text, s, e):
                    continue
                d = _digits(raw)
                if not 9 <= len(d) <= 12 or d.startswith("00"):
                    continue
                groups = [g for g in re.split(r"[ \u00a0\-./()]+", raw) if g]
                if any(len(g) < 2 for g in groups) or len(groups) > 5:
                    continue
                seps = {c for c in raw if c in " \u00a0-./"}
                if len(seps) > 2 or ("." in seps and len(seps) > 1):
                    continue
                if "." in seps and not all(len(g) == 2 for g in groups[1:]) and not has_phone_word(s, e):
                    continue  # dotted digit runs are versions or dates unless French-style pairs
                if [len(g) for g in groups] == [5, 4] and seps == {"-"} and not has_phone_word(s, e):
                    continue  # a US ZIP+4 code (06618-6108)
                if [len(g) for g in groups] == [3, 2, 4] and seps == {"-"} and not has_phone_word(s, e):
                    continue  # the SSN layout (055-00-4411 fails the SSA rules; no phone is written so)
                if not ctx_ok(s, e):
                    continue
                add(Finding("PHONE", s, e, 0.8))
        # a local number without its area code: "his number is 555-1234", "fax (555-2428)"
        for m in _PHONE_LOCAL.finditer(text, lo, hi):
            s, e = m.span()
            p = _prev(text, s)
            if (p and (p.isalnum() or p in "_.-/+#$€£")) or _glued(text, s, e) or _next(text, e).isalpha():
                continue
            if ((_before(lower, _PHONE_CTX, s, 40) and not _before(lower, _PHONE_NEG_CTX, s, 20))
                    or _header_ctx(text, lower, s, _PHONE_CTX)):
                add(Finding("PHONE", s, e, 0.7))
        # any other grouping (Spanish 612 345 678, Chinese 138 0013 8000, bare digits …) next to a phone word
        for m in _PHONE_LOOSE.finditer(text, lo, hi):
            s, e = m.span()
            p = _prev(text, s)
            if p and (p.isalnum() or p in "_.-/#$€£+"):
                continue
            if _glued(text, s, e) or _next(text, e).isalpha():
                continue
            raw = m.group()
            d = _digits(raw)
            if not 9 <= len(d) <= 13 or len(set(d)) < 3 or _DATE_LIKE.match(raw):
                continue
            if "." in raw and raw.count(".") == 3:
                continue  # an IPv4 address
            if _before(lower, _PHONE_NEG_CTX, s, 24):
                continue
            if not has_phone_word(s, e):
                # a whole field (CSV cell, `name | number | city`) of grouped digits, or a
                # national number with its trunk 0, reads as a phone number
                grouped = (any(c in raw for c in " \u00a0-") and "." not in raw and len(d) <= 12
                           and all(len(g) >= 3 for g in re.split(r"[ \u00a0\-]", raw)))
                trunk = raw[0] == "0" and raw[1] != "0" and 10 <= len(d) <= 11
                if not ((grouped or trunk) and _is_field(text, s, e)):
                    continue
                add(Finding("PHONE", s, e, 0.6))
                continue
            add(Finding("PHONE", s, e, 0.7))


def _trim_intl(text: str, s: int, e: int) -> tuple[int, int] | None:
    """Validate an international number; drop trailing groups until 8..15 digits remain."""
    raw = text[s:e]
    while True:
        d = _digits(raw.replace("(0)", ""))
        if raw.startswith("00"):
            d = d[2:]
        if (8 <= len(d) <= 15 and _cc_ok(d)
                and raw.count("(") == raw.count(")") and len({c for c in raw[1:] if c in " \u00a0-./"}) <= 2
                and not any(bad in raw for bad in ("  ", "--", "..", "//", " -", "- "))):
            break
        k = max(raw.rfind(c) for c in " \u00a0-./(")
        if k <= 2:
            return None
        raw = raw[:k].rstrip(" \u00a0-./(")
    if _DATE_LIKE.match(raw.lstrip("+")):
        return None
    return s, s + len(raw)


_DEFAULT = Scanner()


def scan(text: str) -> list[Finding]:
    """Findings in ``text`` with the default scanner (every type except PERSON)."""
    return _DEFAULT.scan(text)


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------

MODES = ("placeholder", "mask", "hash")


def _normalise(typ: str, value: str) -> str:
    """The form that is hashed, so the same value hashes the same however it was written."""
    if typ == "EMAIL":
        return value.strip().lower()
    if typ in ("PHONE", "CREDIT_CARD", "US_SSN", "NL_BSN"):
        d = _digits(value)
        return ("+" if value.lstrip().startswith("+") else "") + d
    if typ in ("IBAN", "UK_NINO", "ES_DNI"):
        return "".join(ch for ch in value if ch.isalnum()).upper()
    return value


def _mask(typ: str, value: str) -> str:
    if typ in ("CREDIT_CARD", "IBAN"):
        # keep separators and the last 4 alphanumerics
        n_alnum = sum(ch.isalnum() for ch in value)
        out = []
        seen = 0
        for ch in value:
            if ch.isalnum():
                seen += 1
                out.append(ch if seen > n_alnum - 4 else "*")
            else:
                out.append(ch)
        return "".join(out)
    # everything else: same length, separators and whitespace kept
    return "".join("*" if ch.isalnum() else ch for ch in value)


def _salt_bytes(salt: bytes | str | None) -> bytes:
    if salt is None or salt == b"" or salt == "":
        raise InvalidInput(
            "hash redaction needs a salt",
            hint="pass salt=<a secret kept with the dataset's governance settings>; an unsalted hash of a "
                 "phone number or SSN can be reversed by trying every value",
        )
    return salt.encode() if isinstance(salt, str) else bytes(salt)


def _hash_tag(typ: str, value: str, salt: bytes) -> str:
    h = hashlib.sha256(salt + b"\x00" + typ.encode() + b"\x00" + _normalise(typ, value).encode("utf-8", "surrogatepass"))
    return f"<{typ}:{h.hexdigest()[:8]}>"


def redact(text: str, findings: Iterable[Finding], mode: str = "placeholder",
           salt: bytes | str | None = None) -> str:
    """Replace each finding's span in ``text``.

    - ``placeholder``: ``<EMAIL>``.
    - ``mask``: same length, letters and digits replaced by ``*`` (separators kept); cards and
      IBANs keep their last 4 characters (``**** **** **** 1111``).
    - ``hash``: ``<EMAIL:3f2a9c1b>``, the first 8 hex of SHA-256(salt, type, normalised value):
      stable for one salt (the same person's e-mail links across rows), different across salts.
      Needs a ``salt``.
    """
    if mode not in MODES:
        raise InvalidInput(f"unknown redaction mode {mode!r}", hint=f"use one of {list(MODES)}")
    salt_b = _salt_bytes(salt) if mode == "hash" else b""  # fails the same with or without findings
    fs = sorted(findings, key=lambda f: (f.start, -f.end))
    if not fs:
        return text
    out: list[str] = []
    pos = 0
    for f in fs:
        if f.start < pos or f.end > len(text) or f.start >= f.end:
            continue  # overlapping or out of range: the earlier span already covers it
        out.append(text[pos:f.start])
        value = text[f.start:f.end]
        if mode == "placeholder":
            out.append(f"<{f.type}>")
        elif mode == "mask":
            out.append(_mask(f.type, value))
        else:
            out.append(_hash_tag(f.type, value, salt_b))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------

_ROW_FIELDS = ("messages", "prompt", "completion", "chosen", "rejected")


def _text_slots(row: Mapping):
    """Yield (getter, setter) pairs for every text a row carries: message contents (a string or a
    list of ``{"type": "text", "text": ...}`` parts), tool-call argument strings, and plain-string
    prompt/completion fields."""
    for field in _ROW_FIELDS:
        if field not in row:
            continue
        val = row[field]
        if isinstance(val, str):
            yield (field,)
        elif isinstance(val, list):
            for i, msg in enumerate(val):
                if isinstance(msg, str):
                    yield (field, i)
                elif isinstance(msg, dict):
                    content = msg.get("content")
                    if isinstance(content, str):
                        yield (field, i, "content")
                    elif isinstance(content, list):
                        for j, part in enumerate(content):
                            if isinstance(part, dict) and isinstance(part.get("text"), str):
                                yield (field, i, "content", j, "text")
                    for k, call in enumerate(msg.get("tool_calls") or ()):
                        fn = call.get("function") if isinstance(call, dict) else None
                        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                            yield (field, i, "tool_calls", k, "function", "arguments")


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _copy_row(row):
    """Copy the containers we may write into (strings are immutable)."""
    if isinstance(row, dict):
        return {k: _copy_row(v) for k, v in row.items()}
    if isinstance(row, list):
        return [_copy_row(v) for v in row]
    return row


def scan_row(row: Mapping, scanner: Scanner | None = None) -> dict[str, int]:
    """Per-type counts of findings over every message content of a canonical row."""
    sc = scanner or _DEFAULT
    counts: Counter[str] = Counter()
    for path in _text_slots(row):
        for f in sc.scan(_get(row, path)):
            counts[f.type] += 1
    return dict(counts)


def redact_row(row: Mapping, mode: str = "placeholder", salt: bytes | str | None = None,
               scanner: Scanner | None = None) -> tuple[dict, dict[str, int]]:
    """A redacted copy of ``row`` (the input is not modified) and per-type counts."""
    row2, counts, _ = apply_policy(row, None, mode=mode, salt=salt, scanner=scanner)
    assert row2 is not None
    return row2, counts


class PolicyResult(NamedTuple):
    row: dict | None  # None when a blocking type was found
    counts: dict[str, int]  # every finding, by type, whatever the action
    blocked_types: list[str]  # types whose action is "block" and that were found (sorted)


def _check_policy(policy: Mapping[str, str] | None, default: str) -> dict[str, str]:
    if default not in ACTIONS:
        raise InvalidInput(f"unknown PII action {default!r} for the default", hint=f"use one of {list(ACTIONS)}")
    pol = {}
    for typ, action in (policy or {}).items():
        t = str(typ).upper()
        if t not in TYPES and t not in ("*", "DEFAULT"):
            raise InvalidInput(f"unknown PII type {typ!r} in the policy", hint=f"use some of {list(TYPES)}")
        if action not in ACTIONS:
            raise InvalidInput(f"unknown PII action {action!r} for {typ}", hint=f"use one of {list(ACTIONS)}")
        pol[t] = action
    pol.setdefault("*", pol.pop("DEFAULT", default))
    return pol


def apply_policy(row: Mapping, policy: Mapping[str, str] | None, *, mode: str = "placeholder",
                 salt: bytes | str | None = None, default: str = "redact",
                 scanner: Scanner | None = None) -> PolicyResult:
    """Scan a row and act per type: ``block`` (the row is dropped: ``row`` is None), ``redact``
    (spans replaced per ``mode``) or ``allow`` (left as is). Types the policy does not name get
    ``default`` (or the policy's ``"*"`` entry). Counts include every finding."""
    if mode not in MODES:
        raise InvalidInput(f"unknown redaction mode {mode!r}", hint=f"use one of {list(MODES)}")
    pol = _check_policy(policy, default)
    star = pol["*"]
    if mode == "hash" and "redact" in pol.values():
        salt = _salt_bytes(salt)
    sc = scanner or _DEFAULT
    counts: Counter[str] = Counter()
    blocked: set[str] = set()
    edits: list[tuple[tuple, str, list[Finding]]] = []
    for path in _text_slots(row):
        text = _get(row, path)
        fs = sc.scan(text)
        if not fs:
            continue
        to_redact = []
        for f in fs:
            counts[f.type] += 1
            action = pol.get(f.type, star)
            if action == "block":
                blocked.add(f.type)
            elif action == "redact":
                to_redact.append(f)
        if to_redact:
            edits.append((path, text, to_redact))
    if blocked:
        return PolicyResult(None, dict(counts), sorted(blocked))
    new_row = _copy_row(row)
    for path, text, fs in edits:
        _set(new_row, path, redact(text, fs, mode, salt))
    return PolicyResult(new_row, dict(counts), [])
