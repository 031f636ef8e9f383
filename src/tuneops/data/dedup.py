"""Deduplication and train/eval leakage over canonical rows: pure functions, no store access.

Canonical rows are SFT rows ``{"messages": [{"role", "content"}, ...]}`` or preference rows
``{"prompt": [...], "chosen": [...], "rejected": [...]}``; a plain string is a row too, and so is
each row of an Arrow Table/RecordBatch with those columns. A row's text (:func:`row_text`) is its
message contents joined with newlines (``roles=`` leaves some out, e.g. a system prompt that
every row shares and that would otherwise make all rows look alike).

Three stages, in this order, each keeping the first row of a group (input order):

- **exact**: sha256 of the normalised text (NFKC, casefold, whitespace runs collapsed; with
  ``strip_punctuation`` only the words), see :func:`normalize_text` / :func:`exact_hash`.
- **near**: MinHash over word 5-gram shingles (a text of fewer words is one shingle), LSH
  banding for candidates, every candidate confirmed by the exact Jaccard of the two shingle
  sets ≥ ``threshold`` (0.6 by default: 3 % token edits leave a Jaccard of ~0.75, which a
  threshold of 0.8 misses nearly always). A row is dropped when it matches a row already
  *kept*, so every removal names a kept row and a Jaccard ≥ threshold with it.
- **semantic** (off by default): all-MiniLM-L6-v2 embeddings, cosine ≥ 0.95.

API: :func:`dedup` (everything, optionally in worker processes) = :func:`minhash_batch` (the
parallel unit: one batch in, numpy arrays out; run it wherever the batch is) + :class:`DedupStream`
(the serial unit: batches in row order in, removals out) + :class:`NearDupIndex` (kept rows of
earlier versions, saved to a file; :func:`matches_in_index` finds the rows of a new version that
duplicate one of them). :func:`near_duplicate_clusters` links every similar pair
(for splits); :func:`find_leakage` checks training rows against eval items.

How it is fast. The MinHash is one-permutation hashing with optimal densification (Shrivastava,
ICML 2017): each shingle is hashed once, its high bits pick one of ``num_perm`` bins and its low
bits compete for that bin's minimum; an empty bin borrows from the first non-empty bin in a
fixed, seeded order. Each bin of two signatures agrees with probability equal to the Jaccard,
as with ``num_perm`` independent permutations, at 1/``num_perm`` of the hashing. Folding,
word splitting, word hashing (8 UTF-8 bytes at a time) and shingling are vectorised in numpy
over the whole batch, with no Python work per word. The banding parameters come from
datasketch's optimiser, weighted towards recall (a false candidate costs one set intersection);
the band index is numpy (all band keys of a segment in one sorted array, ~0.3 KB a row) rather
than datasketch's ``MinHashLSH``, whose storage holds a Python set per band per row (gigabytes
at a million rows) and costs ~100 µs per insert+query. For the same signatures and bands the
candidates are the same as ``MinHashLSH``'s (tests check this).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tuneops.errors import InvalidInput

SCHEME = "tuneops-oph-dens-v1"  # changes whenever signatures or band keys would change
DEFAULT_THRESHOLD = 0.6
DEFAULT_NUM_PERM = 128
DEFAULT_NGRAM = 5
LSH_WEIGHTS = (0.2, 0.8)  # (false positive, false negative) weights for datasketch's band optimiser
_BATCH = 2048

_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_EMPTY = _U64(1 << 32)  # above any 32-bit bin value: marks an empty OPH bin


# --------------------------------------------------------------------------------------------
# Text of a row, normalisation (reference implementations; the batch path below matches them)
# --------------------------------------------------------------------------------------------

def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style parts: [{"type": "text", "text": "..."}]
        return "\n".join(p.get("text") or "" if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def _messages_text(msgs, roles) -> list[str]:
    if msgs is None:
        return []
    if isinstance(msgs, str):
        return [msgs]
    out = []
    for m in msgs:
        if isinstance(m, Mapping):
            if roles is not None and m.get("role") not in roles:
                continue
            text = _content_text(m.get("content"))
        else:
            text = str(m)
        if text:
            out.append(text)
    return out


def row_text(row: Mapping | str, *, roles: Iterable[str] | None = None) -> str:
    """The text of a canonical row: its message contents (prompt, chosen, rejected for
    preference rows) joined with newlines; ``roles`` keeps only those roles (e.g. leave out a
    system prompt every row shares)."""
    if isinstance(row, str):
        return row
    if not isinstance(row, Mapping):
        raise InvalidInput(f"a row must be a mapping or a string, got {type(row).__name__}")
    roles = set(roles) if roles is not None else None
    if "messages" in row:
        parts = _messages_text(row["messages"], roles)
    elif "chosen" in row or "rejected" in row or "prompt" in row:
        parts = [t for key in ("prompt", "chosen", "rejected") for t in _messages_text(row.get(key), roles)]
    elif "text" in row:
        parts = [_content_text(row["text"])]
    else:
        raise InvalidInput(f"row has neither 'messages' nor 'prompt'/'chosen'/'rejected' (keys: {sorted(row)})",
                           hint="pass canonical rows (see tuneops.data.ingest) or plain strings")
    return "\n".join(parts)


def _fold(text: str) -> str:
    # NFKC then casefold; for ASCII both are plain lower() (and that is the hot path).
    return text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()


_WORD_RE = re.compile(r"[^\W_]+")  # runs of str.isalnum() characters


def words(text: str) -> list[str]:
    """Words as dedup and leakage see them: runs of letters/digits of the folded text."""
    return _WORD_RE.findall(_fold(text))


def normalize_text(text: str, *, strip_punctuation: bool = False) -> str:
    """NFKC, casefold, whitespace runs collapsed to one space (and trimmed); with
    ``strip_punctuation`` only the words, joined by single spaces."""
    if strip_punctuation:
        return " ".join(words(text))
    return " ".join(_fold(text).split())


def exact_hash(text: str, *, strip_punctuation: bool = False) -> str:
    """Hex sha256 of the normalised text: equal for exact duplicates."""
    return hashlib.sha256(normalize_text(text, strip_punctuation=strip_punctuation)
                          .encode("utf-8", "surrogatepass")).hexdigest()


def texts_from_arrow(batch, *, roles: Iterable[str] | None = None) -> list[str]:
    """Row texts of an Arrow RecordBatch/Table of canonical rows (``messages``, or
    ``prompt``/``chosen``/``rejected`` list<struct<role, content>> columns, or a ``text`` column)."""
    import pyarrow as pa

    names = batch.schema.names
    if "messages" in names:
        cols = ["messages"]
    elif any(c in names for c in ("prompt", "chosen", "rejected")):
        cols = [c for c in ("prompt", "chosen", "rejected") if c in names]
    elif "text" in names:
        return [t or "" for t in batch.column("text").to_pylist()]
    else:
        raise InvalidInput(f"Arrow batch has no 'messages', 'prompt'/'chosen'/'rejected' or 'text' column "
                           f"(columns: {names})")
    fast = roles is None and all(
        pa.types.is_list(batch.schema.field(c).type) or pa.types.is_large_list(batch.schema.field(c).type)
        for c in cols)
    if fast:
        for c in cols:
            value_type = batch.schema.field(c).type.value_type
            if not (pa.types.is_struct(value_type) and value_type.get_field_index("content") >= 0
                    and (pa.types.is_string(value_type.field("content").type)
                         or pa.types.is_large_string(value_type.field("content").type))):
                fast = False
    if not fast:
        return [row_text(r, roles=roles) for r in batch.to_pylist()]
    import pyarrow.compute as pc

    per_row: list[list[str]] = [[] for _ in range(batch.num_rows)]
    for c in cols:
        col = batch.column(c)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        contents = col.flatten().field("content").to_pylist()
        pos = 0
        for i, n in enumerate(lengths.tolist()):
            if n:
                per_row[i].extend(t for t in contents[pos:pos + n] if t)
                pos += n
    return ["\n".join(p) for p in per_row]


# --------------------------------------------------------------------------------------------
# Parameters and constants
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MinHashParams:
    """Everything that decides a signature and its band keys; saved with an index."""

    threshold: float = DEFAULT_THRESHOLD  # confirmed Jaccard of shingle sets needed to call a near-duplicate
    num_perm: int = DEFAULT_NUM_PERM  # signature length (OPH bins)
    ngram: int = DEFAULT_NGRAM  # words per shingle
    seed: int = 1  # all hash constants derive from it
    bands: int = 0  # LSH bands (0: chosen by datasketch's optimiser for threshold)
    rows_per_band: int = 0
    strip_punctuation: bool = False  # exact stage: compare words only
    scheme: str = SCHEME

    @classmethod
    def create(cls, threshold: float = DEFAULT_THRESHOLD, *, num_perm: int = DEFAULT_NUM_PERM,
               ngram: int = DEFAULT_NGRAM, seed: int = 1, bands: int | None = None,
               rows_per_band: int | None = None, strip_punctuation: bool = False) -> MinHashParams:
        if not 0.0 < threshold <= 1.0:
            raise InvalidInput(f"near-duplicate threshold must be in (0, 1] (got {threshold})")
        if num_perm < 2 or ngram < 1:
            raise InvalidInput(f"num_perm must be >= 2 and ngram >= 1 (got {num_perm}, {ngram})")
        if bands is None or rows_per_band is None:
            bands, rows_per_band = _lsh_bands(float(threshold), int(num_perm))
        if bands < 1 or rows_per_band < 1 or bands * rows_per_band > num_perm:
            raise InvalidInput(f"bands x rows_per_band must be <= num_perm (got {bands} x {rows_per_band} "
                               f"for {num_perm})")
        return cls(threshold=float(threshold), num_perm=int(num_perm), ngram=int(ngram), seed=int(seed),
                   bands=int(bands), rows_per_band=int(rows_per_band), strip_punctuation=bool(strip_punctuation))

    def candidate_probability(self, jaccard: float) -> float:
        """Chance that a pair with this Jaccard shares at least one band (becomes a candidate)."""
        return 1.0 - (1.0 - jaccard ** self.rows_per_band) ** self.bands


@lru_cache(maxsize=64)
def _lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising datasketch's weighted false positive/negative areas."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, *LSH_WEIGHTS)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (a bijection that mixes every input bit into every output bit)."""
    x = x ^ (x >> _U64(33))
    x *= _U64(0xFF51AFD7ED558CCD)
    x ^= x >> _U64(33)
    x *= _U64(0xC4CEB9FE1A85EC53)
    x ^= x >> _U64(33)
    return x


