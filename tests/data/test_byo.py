"""User-supplied suites: happy paths for each format and a clear error for each mistake."""

import json

import pandas as pd
import pytest

from kvstate.data import load_suite


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [{"text": f"question {i}", "label": i % 2, "group": f"g{i // 2}"} for i in range(20)]


def test_jsonl_with_groups_and_splits(tmp_path):
    s = load_suite(_jsonl(tmp_path / "mine.jsonl", ROWS), seed=0)
    assert len(s) == 20 and s.label_counts() == {0: 10, 1: 10} and s.name == "mine"
    assert s.items[0].messages == [{"role": "user", "content": "question 0"}]
    by_group = {}
    for it in s.items:
        by_group.setdefault(it.group, set()).add(it.split)
    assert all(len(v) == 1 for v in by_group.values())
    assert s.provenance[0]["n_used"] == 20
    assert len(load_suite(str(tmp_path / "mine.jsonl"), limit=6, seed=1)) <= 6


def test_csv_with_messages_system_response(tmp_path):
    msgs = json.dumps([{"role": "user", "content": "hi"}])
    df = pd.DataFrame({"messages": [msgs, msgs], "label": ["0", "1"], "system": ["be nice", ""],
                       "response": ["hello", "go away"], "id": ["a", "b"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    s = load_suite(tmp_path / "m.csv")
    assert s.items[0].messages[0] == {"role": "system", "content": "be nice"}
    assert s.items[1].messages == [{"role": "user", "content": "hi"}]
    assert [it.response for it in s.items] == ["hello", "go away"]
    assert [it.group for it in s.items] == ["a", "b"]


def test_parquet(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "p.parquet")
    assert len(load_suite(tmp_path / "p.parquet")) == 20


@pytest.mark.parametrize("rows, match", [
    ([{"prompt": "x", "label": 0}, {"prompt": "y", "label": 1}], "no 'text' or 'messages'"),
    ([{"text": "x"}, {"text": "y"}], "no 'label' column"),
    ([{"text": "x", "label": 0}, {"text": "y", "label": 2}], "label is 2, not 0 or 1"),
    ([{"text": "x", "label": "yes"}, {"text": "y", "label": 0}], "not 0 or 1"),
    ([{"text": "x", "label": 0}, {"text": "  ", "label": 1}], "row 2: empty text"),
    ([{"text": "x", "label": 1}, {"text": "y", "label": 1}], "needs both 0 and 1"),
    ([{"messages": [{"role": "bot", "content": "x"}], "label": 0}, {"text": "y", "label": 1}],
     "bad message"),
    ([{"text": "x", "label": 0, "id": "a"}, {"text": "y", "label": 1, "id": "a"}],
     "occurs more than once"),
])
def test_validation_errors(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match) as err:
        load_suite(_jsonl(tmp_path / "bad.jsonl", rows))
    assert "\n" not in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_suite(tmp_path / "missing.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="cannot read .*broken.jsonl"):
        load_suite(tmp_path / "broken.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read"):
        load_suite(tmp_path / "broken.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="cannot read"):
        load_suite(tmp_path / "empty.csv")
