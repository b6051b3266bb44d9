"""End-to-end study on a tiny random model with small user suites; kill-and-resume gives identical results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_model_folder

from kvstate.study import StudyConfig, run_study

REPS = ["kv-identity-S/n", "kv-elu-S/n-hn", "act-resid-last", "ctl-length"]
TIMING = {"time_per_item_ms", "seconds", "created", "command"}


def _suite(path: Path, n: int, seed: int, word: str) -> Path:
    import random

    rng = random.Random(seed)
    topics = ["cats", "rivers", "bread", "music", "trains", "stars", "gardens", "maths", "boats", "tea", "snow", "maps"]
    rows = []
    for i in range(n):
        label = i % 2
        t = topics[(i // 2) % len(topics)]
        filler = " ".join(rng.choice(topics) for _ in range(rng.randint(0, 6)))
        text = f"Tell me about {t}" + (f" and {word} it" if label else " in few words") + f". {filler}"
        rows.append({"id": f"{path.stem}-{i}", "text": text, "label": label, "group": f"g{i // 2}"})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    tiny_model_folder(root / "tiny-llama")
    suites = [_suite(root / "alpha.jsonl", 24, 0, "destroy"), _suite(root / "beta.jsonl", 24, 1, "steal")]
    benign = root / "benign.jsonl"
    benign.write_text("\n".join(json.dumps({"id": f"b{i}", "text": f"Say something kind about number {i}.", "label": 0})
                                for i in range(8)))
    cfg = StudyConfig(models=[str(root / "tiny-llama")], suites=[str(s) for s in suites], limit=None, n_splits=3,
                      n_boot=50, phis=["identity", "elu"], detectors=["mahalanobis", "knn", "logistic"], chunk=8,
                      layers="all", representations=REPS, monitor_suites=["alpha"], monitor_items=6,
                      max_new_tokens=4, fidelity_layers="all", calibration_suite=str(benign), monitor_every=1)
    return root, cfg


def html_verdicts(path):
    return "".join(line for line in path.read_text().splitlines() if 'class="verdict"' in line)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_end_to_end_tiny_study(setup):
    root, cfg = setup
    res = run_study(cfg, root / "run", command="test")
    assert set(res["tasks"]) == {"tiny-llama/alpha", "tiny-llama/beta"}
    task = res["tasks"]["tiny-llama/alpha"]
    fams = {r["family"] for r in task["table"]}
    assert fams == {"kv-state", "activation", "control"}
    assert all(0 <= r["auroc"] <= 1 and r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"] for r in task["table"])
    assert task["layer_sweep"]["layers"] == [0, 1]
    assert 0.2 < task["shuffled_label_auroc"] < 0.8
    assert any(k.startswith("tiny-llama | ") for k in res["transfer"])
    fid = res["fidelity"]["tiny-llama"]
    assert fid["layers"] == [0, 1] and set(fid["series"]) == {"identity", "elu", "learned"}  # the study's own Hedgehog map
    assert (root / "run" / "phi" / "tiny-llama.learned.safetensors").exists()
    assert all(v > 0 for s in fid["series"].values() for v in s)
    mon = res["monitor"]["tiny-llama/alpha"]
    assert mon["n_test"] == 6 and mon["n_fit"] == 6 and mon["n_calibration"] == 6 and mon["calibration"] == "benign"
    assert [r["monitor"] for r in mon["rows"]] == ["prefix probe", "end-state probe", "unsupervised (end states)",
                                                   "position control"]
    for r in mon["rows"]:
        assert 0 <= r["auroc"] <= 1 and r["threshold"] is not None and 0 <= r["tpr_at_benign_fpr"] <= 1
        assert 0 <= r["fpr_realised"] <= 1
    assert 0 <= mon["end_state_study_probe"]["auroc"] <= 1
    sel = task["selection_corrected"]
    assert set(sel["families"]) == {"kv-state", "activation"} and sel["n_repeats"] == 20
    assert all(0 <= f["lo"] <= f["auroc"] <= f["hi"] <= 1 and sum(f["picks"].values()) == 40 for f in sel["families"].values())
    assert "Chosen on half the groups" in html_verdicts(root / "run" / "report.html")
    html = (root / "run" / "report.html").read_text()
    assert "tiny-llama/alpha" in html and json.loads((root / "run" / "results.json").read_text())["tasks"]
    # a rerun recomputes nothing and gives the same numbers
    again = run_study(cfg, root / "run", command="test")
    assert _strip(again["tasks"]) == _strip(res["tasks"])


def test_evaluate_reruns_from_the_store_without_the_model(setup, tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from kvstate import models
    from kvstate.cli import app

    root, cfg = setup
    res = run_study(cfg, root / "run", command="test")  # cached: recomputes nothing
    shutil.copytree(root / "run", tmp_path / "run")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("evaluate must not load a model"))
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert _strip(again["tasks"]) == json.loads(json.dumps(_strip(res["tasks"])))
    assert _strip(again["transfer"]) == json.loads(json.dumps(_strip(res["transfer"])))
    assert again["monitor"] == json.loads(json.dumps(res["monitor"])) and "re-run from the store" in again["meta"]["notes"][-1]
    r = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "run"), "--detectors", "mahalanobis", "--n-boot", "20"])
    assert r.exit_code == 0, r.output
    narrowed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {row["detector"] for t in narrowed["tasks"].values() for row in t["table"]} <= {"mahalanobis", "pca64+mahalanobis"}
    assert narrowed["meta"]["config"]["n_boot"] == 20 and (tmp_path / "run" / "report.html").exists()
    # bad input: one line, nothing written
    before = (tmp_path / "run" / "results.json").read_bytes()
    r = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "run"), "--detectors", "no-such-detector"])
    assert r.exit_code == 2 and "no-such-detector" in r.output and len(r.output.strip().splitlines()) == 1
    assert (tmp_path / "run" / "results.json").read_bytes() == before
    r = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "kvstate study" in r.output and not (tmp_path / "nothing").exists()
    shutil.rmtree(tmp_path / "run" / "store" / "tiny-llama" / "alpha")
    r = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and "store" in r.output and (tmp_path / "run" / "results.json").read_bytes() == before


def test_killed_study_resumes_to_identical_results(setup, tmp_path):
    root, cfg = setup
    toml = tmp_path / "study.toml"
    toml.write_text("[study]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        "models": cfg.models, "suites": cfg.suites, "n_splits": 3, "n_boot": 50, "phis": cfg.phis,
        "detectors": cfg.detectors, "chunk": 4, "representations": REPS, "monitor_items": 0, "layers": "all", "batch_size": 2}.items()) + "\nlimit = 24\n")
    cmd = [sys.executable, "-m", "kvstate.cli", "study", "--config", str(toml), "-o", str(tmp_path / "killed")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = tmp_path / "killed" / "store" / "tiny-llama" / "alpha" / "index.parquet"
    deadline = time.time() + 120
    while not index.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the study finished before it could be killed; make it bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "report.html").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = subprocess.run(cmd[:-1] + [str(tmp_path / "straight")], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = json.loads((tmp_path / "killed" / "results.json").read_text())
    b = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert _strip(a["tasks"]) == _strip(b["tasks"]) and _strip(a["transfer"]) == _strip(b["transfer"])


def test_study_bad_input_errors(setup, tmp_path):
    from typer.testing import CliRunner

    from kvstate.cli import app

    root, cfg = setup
    r = CliRunner().invoke(app, ["study", "--suites", "no-such-suite", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown suite" in r.output
    r = CliRunner().invoke(app, ["study", "--models", "gpt-17", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown model" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nprojection = "dense"\n')
    r = CliRunner().invoke(app, ["study", "-c", str(bad), "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "projection must be one of 'gaussian', 'sparse'; got 'dense'" in r.output and not (tmp_path / "y").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(app, ["study", "--quick", "-o", str(blocker / "out")])
    assert r.exit_code == 2 and "choose another --out" in r.output
    # a store made with other settings: one clear line, nothing lost
    run_study(cfg, root / "run2", command="test")
    before = sorted(p.name for p in (root / "run2" / "store" / "tiny-llama" / "alpha" / "shards").iterdir())
    r = CliRunner().invoke(app, ["study", "--models", cfg.models[0], "--suites", cfg.suites[0], "--layers", "0",
                                 "-o", str(root / "run2")])
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "other settings" in errors[0], r.output
    after = sorted(p.name for p in (root / "run2" / "store" / "tiny-llama" / "alpha" / "shards").iterdir())
    assert before == after


def test_train_monitor_and_monitor_cli(setup, tmp_path):
    from typer.testing import CliRunner

    from kvstate.cli import app

    root, cfg = setup
    if not (root / "run" / "results.json").exists():
        run_study(cfg, root / "run", command="test")
    runner = CliRunner()
    r = runner.invoke(app, ["train-monitor", "--study", str(root / "run"), "--model", cfg.models[0], "--suite", "alpha",
                            "--representation", "kv-elu-S/n-hn@end", "--fpr", "0.05", "-o", str(tmp_path / "mon")])
    assert r.exit_code == 0, r.output
    assert "threshold" in r.output and (tmp_path / "mon" / "detector.safetensors").exists()
    r = runner.invoke(app, ["monitor", "-d", str(tmp_path / "mon"), "-m", cfg.models[0], "--max-new-tokens", "4",
                            "--no-stop", "Tell me about <script>alert(1)</script> cats"])
    assert r.exit_code == 0, r.output
    assert "flagged" in r.output
    r = runner.invoke(app, ["train-monitor", "--study", str(root / "run"), "--model", cfg.models[0], "--suite", "gamma",
                            "-o", str(tmp_path / "m2")])
    assert r.exit_code == 2 and "no stored states" in r.output
    r = runner.invoke(app, ["train-monitor", "--study", str(root / "run"), "--model", cfg.models[0], "--suite", "alpha",
                            "--representation", "act-resid-last@end", "-o", str(tmp_path / "m3")])
    assert r.exit_code == 2 and "not a state read-out" in r.output
    r = runner.invoke(app, ["train-monitor", "--study", str(root / "run"), "--model", cfg.models[0], "--suite", "alpha",
                            "--per-sequence", "--max-new-tokens", "3", "--fpr", "0.05", "-o", str(tmp_path / "m4")])
    assert r.exit_code == 0, r.output
    assert "per reply" in r.output
    spec = json.loads((tmp_path / "m4" / "monitor.json").read_text())
    cal = spec["notes"]["calibration"]
    assert cal["level"] == "sequence" and cal["n_prompts"] >= 2 and cal["max_new_tokens"] == 3
    assert spec["notes"]["n_normal"] < json.loads((tmp_path / "mon" / "monitor.json").read_text())["notes"]["n_normal"]


@pytest.mark.slow
def test_study_on_smollm2_small_subset(tmp_path):
    """The real default model end to end on a small user suite (few representations, few items)."""
    suite = _suite(tmp_path / "mini.jsonl", 16, 3, "burn")
    cfg = StudyConfig(models=["smollm2-135m"], suites=[str(suite)], limit=None, n_splits=2, n_boot=20,
                      phis=["identity", "elu"], detectors=["mahalanobis", "logistic"], layers="middle",
                      representations=["kv-elu-S/n-hn", "act-resid-last", "ctl-length"], monitor_items=0)
    res = run_study(cfg, tmp_path / "out", command="test")
    task = res["tasks"]["smollm2-135m/mini"]
    assert {r["family"] for r in task["table"]} == {"kv-state", "activation", "control"}
    assert all(0 <= r["auroc"] <= 1 for r in task["table"])
    assert (tmp_path / "out" / "report.html").exists()


def test_stage_progress_lines_and_summary(capsys):
    from kvstate.study.progress import Stage as _Stage

    with _Stage("capture demo", 3, every=0.0) as stage:
        for _ in range(3):
            stage.advance(1)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("  capture demo: 1/3 items,") and "ETA" in err[0] and len(err) == 3
    assert err[-1].startswith("  capture demo: 3 items in ")  # the one-line summary
    with pytest.raises(RuntimeError), _Stage("failing", 2) as stage:
        raise RuntimeError("boom")
    assert capsys.readouterr().err == ""  # no summary for a stage that failed
