"""Store: round trip, resume, settings mismatch, corruption, and survival of SIGKILL mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kvstate.store import Store, StoreCorruptError, StoreMismatchError, item_key, settings_hash

SETTINGS = {"layers": "upper3", "phi": ["identity", "elu"], "rope": "pre", "span": "content", "skip_first": 1}
MODEL = "tiny-llama"
NAMES = {"S/n@elu": 24, "z@elu": 8, "resid_mean": 16}


def synth(key: str) -> dict[str, np.ndarray]:
    """Deterministic vectors derived from the key, so any run can be compared with any other."""
    rng = np.random.default_rng(int(key[:12], 16))
    return {n: rng.standard_normal(d).astype(np.float32) for n, d in NAMES.items()}


def items(n: int, shash: str) -> list[dict]:
    out = []
    for i in range(n):
        text = f"prompt number {i}"
        out.append({"item_key": item_key(MODEL, shash, f"id{i}", {"messages": [{"role": "user", "content": text}]}),
                    "id": f"id{i}", "label": i % 2, "group": f"g{i % 3}", "split": "test" if i % 4 == 0 else "train",
                    "n_tokens": 10 + i, "time_ms": 1.5, "text": text, "model": MODEL})
    return out


def put_batch(store: Store, rows: list[dict]) -> None:
    vecs = [synth(r["item_key"]) for r in rows]
    store.put(rows, {n: np.stack([v[n] for v in vecs]) for n in NAMES})


def fill(store: Store, n: int, batch: int = 4) -> list[dict]:
    rows = items(n, store.settings_hash)
    todo = set(store.missing(r["item_key"] for r in rows))
    pending = [r for r in rows if r["item_key"] in todo]
    for i in range(0, len(pending), batch):
        put_batch(store, pending[i:i + batch])
    return rows


def test_item_key_and_settings_hash_are_canonical():
    assert settings_hash({"a": 1, "b": (1, 2)}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})
    k = item_key("m", "h", "id", [{"role": "user", "content": "x"}])
    assert len(k) == 64 and k != item_key("m", "h", "id", [{"role": "user", "content": "y"}])
    assert k != item_key("m", "h2", "id", [{"role": "user", "content": "x"}])


def test_round_trip(tmp_path):
    store = Store.open(tmp_path / "s", SETTINGS)
    rows = fill(store, 10, batch=3)
    assert len(list((tmp_path / "s/shards").glob("*.safetensors"))) == 4
    assert sorted(store.names()) == sorted(NAMES)
    # a fresh process view: reopen from disk
    store = Store.open(tmp_path / "s", SETTINGS, create=False)
    df, arrays = store.load()
    assert list(df["item_key"]) == [r["item_key"] for r in rows]
    assert list(df["id"]) == [f"id{i}" for i in range(10)] and list(df["label"]) == [i % 2 for i in range(10)]
    for name, dim in NAMES.items():
        assert arrays[name].dtype == np.float32 and arrays[name].shape == (10, dim)
        np.testing.assert_array_equal(arrays[name], np.stack([synth(r["item_key"])[name] for r in rows]))
    # keys order is honoured, names subset works
    pick = [rows[7]["item_key"], rows[0]["item_key"], rows[4]["item_key"]]
    df2, arr2 = store.load(names=["z@elu"], keys=pick)
    assert list(df2["item_key"]) == pick and list(arr2) == ["z@elu"]
    np.testing.assert_array_equal(arr2["z@elu"], arrays["z@elu"][[7, 0, 4]])
    info = json.loads((tmp_path / "s/store.json").read_text())
    assert info["settings"] == json.loads(json.dumps(SETTINGS)) and info["settings_hash"] == store.settings_hash
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.tmp"))


def test_resume_skips_done_keys(tmp_path):
    store = Store.open(tmp_path, SETTINGS)
    rows = items(12, store.settings_hash)
    put_batch(store, rows[:5])
    store = Store.open(tmp_path, SETTINGS)
    assert store.missing([r["item_key"] for r in rows]) == [r["item_key"] for r in rows[5:]]
    assert store.put(rows[:5], {n: np.zeros((5, d)) for n, d in NAMES.items()}) is None  # all done: no-op
    fill(store, 12)
    assert store.missing([r["item_key"] for r in rows]) == []
    _, arrays = store.load(keys=[r["item_key"] for r in rows])
    np.testing.assert_array_equal(arrays["resid_mean"], np.stack([synth(r["item_key"])["resid_mean"] for r in rows]))


def test_settings_mismatch_raises_and_keeps_data(tmp_path):
    store = Store.open(tmp_path, SETTINGS)
    fill(store, 6)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(StoreMismatchError) as exc:
        Store.open(tmp_path, {**SETTINGS, "rope": "post", "window": "layer"})
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError) and "\n" not in msg
    assert "rope" in msg and "window" in msg and "layers" not in msg and "--out" in msg
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert len(Store.open(tmp_path, dict(reversed(list(SETTINGS.items()))))) == 6  # key order is irrelevant


def test_open_without_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        Store.open(tmp_path / "nope", SETTINGS, create=False)


def test_shape_and_row_validation(tmp_path):
    store = Store.open(tmp_path, SETTINGS)
    rows = items(3, store.settings_hash)
    with pytest.raises(ValueError, match="shape"):
        store.put(rows, {"a": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="item_key"):
        store.put([{"id": "x"}], {"a": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="reserved"):
        store.put([{**rows[0], "shard": "x"}], {"a": np.zeros((1, 4))})
    store.put(rows[:1], {"a": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="same"):
        store.put(rows[1:], {"a": np.zeros((2, 5))})
    with pytest.raises(KeyError, match="Available"):
        store.load(names=["b"])
    with pytest.raises(KeyError, match="missing"):
        store.load(keys=["0" * 64])


def test_corrupted_shard_detected_and_recomputed(tmp_path):
    store = Store.open(tmp_path, SETTINGS)
    rows = fill(store, 8)
    shard = tmp_path / "shards" / store.index()["shard"].iloc[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the array data
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match="checksum") as exc:
        store.load()
    assert shard.name in str(exc.value) and "delete it and rerun" in str(exc.value) and "\n" not in str(exc.value)
    shard.write_bytes(bytes(data[:100]))  # truncated: header unreadable
    with pytest.raises(StoreCorruptError, match="truncated"):
        Store.open(tmp_path, SETTINGS).load()
    # the advertised fix works: delete the file, rerun, only its items are recomputed
    shard.unlink()
    with pytest.warns(UserWarning, match="recomputed"):
        store = Store.open(tmp_path, SETTINGS)
    assert store.missing([r["item_key"] for r in rows]) == [r["item_key"] for r in rows[:4]]
    fill(store, 8)
    _, arrays = store.load(keys=[r["item_key"] for r in rows])
    np.testing.assert_array_equal(arrays["z@elu"], np.stack([synth(r["item_key"])["z@elu"] for r in rows]))


def test_foreign_files_detected(tmp_path):
    other = Store.open(tmp_path / "other", {**SETTINGS, "phi": ["relu"]})
    fill(other, 4)
    store = Store.open(tmp_path / "s", SETTINGS)
    fill(store, 4)
    mine = tmp_path / "s/shards" / store.index()["shard"].iloc[0]
    theirs = next((tmp_path / "other/shards").glob("*.safetensors"))
    mine.write_bytes(theirs.read_bytes())  # a shard of another settings hash under an indexed name
    with pytest.raises(StoreCorruptError, match="other settings") as exc:
        store.load()
    assert mine.name in str(exc.value)
    mine.write_bytes(b"hello, not a shard at all")
    with pytest.raises(StoreCorruptError, match="not a kvstate store shard"):
        store.load()
    mine.unlink()
    (tmp_path / "s/shards/stray.safetensors").write_bytes(theirs.read_bytes())  # not indexed, not ours
    with pytest.raises(StoreCorruptError, match="stray.safetensors"):
        Store.open(tmp_path / "s", SETTINGS)


def test_orphan_shard_and_temp_files_cleaned(tmp_path, monkeypatch):
    """Die between 'shard written' and 'index written': the orphan is removed, the index is intact."""
    store = Store.open(tmp_path, SETTINGS)
    rows = items(8, store.settings_hash)
    put_batch(store, rows[:4])
    real = Store._write_index

    def die(self, df):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Store, "_write_index", die)
    with pytest.raises(KeyboardInterrupt):
        put_batch(store, rows[4:])
    monkeypatch.setattr(Store, "_write_index", real)
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) == 2
    (tmp_path / "shards/.abc.safetensors.123.tmp").write_bytes(b"partial")
    (tmp_path / "shards/.tmpAb12Cd").write_bytes(b"partial")  # safetensors' own temp file, before its rename
    store = Store.open(tmp_path, SETTINGS)
    assert len(list((tmp_path / "shards").iterdir())) == 1 and len(store) == 4
    assert store.missing([r["item_key"] for r in rows]) == [r["item_key"] for r in rows[4:]]


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import SETTINGS, Store, items, put_batch
    store = Store.open({root!r}, SETTINGS)
    rows = items({n}, store.settings_hash)
    todo = set(store.missing(r["item_key"] for r in rows))
    pending = [r for r in rows if r["item_key"] in todo]
    for i in range(0, len(pending), 3):
        put_batch(store, pending[i:i + 3])
        print(len(store), flush=True)
    print("done", flush=True)
""")


