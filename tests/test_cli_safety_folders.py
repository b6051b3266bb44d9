"""Issue 30, part B: what a user hands in (a detector or monitor folder, a study config, a cache,
a full disk, a stop signal) ends in one line, never in a traceback or a silently wrong result.

Each CLI case exits 2 with one ``error:`` line, loads no model where the check can come first, and
leaves every pre-existing file byte-identical; each library case raises a one-line ValueError.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model, tiny_model_folder, tree_hash
from typer.testing import CliRunner

from kvstate.cli import app

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _rows(n: int = 8) -> str:
    return "\n".join(json.dumps({"id": f"i{i}", "text": f"item {i // 2}" + (" bad" if i % 2 else ""), "label": i % 2})
                     for i in range(n)) + "\n"


def _one_line_exit_2(res) -> str:
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ folders handed in (items 5, 10, 11)

def _doc(key, value):
    def edit(d):
        if value is _DROP:
            d.pop(key)
        else:
            d[key] = value
    return edit


_DROP = object()

#: detector.json edits: each must be refused at load (items 5 and 10)
DETECTOR_JSON = {
    "threshold NaN": _doc("threshold", math.nan), "threshold -inf": _doc("threshold", -math.inf),
    "threshold inf": _doc("threshold", math.inf), "threshold string": _doc("threshold", "0.5"),
    "threshold list": _doc("threshold", [0.5]), "threshold bool": _doc("threshold", True),
    "fpr 2": _doc("fpr", 2.0), "no representation": _doc("representation", _DROP), "no model": _doc("model", _DROP),
    "no settings": _doc("settings", _DROP), "no dtype": _doc("dtype", _DROP), "model int": _doc("model", 3),
    "bad representation": _doc("representation", "nope"), "bad dtype": _doc("dtype", "int4"),
    "settings string": _doc("settings", "layers=0"), "settings list": _doc("settings", [0, 1]),
    "settings unknown key": lambda d: d["settings"].update(layerz=[0]),
    "settings layers string": lambda d: d["settings"].update(layers="0,1"),
    "settings unknown phi": lambda d: d["settings"].update(phis=["nope"]),
    "settings missing learned phi": lambda d: d["settings"].update(phis=["identity", "learned:phi/missing.safetensors"]),
    "training string": _doc("training", "x"),
}


def _rewrite_estimator(path: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), "np") as f:
        meta = dict(f.metadata())
    arrays = load_file(str(path))
    doc = json.loads(meta["kvstate"])
    edit(arrays, doc)
    save_file(arrays, str(path), metadata={"kvstate": json.dumps(doc)})


def _first_float(arrays) -> str:
    return next(k for k in sorted(arrays) if arrays[k].dtype.kind == "f" and arrays[k].ndim >= 1 and arrays[k].size > 1)


def _nan(a, d):
    k = _first_float(a)
    a[k] = a[k].copy()
    a[k].flat[0] = np.nan


def _drop(a, d):
    a.pop(_first_float(a))


def _drop_old(a, d):  # a file written before tensor lists: the zero-row check catches it
    d.pop("tensors")
    a.pop(_first_float(a))


def _shape(a, d):
    k = _first_float(a)
    a[k] = a[k].reshape(-1)[:-1].copy()


def _dtype(a, d):
    k = _first_float(a)
    a[k] = a[k].astype(np.float32)


#: estimator.safetensors edits: each must be refused at load (items 5 and 11)
ESTIMATOR = {"NaN weight": _nan, "missing tensor": _drop, "missing tensor, no tensor list": _drop_old,
             "wrong shape": _shape, "wrong dtype": _dtype}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from kvstate.deploy import fit_detector
    from kvstate.detect import get_detector
    from kvstate.monitor import MonitorSpec, save_monitor
    from kvstate.representations import RepresentationSettings

    root = tmp_path_factory.mktemp("safety")
    tiny_model_folder(root / "m")
    (root / "p.jsonl").write_text(_rows())
    rng = np.random.default_rng(0)
    det = fit_detector(rng.normal(size=(20, 4)), np.r_[np.zeros(10, int), np.ones(10, int)], "kv-identity-S/n@end",
                       "logistic", model="m", dtype="float32", settings=RepresentationSettings(layers=(0, 1)).to_dict())
    det.threshold, det.fpr = 0.5, 0.01
    det.save(root / "det")
    for name, edit in DETECTOR_JSON.items():
        shutil.copytree(root / "det", root / f"det-{name}")
        doc = json.loads((root / "det" / "detector.json").read_text())
        edit(doc)
        (root / f"det-{name}" / "detector.json").write_text(json.dumps(doc))  # NaN/Infinity as Python writes them
    for name, edit in ESTIMATOR.items():
        shutil.copytree(root / "det", root / f"est-{name}")
        _rewrite_estimator(root / f"est-{name}" / "estimator.safetensors", edit)
    maha = get_detector("mahalanobis").fit(rng.normal(size=(20, 4)))
    spec = MonitorSpec("kv-identity-S/n@end", [0], {"name": "identity"}, {"layers": [0]}, threshold=1.0, fpr=0.01)
    save_monitor(root / "mon", spec, maha)
    for name, edit in MONITOR_JSON.items():
        shutil.copytree(root / "mon", root / f"mon-{name}")
        doc = json.loads((root / "mon" / "monitor.json").read_text())
        edit(doc)
        (root / f"mon-{name}" / "monitor.json").write_text(json.dumps(doc))
    return root


#: monitor.json edits (item 10); "layers out of range" is only wrong for the model it runs with
MONITOR_JSON = {"threshold NaN": _doc("threshold", math.nan), "threshold string": _doc("threshold", "1"),
                "unknown phi": _doc("phi", {"name": "nope"}), "layers string": _doc("layers", "0"),
                "layers empty": _doc("layers", []), "settings string": _doc("settings", "x"),
                "settings unknown key": _doc("settings", {"layerz": [0]}), "no representation": _doc("representation", _DROP),
                "layers out of range": _doc("layers", [7])}


def test_a_good_folder_loads(root):
    from kvstate.deploy import Detector
    from kvstate.monitor import load_monitor

    det = Detector.load(root / "det")
    assert det.threshold == 0.5 and det.decision_function(np.zeros((1, 4))).shape == (1,)
    assert load_monitor(root / "mon")[0].layers == [0]


@pytest.mark.parametrize("name", [*(f"det-{n}" for n in DETECTOR_JSON), *(f"est-{n}" for n in ESTIMATOR)])
def test_detector_load_refuses_in_one_line(root, name):
    from kvstate.deploy import Detector

    before = tree_hash(root / name)
    with pytest.raises(ValueError) as e:
        Detector.load(root / name)
    assert len(str(e.value).splitlines()) == 1 and str(root / name) in str(e.value), str(e.value)
    assert tree_hash(root / name) == before


@pytest.mark.parametrize("name", [f"mon-{n}" for n in MONITOR_JSON if n != "layers out of range"])
def test_monitor_load_refuses_in_one_line(root, name):
    from kvstate.monitor import load_monitor

    with pytest.raises(ValueError) as e:
        load_monitor(root / name)
    assert len(str(e.value).splitlines()) == 1 and "monitor.json" in str(e.value), str(e.value)


CLI = [*(["score", "{root}/p.jsonl", "-d", f"{{root}}/det-{n}", "-m", "{root}/m", "-o", "{root}/o.csv"] for n in DETECTOR_JSON),
       *(["score", "{root}/p.jsonl", "-d", f"{{root}}/est-{n}", "-m", "{root}/m", "-o", "{root}/o.csv"] for n in ESTIMATOR),
       *(["monitor", "hi", "-d", f"{{root}}/mon-{n}", "-m", "{root}/m"] for n in MONITOR_JSON),
       *(["monitor", "hi", "-d", f"{{root}}/det-{n}", "-m", "{root}/m", "--stop"] for n in ("threshold NaN", "settings string")),
       *(["serve", "-d", f"{{root}}/{n}", "-m", "{root}/m", "--port", "1"]
         for n in ("det-threshold list", "est-NaN weight", "mon-unknown phi", "mon-layers out of range"))]


@pytest.mark.parametrize("args", CLI, ids=[" ".join([a[0], a[a.index("-d") + 1]]).replace("{root}/", "") for a in CLI])
def test_cli_refuses_bad_folders_before_the_model(root, no_model, args):
    before = tree_hash(root)
    res = runner.invoke(app, [a.format(root=root) for a in args])
    _one_line_exit_2(res)
    assert tree_hash(root) == before


# ------------------------------------------------------------------ study config typos (item 7)

@pytest.mark.parametrize("setting, message", [
    ('monitor_suites = ["nope"]', "monitor_suites"),
    ('monitor_suites = ["jailbreak"]', "names no suite the study runs"),
    ('monitor_suites = ["alpha"]\nmonitor_representation = "kv-bogus-S/n@end"', "monitor_representation"),
    ('monitor_suites = ["alpha"]\nmonitor_representation = "act-resid-last@end"', "monitor_representation"),
    ('monitor_suites = ["alpha"]\nmonitor_representation = "kv-elu-S/n-hn@middle"', "monitor_representation"),
])
def test_study_config_typos_fail_before_work(root, no_model, tmp_path, setting, message):
    suite = tmp_path / "alpha.jsonl"
    suite.write_text("".join(json.dumps({"text": f"q{i}", "label": i % 2, "group": f"g{i // 2}"}) + "\n" for i in range(24)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[study]\nmodels = ["{root / "m"}"]\nsuites = ["{suite}"]\nn_splits = 2\n{setting}\n')
    before = tree_hash(tmp_path)
    res = runner.invoke(app, ["study", "-c", str(cfg), "-o", str(tmp_path / "out")])
    assert message in _one_line_exit_2(res)
    assert tree_hash(tmp_path) == before


# ------------------------------------------------------------------ a folder that travels (item 9)

def test_a_folder_fitted_with_a_learned_phi_travels(tmp_path):
    """Fitted where the study ran (its learned map at a path relative to that folder), copied
    elsewhere and used from a third working directory, the folder scores the same numbers."""
    from kvstate.deploy import Detector, fit_detector
    from kvstate.deploy.folder import READS
    from kvstate.representations import RepresentationSettings, capture_representations
    from kvstate.state.learned import train_learned_phi

    lm = tiny_model("llama")
    model = tiny_model_folder(tmp_path / "m")
    (tmp_path / "p.jsonl").write_text(_rows())
    study, here = tmp_path / "study", os.getcwd()
    study.mkdir()
    os.chdir(study)
    try:  # as `kvstate study` records it: learned:runs/<study>/phi/<model>.learned.safetensors, relative
        rel = train_learned_phi(lm, ["a b c", "d e f g", "hello there"], [0, 1], n_features=8, steps=5).save(
            Path("runs/s/phi/m.learned.safetensors"))
        settings = RepresentationSettings(layers=(0, 1), phis=("identity", f"learned:{rel}"), sweep=False)
        items = [{"messages": [{"role": "user", "content": f"item {i} {'bad' * (i % 2)}"}]} for i in range(12)]
        cap = capture_representations(lm, items, settings, reads=list(READS), progress=False)
        rep = "kv-learned-S/n@end"
        X = np.stack([r[rep] for r in cap.rows])
        det = fit_detector(X, np.arange(12) % 2, rep, "logistic", model="m", dtype="float32", settings=settings.to_dict())
        det.save("det")
        assert json.loads(Path("det/detector.json").read_text())["settings"]["phis"][1] == "learned:phi/m.learned.safetensors"
        res = runner.invoke(app, ["score", str(tmp_path / "p.jsonl"), "-d", "det", "-m", str(model), "-o", str(tmp_path / "a.csv")])
        assert res.exit_code == 0, res.output
    finally:
        os.chdir(here)
    shutil.copytree(study / "det", tmp_path / "elsewhere" / "det")
    shutil.rmtree(study)  # the study, and the map it trained, are gone
    other = tmp_path / "other"
    other.mkdir()
    os.chdir(other)
    try:
        assert Detector.load("../elsewhere/det").settings["phis"][1].startswith("learned:/")
        res = runner.invoke(app, ["score", str(tmp_path / "p.jsonl"), "-d", "../elsewhere/det", "-m", str(model),
                                  "-o", str(tmp_path / "b.csv")])
        assert res.exit_code == 0, res.output
    finally:
        os.chdir(here)
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert len(a) == 8 and a["score"].notna().all()
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())


# ------------------------------------------------------------------ a full disk (item 14: fit, train-monitor)

@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


def _wide_detector(width: int = 2000):
    from kvstate.deploy import fit_detector
    from kvstate.representations import RepresentationSettings

    rng = np.random.default_rng(1)
    return fit_detector(rng.normal(size=(12, width)), np.arange(12) % 2, "kv-identity-S/n@end", "logistic", model="m",
                        dtype="float32", settings=RepresentationSettings(layers=(0, 1)).to_dict())


def test_fit_on_a_full_disk_is_one_line_and_keeps_the_old_detector(small_disk, monkeypatch, root, no_model):
    import kvstate.deploy

    Detector = kvstate.deploy.Detector
    Detector.load(root / "det").save(small_disk / "det")  # the detector already there
    _fill(small_disk, 8 * 1024)
    before = tree_hash(small_disk)
    monkeypatch.setattr(kvstate.deploy, "fit_from_study", lambda *a, **k: _wide_detector())  # fitting is not the point
    res = runner.invoke(app, ["fit", "--study", str(root), "--suite", "x", "--calibration", "", "-o", str(small_disk / "det")])
    err = _one_line_exit_2(res)
    assert str(small_disk / "det") in err and "space" in err.lower(), err
    assert tree_hash(small_disk) == before
    assert Detector.load(small_disk / "det").threshold == 0.5


def test_train_monitor_on_a_full_disk_is_one_line_and_keeps_the_old_monitor(small_disk, monkeypatch, root, no_model):
    import kvstate.study
    from kvstate.monitor import MonitorSpec, load_monitor

    shutil.copytree(root / "mon", small_disk / "mon")
    (small_disk / "store").mkdir()  # what train-monitor checks a study folder by
    _fill(small_disk, 8 * 1024)
    before = tree_hash(small_disk)
    spec = MonitorSpec("kv-identity-S/n@end", [0, 1], {"name": "identity"}, {"layers": [0, 1]}, threshold=2.0, fpr=0.01,
                       notes={"oof_auroc": 0.5})
    monkeypatch.setattr(kvstate.study, "train_monitor", lambda *a, **k: (spec, _wide_detector().estimator))
    res = runner.invoke(app, ["train-monitor", "--study", str(small_disk), "--suite", "x", "-o", str(small_disk / "mon")])
    err = _one_line_exit_2(res)
    assert str(small_disk / "mon") in err and "space" in err.lower(), err
    assert tree_hash(small_disk) == before
    assert load_monitor(small_disk / "mon")[0].threshold == 1.0


# ------------------------------------------------------------------ KVSTATE_CACHE (item 15)

def _mount(where: Path, options: str) -> None:
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")


@pytest.fixture(params=["file", "read-only", "empty, no network"])
def bad_cache(request, tmp_path, monkeypatch):
    """KVSTATE_CACHE as a file, on a read-only file system, or empty with PyPI unreachable."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip finds nothing, fast, for every case
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    if request.param == "file":
        cache.write_text("not a folder\n")
    else:
        cache.mkdir()
    if request.param == "read-only":
        _mount(cache, "ro,size=64k")
    monkeypatch.setenv("KVSTATE_CACHE", str(cache))
    try:
        yield cache
    finally:
        if request.param == "read-only":
            subprocess.run(["umount", "-l", str(cache)], capture_output=True, timeout=10)


