"""Issue #30 (part A): what a user hands to `kvstate score`, `kvstate fit -o` and the listings never
costs a file, a silently wrong result or a traceback.

Each refusal exits 2 with one `error:` line and no traceback, loads no model where the check can come
first, and leaves every file that existed before byte-identical (hashed before and after). The
data-loss cases (an unrelated file or the input as --out, two runs on one output, resume after the
input changed, a detector folder half-replaced on a full disk) each fail on the code before the fix.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model_folder, tree_hash
from typer.testing import CliRunner

from kvstate.cli import app

runner = CliRunner()


def _rows(n: int, word: str = "destroy", labels: bool = True) -> list[dict]:
    rows = [{"id": f"{word}-{i}", "text": f"Tell me about topic {i // 2}" + (f" and {word} it" if i % 2 else " briefly"),
             "label": i % 2} for i in range(n)]
    return rows if labels else [{k: v for k, v in r.items() if k != "label"} for r in rows]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model folder, a 16-row labelled file and a detector fitted on that model, with a threshold."""
    root = tmp_path_factory.mktemp("score_safety")
    tiny_model_folder(root / "tiny")
    _jsonl(root / "p.jsonl", _rows(16))
    _jsonl(root / "benign.jsonl", [{"id": f"b{i}", "text": f"a nice thing number {i}", "label": 0} for i in range(8)])
    res = runner.invoke(app, ["fit", "--suite", str(root / "p.jsonl"), "-m", str(root / "tiny"), "--representation",
                              "act-resid-last@end", "--detector", "logistic", "--calibration", str(root / "benign.jsonl"),
                              "--calibration-items", "8", "-o", str(root / "det")])
    assert res.exit_code == 0, res.output
    return root


def one_line(res, *needles: str) -> str:
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def score(env: Path, source, out, *extra: str, input=None):
    return runner.invoke(app, ["score", str(source), "-d", str(env / "det"), "-m", str(env / "tiny"), "-o", str(out),
                               "--chunk", "4", "--batch-size", "4", *extra], input=input)


_LOADED: dict = {}


def _lm(env: Path):
    """The tiny model, loaded once per module."""
    from kvstate.models import load_model

    if env not in _LOADED:
        _LOADED[env] = load_model(env / "tiny")
    return _LOADED[env]


# -- 1. --out never replaces a file kvstate did not write, nor the input --------------------------------


@pytest.mark.parametrize("name, content", [("other.csv", b"name,amount\nrent,900\n"), ("other.parquet", None)])
def test_score_refuses_an_unrelated_file_at_out(env, tmp_path, no_model, name, content):
    out = tmp_path / name
    if content is None:
        pd.DataFrame({"name": ["rent"], "amount": [900]}).to_parquet(out)
    else:
        out.write_bytes(content)
    before = tree_hash(tmp_path)
    one_line(score(env, env / "p.jsonl", out), str(out), "--force")
    assert tree_hash(tmp_path) == before and not (tmp_path / f"{name}.parts").exists()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_score_refuses_the_input_as_out_even_with_force(env, tmp_path, no_model, force):
    src = tmp_path / "in.csv"
    pd.DataFrame(_rows(8)).to_csv(src, index=False)
    before = tree_hash(tmp_path)
    one_line(score(env, src, src, *force), "input file")
    link = tmp_path / "link.csv"
    link.symlink_to(src)
    one_line(score(env, src, link, *force), "input file")
    link.unlink()
    assert tree_hash(tmp_path) == before


def test_force_replaces_and_a_kvstate_scores_file_is_replaced_without_it(env, tmp_path):
    out = tmp_path / "s.csv"
    out.write_text("name,amount\nrent,900\n")
    assert score(env, env / "p.jsonl", out, "--force").exit_code == 0
    first = pd.read_csv(out)
    assert list(first.columns) == ["row", "id", "score", "flag", "label"] and len(first) == 16
    res = score(env, env / "p.jsonl", out)  # our own output: a re-run may replace it
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_csv(out), first)


