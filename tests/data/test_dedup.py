"""Near-duplicates across sources: planted edits are found, unrelated prompts are not."""

import random
import time

import numpy as np
import pytest

from kvstate.data.dedup import duplicated_items, near_duplicates, normalise, overlap_report

LONG = ("Explain in detail how a small bakery can plan its weekly production so that fresh bread, "
        "pastries and cakes are ready every morning without wasting flour or staying open late")


def _brute(sources, threshold, n):
    """Independent Jaccard: Python sets of character n-grams, every cross-source pair."""
    def grams(t):
        t = normalise(t)
        t = t if len(t) >= n else t.ljust(n, "\0")
        return {t[i:i + n] for i in range(len(t) - n + 1)}
    names, out = list(sources), set()
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            for i, ta in enumerate(sources[names[a]]):
                for j, tb in enumerate(sources[names[b]]):
                    ga, gb = grams(ta), grams(tb)
                    jac = len(ga & gb) / len(ga | gb)
                    if jac >= threshold:
                        out.add((names[a], i, names[b], j, round(jac, 9)))
    return out


def test_planted_one_word_edit_is_found_and_unrelated_is_not():
    edited = LONG.replace("weekly", "daily")
    pairs = near_duplicates({"a": [LONG, "How do I change a bicycle tyre?"],
                             "b": ["Write a poem about the sea at night.", edited.upper() + "!!"]})
    assert pairs[["source_a", "index_a", "source_b", "index_b"]].values.tolist() == [["a", 0, "b", 1]]
    assert 0.8 <= pairs.jaccard[0] < 1


def test_same_source_pairs_are_not_reported_and_copies_score_1():
    pairs = near_duplicates({"a": [LONG, LONG], "b": ["Hello there, friend."], "c": [LONG.lower() + " ."]})
    assert set(zip(pairs.source_a, pairs.source_b)) == {("a", "c")}
    assert np.allclose(pairs.jaccard, 1.0) and sorted(pairs.index_a) == [0, 1]


def test_matches_a_brute_force_jaccard():
    rng = random.Random(0)
    words = "make a cake bread fast".split()
    sources = {s: [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(40)]
               for s in ("x", "y", "z")}
    for thr in (0.3, 0.8):
        got = {(r.source_a, r.index_a, r.source_b, r.index_b, round(r.jaccard, 9))
               for r in near_duplicates(sources, thr, n=4).itertuples()}
        assert got == _brute(sources, thr, 4) and got


def test_overlap_report_counts_pairs_and_items():
    pairs = near_duplicates({"a": [LONG, LONG + " today"], "b": [LONG], "c": ["unrelated words here"]})
    rep = overlap_report(pairs)
    row = rep.iloc[0]
    assert (row.source_a, row.source_b, row.pairs, row.items_a, row.items_b) == ("a", "b", 2, 2, 1)
    assert len(rep) == 1 and overlap_report(pairs.iloc[:0]).empty


def test_duplicated_items_of_a_test_source_on_either_side():
    other = "Write a poem about the sea at night and the stars above the quiet harbour"
    pairs = near_duplicates({"train1": [other, LONG], "test": ["unrelated", LONG + ".", other], "train2": [other]})
    assert duplicated_items(pairs, "test", ["train1"]) == [1, 2]
    assert duplicated_items(pairs, "test", ["train2"]) == [2]  # test is source_a here
    assert duplicated_items(pairs, "test", []) == [] and duplicated_items(pairs, "train2", ["test"]) == [0]


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates({"a": ["x"], "b": ["y"]}, threshold=0)


def test_fast_for_10k_texts():
    rng = random.Random(1)
    vocab = [f"w{k}" for k in range(3000)] + ["how", "to", "the", "a", "make", "write"] * 50
    sources = {f"s{k}": [" ".join(rng.choices(vocab, k=rng.randint(6, 25))) for _ in range(2000)] for k in range(5)}
    sources["s4"][7] = sources["s0"][3]
    t0 = time.perf_counter()
    pairs = near_duplicates(sources)
    assert time.perf_counter() - t0 < 60
    assert ("s0", 3, "s4", 7) in set(zip(pairs.source_a, pairs.index_a, pairs.source_b, pairs.index_b))