def _splitmix(seed: int, stream: int, n: int) -> np.ndarray:
    """n deterministic pseudo-random uint64 (independent of numpy's RNG, so stable across versions)."""
    base = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    with np.errstate(over="ignore"):
        x = _U64(base) + np.arange(1, n + 1, dtype=_U64) * _U64(0x9E3779B97F4A7C15)
    return _fmix64(x)


@dataclass(frozen=True)
class _Consts:
    chunk_mul: np.ndarray  # multiplier per 8-byte chunk of a word (odd)
    gram: np.ndarray  # (max(n),) multiplier per position in an n-gram (odd)
    order: np.ndarray  # (K, K): order in which an empty bin looks at the others
    band_mul: np.ndarray  # (r,)
    band_salt: np.ndarray  # (b,)


@lru_cache(maxsize=16)
def _consts(seed: int, num_perm: int, rows_per_band: int, bands: int) -> _Consts:
    k = num_perm
    order = np.argsort(_splitmix(seed, 3, k * k).reshape(k, k), axis=1, kind="stable")
    return _Consts(chunk_mul=_splitmix(seed, 1, _MAX_CHUNKS) | _U64(1),
                   gram=_splitmix(seed, 2, 64) | _U64(1), order=order,
                   band_mul=_splitmix(seed, 4, max(rows_per_band, 1)) | _U64(1),
                   band_salt=_splitmix(seed, 5, max(bands, 1)))


@lru_cache(maxsize=1)
def _bmp_classes() -> tuple[np.ndarray, np.ndarray]:
    """Per BMP code point: whitespace (as str.split sees it), word character (str.isalnum)."""
    chars = [chr(c) for c in range(0x10000)]
    return (np.array([c.isspace() for c in chars], dtype=bool), np.array([c.isalnum() for c in chars], dtype=bool))