# -- 2. one run at a time per output ----------------------------------------------------------------------


def test_a_second_run_on_the_same_output_fails_in_one_line(env, tmp_path):
    from kvstate.deploy import score_file

    out = tmp_path / "s.parquet"
    seen: list = []

    def during_first_run(n):
        if not seen:  # the first run has written a chunk and holds the output: start a second one
            before = tree_hash(tmp_path)
            seen.append(score(env, env / "p.jsonl", out))
            seen.append(tree_hash(tmp_path) == before)

    summary = score_file(env / "det", _lm(env), env / "p.jsonl", out, chunk=4, batch_size=4, progress=during_first_run)
    one_line(seen[0], "another kvstate score", out.name)
    assert seen[1], "the refused run changed a file"
    assert summary["rows"] == 16 and len(pd.read_parquet(out)) == 16
    assert not (tmp_path / "s.parquet.parts").exists()


# -- 3. resume is keyed on the rows and the detector, not the path ------------------------------------------


def _interrupted(env, source, out, after: int = 2):
    from kvstate.deploy import score_file

    calls = []

    def boom(n):
        calls.append(n)
        if len(calls) == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_file(env / "det", _lm(env), source, out, chunk=4, batch_size=4, progress=boom)
    assert len(list(out.with_name(out.name + ".parts").glob("chunk-*.parquet"))) == after


@pytest.mark.parametrize("change", ["edited", "shrunk"])
def test_resume_after_the_input_changed_gives_exactly_the_new_rows(env, tmp_path, change):
    from kvstate.deploy import score_file

    src, out = _jsonl(tmp_path / "in.jsonl", _rows(16)), tmp_path / "s.csv"
    _interrupted(env, src, out)
    new = _rows(16, word="burn") if change == "edited" else _rows(6, word="burn")
    if change == "edited":
        for r in new:
            r["label"] = 1 - r["label"]
    _jsonl(src, new)
    summary = score_file(env / "det", _lm(env), src, out, chunk=4, batch_size=4)
    got = pd.read_csv(out)
    assert list(got["id"]) == [r["id"] for r in new] and list(got["label"]) == [r["label"] for r in new]
    fresh = score_file(env / "det", _lm(env), _jsonl(tmp_path / "fresh.jsonl", new), tmp_path / "fresh.csv", chunk=4,
                       batch_size=4)
    np.testing.assert_allclose(got["score"], pd.read_csv(tmp_path / "fresh.csv")["score"], rtol=0, atol=1e-9)
    assert summary["rows"] == fresh["rows"] == len(new) and summary["chunks_reused"] == 0


def test_resume_reuses_chunks_only_of_the_same_stdin_and_detector(env, tmp_path, monkeypatch):
    import shutil

    from kvstate.deploy import score_file

    out = tmp_path / "s.csv"
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"prompt number {i}\n" for i in range(16))))
    _interrupted(env, "-", out)
    other = [f"another prompt {i}" for i in range(10)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(p + "\n" for p in other)))
    summary = score_file(env / "det", _lm(env), "-", out, chunk=4, batch_size=4)
    assert summary["rows"] == 10 and summary["chunks_reused"] == 0 and len(pd.read_csv(out)) == 10
    # the same input resumes; another detector (a changed threshold) does not reuse its chunks
    _interrupted(env, env / "p.jsonl", out)
    det2 = tmp_path / "det2"
    shutil.copytree(env / "det", det2)
    doc = json.loads((det2 / "detector.json").read_text())
    (det2 / "detector.json").write_text(json.dumps({**doc, "threshold": doc["threshold"] + 1}))
    assert score_file(det2, _lm(env), env / "p.jsonl", out, chunk=4, batch_size=4)["chunks_reused"] == 0
    _interrupted(env, env / "p.jsonl", out)
    again = score_file(env / "det", _lm(env), env / "p.jsonl", out, chunk=4, batch_size=4)
    assert again["chunks_reused"] == 2 and again["chunks_computed"] == 2 and again["rows"] == 16