def run_child(root: Path, n: int, kill_after: int | None, delay: float = 0.0) -> str:
    """Run the writer; SIGKILL it ``delay`` s after it reports kill_after shards. Returns its last line."""
    code = CHILD.format(tests=str(Path(__file__).parent), root=str(root), n=n)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    shards, last = 0, ""
    try:
        for line in proc.stdout:
            last = line.strip()
            shards += 1
            if kill_after is not None and shards >= kill_after:
                time.sleep(delay)  # land somewhere inside the next put(): shard, fsync, rename, index
                os.kill(proc.pid, signal.SIGKILL)
                last = "killed"
                break
    finally:
        proc.stdout.close()
        rc = proc.wait(timeout=30)
    assert rc == (-signal.SIGKILL if last == "killed" else 0), f"writer exited with {rc}"
    return last


@pytest.mark.timeout(120)
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    n = 90
    fill(Store.open(tmp_path / "ref", SETTINGS), n, batch=3)  # the uninterrupted run, in-process
    root = tmp_path / "killed"
    # a put() takes a few ms here; these delays kill before, during the shard write, between shard
    # and index, and during the index write (the deterministic orphan case is tested above)
    for kill_after, delay in ((2, 0.0), (3, 0.004), (4, 0.01), (5, 0.02)):
        assert run_child(root, n, kill_after, delay) == "killed"
        store = Store.open(root, SETTINGS)
        assert 0 < len(store) < n
        store.load()  # every indexed shard is complete and passes its checksum
    assert run_child(root, n, None) == "done"

    ref_df, ref = Store.open(tmp_path / "ref", SETTINGS).load()
    df, got = Store.open(root, SETTINGS).load()
    assert list(df["item_key"]) == list(ref_df["item_key"])  # same order as the uninterrupted run
    meta = [c for c in ref_df.columns if c not in ("shard", "row", "shard_sha256")]
    pd.testing.assert_frame_equal(df[meta], ref_df[meta])
    for name in NAMES:
        np.testing.assert_array_equal(got[name], ref[name])
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    indexed = set(Store.open(root, SETTINGS).index()["shard"])
    assert {p.name for p in (root / "shards").iterdir()} == indexed  # no orphans left