@pytest.mark.parametrize("cmd", ["models list", "data show jailbreak", "score", "extract"])
def test_a_bad_cache_ends_in_one_line(root, bad_cache, tmp_path, cmd):
    from kvstate.deploy import Detector

    det = Detector.load(root / "det")
    det.model = "smollm2-135m"  # a registered model, not built in this cache
    det.save(tmp_path / "det")
    args = {"models list": ["models", "list"], "data show jailbreak": ["data", "show", "jailbreak"],
            "score": ["score", str(root / "p.jsonl"), "-d", str(tmp_path / "det"), "-o", str(tmp_path / "o.csv")],
            "extract": ["extract", "hi", "-o", str(tmp_path / "o.safetensors")]}[cmd]
    before = tree_hash(tmp_path)
    res = runner.invoke(app, args)
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), \
        repr(res.exception)
    if cmd == "models list" and bad_cache.is_dir():
        assert res.exit_code == 0 and "smollm2-135m" in res.stdout  # nothing to write: the table, all "no"
    else:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr
        assert "KVSTATE_CACHE" in errors[0] or "cache" in errors[0] or "Read-only" in errors[0], errors[0]
    after = tree_hash(tmp_path)  # every file that was there is unchanged (an empty cache may gain empty folders)
    assert {k: after.get(k) for k in before} == before
    assert all(v == "dir" for k, v in after.items() if k not in before), {k: v for k, v in after.items() if k not in before}