# -- 4. `fit -o` over a detector folder replaces it whole ----------------------------------------------------


def _full_disk_on_detector_json(monkeypatch):
    import kvstate.deploy.folder as folder

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(folder, "write_json", full)


def test_a_detector_save_that_fails_leaves_the_old_folder_whole(env, tmp_path, monkeypatch):
    import shutil

    from kvstate.deploy import Detector, fit_detector

    shutil.copytree(env / "det", tmp_path / "det")
    old = Detector.load(tmp_path / "det")
    before = tree_hash(tmp_path)
    new = fit_detector(np.random.default_rng(0).normal(size=(20, 3)), np.r_[np.zeros(10, int), np.ones(10, int)],
                       "ctl-length@end", "logistic", model=old.model, dtype=old.dtype, settings=old.settings)
    _full_disk_on_detector_json(monkeypatch)
    with pytest.raises(ValueError, match="No space left on device.*old folder is unchanged"):
        new.save(tmp_path / "det")
    assert tree_hash(tmp_path) == before  # no mixed folder, no temporary folder left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]


def test_fit_over_an_existing_detector(env, tmp_path, monkeypatch, no_model):
    import shutil

    from kvstate.deploy import Detector

    det = tmp_path / "det"
    shutil.copytree(env / "det", det)
    (det / "README.md").write_text("our jailbreak detector\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    before = tree_hash(tmp_path)
    fit = ["fit", "--suite", str(env / "p.jsonl"), "-m", str(env / "tiny"), "--representation", "ctl-length@end",
           "--detector", "logistic", "--calibration", ""]
    one_line(runner.invoke(app, [*fit, "-o", str(tmp_path / "notes")]), "not a detector folder")
    assert tree_hash(tmp_path) == before
    monkeypatch.undo()  # the model may load from here on
    _full_disk_on_detector_json(monkeypatch)
    one_line(runner.invoke(app, [*fit, "-o", str(det)]), str(det), "No space left on device")
    assert tree_hash(tmp_path) == before
    monkeypatch.undo()
    assert runner.invoke(app, [*fit, "-o", str(det)]).exit_code == 0
    assert Detector.load(det).representation == "ctl-length@end"
    assert (det / "README.md").read_text() == "our jailbreak detector\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "notes"]


# -- 6, 8, 12: what the rows hold -----------------------------------------------------------------------------


BAD_ROWS = {
    "label 1.5": ({"text": "hi", "label": 1.5}, "label 1.5"), "label 0.7": ({"text": "hi", "label": 0.7}, "label 0.7"),
    "label 2": ({"text": "hi", "label": 2}, "label 2"), "label -1": ({"text": "hi", "label": -1}, "label -1"),
    "label yes": ({"text": "hi", "label": "yes"}, "label 'yes'"), "label true": ({"text": "hi", "label": True}, "label True"),
    "label null": ({"text": "hi", "label": None}, "no label"), "label missing": ({"text": "hi"}, "no label"),
    "messages str": ({"messages": "hello there", "label": 0}, "'messages' is a string"),
    "messages ints": ({"messages": [1, 2], "label": 0}, "'messages'[0]"),
    "messages dict": ({"messages": {"role": "user", "content": "hi"}, "label": 0}, "'messages' must be a non-empty list"),
    "messages no content": ({"messages": [{"role": "user"}], "label": 0}, "'messages'[0]"),
    "response number": ({"text": "hi", "response": 5, "label": 0}, "'response' must be a string"),
    "text list": ({"text": ["hi"], "label": 0}, "'text' must be a string"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_names_the_row_and_the_field(env, tmp_path, no_model, case):
    row, needle = BAD_ROWS[case]
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "fine", "label": 0}, {"text": "also fine", "label": 1}, row])
    before = tree_hash(tmp_path)
    one_line(score(env, src, tmp_path / "s.csv"), "in.jsonl:3", needle)
    assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_bad_label_in_a_table_names_the_row(env, tmp_path, no_model, fmt):
    src = tmp_path / f"in.{fmt}"
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["0", "1", "1.5"] if fmt == "csv" else [0.0, 1.0, 1.5]})
    df.to_csv(src, index=False) if fmt == "csv" else df.to_parquet(src)
    one_line(score(env, src, tmp_path / "s.csv"), f"in.{fmt} row 3", "label", "1.5")