def _char_classes(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if cp.dtype == np.uint8:  # ASCII: comparisons (SIMD) beat a table lookup several times over
        u = np.uint8
        is_space = ((cp - u(9)) < 5) | ((cp - u(28)) < 5)  # \t \n \v \f \r, \x1c-\x1f, space
        is_word = ((cp - u(97)) < 26) | ((cp - u(48)) < 10) | ((cp - u(65)) < 26)
        return is_space, is_word
    space, word = _bmp_classes()
    bmp = cp < 0x10000
    if bmp.all():
        return space[cp], word[cp]
    is_space, is_word = np.zeros(cp.shape, dtype=bool), np.zeros(cp.shape, dtype=bool)
    is_space[bmp], is_word[bmp] = space[cp[bmp]], word[cp[bmp]]
    astral = cp[~bmp]
    uniq = _sorted_unique(astral)
    at = np.searchsorted(uniq, astral)
    is_space[~bmp] = np.array([chr(int(c)).isspace() for c in uniq], dtype=bool)[at]
    is_word[~bmp] = np.array([chr(int(c)).isalnum() for c in uniq], dtype=bool)[at]
    return is_space, is_word


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every run of True."""
    change = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    if mask.size and mask[0]:
        change = np.concatenate([[0], change])
    if mask.size and mask[-1]:
        change = np.concatenate([change, [mask.size]])
    return change[0::2], change[1::2]


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # np.unique on integers is hash-based in numpy 2.4 and ~50x slower than sorting here.
    if a.size == 0:
        return a.copy()
    s = np.sort(a)
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


# --------------------------------------------------------------------------------------------
# Batch tokenising (vectorised)
# --------------------------------------------------------------------------------------------

@dataclass
class _Tokens:
    cp: np.ndarray  # folded code points of all rows, each row followed by "\n"
    row_start: np.ndarray  # (n + 1,) offsets of rows in cp (row i: row_start[i] .. row_start[i + 1] - 1)
    is_space: np.ndarray  # (len(cp),) bool
    word_start: np.ndarray  # (W,) positions in cp
    word_end: np.ndarray
    word_row: np.ndarray  # (W,) row of each word
    word_hash: np.ndarray  # (W,) uint64
    row_words: np.ndarray  # (n + 1,) offsets of each row's words

    @property
    def n(self) -> int:
        return len(self.row_start) - 1

    def text(self, start: int, end: int) -> str:
        piece = self.cp[start:end]
        if piece.dtype == np.uint8:
            return piece.tobytes().decode("ascii")
        return piece.tobytes().decode("utf-32-le", "surrogatepass")

    def words_text(self, first_word: int, count: int) -> str:
        return " ".join(self.text(int(self.word_start[w]), int(self.word_end[w]))
                        for w in range(first_word, first_word + count))


_BYTE_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=_U64)
_MAX_CHUNKS = 32  # words longer than 256 UTF-8 bytes: hashed by their first 31 chunks, last chunk and length


def _tokenize(texts: Sequence[str], chunk_mul: np.ndarray) -> _Tokens:
    """Fold every text, find its words (runs of isalnum characters) and hash each word from its
    UTF-8 bytes, 8 at a time, vectorised over the batch: no Python work per word."""
    folded = [_fold(t) for t in texts]
    joined = "\n".join(folded) + "\n"
    if joined.isascii():
        utf8 = joined.encode("ascii") + bytes(8)
        cp = np.frombuffer(utf8, dtype=np.uint8, count=len(joined))
    else:
        cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        utf8 = joined.encode("utf-8", "surrogatepass") + bytes(8)
    lengths = np.fromiter((len(f) + 1 for f in folded), dtype=np.int64, count=len(folded))
    row_start = np.zeros(len(folded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_start[1:])
    is_space, is_word = _char_classes(cp)
    word_start, word_end = _runs(is_word)
    row_words = np.searchsorted(word_start, row_start)
    word_row = np.repeat(np.arange(len(folded)), np.diff(row_words))

    if cp.dtype == np.uint8:
        bstart, bend = word_start, word_end
    else:  # code point offsets -> UTF-8 byte offsets
        extra = (cp >= 0x80).view(np.int8) + (cp >= 0x800).view(np.int8) + (cp >= 0x10000).view(np.int8)
        before = np.zeros(len(cp) + 1, dtype=np.int64)
        np.cumsum(extra, out=before[1:])
        bstart, bend = word_start + before[word_start], word_end + before[word_end]
    blen = bend - bstart
    # Unaligned little-endian 8-byte windows at every byte offset of the buffer.
    windows = np.ndarray(shape=(len(utf8) - 7,), dtype="<u8", buffer=utf8, strides=(1,))
    with np.errstate(over="ignore"):
        acc = (windows[bstart] & _BYTE_MASKS[np.minimum(blen, 8)]) * chunk_mul[0]
        active = np.flatnonzero(blen > 8)
        k = 1
        while active.size and k < _MAX_CHUNKS - 1:
            rem = blen[active] - 8 * k
            acc[active] += (windows[bstart[active] + 8 * k] & _BYTE_MASKS[np.minimum(rem, 8)]) * chunk_mul[k]
            k += 1
            active = active[rem > 8]
        if active.size:
            acc[active] += windows[bend[active] - 8] * chunk_mul[_MAX_CHUNKS - 1]
        word_hash = _fmix64(acc ^ (blen.astype(_U64) * _U64(0x9E3779B97F4A7C15)))
    return _Tokens(cp=cp, row_start=row_start, is_space=is_space, word_start=word_start, word_end=word_end,
                   word_row=word_row, word_hash=word_hash, row_words=row_words)


def _exact_digests(tok: _Tokens, strip_punctuation: bool) -> list[bytes]:
    """sha256 (first 16 bytes) of each row's normalised text, as :func:`normalize_text` gives
    it: built for the whole batch in numpy, then hashed row by row."""
    cp = tok.cp
    if strip_punctuation:  # the words, one space between them
        length = tok.word_end - tok.word_start
        slot_start = np.zeros(len(length) + 1, dtype=np.int64)
        np.cumsum(length + 1, out=slot_start[1:])
        src = np.repeat(tok.word_start - slot_start[:-1], length + 1) + np.arange(slot_start[-1])
        canon = cp[src]  # each word and the character after it, which becomes the space
        canon[slot_start[1:] - 1] = 32
        first, last = slot_start[tok.row_words[:-1]], slot_start[tok.row_words[1:]]
        bounds = np.stack([first, np.maximum(last - 1, first)], axis=1)
    else:  # whitespace runs between two non-space characters of a row -> one space
        ws = tok.is_space
        run_s, _ = _runs(ws)
        # Runs at the start of the buffer or containing a row separator ("\n") are dropped whole.
        has_sep = np.zeros(len(run_s), dtype=bool)
        has_sep[np.searchsorted(run_s, tok.row_start[1:] - 1, side="right") - 1] = True
        spaces = run_s[(run_s > 0) & ~has_sep]
        keep = ~ws
        keep[spaces] = True
        kept = np.flatnonzero(keep)
        canon = cp.copy()
        canon[spaces] = 32
        canon = canon[kept]
        edges = np.searchsorted(kept, tok.row_start)
        bounds = np.stack([edges[:-1], edges[1:]], axis=1)
    sha = hashlib.sha256
    out = []
    if canon.dtype == np.uint8:
        view = memoryview(canon.tobytes())
        for a, b in bounds.tolist():
            out.append(sha(view[a:b]).digest()[:16])
    else:
        raw = canon.tobytes()
        for a, b in bounds.tolist():
            out.append(sha(raw[4 * a:4 * b].decode("utf-32-le", "surrogatepass")
                           .encode("utf-8", "surrogatepass")).digest()[:16])
    return out


def _ngrams(word_hash: np.ndarray, word_row: np.ndarray, n: int, gram: np.ndarray,
            salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-word window that stays inside one row, and the window's first word."""
    w = len(word_hash)
    if w < n:
        return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.int64)
    m = w - n + 1
    acc = word_hash[:m] * gram[0]
    for k in range(1, n):
        acc += word_hash[k:k + m] * gram[k]
    valid = word_row[:m] == word_row[n - 1:]
    starts = np.flatnonzero(valid)
    return _fmix64(acc[starts] ^ _U64(salt)), starts


# --------------------------------------------------------------------------------------------
# MinHash of a batch (the parallel unit)
# --------------------------------------------------------------------------------------------

@dataclass
class MinHashBatch:
    """Signatures and what the serial stage needs, for one batch of rows (picklable, numpy only)."""

    signatures: np.ndarray  # (n, num_perm) uint32
    band_keys: np.ndarray  # (n, bands) uint64
    exact: np.ndarray  # (n,) V16: first 16 bytes of the sha256 of the normalised text
    shingles: np.ndarray  # (S,) uint32 shingle hashes, row by row (not deduplicated)
    shingle_offsets: np.ndarray  # (n + 1,)
    n_words: np.ndarray  # (n,)
    params: MinHashParams  # what they were computed with

    def __len__(self) -> int:
        return len(self.exact)

    def shingle_set(self, i: int) -> np.ndarray:
        """Sorted distinct shingle hashes of row i."""
        return _sorted_unique(self.shingles[self.shingle_offsets[i]:self.shingle_offsets[i + 1]])

    def has_shingles(self) -> np.ndarray:
        return np.diff(self.shingle_offsets) > 0

    def estimate_jaccard(self, i: int, j: int) -> float:
        """MinHash estimate of the Jaccard of rows i and j (the fraction of agreeing bins)."""
        return float(np.mean(self.signatures[i] == self.signatures[j]))


def _as_texts(items, roles=None) -> list[str]:
    if hasattr(items, "schema") and hasattr(items, "num_rows"):
        return texts_from_arrow(items, roles=roles)
    return [row_text(r, roles=roles) for r in items]


