"""Suite mechanics on synthetic items: splits, caps, length checks, labelling, storage."""

import json
import warnings

import pytest

from kvstate.data.schema import Item, Suite, assign_splits, cap, read_suite, write_suite


def _suite(n_groups=40, per_group=3, length_is_label=False, label=None):
    items = []
    for g in range(n_groups):
        lab = (g % 2) if label is None else label
        for j in range(per_group):
            text = ("x" * (50 + 10 * j + 400 * lab)) if length_is_label else f"q{g} {j}"
            items.append(Item(f"i{g}-{j}", f"g{g}", [{"role": "user", "content": text}], None,
                              lab, "synthetic", meta={"k": j}))
    return Suite("synthetic", items, [{"package": "none"}], "synthetic suite")


def test_groups_never_cross_splits():
    items = assign_splits(_suite().items, seed=3)
    by_group = {}
    for it in items:
        by_group.setdefault(it.group, set()).add(it.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert {it.split for it in items} == {"train", "test"}


def test_split_fraction_is_30_percent_of_groups():
    items = _suite(n_groups=20).items
    for seed in range(3):
        test_groups = {it.group for it in assign_splits(items, seed) if it.split == "test"}
        assert len(test_groups) == 6
    a = [it.split for it in assign_splits(items, 0)]
    assert a == [it.split for it in assign_splits(items, 0)]
    assert a != [it.split for it in assign_splits(items, 1)]


def test_cap_keeps_whole_groups_and_both_classes():
    items = _suite().items
    for seed in range(5):
        kept = cap(items, 20, seed)
        assert len(kept) <= 20
        assert {it.label for it in kept} == {0, 1}
        groups = {it.group for it in kept}
        assert all(sum(it.group == g for it in items) == sum(it.group == g for it in kept)
                   for g in groups)
    assert [i.id for i in cap(items, 20, 1)] == [i.id for i in cap(items, 20, 1)]
    assert [i.id for i in cap(items, 20, 1)] != [i.id for i in cap(items, 20, 2)]
    with pytest.raises(ValueError, match="smallest group"):
        cap(items, 2, 0)


def test_length_warning_when_label_is_length():
    suite = _suite(length_is_label=True)
    with pytest.warns(UserWarning, match="length alone"):
        auc = suite.length_auroc()
    assert auc == 1.0
    with pytest.warns(UserWarning):
        assert suite.length_auroc(lambda it: len(it.messages[0]["content"])) == 1.0


def test_no_length_warning_when_lengths_match():
    suite = _suite()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert suite.length_auroc() < 0.7


def test_length_matched_balances_bins():
    items = []
    for i in range(200):  # label 1 tends to be longer, but the ranges overlap
        lab = i % 2
        items.append(Item(f"i{i}", f"g{i}", [{"role": "user", "content": "x"}], None, lab, "s"))
    lengths = {f"i{i}": (i % 50) + 30 * (i % 2) for i in range(200)}
    suite = Suite("s", items, [])
    with pytest.warns(UserWarning):
        assert suite.length_auroc(lengths) > 0.7
    matched = suite.length_matched(lengths, seed=0)
    counts = matched.label_counts()
    assert counts[0] == counts[1] > 0
    assert matched.length_auroc(lengths) < 0.7
    assert [i.id for i in suite.length_matched(lengths, seed=0).items] == \
        [i.id for i in matched.items]


def test_label_with_applies_checker():
    items = [Item(f"i{k}", f"g{k}", [{"role": "user", "content": "q"}], None, -1, "s",
                  meta={"answers": ["Paris"]}) for k in range(2)]
    suite = Suite("cb", items, [], generation={"checker": "answer_match"})
    out = suite.label_with({"i0": "It is Paris.", "i1": "Lyon."})
    assert [it.label for it in out.items] == [0, 1]
    assert out.items[1].response == "Lyon." and out.generation is None
    with pytest.raises(ValueError, match="no reply"):
        suite.label_with({"i0": "Paris"})
    with pytest.warns(UserWarning, match="one class"):
        assert len(suite.label_with({"i0": "Paris"}, strict=False)) == 1
    fixed = Suite("dec", [Item("d", "d", [], None, 1, "s", meta={"answers": ["Paris"]})], [],
                  generation={"checker": "answer_match"})
    with pytest.warns(UserWarning):
        out = fixed.label_with({"d": "Rome"})
    assert out.items[0].label == 1 and out.items[0].meta["check"] is True


def test_parquet_roundtrip_is_json_not_pickle(tmp_path):
    suite = _suite(n_groups=4)
    suite.generation = {"checker": "rule"}
    path = tmp_path / "s.parquet"
    write_suite(suite, path)
    assert not list(tmp_path.glob("*.tmp"))
    back = read_suite(path)
    assert back == suite
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["provenance"] == suite.provenance
    assert back.to_frame().shape == (12, 8)