def test_labels_read_as_0_1_from_every_format_and_an_empty_column_is_unlabelled(tmp_path):
    from kvstate.deploy import iter_prompt_chunks

    pd.DataFrame({"text": ["a", "b"], "label": [0.0, 1.0]}).to_parquet(tmp_path / "f.parquet")
    pd.DataFrame({"text": ["a", "b"], "label": ["1", "0"]}).to_csv(tmp_path / "f.csv", index=False)
    pd.DataFrame({"text": ["a", "b"], "label": ["", ""]}).to_csv(tmp_path / "e.csv", index=False)
    got = {p: [r.get("label") for c in iter_prompt_chunks(tmp_path / p) for r in c] for p in ("f.parquet", "f.csv", "e.csv")}
    assert got == {"f.parquet": [0, 1], "f.csv": [1, 0], "e.csv": [None, None]}
    assert all(type(v) is int for v in got["f.parquet"] + got["f.csv"])


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.txt", "\n  \n"), ("e.csv", ""), ("h.csv", "text,label\n"),
                                           ("stdin", "")])
def test_an_empty_input_is_refused(env, tmp_path, no_model, name, content):
    if name != "stdin":
        (tmp_path / name).write_text(content)
    before = tree_hash(tmp_path)
    res = score(env, "-" if name == "stdin" else tmp_path / name, tmp_path / "s.csv", input=content)
    one_line(res, "no prompts")
    assert tree_hash(tmp_path) == before and not (tmp_path / "s.csv").exists()
    assert not (tmp_path / "s.csv.parts").exists()


# -- 13. the chunk folder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["parts file", "manifest list", "manifest truncated", "foreign folder"])
def test_a_chunk_folder_that_is_not_kvstate_s_is_refused(env, tmp_path, no_model, case):
    parts = tmp_path / "s.csv.parts"
    if case == "parts file":
        parts.write_text("mine")
    else:
        parts.mkdir()
        name, text = {"manifest list": ("manifest.json", "[1, 2]"), "manifest truncated": ("manifest.json", '{"format": '),
                      "foreign folder": ("photo.jpg", "jpeg")}[case]
        (parts / name).write_text(text)
    before = tree_hash(tmp_path)
    one_line(score(env, env / "p.jsonl", tmp_path / "s.csv"), "s.csv.parts")
    assert tree_hash(tmp_path) == before


def test_a_failed_run_leaves_no_chunk_folder(env, tmp_path, no_model):
    from kvstate.deploy import score_file

    before = tree_hash(tmp_path)
    one_line(score(env, "-", tmp_path / "s.csv", input=b"\xff\xfe not utf-8\n"), "stdin", "UTF-8")

    def broken():
        raise ValueError("cannot load the model")

    with pytest.raises(ValueError, match="cannot load"):
        score_file(env / "det", broken, env / "p.jsonl", tmp_path / "s.csv", chunk=4)
    assert tree_hash(tmp_path) == before