def minhash_batch(rows, params: MinHashParams | None = None, *, roles: Iterable[str] | None = None) -> MinHashBatch:
    """MinHash signatures, LSH band keys, exact-duplicate digests and shingles for a batch of
    rows (canonical rows, strings, or an Arrow RecordBatch). Runs anywhere: a worker process,
    a Ray task, a datatrove step; the result is plain numpy."""
    params = params or MinHashParams.create()
    texts = _as_texts(rows, roles)
    n, k, n_gram = len(texts), params.num_perm, params.ngram
    c = _consts(params.seed, k, params.rows_per_band, params.bands)
    tok = _tokenize(texts, c.chunk_mul)
    exact = np.array(_exact_digests(tok, params.strip_punctuation), dtype="V16") if n else np.zeros(0, "V16")

    # Shingles: every n-gram inside a row; a row of 1..n-1 words is one shingle of all its words.
    with np.errstate(over="ignore"):
        sh, starts = _ngrams(tok.word_hash, tok.word_row, n_gram, c.gram, n_gram)
        rows_of = tok.word_row[starts]
        n_words = np.diff(tok.row_words)
        short = np.flatnonzero((n_words > 0) & (n_words < n_gram))
        if short.size:
            first = tok.row_words[short]
            acc = np.zeros(short.size, dtype=_U64)
            for j in range(n_gram - 1):
                take = n_words[short] > j
                acc[take] += tok.word_hash[first[take] + j] * c.gram[j]
            short_sh = _fmix64(acc ^ (n_words[short].astype(_U64) * _U64(0xD6E8FEB86659FD93)))
            rows_of = np.concatenate([rows_of, short])
            sh = np.concatenate([sh, short_sh])
            order = np.argsort(rows_of, kind="stable")
            rows_of, sh = rows_of[order], sh[order]
        counts = np.bincount(rows_of, minlength=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])

        # One-permutation hashing: the high 32 bits choose the bin, the low 32 compete in it.
        bins = ((sh >> _U64(32)) * _U64(k)) >> _U64(32)
        sig = np.full(n * k, _EMPTY, dtype=_U64)
        np.minimum.at(sig, rows_of * k + bins.astype(np.int64), sh & _MASK32)
        sig = sig.reshape(n, k)
        _densify(sig, counts > 0, c.order)
        sig32 = np.minimum(sig, _MASK32).astype(np.uint32)

        # Band keys: each band's r values hashed to 64 bits (a collision only makes a candidate,
        # which the Jaccard check then rejects).
        b, r = params.bands, params.rows_per_band
        bands = sig32[:, :b * r].reshape(n, b, r).astype(_U64)
        band_keys = _fmix64((bands * c.band_mul[None, None, :]).sum(axis=2, dtype=_U64) + c.band_salt[None, :])
    return MinHashBatch(signatures=sig32, band_keys=band_keys, exact=exact,
                        shingles=(sh >> _U64(32)).astype(np.uint32), shingle_offsets=offsets,
                        n_words=n_words.astype(np.int32), params=params)


def _densify(sig: np.ndarray, has_any: np.ndarray, order: np.ndarray) -> None:
    """Optimal densification: an empty bin j takes the value of the non-empty bin that comes
    first in bin j's fixed (seeded) order, so two rows with the same content fill it alike."""
    empty = sig == _EMPTY
    empty &= has_any[:, None]
    er, ej = np.nonzero(empty)
    src = np.empty(len(er), dtype=np.int64)
    todo = np.arange(len(er))
    for t in range(sig.shape[1]):  # ~78 % of bins are non-empty at 200 words: most resolve at t = 0
        if not todo.size:
            break
        c = order[ej[todo], t]
        ok = ~empty[er[todo], c]
        src[todo[ok]] = c[ok]
        todo = todo[~ok]
    sig[er, ej] = sig[er, src]


def _jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 or b.size == 0:
        return 0.0
    idx = np.searchsorted(b, a)
    idx[idx == b.size] = 0
    inter = int(np.count_nonzero(b[idx] == a))
    return inter / (a.size + b.size - inter)


def jaccard(text_a: str, text_b: str, *, ngram: int = DEFAULT_NGRAM, seed: int = 1) -> float:
    """Exact Jaccard of the two texts' shingle sets (what near-duplicate candidates must reach)."""
    mb = minhash_batch([text_a, text_b], MinHashParams.create(num_perm=2, ngram=ngram, seed=seed, bands=1,
                                                              rows_per_band=1))
    return _jaccard_sorted(mb.shingle_set(0), mb.shingle_set(1))


# --------------------------------------------------------------------------------------------
# The index (serial part): exact digests, band keys and shingle sets of kept rows
# --------------------------------------------------------------------------------------------

def _gather_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slices of the given rows, concatenated, and their offsets."""
    counts = (offsets[rows + 1] - offsets[rows]).astype(np.int64)
    out_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=out_offsets[1:])
    starts = np.repeat(offsets[rows] - out_offsets[:-1], counts)
    return values[np.arange(out_offsets[-1]) + starts], out_offsets


def _merge_sorted(ak: np.ndarray, av: np.ndarray, bk: np.ndarray, bv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted key arrays (and their values) in linear time."""
    from_b = np.zeros(len(ak) + len(bk), dtype=bool)
    from_b[np.searchsorted(ak, bk, side="right") + np.arange(len(bk))] = True
    keys, vals = np.empty(from_b.size, dtype=ak.dtype), np.empty(from_b.size, dtype=av.dtype)
    keys[from_b], keys[~from_b] = bk, ak
    vals[from_b], vals[~from_b] = bv, av
    return keys, vals


@dataclass
class _Segment:
    """Rows gid0 .. gid0 + size - 1 of an index: band keys of all bands in one sorted array
    (each band's keys are salted differently), digests sorted, shingle sets row by row."""

    gid0: int
    band_keys: np.ndarray  # (m * bands,) uint64, sorted
    band_rows: np.ndarray  # (m * bands,) int32: local row of each key
    exact: np.ndarray  # (m,) V16, sorted
    exact_rows: np.ndarray  # (m,) int32
    shingles: np.ndarray  # (S,) uint32, row by row
    offsets: np.ndarray  # (m + 1,)

    @property
    def size(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def build(cls, gid0: int, band_keys: np.ndarray, exact: np.ndarray, shingles: np.ndarray,
              offsets: np.ndarray) -> _Segment:
        rows = np.flatnonzero(np.diff(offsets) > 0)  # a row without words has no band keys
        flat = band_keys[rows].ravel()
        order = np.argsort(flat, kind="stable")
        eorder = np.argsort(exact, kind="stable")
        return cls(gid0=gid0, band_keys=flat[order], band_rows=rows[order // band_keys.shape[1]].astype(np.int32),
                   exact=exact[eorder], exact_rows=eorder.astype(np.int32), shingles=shingles, offsets=offsets)

    def select(self, gid0: int, rows: np.ndarray) -> _Segment:
        """A segment of some of these rows (renumbered in the order given), without re-sorting."""
        new = np.full(self.size, -1, dtype=np.int32)
        new[rows] = np.arange(len(rows), dtype=np.int32)
        keep, ekeep = new[self.band_rows] >= 0, new[self.exact_rows] >= 0
        shingles, offsets = _gather_rows(self.shingles, self.offsets, rows)
        return _Segment(gid0, self.band_keys[keep], new[self.band_rows[keep]], self.exact[ekeep],
                        new[self.exact_rows[ekeep]], shingles, offsets)

    def shingle_set(self, local: int) -> np.ndarray:
        return _sorted_unique(self.shingles[self.offsets[local]:self.offsets[local + 1]])


def _merge(a: _Segment, b: _Segment) -> _Segment:
    keys, rows = _merge_sorted(a.band_keys, a.band_rows, b.band_keys, b.band_rows + np.int32(a.size))
    exact, exact_rows = _merge_sorted(a.exact, a.exact_rows, b.exact, b.exact_rows + np.int32(a.size))
    return _Segment(a.gid0, keys, rows, exact, exact_rows, np.concatenate([a.shingles, b.shingles]),
                    np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]))