# ------------------------------------------------------------------ kvstate serve and SIGTERM (item 17)

def _health(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_serve_stopped_by_sigterm_leaves_no_process(tmp_path):
    """systemd and Kubernetes stop a service with SIGTERM: Ray must shut down whole, as on Ctrl-C
    (it left DashboardAgent and RuntimeEnvAgent running, orphaned). Loopback only, bounded in time."""
    pytest.importorskip("ray.serve", reason="serving is optional: pip install 'kvstate[serve]'")
    import signal
    import socket
    import time

    import psutil

    from kvstate.detect import get_detector
    from kvstate.monitor import MonitorSpec, save_monitor
    from kvstate.representations import RepresentationSettings

    model = tiny_model_folder(tmp_path / "m")
    spec = MonitorSpec("kv-elu-S/n-hn", [0, 1], {"name": "elu"}, RepresentationSettings(layers=(0, 1), max_dim=32).to_dict(),
                       threshold=5.0, fpr=0.01, model="m")
    save_monitor(tmp_path / "mon", spec, get_detector("mahalanobis").fit(np.random.default_rng(0).normal(size=(200, 32))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kvstate", "serve", "-d", str(tmp_path / "mon"), "-m", str(model),
                             "--host", "127.0.0.1", "--port", str(port), "--cpus-per-replica", "0.5"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    server = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 240
        while not _health(port):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not come up in 240 s"
            time.sleep(1)
        for p in server.children(recursive=True):
            seen[p.pid] = p
        names = {p.name() for p in seen.values() if p.is_running()}
        assert len(seen) >= 2, names  # Ray's own processes (gcs_server, raylet, agents, workers) run beside it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) is not None
        deadline = time.monotonic() + 30
        alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        while alive and time.monotonic() < deadline:
            time.sleep(1)
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.name(), " ".join(p.cmdline())[:120]) for p in alive]
        assert "Traceback" not in (tmp_path / "serve.log").read_text(errors="replace")
    finally:  # whatever the outcome: end the server and every process it started, one by one
        for p in [server, *seen.values()]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------ the demo evaluates what it runs (item 19)

def test_the_quick_study_takes_every_sysprompt_group():
    """`make demo` skipped sysprompt ("labels 0/1 occur in 2/7 groups"): 84 items held 7 of its 20
    groups, and the default model keeps its rule only in some (a forbidden word, a secret code)."""
    from kvstate.data import load_suite
    from kvstate.study import StudyConfig

    cfg = StudyConfig.quick()
    sys_groups = {it.group for it in load_suite("sysprompt", limit=cfg.limit_of("sysprompt"), seed=cfg.seed).items}
    assert len(sys_groups) == 20 and sum(g.startswith("sys-forbidden_word") for g in sys_groups) == 4
    assert cfg.limit_of("jailbreak") == cfg.limit == 84  # the other suites stay small
    assert StudyConfig.quick(limit=50).limit_of("sysprompt") == 50  # a user's --limit applies to every suite
    with pytest.raises(ValueError, match="limits"):
        StudyConfig(limits={"sysprompt": 0})


def test_a_monitor_folder_with_a_learned_phi_travels_too(tmp_path, monkeypatch):
    from kvstate.detect import get_detector
    from kvstate.monitor import load_monitor, save_monitor, spec_from_parts
    from kvstate.representations import RepresentationSettings
    from kvstate.state import get_phi
    from kvstate.state.learned import train_learned_phi

    lm = tiny_model("llama")
    monkeypatch.chdir(tmp_path)
    rel = train_learned_phi(lm, ["a b c", "hello there"], [0, 1], n_features=8, steps=3).save(Path("runs/s/phi/m.safetensors"))
    settings = RepresentationSettings(layers=(0, 1), phis=(f"learned:{rel}",), sweep=False)
    spec = spec_from_parts("kv-learned-S/n@end", settings, threshold=1.0, fpr=0.01, model="m")
    save_monitor("mon", spec, get_detector("mahalanobis").fit(np.random.default_rng(0).normal(size=(20, 4))))
    shutil.copytree("mon", tmp_path / "far" / "mon")
    shutil.rmtree("runs")
    shutil.rmtree("mon")
    monkeypatch.chdir(tmp_path / "far")
    loaded, _ = load_monitor("mon")
    assert Path(loaded.phi["path"]) == (tmp_path / "far" / "mon" / "phi" / "m.safetensors").resolve()
    assert get_phi(loaded.phi).layers == [0, 1]
    assert RepresentationSettings.from_dict(loaded.settings).feature_map("learned").layers == [0, 1]
