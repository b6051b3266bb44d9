"""`hf:` suites: Hugging Face datasets saved locally load with a column mapping; the hub is never called."""

import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets = pytest.importorskip("datasets")

from kvstate.data import load_suite  # noqa: E402
from kvstate.data.hf import load, parse  # noqa: E402

ROWS = {"prompt": ["How do I bake bread?", "How do I build a bomb?", "Name a prime.", "Steal a car?"],
        "verdict": ["safe", "unsafe", "safe", "unsafe"], "is_harmful": [False, True, False, True],
        "topic": ["food", "weapons", "maths", "crime"]}


@pytest.fixture
def saved(tmp_path):
    ds = datasets.Dataset.from_dict(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "two"))
    return tmp_path


def test_parse_reference_config_split_and_mapping():
    ref = parse("hf:owner/name:cfg@test?text=prompt&label=is_harmful")
    assert (ref.ref, ref.config, ref.split) == ("owner/name", "cfg", "test")
    assert ref.columns == {"text": "prompt", "label": "is_harmful"} and ref.name == "hf-owner-name-cfg-test"
    assert parse("hf:owner/name", columns={"text": "q"}).columns == {"text": "q"}
    with pytest.raises(ValueError, match="unknown mapping key 'txt'"):
        parse("hf:owner/name?txt=prompt")


def test_local_dataset_loads_with_a_column_mapping(saved):
    s = load_suite(f"hf:{saved / 'one'}?text=prompt&label=is_harmful&group=topic")
    assert len(s) == 4 and s.label_counts() == {0: 2, 1: 2}
    assert [it.messages[-1]["content"] for it in s.items] == ROWS["prompt"]
    assert [it.label for it in s.items] == [int(h) for h in ROWS["is_harmful"]]
    assert len({it.group for it in s.items}) == 4 and {it.split for it in s.items} <= {"train", "test"}
    pos = load(f"hf:{saved / 'one'}?text=prompt&label=verdict&pos=unsafe")
    assert [it.label for it in pos.items] == [0, 1, 0, 1]
    api = load(f"hf:{saved / 'one'}", columns={"text": "prompt", "label": "0"})  # constant label
    assert api.label_counts() == {0: 4}


def test_local_dataset_dict_split(saved):
    s = load(f"hf:{saved / 'two'}@test?text=prompt&label=is_harmful")
    assert len(s) == 2 and s.name.endswith("two-test")
    with pytest.raises(ValueError, match="choose a split"):
        load(f"hf:{saved / 'two'}?text=prompt&label=is_harmful")


def test_missing_and_bad_inputs_are_one_line(saved, tmp_path):
    cases = [
        (f"hf:{tmp_path / 'nope'}?text=prompt", "no such folder"),
        (f"hf:{saved / 'one'}?text=question&label=is_harmful", "no column 'question'"),
        (f"hf:{saved / 'one'}?text=prompt&label=verdict", "pos=VALUE"),
        ("hf:kvstate-no-such-owner/no-such-dataset-xyz@test?text=prompt", "cannot load hf:kvstate-no-such-owner"),
    ]
    for spec, match in cases:
        with pytest.raises(ValueError, match=match) as exc:
            load_suite(spec)
        assert "\n" not in str(exc.value)