@dataclass
class _SortedBatchKeys:
    """A batch's band keys (rows with shingles only), flattened and sorted once, for every search."""

    keys: np.ndarray
    rows: np.ndarray  # batch row of each key

    @classmethod
    def of(cls, mb: MinHashBatch) -> _SortedBatchKeys:
        rows = np.flatnonzero(mb.has_shingles())
        flat = mb.band_keys[rows].ravel()
        order = np.argsort(flat, kind="stable")
        return cls(flat[order], rows[order // max(mb.band_keys.shape[1], 1)])


def _range_pairs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For query i with matches at sorted positions lo[i]..hi[i]-1: (query index, position) pairs."""
    counts = hi - lo
    hit = np.flatnonzero(counts > 0)
    if hit.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    c = counts[hit]
    q = np.repeat(hit, c)
    first = np.repeat(lo[hit], c)
    within = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
    return q, first + within


class NearDupIndex:
    """Exact digests, LSH band keys and shingle sets of rows already kept (earlier dataset
    versions, or earlier batches of this run); queried and extended batch by batch. Save it
    with :meth:`to_bytes` / :meth:`save` to deduplicate a new version against earlier ones.
    About 1.1 KB per row of 200 words, most of it the shingle set for exact-Jaccard checks."""

    MAGIC = "tuneops-near-dup-index"
    VERSION = 1

    def __init__(self, params: MinHashParams | None = None, **create_kwargs):
        if params is not None and create_kwargs:
            raise InvalidInput("pass either params or threshold/num_perm/... keywords, not both")
        self.params = params or MinHashParams.create(**create_kwargs)
        self.keys: list = []  # key of each row, by global id
        self._segments: list[_Segment] = []

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"NearDupIndex({len(self)} rows, threshold={self.params.threshold}, scheme={self.params.scheme})"

    # -- building -------------------------------------------------------------------------------
    def add(self, mb: MinHashBatch, keys: Sequence | None = None, rows: Sequence[int] | None = None) -> None:
        """Add rows of a batch (all, or those listed in ``rows``) under ``keys`` (default: global id)."""
        self._check(mb)
        rows = np.arange(len(mb)) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        if keys is None:
            keys = list(range(len(self.keys), len(self.keys) + rows.size))
        keys = list(keys)
        shingles, offsets = _gather_rows(mb.shingles, mb.shingle_offsets, rows)
        self._append(_Segment.build(len(self.keys), mb.band_keys[rows], mb.exact[rows], shingles, offsets), keys)

    def extend(self, other: NearDupIndex, gids: Sequence[int], keys: Sequence) -> None:
        """Add rows ``gids`` of another index with the same parameters, under ``keys``."""
        if other.params != self.params:
            raise InvalidInput("cannot combine indexes built with different parameters")
        gids = np.asarray(gids, dtype=np.int64)
        if gids.size == 0:
            return
        other._compact()
        self._append(other._segments[0].select(len(self.keys), gids), list(keys))

    def _append(self, seg: _Segment, keys: list) -> None:
        if len(keys) != seg.size:
            raise InvalidInput(f"got {len(keys)} keys for {seg.size} rows")
        for key in keys:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise InvalidInput(f"index keys must be strings or integers (got {key!r})")
        self.keys.extend(keys)
        self._segments.append(seg)
        # Keep O(log n) segments: merge while the last is at least half the size of the one before.
        while len(self._segments) > 1 and 2 * self._segments[-1].size >= self._segments[-2].size:
            b = self._segments.pop()
            self._segments[-1] = _merge(self._segments[-1], b)

    def _compact(self) -> None:
        while len(self._segments) > 1:
            b = self._segments.pop()
            self._segments[-1] = _merge(self._segments[-1], b)

    def _check(self, mb: MinHashBatch) -> None:
        if mb.params != self.params:
            raise InvalidInput(f"batch was hashed with {mb.params}, the index uses {self.params}",
                               hint="hash batches with index.params")

    # -- querying -------------------------------------------------------------------------------
    def query_exact(self, mb: MinHashBatch) -> np.ndarray:
        """Global id of an indexed row with the same normalised text, or -1, per row of the batch."""
        out = np.full(len(mb), -1, dtype=np.int64)
        for seg in self._segments:
            pos = np.searchsorted(seg.exact, mb.exact)
            pos[pos == seg.size] = 0
            hit = (seg.exact[pos] == mb.exact) & (out < 0) if seg.size else np.zeros(len(mb), bool)
            out[hit] = seg.gid0 + seg.exact_rows[pos[hit]]
        return out

    def query_candidates(self, mb: MinHashBatch, sorted_keys: _SortedBatchKeys | None = None
                         ) -> dict[int, np.ndarray]:
        """Indexed rows sharing at least one LSH band with each row of the batch (unconfirmed):
        {batch row: global ids}."""
        self._check(mb)
        sk = sorted_keys or _SortedBatchKeys.of(mb)
        qs, gs = [], []
        for seg in self._segments:
            if not seg.size or not sk.keys.size:
                continue
            lo = np.searchsorted(seg.band_keys, sk.keys, side="left")
            hit = np.flatnonzero(seg.band_keys[np.minimum(lo, seg.band_keys.size - 1)] == sk.keys)
            if hit.size:
                hi = np.searchsorted(seg.band_keys, sk.keys[hit], side="right")
                q, p = _range_pairs(lo[hit], hi)
                qs.append(sk.rows[hit[q]])
                gs.append(seg.gid0 + seg.band_rows[p].astype(np.int64))
        if not qs:
            return {}
        pair = _sorted_unique(np.concatenate(qs) * (1 << 32) + np.concatenate(gs))
        q, g = pair >> 32, pair & 0xFFFFFFFF
        split = np.flatnonzero(np.diff(q)) + 1
        return {int(qq[0]): gg for qq, gg in zip(np.split(q, split), np.split(g, split))}

    def shingle_set(self, gid: int) -> np.ndarray:
        for seg in self._segments:
            if seg.gid0 <= gid < seg.gid0 + seg.size:
                return seg.shingle_set(gid - seg.gid0)
        raise IndexError(gid)

    # -- persistence ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The index as bytes (an .npz; no pickle), loadable with :meth:`from_bytes`."""
        self._compact()
        header = {"magic": self.MAGIC, "version": self.VERSION, "params": asdict(self.params), "keys": self.keys}
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        if self._segments:
            seg = self._segments[0]
            arrays.update(band_keys=seg.band_keys, band_rows=seg.band_rows, exact=seg.exact,
                          exact_rows=seg.exact_rows, shingles=seg.shingles, offsets=seg.offsets)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "index") -> NearDupIndex:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                arrays = {k: z[k] for k in z.files if k != "header"}
        except Exception as e:  # noqa: BLE001 - any failure to parse is the same user-facing problem
            raise InvalidInput(f"{where}: not a near-duplicate index ({type(e).__name__}: {e})",
                               hint="rebuild it with NearDupIndex(...).save(path)") from None
        if header.get("magic") != cls.MAGIC or header.get("version") != cls.VERSION:
            raise InvalidInput(f"{where}: not a near-duplicate index of version {cls.VERSION}",
                               hint="rebuild it from the dataset versions it covers")
        params = MinHashParams(**header["params"])
        if params.scheme != SCHEME:
            raise InvalidInput(f"{where}: built with signature scheme {params.scheme}, this tuneops uses {SCHEME}",
                               hint="rebuild the index from the dataset versions it covers")
        index = cls(params)
        index.keys = list(header["keys"])
        if arrays:
            seg = _Segment(gid0=0, band_keys=arrays["band_keys"], band_rows=arrays["band_rows"],
                           exact=arrays["exact"], exact_rows=arrays["exact_rows"], shingles=arrays["shingles"],
                           offsets=arrays["offsets"])
            if seg.size != len(index.keys) or seg.exact.size != seg.size or seg.band_keys.size % params.bands \
                    or seg.band_rows.size != seg.band_keys.size:
                raise InvalidInput(f"{where}: index is inconsistent ({seg.size} rows, {len(index.keys)} keys)",
                                   hint="rebuild it")
            index._segments = [seg]
        return index

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NearDupIndex:
        path = Path(path)
        if not path.is_file():
            from tuneops.errors import NotFound

            raise NotFound(f"{path}: no such index file")
        return cls.from_bytes(path.read_bytes(), where=str(path))


# --------------------------------------------------------------------------------------------
# Dedup: exact, then near (greedy, keep-first), then semantic
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Removal:
    """A row dropped as a duplicate of ``duplicate_of``: a row index of this input, or (when
    ``in_index``) the key of a row in the prior index."""

    index: int
    kind: str  # "exact" | "near" | "semantic"
    duplicate_of: Any
    similarity: float  # 1.0 for exact, confirmed Jaccard for near, cosine for semantic
    in_index: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DedupResult:
    kept: list[int]
    removed: list[Removal]
    n_rows: int
    params: MinHashParams

    @property
    def counts(self) -> dict[str, int]:
        out = {"exact": 0, "near": 0, "semantic": 0}
        for r in self.removed:
            out[r.kind] += 1
        return out

    @property
    def clusters(self) -> dict[Any, list[int]]:
        """Kept row (or prior-index key) -> rows removed in its favour."""
        out: dict[Any, list[int]] = defaultdict(list)
        for r in self.removed:
            out[("index", r.duplicate_of) if r.in_index else r.duplicate_of].append(r.index)
        return dict(out)

    def report(self, examples: int = 5) -> dict:
        """What a data card shows: counts, threshold, and a few examples."""
        return {"rows": self.n_rows, "kept": len(self.kept), "removed": self.counts,
                "threshold": self.params.threshold, "ngram": self.params.ngram, "num_perm": self.params.num_perm,
                "examples": [r.to_dict() for r in self.removed[:examples]]}


class DedupStream:
    """The serial half of :func:`dedup`: feed it hashed batches (:func:`minhash_batch`, computed
    anywhere, e.g. in the worker that also scans for PII) in row order; each call returns the
    rows of that batch to drop. Greedy keep-first, against the prior ``index`` (earlier
    versions) and the rows of this stream kept so far."""

    def __init__(self, params: MinHashParams | None = None, *, index: NearDupIndex | None = None,
                 exact: bool = True, near: bool = True):
        if index is not None and params is not None and params != index.params:
            raise InvalidInput("params differ from the index's", hint="hash batches with index.params")
        self.params = index.params if index is not None else params or MinHashParams.create()
        self.exact, self.near, self.index = exact, near, index
        self.prior = index if index is not None and len(index) else None
        self.local = NearDupIndex(self.params)
        self.local_rows: list[int] = []  # stream row of each local gid
        self.seen_exact: dict[bytes, int] = {}  # digest -> first stream row with it
        self.fate: dict[int, Removal] = {}  # removed stream rows
        self.n_rows = 0

    def add(self, mb: MinHashBatch) -> list[Removal]:
        """Dedup the next batch; row numbers continue from the previous batches."""
        removed = self._run(mb, self.n_rows)
        self.n_rows += len(mb)
        return removed

    def commit(self, keys: Sequence | None = None, exclude: Iterable[int] = ()) -> None:
        """Add the kept rows (less ``exclude``) to the index under ``keys`` (one per stream row;
        default: the row numbers), so later versions are deduplicated against them."""
        if self.index is None:
            raise InvalidInput("this stream has no index to update", hint="pass index=NearDupIndex()")
        if keys is not None and len(keys) != self.n_rows:
            raise InvalidInput(f"got {len(keys)} keys for {self.n_rows} rows")
        exclude = set(exclude)
        gids = [g for g, row in enumerate(self.local_rows) if row not in exclude]
        self.index.extend(self.local, gids, [keys[self.local_rows[g]] if keys is not None else self.local_rows[g]
                                             for g in gids])

    def _run(self, mb: MinHashBatch, offset: int) -> list[Removal]:
        self.local._check(mb)
        n, thr = len(mb), self.params.threshold
        has = mb.has_shingles()
        involved: set[int] = set()
        prior_exact = np.full(n, -1)
        exact_first: dict[int, int] = {}  # batch row -> first call row with the same digest
        if self.exact:
            if self.prior is not None:
                prior_exact = self.prior.query_exact(mb)
                involved.update(np.flatnonzero(prior_exact >= 0).tolist())
            for i, d in enumerate(mb.exact.tolist()):
                first = self.seen_exact.setdefault(d, offset + i)
                if first != offset + i:
                    exact_first[i] = first
            involved.update(exact_first)
        cand_prior, cand_local, buckets = {}, {}, {}
        if self.near:
            sk = _SortedBatchKeys.of(mb)
            if self.prior is not None:
                cand_prior = self.prior.query_candidates(mb, sk)
            if len(self.local):
                cand_local = self.local.query_candidates(mb, sk)
            buckets = _shared_buckets(sk)
            involved.update(cand_prior, cand_local, buckets)

        sets: dict[int, np.ndarray] = {}

        def my_set(i: int) -> np.ndarray:
            if i not in sets:
                sets[i] = mb.shingle_set(i)
            return sets[i]

        kept_in_bucket: dict[int, list[int]] = defaultdict(list)
        removed: list[Removal] = []
        kept = np.ones(n, dtype=bool)
        for i in sorted(involved):
            row, r = offset + i, None
            if prior_exact[i] >= 0:
                r = Removal(row, "exact", self.prior.keys[int(prior_exact[i])], 1.0, in_index=True)
            elif i in exact_first:
                first = exact_first[i]
                inherited = self.fate.get(first)  # the first copy was itself removed: same verdict
                r = Removal(row, "exact", first, 1.0) if inherited is None else \
                    Removal(row, inherited.kind, inherited.duplicate_of, inherited.similarity, inherited.in_index)
            elif self.near and has[i]:
                best = None  # (jaccard, in prior index, reference)
                for index, cands, is_prior in ((self.prior, cand_prior.get(i), True),
                                               (self.local, cand_local.get(i), False)):
                    for g in (cands.tolist() if cands is not None else ()):
                        sim = _jaccard_sorted(my_set(i), index.shingle_set(g))
                        if sim >= thr and (best is None or sim > best[0]):
                            best = (sim, is_prior, index.keys[g] if is_prior else self.local_rows[g])
                for j in sorted({j for bkt in buckets.get(i, ()) for j in kept_in_bucket[bkt]}):
                    sim = _jaccard_sorted(my_set(i), my_set(j))
                    if sim >= thr and (best is None or sim > best[0]):  # ties: the earliest row wins
                        best = (sim, False, offset + j)
                if best is not None:
                    r = Removal(row, "near", best[2], round(best[0], 4), in_index=best[1])
            if r is None:
                for bkt in buckets.get(i, ()):
                    kept_in_bucket[bkt].append(i)
            else:
                kept[i] = False
                removed.append(r)
                self.fate[row] = r
        keep = np.flatnonzero(kept)
        self.local.add(mb, rows=keep)
        self.local_rows.extend((offset + keep).tolist())
        return removed


def _shared_buckets(sk: _SortedBatchKeys) -> dict[int, list[int]]:
    """Rows of one batch that share a band key with another row of it: {row: [bucket ids]}."""
    same = sk.keys[1:] == sk.keys[:-1]
    if not same.any():
        return {}
    in_group = np.zeros(sk.keys.size, dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    group_id = np.cumsum(np.concatenate([[True], ~same]))
    members = np.flatnonzero(in_group)
    out: dict[int, list[int]] = defaultdict(list)
    for r, g in zip(sk.rows[members].tolist(), group_id[members].tolist()):
        out[r].append(g)
    return out


def _batches(items, size: int) -> Iterator:
    if hasattr(items, "schema") and hasattr(items, "num_rows"):  # Arrow Table / RecordBatch
        for start in range(0, items.num_rows, size):
            yield items.slice(start, size)
        return
    items = list(items) if not isinstance(items, Sequence) else items
    for start in range(0, len(items), size):
        yield items[start:start + size]


_FORKED_ROWS: Sequence | None = None  # rows a forked worker inherits instead of receiving them pickled


def _minhash_job(args) -> MinHashBatch:
    items, params, roles = args
    if isinstance(items, range):
        items = _FORKED_ROWS[items.start:items.stop]
    return minhash_batch(items, params, roles=roles)


def iter_minhash(rows, params: MinHashParams, *, processes: int = 1, batch_size: int = _BATCH,
                 roles: Iterable[str] | None = None) -> Iterator[MinHashBatch]:
    """Hash rows batch by batch, in order; with ``processes`` > 1 in worker processes (forked
    where the platform allows, so a list of rows is inherited rather than pickled to them)."""
    roles = tuple(roles) if roles is not None else None
    if processes <= 1:
        for batch in _batches(rows, batch_size):
            yield minhash_batch(batch, params, roles=roles)
        return
    global _FORKED_ROWS
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    fork = "fork" in mp.get_all_start_methods()
    if fork and isinstance(rows, Sequence):
        _FORKED_ROWS = rows
        jobs = ((range(s, min(s + batch_size, len(rows))), params, roles) for s in range(0, len(rows), batch_size))
    else:
        jobs = ((b, params, roles) for b in _batches(rows, batch_size))
    try:
        with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("fork") if fork else None) as pool:
            pending = []
            for job in jobs:
                pending.append(pool.submit(_minhash_job, job))
                if len(pending) > 2 * processes:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()
    finally:
        _FORKED_ROWS = None


def dedup(rows, *, threshold: float | None = None, exact: bool = True, near: bool = True,
          semantic: bool = False, semantic_threshold: float = 0.95, index: NearDupIndex | None = None,
          update_index: bool = False, keys: Sequence | None = None, strip_punctuation: bool | None = None,
          roles: Iterable[str] | None = None, num_perm: int | None = None, ngram: int | None = None,
          processes: int = 1, batch_size: int = _BATCH,
          embed_fn: Callable[[list[str]], np.ndarray] | None = None) -> DedupResult:
    """Drop exact, near- and (optionally) semantic duplicates, keeping the first row of each
    group in input order; rows matching ``index`` (earlier versions) are dropped too.

    ``rows``: canonical rows, strings, or an Arrow Table/RecordBatch. With ``index``, its own
    parameters apply (passing different ones is an error); with ``update_index`` the kept rows
    are added to it under ``keys`` (default: their row numbers). ``processes`` > 1 hashes
    batches in worker processes while this one runs the (serial) index."""
    asked = {"threshold": threshold, "num_perm": num_perm, "ngram": ngram, "strip_punctuation": strip_punctuation}
    if index is not None:
        params = index.params
        clash = {k: v for k, v in asked.items() if v is not None and v != getattr(params, k)}
        if clash:
            raise InvalidInput(f"{', '.join(clash)} differ from the index's "
                               f"({', '.join(f'{k}={getattr(params, k)}' for k in clash)})",
                               hint="leave them out: the index's own parameters are used")
    else:
        params = MinHashParams.create(DEFAULT_THRESHOLD if threshold is None else threshold,
                                      num_perm=num_perm or DEFAULT_NUM_PERM, ngram=ngram or DEFAULT_NGRAM,
                                      strip_punctuation=bool(strip_punctuation))
    if semantic and not 0 < semantic_threshold <= 1:
        raise InvalidInput(f"semantic_threshold must be in (0, 1] (got {semantic_threshold})")
    if update_index and index is None:
        raise InvalidInput("update_index needs an index to update", hint="pass index=NearDupIndex()")
    if semantic and not isinstance(rows, Sequence) and not hasattr(rows, "num_rows"):
        rows = list(rows)  # read twice: hashing, then embedding the survivors
    stream = DedupStream(params, index=index, exact=exact, near=near)
    removed: list[Removal] = []
    for mb in iter_minhash(rows, params, processes=processes, batch_size=batch_size, roles=roles):
        removed.extend(stream.add(mb))
    n = stream.n_rows
    if semantic:
        gone = {r.index for r in removed}
        survivors = [i for i in range(n) if i not in gone]
        for pos, (kept_pos, cos) in _semantic_dedup(_texts_at(rows, survivors, roles), semantic_threshold,
                                                    embed_fn).items():
            removed.append(Removal(survivors[pos], "semantic", survivors[kept_pos], round(cos, 4)))
        removed.sort(key=lambda r: r.index)
    gone = {r.index for r in removed}
    if update_index:
        stream.commit(keys, exclude=gone)
    return DedupResult(kept=[i for i in range(n) if i not in gone], removed=removed, n_rows=n, params=params)


def _texts_at(rows, positions: list[int], roles) -> list[str]:
    if hasattr(rows, "schema") and hasattr(rows, "num_rows"):
        texts = texts_from_arrow(rows, roles=roles)
        return [texts[i] for i in positions]
    rows = rows if isinstance(rows, Sequence) else list(rows)
    return [row_text(rows[i], roles=roles) for i in positions]


def _semantic_dedup(texts: list[str], threshold: float, embed_fn=None,
                    block: int = 512) -> dict[int, tuple[int, float]]:
    """Greedy keep-first by cosine similarity of embeddings: {removed position: (kept position, cosine)}."""
    if not texts:
        return {}
    if embed_fn is None:
        from tuneops.models.embedder import embed as embed_fn
    vecs = np.asarray(embed_fn(texts), dtype=np.float32)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    kept_ids: list[int] = []
    kept_vecs = np.zeros((0, vecs.shape[1]), dtype=np.float32)
    out = {}
    for s in range(0, len(texts), block):
        blk = vecs[s:s + block]
        prev = blk @ kept_vecs.T if kept_vecs.size else np.zeros((len(blk), 0), np.float32)
        inner = blk @ blk.T
        new_kept = []
        for i in range(len(blk)):
            best_j, best = -1, -1.0
            if prev.shape[1]:
                j = int(prev[i].argmax())
                best_j, best = kept_ids[j], float(prev[i, j])
            for k in new_kept:
                if inner[i, k] > best:
                    best_j, best = s + k, float(inner[i, k])
            if best >= threshold:
                out[s + i] = (best_j, best)
            else:
                new_kept.append(i)
        kept_ids.extend(s + k for k in new_kept)
        kept_vecs = np.concatenate([kept_vecs, blk[new_kept]])
    return out


def matches_in_index(rows, index: NearDupIndex, *, roles: Iterable[str] | None = None, processes: int = 1,
                     batch_size: int = _BATCH) -> list[Removal]:
    """Rows that duplicate a row of ``index`` (earlier versions): the same normalised text, or a
    near-duplicate (confirmed Jaccard >= the index's threshold), each as a :class:`Removal` naming
    the indexed row's key (``in_index``; the most similar one). Rows are not compared with each
    other and the index is not changed: :func:`dedup` does that part."""
    found: list[Removal] = []
    if not len(index):
        return found
    thr, offset = index.params.threshold, 0
    for mb in iter_minhash(rows, index.params, processes=processes, batch_size=batch_size, roles=roles):
        exact = index.query_exact(mb)
        candidates = index.query_candidates(mb)
        has = mb.has_shingles()
        for i in sorted(set(np.flatnonzero(exact >= 0).tolist()) | set(candidates)):
            if exact[i] >= 0:
                found.append(Removal(offset + i, "exact", index.keys[int(exact[i])], 1.0, in_index=True))
                continue
            if not has[i]:
                continue
            mine, best = mb.shingle_set(i), None
            for g in candidates[i].tolist():
                sim = _jaccard_sorted(mine, index.shingle_set(g))
                if sim >= thr and (best is None or sim > best[0]):
                    best = (sim, g)
            if best is not None:
                found.append(Removal(offset + i, "near", index.keys[best[1]], round(best[0], 4), in_index=True))
        offset += len(mb)
    return found


# --------------------------------------------------------------------------------------------
# Clusters (for splits): connected components of near-duplicate pairs
# --------------------------------------------------------------------------------------------

def near_duplicate_clusters(rows, *, threshold: float = DEFAULT_THRESHOLD, ngram: int = DEFAULT_NGRAM,
                            num_perm: int = DEFAULT_NUM_PERM, roles: Iterable[str] | None = None,
                            processes: int = 1, batch_size: int = _BATCH) -> np.ndarray:
    """Cluster label per row (the index of the cluster's first row): rows linked by exact or
    confirmed near-duplicate pairs, transitively, share a label. Unlike :func:`dedup`, every
    pair counts, not only pairs with a kept row, so no two near-duplicates get different labels."""
    return _clusters(rows, MinHashParams.create(threshold, num_perm=num_perm, ngram=ngram), roles, processes,
                     batch_size)[0]


def _clusters(rows, params: MinHashParams, roles=None, processes: int = 1,
              batch_size: int = _BATCH) -> tuple[np.ndarray, list[bytes]]:
    parent: list[int] = []
    digests: list[bytes] = []
    first: dict[bytes, int] = {}
    index = NearDupIndex(params)  # every row, keyed by its row number

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    offset = 0
    for mb in iter_minhash(rows, params, processes=processes, batch_size=batch_size, roles=roles):
        n = len(mb)
        parent.extend(range(offset, offset + n))
        batch_digests = mb.exact.tolist()
        digests.extend(batch_digests)
        for i, d in enumerate(batch_digests):
            f = first.setdefault(d, offset + i)
            if f != offset + i:
                union(f, offset + i)
        sets: dict[int, np.ndarray] = {}

        def my_set(i: int) -> np.ndarray:
            if i not in sets:
                sets[i] = mb.shingle_set(i)
            return sets[i]

        sk = _SortedBatchKeys.of(mb)
        for i, gids in (index.query_candidates(mb, sk) if len(index) else {}).items():
            for g in gids.tolist():
                if find(offset + i) != find(g) and _jaccard_sorted(my_set(i), index.shingle_set(g)) >= params.threshold:
                    union(offset + i, g)
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for r, bkts in sorted(_shared_buckets(sk).items()):
            for g in bkts:
                by_bucket[g].append(r)
        for members in by_bucket.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    a, b = members[x], members[y]
                    if find(offset + a) != find(offset + b) and \
                            _jaccard_sorted(my_set(a), my_set(b)) >= params.threshold:
                        union(offset + a, offset + b)
        index.add(mb)
        offset += n
    return np.array([find(i) for i in range(offset)], dtype=np.int64), digests


def exact_digests(rows, *, strip_punctuation: bool = False, roles: Iterable[str] | None = None,
                  batch_size: int = _BATCH) -> list[bytes]:
    """First 16 bytes of :func:`exact_hash` for every row, computed batch-wise (fast)."""
    out: list[bytes] = []
    for batch in _batches(rows, batch_size):
        out.extend(_exact_digests(_tokenize(_as_texts(batch, roles), _consts(1, 2, 1, 1).chunk_mul),
                                  strip_punctuation))
    return out


# --------------------------------------------------------------------------------------------
# Train/eval leakage
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leak:
    """A training row that contains (part of) an eval item."""

    train_index: int
    eval_index: int
    kind: str  # "ngram" (shares a word n-gram), "exact" (same normalised text), "near_duplicate"
    evidence: str  # the first shared n-gram, or the matching training text (truncated)
    shared_ngrams: int = 0  # how many of the training row's n-grams occur in the eval item
    similarity: float | None = None  # Jaccard of 5-gram shingles, when near-duplicate

    def to_dict(self) -> dict:
        return asdict(self)


def find_leakage(train_rows, eval_texts, n: int = 13, *, threshold: float = DEFAULT_THRESHOLD,
                 near_duplicates: bool = True, roles: Iterable[str] | None = None,
                 batch_size: int = _BATCH) -> list[Leak]:
    """Training rows that leak eval items, as datatrove's and Dolma's benchmark decontamination
    does: any shared word ``n``-gram (13 by default) of the normalised text. Eval items shorter
    than ``n`` words cannot share an n-gram; for them (and for every item, with
    ``near_duplicates``) a near-duplicate check by MinHash + exact Jaccard ≥ ``threshold``
    against each training row's text and, for short items, each of its messages."""
    if not 1 <= n <= 64:
        raise InvalidInput(f"leakage n-gram size must be in 1..64 (got {n})")
    eval_list = [row_text(e, roles=roles) for e in eval_texts]
    params = MinHashParams.create(threshold)
    c = _consts(params.seed, params.num_perm, params.rows_per_band, params.bands)
    # Eval n-gram table: sorted hashes -> eval item.
    etok = _tokenize(eval_list, c.chunk_mul)
    with np.errstate(over="ignore"):
        egrams, estarts = _ngrams(etok.word_hash, etok.word_row, n, c.gram, 1000 + n)
    eorder = np.argsort(egrams, kind="stable")
    egrams, eitem = egrams[eorder], etok.word_row[estarts[eorder]]
    e_words = np.diff(etok.row_words)
    short_eval = np.flatnonzero(e_words < n)

    eindex = None
    if near_duplicates or short_eval.size:
        eindex = NearDupIndex(params)
        indexed = np.arange(len(eval_list)) if near_duplicates else short_eval
        eindex.add(minhash_batch(eval_list, params), keys=indexed.tolist(), rows=indexed)
    found: dict[tuple[int, int], Leak] = {}
    train_iter = _batches(train_rows, batch_size)
    offset = 0
    for batch in train_iter:
        texts = _as_texts(batch, roles)
        tok = _tokenize(texts, c.chunk_mul)
        with np.errstate(over="ignore"):
            grams, starts = _ngrams(tok.word_hash, tok.word_row, n, c.gram, 1000 + n)
        if egrams.size and grams.size:
            lo = np.searchsorted(egrams, grams, side="left")
            hi = np.searchsorted(egrams, grams, side="right")
            q, p = _range_pairs(lo, hi)
            if q.size:
                trow = tok.word_row[starts[q]]
                pair = trow.astype(np.int64) * (1 << 32) + eitem[p]
                order = np.argsort(pair, kind="stable")
                pair, qo = pair[order], q[order]
                split = np.flatnonzero(np.diff(pair)) + 1
                for chunk_pairs, chunk_q in zip(np.split(pair, split), np.split(qo, split)):
                    tr, ev = int(chunk_pairs[0] >> 32), int(chunk_pairs[0] & 0xFFFFFFFF)
                    first_word = int(starts[chunk_q.min()])
                    found[(offset + tr, ev)] = Leak(offset + tr, ev, "ngram", tok.words_text(first_word, n),
                                                    shared_ngrams=int(chunk_q.size))
        if eindex is not None:
            units, unit_row = list(texts), list(range(len(texts)))
            if short_eval.size:
                for i, row in enumerate(batch if not hasattr(batch, "num_rows") else batch.to_pylist()):
                    if isinstance(row, Mapping):
                        msgs = [m for key in ("messages", "prompt", "chosen", "rejected")
                                for m in _messages_text(row.get(key), set(roles) if roles else None)]
                        if len(msgs) > 1:
                            units.extend(msgs)
                            unit_row.extend([i] * len(msgs))
            _near_leaks(eindex, minhash_batch(units, params), units, unit_row, offset, found, threshold)
        offset += len(texts)
    return sorted(found.values(), key=lambda x: (x.train_index, x.eval_index))


def _near_leaks(eindex: NearDupIndex, mb: MinHashBatch, units: list[str], unit_row: list[int], offset: int,
                found: dict, threshold: float) -> None:
    exact = eindex.query_exact(mb)
    for u in np.flatnonzero(exact >= 0).tolist():
        key = (offset + unit_row[u], int(eindex.keys[int(exact[u])]))
        if key not in found:
            found[key] = Leak(key[0], key[1], "exact", units[u][:200], similarity=1.0)
    for u, gids in eindex.query_candidates(mb).items():
        mine = mb.shingle_set(u)
        for g in gids.tolist():
            key = (offset + unit_row[u], int(eindex.keys[g]))
            s = _jaccard_sorted(mine, eindex.shingle_set(g))
            if s < threshold:
                continue
            old = found.get(key)
            if old is None:
                found[key] = Leak(key[0], key[1], "near_duplicate", units[u][:200], similarity=round(s, 4))
            elif old.similarity is None or s > old.similarity:
                found[key] = Leak(old.train_index, old.eval_index, old.kind, old.evidence, old.shared_ngrams,
                                  round(s, 4))