# -- 14. a full disk ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, or a skip where this process cannot mount one."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode(errors='replace').strip() or r.returncode}); "
                    "the full-disk case needs root or CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_score_on_a_full_disk_is_one_line_and_keeps_earlier_files(env, small_disk):
    earlier = small_disk / "earlier.csv"
    earlier.write_text("row,id,score,flag\n0,a,0.5,False\n")
    (small_disk / "notes.txt").write_text("keep me\n")
    st = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 8192))
    before = tree_hash(small_disk)
    err = one_line(score(env, env / "p.jsonl", small_disk / "s.parquet"), "No space left on device", str(small_disk))
    assert "choose another --out" in err
    after = tree_hash(small_disk)
    assert {k: after.get(k) for k in before} == before  # every earlier file intact
    assert not (small_disk / "s.parquet").exists()
    assert all(k.startswith("s.parquet.parts") for k in set(after) - set(before))  # finished chunks, for the resume


# -- 16, 18: data show and the listings ----------------------------------------------------------------------------


def test_data_show_refuses_a_negative_seed():
    one_line(runner.invoke(app, ["data", "show", "jailbreak", "--seed", "-1"]), "--seed must be >= 0")


@pytest.mark.parametrize("cmd", [["data", "list", "--no-build", "--no-stats"], ["models", "list"]])
def test_listings_are_machine_readable_and_whole_when_piped(cmd):
    from kvstate.data.registry import SUITES
    from kvstate.models import list_models

    res = runner.invoke(app, [*cmd, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    if cmd[0] == "data":
        assert [r["suite"] for r in rows] == list(SUITES)
        keys = {"suite", "n", "labels", "sources", "description"} | (
            set() if "--no-stats" in cmd else {"balance", "length_auroc", "bow_prompt", "bow_prompt_reply", "confounded"})
        assert all(keys <= set(r) for r in rows)
        full = [s.description for s in SUITES.values()]
    else:
        assert [r["name"] for r in rows] == [m["name"] for m in list_models()]
        full = [m["source"] for m in list_models()]
    table = runner.invoke(app, cmd)  # CliRunner's stdout is not a terminal
    csv = runner.invoke(app, [*cmd, "--format", "csv"])
    assert table.exit_code == csv.exit_code == 0
    assert "…" not in table.stdout.replace("… (", "")
    for text in full:
        assert text in table.stdout and text in pd.read_csv(io.StringIO(csv.stdout)).to_string(max_colwidth=1000)
    one_line(runner.invoke(app, [*cmd, "--format", "xml"]), "--format must be one of table, csv, json")


def test_data_list_json_has_every_column_of_the_table(tmp_path, monkeypatch):
    """With statistics: raw values (NaN as null), and a long description whole in the piped table."""
    import kvstate.data.cli as data_cli

    long = "a description " + "that goes on " * 30 + "to the end"
    (tmp_path / "x.parquet").write_text("")
    monkeypatch.setattr(data_cli, "list_suites", lambda build: [{"name": "x", "description": long, "sources": ["pkg-a", "pkg-b"],
                                                                 "n": 4, "labels": {0: 2, 1: 2}}])
    monkeypatch.setattr(data_cli, "suite_path", lambda name: tmp_path / f"{name}.parquet")
    monkeypatch.setattr(data_cli, "_cached_stats", lambda name, seed: {
        "balance": 0.5, "length_auroc": float("nan"), "bow_prompt": 0.91, "bow_prompt_reply": None, "confounded": True})
    rows = json.loads(runner.invoke(app, ["data", "list", "--format", "json"]).stdout)
    assert rows == [{"suite": "x", "n": 4, "labels": {"0": 2, "1": 2}, "error": None, "balance": 0.5, "length_auroc": None,
                     "bow_prompt": 0.91, "bow_prompt_reply": None, "confounded": True, "sources": ["pkg-a", "pkg-b"],
                     "description": long}]
    table = runner.invoke(app, ["data", "list"]).stdout
    assert long in table and "confounded" in table and "0.91" in table
    one_line(runner.invoke(app, ["data", "list", "--seed", "-1"]), "--seed must be >= 0")
