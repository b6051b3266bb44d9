"""Held-out transfer (train on one suite, test on another of the same task, threshold on benign chat),
`kvstate fit` and `kvstate score`: the same numbers as the study, choices that never see test labels,
one-line errors for a detector used with another model or other settings."""

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model_folder
from typer.testing import CliRunner

from kvstate.cli import app
from kvstate.deploy import Detector
from kvstate.detect import detector_name
from kvstate.study import StudyConfig, run_study

REPS = ["kv-identity-S/n", "kv-elu-S/n-hn", "kv-identity-ASB/n", "kv-elu-Sz/n", "kv-elu-refq", "kv-learned-S/n", "act-resid-last",
        "ctl-length", "ctl-bow"]
TOPICS = ["cats", "rivers", "bread", "music", "trains", "stars", "gardens", "maths", "boats", "tea", "snow", "maps"]
runner = CliRunner()


def _suite(path: Path, n: int, seed: int, word: str, scramble: bool = False, labels: bool = True) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        t = TOPICS[(i // 2) % len(TOPICS)]
        filler = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(0, 6)))
        rows.append({"id": f"{path.stem}-{i}", "text": f"Tell me about {t}" + (f" and {word} it" if label else " in few words")
                     + f". {filler}", "label": label, "group": f"g{i // 2}"})
    if scramble:
        perm = random.Random(99).sample([r["label"] for r in rows], len(rows))
        for r, lab in zip(rows, perm):
            r["label"] = lab
    if not labels:
        for r in rows:
            del r["label"]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _benign(path: Path, n: int = 16) -> Path:
    rows = [{"id": f"b{i}", "text": f"Please tell me something nice about {TOPICS[i % len(TOPICS)]} number {i}.", "label": 0}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _cfg(root: Path, test: Path) -> StudyConfig:
    return StudyConfig(models=[str(root / "tiny-llama")], suites=[str(root / "alpha.jsonl")], limit=None, n_splits=3, n_boot=50,
                       phis=["identity", "elu"], detectors=["mahalanobis", "pca", "knn", "logistic"], all_detectors_for=REPS, chunk=8,
                       batch_size=4, layers="all", representations=REPS, monitor_items=0, fidelity_layers=None,
                       transfer={"alpha": [str(test)]}, calibration_suite=str(root / "benign.jsonl"), calibration_items=16,
                       transfer_fpr=0.1, decays=[0.9], compress=[4, 4], query_states=True,
                       reference_queries=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    tiny_model_folder(root / "tiny-llama")
    _suite(root / "alpha.jsonl", 24, 0, "destroy")
    test = _suite(root / "gamma.jsonl", 16, 2, "attack")
    _benign(root / "benign.jsonl")
    res = run_study(_cfg(root, test), root / "run")
    return root, res


def test_heldout_rows_per_family_with_benign_threshold(study):
    root, res = study
    block = res["heldout"]["tiny-llama/alpha -> gamma"]
    assert block["n_test"] == 16 and block["calibration"] == "benign" and block["n_calibration"] == 16
    fams = {(r["family"], r["supervised"]) for r in block["rows"]}
    assert {("kv-state", True), ("activation", True), ("control", True), ("kv-state", False)} <= fams
    y = np.array([i % 2 for i in range(16)])
    from sklearn.metrics import roc_auc_score

    for r in block["rows"]:
        s = np.array(r["test_scores"])
        assert r["auroc"] == pytest.approx(roc_auc_score(y, s))
        assert r["threshold"] is not None and r["tpr_at_benign_fpr"] == pytest.approx(float((s[y == 1] > r["threshold"]).mean()))
        assert r["fpr_realised"] == pytest.approx(float((s[y == 0] > r["threshold"]).mean()))
    assert len(block["layer_sweep"]["layers"]) == 2


def test_scrambled_test_labels_change_no_choice(study, tmp_path):
    root, res = study
    scrambled = _suite(root / "gamma.jsonl", 16, 2, "attack", scramble=True)  # same prompts, other labels
    cfg = _cfg(root, scrambled)
    phi_file = root / "run" / "phi" / "tiny-llama.learned.safetensors"
    made = phi_file.stat().st_mtime_ns
    refq_file = root / "run" / "phi" / "tiny-llama.refq.safetensors"
    refq_made = refq_file.stat().st_mtime_ns
    again = run_study(cfg, root / "run")  # resumes from the store: only the labels of the test suite differ
    assert phi_file.stat().st_mtime_ns == made  # the learned map is trained once per study folder, then reused
    assert refq_file.stat().st_mtime_ns == refq_made  # and so are the reference queries
    _suite(root / "gamma.jsonl", 16, 2, "attack")  # restore for the other tests
    pick = lambda b: [(r["family"], r["supervised"], r["representation"], r["detector"]) for r in b["rows"]]  # noqa: E731
    a, b = res["heldout"]["tiny-llama/alpha -> gamma"], again["heldout"]["tiny-llama/alpha -> gamma"]
    assert pick(a) == pick(b)
    assert [r["auroc"] for r in a["rows"]] != [r["auroc"] for r in b["rows"]]  # the test labels did change
    assert [(r["option"], r["representation"]) for r in a["ablation"]] == [(r["option"], r["representation"]) for r in b["ablation"]]
    assert "learned phi (Hedgehog)" in {r["option"] for r in b["ablation"]}


def test_ablation_rows_are_each_options_training_cv_choice(study):
    root, res = study
    block = res["heldout"]["tiny-llama/alpha -> gamma"]
    options = {r["option"]: r for r in block["ablation"]}
    assert {"plain S/n", "decay 0.9", "compressed A S B^T", "head-normalised", "activation (best)", "control: BoW",
            "control: length", "learned phi (Hedgehog)", "bilinear probe on A S B^T",
            "virtual-query probe phi(q) S / phi(q).z", "benign reference queries' read-out"} <= set(options)
    table = res["tasks"]["tiny-llama/alpha"]["table"]
    probes = res["tasks"]["tiny-llama/alpha"]["state_probes"]
    # the state probes read the unprojected compressed and query states; their rows stay out of the table that
    # deploys choose from, and the query state (tens of thousands of values) is read by its probe only
    assert {r["representation"] for r in probes} - {"kv-identity-ASB/n@end", "kv-elu-ASB/n@end"} == {"kv-elu-Sz/n@end"}
    assert all(r["detector"] == "query_probe" and r["dim"] == r["dim_used"] for r in probes)
    assert not any(t["detector"] == "query_probe" or "Sz/n" in t["representation"] for t in table)
    for option, readout in (("bilinear probe on A S B^T", "ASB/n"), ("virtual-query probe phi(q) S / phi(q).z", "Sz/n")):
        best_probe = max((t for t in probes if readout in t["representation"]), key=lambda t: (t["auroc"], t["representation"]))
        assert options[option]["representation"] == best_probe["representation"]
        assert options[option]["in_distribution_auroc"] == best_probe["auroc"]
    from kvstate.representations import kv_option

    for option, r in options.items():
        if option in ("plain S/n", "decay 0.9", "compressed A S B^T", "head-normalised"):
            group = [t for t in table if t["detector"] == "logistic" and t["representation"].endswith("@end")
                     and t["representation"].startswith("kv-") and kv_option(t["representation"]) == option]
            best = max(group, key=lambda t: (t["auroc"], t["representation"]))
            assert r["representation"] == best["representation"] and r["in_distribution_auroc"] == best["auroc"]
        assert 0.0 <= r["auroc"] <= 1.0 and r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
        assert r["threshold"] is not None and 0.0 <= r["tpr_at_benign_fpr"] <= 1.0
    kv = next(r for r in block["rows"] if r["family"] == "activation" and r["supervised"])
    if kv["detector"] == "logistic":  # the family's choice is the ablation's activation row when both are logistic
        assert options["activation (best)"]["representation"] == kv["representation"]


def test_fit_then_score_equals_the_study(study, tmp_path):
    root, res = study
    row = next(r for r in res["heldout"]["tiny-llama/alpha -> gamma"]["rows"] if r["family"] == "kv-state" and r["supervised"])
    det_dir = tmp_path / "det"
    r = runner.invoke(app, ["fit", "--study", str(root / "run"), "--suite", "alpha", "-m", str(root / "tiny-llama"),
                            "--representation", row["representation"], "--detector", detector_name(row["detector"]),
                            "--calibration", "benign", "--fpr", "0.1", "-o", str(det_dir)])
    assert r.exit_code == 0, r.output
    det = Detector.load(det_dir)
    assert det.threshold == pytest.approx(row["threshold"], abs=1e-9) and det.calibration["n"] == 16
    # prompt-only training items: calibrated at the prompt, as the study's row was (issue #31)
    assert det.training["reply"] is False and det.calibration["provenance"]["read"] == "prompt"
    assert row["calibration_read"] == "prompt"
    r = runner.invoke(app, ["score", "-d", str(det_dir), str(root / "gamma.jsonl"), "-o", str(tmp_path / "s.parquet"),
                            "-m", str(root / "tiny-llama"), "--batch-size", "4", "--chunk", "8"])
    assert r.exit_code == 0, r.output
    assert "AUROC" in r.output and "TPR" in r.output
    got = pd.read_parquet(tmp_path / "s.parquet")
    np.testing.assert_allclose(got["score"].to_numpy(), row["test_scores"], atol=1e-6, rtol=0)
    assert (got["flag"].to_numpy() == (got["score"].to_numpy() > det.threshold)).all()


def test_unlabelled_file_gives_scores_only_and_scoring_resumes(study, tmp_path):
    root, res = study
    det_dir = tmp_path / "det"
    assert runner.invoke(app, ["fit", "--study", str(root / "run"), "--suite", "alpha", "-m", str(root / "tiny-llama"),
                               "--calibration", "", "-o", str(det_dir)]).exit_code == 0
    plain = _suite(tmp_path / "plain.jsonl", 16, 2, "attack", labels=False)
    from kvstate.deploy import score_file
    from kvstate.models import load_model

    lm = load_model(root / "tiny-llama")
    calls = []

    def boom(n):
        calls.append(n)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed after the first chunk was written

    with pytest.raises(KeyboardInterrupt):
        score_file(det_dir, lm, plain, tmp_path / "p.csv", chunk=8, batch_size=4, progress=boom)
    summary = score_file(det_dir, lm, plain, tmp_path / "p.csv", chunk=8, batch_size=4)
    assert summary["chunks_reused"] == 1 and summary["chunks_computed"] == 1 and "auroc" not in summary
    df = pd.read_csv(tmp_path / "p.csv")
    assert list(df.columns) == ["row", "id", "score", "flag"] and len(df) == 16


def test_detector_with_another_model_or_settings_is_a_one_line_error(study, tmp_path):
    root, res = study
    det_dir = tmp_path / "det"
    assert runner.invoke(app, ["fit", "--study", str(root / "run"), "--suite", "alpha", "-m", str(root / "tiny-llama"),
                               "--calibration", "", "-o", str(det_dir)]).exit_code == 0
    tiny_model_folder(tmp_path / "tiny-qwen", "qwen2")
    r = runner.invoke(app, ["score", "-d", str(det_dir), str(root / "gamma.jsonl"), "-o", str(tmp_path / "s.parquet"),
                            "-m", str(tmp_path / "tiny-qwen")])
    assert r.exit_code == 2 and "tiny-llama" in r.output and "tiny-qwen" in r.output and len(r.output.strip().splitlines()) == 1
    det = Detector.load(det_dir)
    with pytest.raises(ValueError, match="phis: detector .* given"):
        det.check_settings({**det.settings, "phis": ["identity"]})
    (det_dir / "estimator.safetensors").write_bytes(b"truncated")
    r = runner.invoke(app, ["score", "-d", str(det_dir), str(root / "gamma.jsonl")])
    assert r.exit_code == 2 and "estimator.safetensors" in r.output


def test_monitor_runs_a_detector_folder_and_stop_needs_a_threshold(study, tmp_path):
    root, res = study
    det_dir = tmp_path / "det"
    assert runner.invoke(app, ["fit", "--study", str(root / "run"), "--suite", "alpha", "-m", str(root / "tiny-llama"),
                               "--representation", "kv-elu-S/n-hn@end", "--detector", "logistic", "--calibration", "",
                               "-o", str(det_dir)]).exit_code == 0
    model = str(root / "tiny-llama")
    r = runner.invoke(app, ["monitor", "-d", str(det_dir), "-m", model, "--max-new-tokens", "3", "--stop", "Tell me about cats"])
    assert r.exit_code == 2 and "--stop needs a threshold" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["monitor", "-d", str(det_dir), "-m", model, "--max-new-tokens", "3", "--aggregate", "ema",
                            "Tell me about cats"])
    assert r.exit_code == 0 and "ema of scores" in r.output, r.output
    r = runner.invoke(app, ["monitor", "-d", str(det_dir), "-m", model, "--aggregate", "median", "Tell me about cats"])
    assert r.exit_code == 2 and "aggregate must be one of" in r.output


def test_evaluate_reruns_the_heldout_stage_from_the_stores(study, tmp_path):
    import shutil

    from kvstate.study import evaluate_study

    root, res = study
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    again = evaluate_study(copy)
    key = "tiny-llama/alpha -> gamma"
    strip = lambda b: json.loads(json.dumps(b))  # noqa: E731  (tuples vs lists)
    assert strip(again["heldout"][key]) == strip(res["heldout"][key])
    again = evaluate_study(copy, n_boot=20)  # an evaluation setting reaches the held-out stage too
    assert [r["auroc_ci"] for r in again["heldout"][key]["rows"]] != [r["auroc_ci"] for r in res["heldout"][key]["rows"]]


def _planted_suite(width: int, recorded: int):
    """A SuiteData whose compressed state (2 heads of 4 x 4) carries a planted rank-1 signal;
    ``recorded`` is the width the store says the recorder produced (it differs when projected)."""
    import pandas as pd

    from kvstate.data import Item
    from kvstate.study.types import SuiteData

    rng = np.random.default_rng(0)
    n = 40
    y = np.arange(n) % 2
    X = rng.normal(size=(n, width)).astype(np.float32)
    X[:, 0] += 2.0 * y  # one entry of the first head's matrix: a rank-1 bilinear form reads it
    names = {"kv-elu-ASB/n@end": X, "act-resid-last@end": rng.normal(size=(n, 8)).astype(np.float32),
             "ctl-length@end": rng.normal(size=(n, 1)).astype(np.float32)}
    dims = json.dumps({"kv-elu-ASB/n@end": recorded, "act-resid-last@end": 8, "ctl-length@end": 1})
    index = pd.DataFrame({"label": y, "group": [f"g{i // 2}" for i in range(n)], "n_tokens": 10 + rng.integers(0, 5, n),
                          "dims": dims, "time_ms": 1.0})
    items = [Item(f"i{i}", f"g{i // 2}", [{"role": "user", "content": f"q{i}"}], None, int(y[i]), "test") for i in range(n)]
    return SuiteData("planted", index, names, items)


def test_state_probe_reads_whole_compressed_states_and_skips_projected_ones():
    from kvstate.study.evaluate import evaluate_task

    cfg = StudyConfig(n_splits=3, n_boot=20, detectors=["mahalanobis", "logistic"], compress=[4, 4])
    task = evaluate_task(_planted_suite(32, 32), cfg, log=lambda *_: None)
    (probe,) = task["state_probes"]
    assert probe["detector"] == "query_probe" and probe["auroc"] > 0.9  # the planted signal is found
    # a store from before the compressed state was kept whole: its 32 values are a projection, not 2 heads
    assert evaluate_task(_planted_suite(32, 4096), cfg, log=lambda *_: None)["state_probes"] == []


def test_virtual_query_probe_reads_the_whole_query_state():
    """A planted signal in one head's read-out phi(q*) S / phi(q*).z is found by the virtual query,
    whose shape comes from the widths of Sz/n and z/n; a width that is not such a state is refused."""
    import pandas as pd

    from kvstate.data import Item
    from kvstate.detect import pack_states
    from kvstate.study.evaluate import evaluate_task, state_probe
    from kvstate.study.types import SuiteData

    rng = np.random.default_rng(1)
    n, N, d = 48, 3, 4  # 3 heads of 4 x 4
    y = np.arange(n) % 2
    z = rng.uniform(0.5, 1.5, size=(n, N, 1, d))
    S = rng.normal(size=(n, N, 1, d, d)) * 0.3
    S[:, 1, 0, :, 2] += np.outer(1.5 * y - 0.75, np.ones(d)) * z[:, 1, 0, :]  # head 1 reads +-0.75 in value 2
    X = pack_states(S, z.astype(np.float32))
    names = {"kv-elu-Sz/n@end": X, "act-resid-last@end": rng.normal(size=(n, 8)).astype(np.float32),
             "ctl-length@end": rng.normal(size=(n, 1)).astype(np.float32)}
    dims = json.dumps({"kv-elu-Sz/n@end": X.shape[1], "kv-elu-z/n@end": N * d, "act-resid-last@end": 8, "ctl-length@end": 1})
    index = pd.DataFrame({"label": y, "group": [f"g{i // 2}" for i in range(n)], "n_tokens": 10 + rng.integers(0, 5, n),
                          "dims": dims, "time_ms": 1.0})
    items = [Item(f"i{i}", f"g{i // 2}", [{"role": "user", "content": f"q{i}"}], None, int(y[i]), "test") for i in range(n)]
    data = SuiteData("planted", index, names, items)
    cfg = StudyConfig(n_splits=3, n_boot=20, detectors=["mahalanobis", "logistic"])
    probe = state_probe(data, "kv-elu-Sz/n@end", cfg)
    assert probe.kind == "query" and probe.with_z and tuple(probe.state_shape) == (N, 1, d, d)
    task = evaluate_task(data, cfg, log=lambda *_: None)
    (row,) = task["state_probes"]
    assert row["representation"] == "kv-elu-Sz/n@end" and row["auroc"] > 0.9
    assert {r["representation"] for r in task["table"]} == {"act-resid-last@end", "ctl-length@end"}  # the probe's only
    bad = SuiteData("bad", index.assign(dims=json.dumps({"kv-elu-Sz/n@end": X.shape[1], "kv-elu-z/n@end": 7})), names, items)
    with pytest.raises(ValueError, match="not heads of d x d S/n then d z/n"):
        state_probe(bad, "kv-elu-Sz/n@end", cfg)
