"""Issue #19: bad input never costs a result or prints a traceback.

Each test here reproduces one defect: validation runs before any work, a good result is never
replaced by a worse one, and every failure is one line on stderr that names the file or setting.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import tiny_model_folder, tree_hash
from typer.testing import CliRunner

from kvstate.cli import app

runner = CliRunner()


def one_line_error(res, *needles: str) -> str:
    """Exit 2, one `error:` line on stderr, no traceback; the line contains every needle."""
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("model") / "tiny")


def _suite(path: Path, n: int = 16) -> Path:
    topics = ["cats", "rivers", "bread", "music", "trains", "stars", "gardens", "maths"]
    rows = [{"id": f"i{i}", "text": f"Tell me about {topics[(i // 2) % 8]}" + (" and destroy it" if i % 2 else " briefly"),
             "label": i % 2, "group": f"g{i // 2}"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _toml(path: Path, **settings) -> Path:
    path.write_text("[study]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()) + "\n")
    return path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, model_dir):
    """A finished tiny study (one suite, one representation, one detector) and its settings."""
    root = tmp_path_factory.mktemp("study")
    settings = dict(models=[str(model_dir)], suites=[str(_suite(root / "alpha.jsonl"))], n_splits=2,
                    n_boot=5, phis=["identity"], detectors=["mahalanobis"], representations=["kv-identity-S/n", "act-resid-last"],
                    all_detectors_for=["kv-identity-S/n"], layers="all", monitor_items=0, monitor_suites=[],
                    fidelity_layers="", chunk=8)
    toml = _toml(root / "study.toml", **settings)
    res = runner.invoke(app, ["study", "-c", str(toml), "-o", str(root / "run")])
    assert res.exit_code == 0, res.output
    assert json.loads((root / "run" / "results.json").read_text())["tasks"]
    return root, settings


# -- a finished study's results are never erased ---------------------------------------------------


@pytest.mark.parametrize("change", ["limit2", "n_splits1"])
def test_rerun_that_cannot_evaluate_keeps_results(finished_study, change):
    root, settings = finished_study
    run = root / "run"
    before = tree_hash(run)
    if change == "limit2":
        res = runner.invoke(app, ["study", "-c", str(root / "study.toml"), "-o", str(run), "--limit", "2"])
        one_line_error(res, "group")
    else:
        toml = _toml(root / "bad.toml", **{**settings, "n_splits": 1})
        res = runner.invoke(app, ["study", "-c", str(toml), "-o", str(run)])
        one_line_error(res, "n_splits", ">= 2")
    assert tree_hash(run) == before


def test_no_task_never_replaces_results(finished_study, monkeypatch):
    """The guard behind validation: an evaluation that yields no task keeps the old files."""
    from kvstate.study import run as run_mod
    from kvstate.study.evaluate import TooFewGroups

    root, _ = finished_study
    run = root / "run"
    before = {p: (run / p).read_bytes() for p in ("results.json", "report.html")}

    def too_few(*a, **k):
        raise TooFewGroups("labels 0/1 occur in 1/1 groups")

    monkeypatch.setattr(run_mod, "evaluate_task", too_few)
    res = runner.invoke(app, ["study", "-c", str(root / "study.toml"), "-o", str(run)])
    assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    last = res.stderr.strip().splitlines()[-1]  # after the progress lines of the work that was done
    assert last.startswith("error:") and "no task was evaluated" in last and "kept the previous" in last, last
    assert {p: (run / p).read_bytes() for p in before} == before


def test_evaluate_of_non_results_file(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    one_line_error(runner.invoke(app, ["evaluate", "-o", str(tmp_path)]), "results.json", "not a study results file")


# -- config files ------------------------------------------------------------------------------


def test_misspelled_table_is_an_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[studdy]\nlimit = 4\n")
    one_line_error(runner.invoke(app, ["study", "-c", str(toml), "-o", str(tmp_path / "o")]), "studdy", "[study]")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setting, needle", [
    ('limit = "16"', "limit must be"), ('suites = "x.jsonl"', "suites must be a list"), ("n_boot = 0", "n_boot"),
    ("n_splits = 1", "n_splits"), ("max_new_tokens = -1", "max_new_tokens"), ("seed = 1.5", "seed"),
])
def test_config_types_and_ranges(tmp_path, setting, needle):
    toml = tmp_path / "c.toml"
    toml.write_text(f"[study]\n{setting}\n")
    one_line_error(runner.invoke(app, ["study", "-c", str(toml), "-o", str(tmp_path / "o")]), needle, str(toml))
    assert not (tmp_path / "o").exists()


def test_empty_suites_flag_is_an_error(tmp_path):
    one_line_error(runner.invoke(app, ["study", "--suites", "", "-o", str(tmp_path / "o")]), "suites")


@pytest.mark.parametrize("name", ["f", "results.txt"])
def test_study_out_is_a_file(tmp_path, model_dir, name):
    f = tmp_path / name
    f.write_text("keep")
    res = runner.invoke(app, ["study", "--models", str(model_dir), "--suites", str(_suite(tmp_path / "s.jsonl")),
                              "-o", str(f)])
    one_line_error(res, str(f))
    assert f.read_text() == "keep"


def test_config_help_shows_study_table():
    res = runner.invoke(app, ["study", "--help"], terminal_width=200)
    assert "[study]" in res.output


def test_study_span_and_layers_checked_against_config_json(tmp_path, model_dir):
    suite = _suite(tmp_path / "s.jsonl")
    res = runner.invoke(app, ["study", "--models", str(model_dir), "--suites", str(suite), "--layers", "7",
                              "-o", str(tmp_path / "o")])
    one_line_error(res, "layer", "2 layers")
    assert not (tmp_path / "o").exists()


# -- extract -----------------------------------------------------------------------------------


def test_skip_first_beyond_prompt_is_an_error(tmp_path, model_dir):
    out = tmp_path / "s.safetensors"
    res = runner.invoke(app, ["extract", "hello there", "-m", str(model_dir), "--skip-first", "1000", "-o", str(out)])
    one_line_error(res, "skip_first", "tokens")
    assert not out.exists()


def test_negative_skip_first_is_an_error(tmp_path, model_dir):
    res = runner.invoke(app, ["extract", "hi", "-m", str(model_dir), "--skip-first", "-3", "-o", str(tmp_path / "s.safetensors")])
    one_line_error(res, "--skip-first")


def test_extract_out_is_a_folder(tmp_path, model_dir):
    (tmp_path / "d").mkdir()
    one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(model_dir), "-o", str(tmp_path / "d")]), "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_extract_refuses_to_overwrite_other_files(tmp_path, model_dir):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(model_dir), "-o", str(f)]), ".safetensors")
    g = tmp_path / "other.safetensors"
    g.write_bytes(b"not kvstate")
    one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(model_dir), "-o", str(g)]), "--force")
    assert f.read_text() == "mine" and g.read_bytes() == b"not kvstate"


def test_extract_unwritable_special_folder(model_dir):
    if not Path("/proc").is_dir():
        pytest.skip("no /proc")
    one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(model_dir), "-o", "/proc/x.safetensors"]), "/proc")


def test_extract_file_not_utf8(tmp_path, model_dir):
    f = tmp_path / "p.txt"
    f.write_bytes(b"\xff\xfe bad\n")
    one_line_error(runner.invoke(app, ["extract", "-f", str(f), "-m", str(model_dir)]), str(f), "UTF-8")


def test_extract_empty_layers(tmp_path, model_dir):
    one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(model_dir), "--layers", "", "-o",
                                       str(tmp_path / "s.safetensors")]), "layer")


def test_truncated_weights_and_missing_tokenizer(tmp_path, model_dir):
    import shutil

    trunc = tmp_path / "trunc"
    shutil.copytree(model_dir, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(trunc), "-o", str(tmp_path / "a.safetensors")]),
                   "model.safetensors", "truncated")
    notok = tmp_path / "notok"
    shutil.copytree(model_dir, notok)
    for p in notok.glob("tokenizer*"):
        p.unlink()
    err = one_line_error(runner.invoke(app, ["extract", "hi", "-m", str(notok), "-o", str(tmp_path / "b.safetensors")]),
                         str(notok), "tokenizer")
    assert err.rstrip().endswith(tuple(".;)abcdefghijklmnopqrstuvwxyz")) and "one of:" not in err


# -- monitor, report -------------------------------------------------------------------------------


def test_report_on_truncated_results(tmp_path):
    (tmp_path / "results.json").write_text('{"meta": {"title": ')
    one_line_error(runner.invoke(app, ["report", "-o", str(tmp_path)]), "results.json")


@pytest.mark.parametrize("args, needle", [(["--every", "0"], "--every"), (["--max-new-tokens", "-1"], "--max-new-tokens")])
def test_monitor_numbers(tmp_path, model_dir, args, needle):
    one_line_error(runner.invoke(app, ["monitor", "hi", "-d", str(tmp_path), "-m", str(model_dir), *args]), needle)


def test_monitor_truncated_files(tmp_path, model_dir):
    import numpy as np

    from kvstate.detect import get_detector
    from kvstate.monitor import MonitorSpec, save_monitor

    det = get_detector("mahalanobis").fit(np.random.default_rng(0).normal(size=(20, 4)))
    spec = MonitorSpec("kv-identity-S/n@end", [0], {"name": "identity"}, {}, threshold=1.0, fpr=0.01, model="tiny")
    save_monitor(tmp_path / "mon", spec, det)
    raw = (tmp_path / "mon" / "detector.safetensors").read_bytes()
    (tmp_path / "mon" / "detector.safetensors").write_bytes(raw[: len(raw) - 10])
    one_line_error(runner.invoke(app, ["monitor", "hi", "-d", str(tmp_path / "mon"), "-m", str(model_dir)]),
                   "detector.safetensors")
    (tmp_path / "mon" / "monitor.json").write_text('{"representation": ')
    one_line_error(runner.invoke(app, ["monitor", "hi", "-d", str(tmp_path / "mon"), "-m", str(model_dir)]),
                   "monitor.json")


# -- writers honour the umask ----------------------------------------------------------------------


def test_files_are_written_with_ordinary_permissions(tmp_path):
    import numpy as np
    import torch

    from kvstate import KVState
    from kvstate._io import atomic_write, write_json
    from kvstate.detect import get_detector, save_detector

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        atomic_write(tmp_path / "b.bin", lambda p: p.write_bytes(b"x"))
        save_detector(get_detector("mahalanobis").fit(np.random.default_rng(0).normal(size=(20, 3))),
                      tmp_path / "d.safetensors")
        KVState(torch.zeros(1, 1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 1, 2), torch.zeros(1, 1, 1), [0], ["end"],
                {"name": "identity"}, {}).save(tmp_path / "s.safetensors")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644), modes


def test_missing_index_is_said(tmp_path):
    import numpy as np

    from kvstate.store import Store

    s = Store.open(tmp_path / "st", {"a": 1})
    s.put([{"item_key": "k1"}], {"x": np.zeros((1, 2), dtype=np.float32)})
    (tmp_path / "st" / "index.parquet").unlink()
    with pytest.warns(UserWarning, match="index.parquet"):
        Store.open(tmp_path / "st", {"a": 1})


def test_pca_on_constant_representation_is_quiet():
    """`make demo` printed sklearn's RuntimeWarning (0/0 variance ratios) on constant features."""
    import warnings

    import numpy as np

    from kvstate.detect import get_detector
    from kvstate.detect.reduce import PCAReduce

    X = np.ones((30, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = get_detector("pca").fit(X).score_samples(X)
        PCAReduce(n_components=4).fit(X)
        get_detector("repe_pca").fit(np.ones((30, 8)), np.r_[np.zeros(15, int), np.ones(15, int)])  # TruncatedSVD too
    assert np.isfinite(scores).all()


def test_truncated_weights_in_the_cache(tmp_path, model_dir, monkeypatch):
    """A registered model whose cached conversion was cut short: one line naming the cached file."""
    import shutil

    cached = tmp_path / "cache" / "models" / "smollm2-135m" / "hf"
    shutil.copytree(model_dir, cached)
    data = (cached / "model.safetensors").read_bytes()
    (cached / "model.safetensors").write_bytes(data[: len(data) - 100])
    monkeypatch.setenv("KVSTATE_CACHE", str(tmp_path / "cache"))
    res = runner.invoke(app, ["extract", "hi", "-m", "smollm2-135m", "-o", str(tmp_path / "s.safetensors")])
    one_line_error(res, str(cached / "model.safetensors"), "truncated")
