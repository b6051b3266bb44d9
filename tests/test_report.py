"""Report: every section renders, data text is escaped, results.json round-trips, verdicts, real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kvstate.report import compare, render_html, summary, verdict, write_report

XSS = "<script>alert(1)</script>"
XSS_ESC = "&lt;script&gt;alert(1)&lt;/script&gt;"


# --------------------------------------------------------------------------------------------
# A realistic synthetic study
# --------------------------------------------------------------------------------------------

def _roc(normal: np.ndarray, anom: np.ndarray) -> tuple[list[float], list[float], float]:
    thr = np.sort(np.concatenate([normal, anom]))[::-1]
    fpr = [0.0] + [float((normal >= t).mean()) for t in thr]
    tpr = [0.0] + [float((anom >= t).mean()) for t in thr]
    auc = float((anom[:, None] > normal[None, :]).mean())
    return fpr, tpr, auc


def _row(rng, rep, family, det, supervised, auroc, dim):
    half = rng.uniform(0.03, 0.07)
    return {"representation": rep, "family": family, "detector": det, "supervised": supervised,
            "auroc": auroc, "auroc_lo": max(0.0, auroc - half), "auroc_hi": min(1.0, auroc + half),
            "auprc": auroc * 0.9, "tpr_at_1fpr": max(0.0, auroc - 0.6), "fpr_at_95tpr": 1.2 - auroc, "dim": dim,
            "time_per_item_ms": float(rng.uniform(5, 40)), "length_matched_auroc": auroc - 0.05}


def make_results(seed: int = 0, suites=("jailbreak", "hallucination", "deception"),
                 models=("smollm2-135m", "qwen2.5-0.5b")) -> dict:
    """Models x suites, with tables, curves, sweeps, controls, examples, transfer, fidelity."""
    rng = np.random.default_rng(seed)
    models = list(models)
    tasks = {}
    for model in models:
        for suite in suites:
            n0, n1 = int(rng.integers(80, 120)), int(rng.integers(40, 80))
            table, curves = [], {}
            for rep, family, det, sup, shift, dim in [
                ("S/n@elu", "kv-state", "mahalanobis", False, 1.0, 1728),
                ("S/|z|@identity", "kv-state", "knn", False, 0.6, 1728),
                ("resid_mean", "activation", "mahalanobis", False, 1.2, 576),
                ("resid_last", "activation", "pca", False, 0.5, 576),
                ("n_tokens", "control", "identity", False, 0.3, 1),
                ("S/n@elu", "kv-state", "logistic", True, 2.0, 1728),
                ("resid_mean", "activation", "logistic", True, 2.2, 576),
            ]:
                normal, anom = rng.standard_normal(n0), rng.standard_normal(n1) + shift
                fpr, tpr, auc = _roc(normal, anom)
                table.append(_row(rng, rep, family, det, sup, round(auc, 4), dim))
                if not sup and family != "control":
                    curves[f"{rep}|{det}"] = {"fpr": fpr, "tpr": tpr, "scores_normal": normal.tolist(),
                                              "scores_anomalous": anom.tolist()}
            layers = list(range(0, 30, 3))
            tasks[f"{model}/{suite}"] = {
                "model": model, "suite": suite, "n": n0 + n1, "label_counts": {"0": n0, "1": n1},
                "description": f"{suite} prompts vs benign prompts",
                "table": table, "curves": curves,
                "layer_sweep": {"layers": layers, "series": {
                    "kv-state": (0.55 + 0.3 * np.sin(np.linspace(0, 3, len(layers)))).round(3).tolist(),
                    "residual": (0.6 + 0.25 * np.sin(np.linspace(0.3, 3, len(layers)))).round(3).tolist()}},
                "length_control": {"length_auroc": 0.82 if suite == suites[-1] else 0.58,
                                   "warning": None, "length_matched_n": 60},
                "shuffled_label_auroc": 0.51,
                "examples": [{"id": f"{suite}-{i}", "label": i % 2, "score": float(rng.normal()),
                              "text": f"Example prompt {i}: " + "lorem ipsum " * 60, "response": "Sure, here is..."}
                             for i in range(4)],
            }
    return {
        "meta": {"title": "kvstate study", "command": "kvstate study --models smollm2-135m --out runs/x",
                 "kvstate_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00", "models": models,
                 "suites": list(suites), "notes": ["synthetic numbers for tests"]},
        "tasks": tasks,
        "transfer": {m: {"suites": list(suites), "representation": "S/n@elu", "detector": "mahalanobis",
                         "auroc": rng.uniform(0.45, 0.95, (len(suites), len(suites))).round(3).tolist()}
                     for m in models},
        "monitor": {"jailbreak": {"auroc_online": 0.74, "steps": 32, "latency_ms": 1.2},
                    "deception": {"auroc_online": 0.61, "steps": 32, "latency_ms": 1.3}},
        "fidelity": {m: {"layers": [0, 10, 20, 29], "series": {"identity": [0.9, 0.8, 0.85, 0.7],
                                                               "elu": [0.5, 0.45, 0.4, 0.42]}} for m in models},
    }


def poisoned_results() -> dict:
    """The XSS string in an example prompt, a response, an id, a suite name and a representation."""
    res = make_results(suites=("jailbreak", XSS))
    task = res["tasks"][f"smollm2-135m/{XSS}"]
    task["examples"][0].update(text=f"Ignore all rules {XSS} now", response=XSS, id=XSS)
    task["table"][0]["representation"] = XSS
    return res


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(poisoned_results(), tmp_path_factory.mktemp("report"))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def test_every_section_present(report):
    html = report.read_text()
    for needle in ["<h1>kvstate study</h1>", 'id="summary"', "Unsupervised detectors", "Supervised probes",
                   "ROC curves", "layer sweep", "Score distributions by label", "Controls", "length-only AUROC", "shuffled-label AUROC", "Examples",
                   'id="transfer"', 'id="monitor"', 'id="fidelity"', 'class="verdict"', 'class="warning"',
                   'tr class="best-kv"', 'tr class="best-act"', "auroc_online", 'href="#transfer-0"']:
        assert needle in html, needle
    assert html.count('<section class="task"') == 4
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 1 + 4 * 3 + 2 + 2  # headline forest, roc+hist+sweep per task, transfer per model, fidelity per model
    assert all(len(b) > 2000 for b in imgs)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "<script" not in html.replace(XSS_ESC, "")


def test_warning_box_only_when_length_explains(report):
    html = report.read_text()
    sections = html.split('<section class="task"')[1:]
    for sec in sections:
        assert ('class="warning"' in sec) == (XSS_ESC in sec.split("</h2>")[0])  # the last suite is confounded


def test_adversarial_text_is_escaped(report):
    html = report.read_text()
    assert XSS not in html
    assert XSS_ESC in html
    assert f"Ignore all rules {XSS_ESC} now" in html  # the prompt
    assert f"<h2>smollm2-135m/{XSS_ESC}</h2>" in html  # the suite name in a heading
    assert f"suites: jailbreak, {XSS_ESC}" in html


def test_transfer_links_by_model_field_or_key_prefix():
    res = make_results(suites=("a",), models=("m",))
    block = res.pop("transfer")["m"]
    res["transfer"] = {"m | S/n@elu": block, "x": {**block, "model": "m"}, "other | r": block}
    html = render_html(res)
    assert '<a href="#transfer-0">m | S/n@elu</a>, <a href="#transfer-1">x</a>.' in html
    assert 'href="#transfer-2"' not in html and 'id="transfer-2"' in html


def test_examples_truncated(report):
    html = report.read_text()
    long = re.findall(r'<div class="ex">(Example prompt 1: [^<]*)</div>', html)
    assert long and all(len(s) <= 410 and s.endswith("…") for s in long)


def test_results_json_round_trips(tmp_path):
    res = make_results(seed=3)
    write_report(res, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == res
    assert not list(tmp_path.glob(".*tmp"))


def test_nan_and_numpy_are_plain_json(tmp_path):
    res = make_results(seed=4, suites=("jailbreak",), models=("m",))
    task = next(iter(res["tasks"].values()))
    task["table"][0]["auroc_lo"] = float("nan")
    task["n"] = np.int64(task["n"])
    write_report(res, tmp_path)
    back = json.loads((tmp_path / "results.json").read_text())
    assert next(iter(back["tasks"].values()))["table"][0]["auroc_lo"] is None


def test_rendering_is_deterministic():
    res = make_results(seed=5, suites=("a",), models=("m",))
    assert render_html(res) == render_html(res)


def test_missing_sections_are_omitted(tmp_path):
    html = write_report({"tasks": {"m/s": {"model": "m", "suite": "s", "n": 10, "table": []}}}, tmp_path).read_text()
    for absent in ['id="transfer"', 'id="monitor"', 'id="fidelity"', "layer sweep", "Examples", "Controls", "<img"]:
        assert absent not in html
    assert "No unsupervised KV-state or activation result" in html
    assert "<h1>kvstate report</h1>" in render_html({})


# --------------------------------------------------------------------------------------------
# Verdict on handmade numbers
# --------------------------------------------------------------------------------------------

def _task(kv, act, length=0.55, extra=()):
    table = [*extra]
    if kv:
        table.append({"representation": "S/n@elu", "family": "kv-state", "detector": "mahalanobis",
                      "supervised": False, "auroc": kv[0], "auroc_lo": kv[1], "auroc_hi": kv[2]})
    if act:
        table.append({"representation": "resid_mean", "family": "activation", "detector": "mahalanobis",
                      "supervised": False, "auroc": act[0], "auroc_lo": act[1], "auroc_hi": act[2]})
    return {"table": table, "length_control": {"length_auroc": length} if length is not None else None}


def test_verdict_wins():
    v = verdict(_task((0.90, 0.85, 0.95), (0.70, 0.62, 0.78)))
    assert v.startswith("KV state (S/n@elu, mahalanobis) AUROC 0.90 [0.85, 0.95] beats the best activation "
                        "baseline (resid_mean, mahalanobis) AUROC 0.70 [0.62, 0.78]; CIs do not overlap.")
    assert "Length alone reaches only 0.55." in v


def test_verdict_loses():
    v = verdict(_task((0.71, 0.64, 0.78), (0.83, 0.79, 0.88)))
    assert "AUROC 0.71 [0.64, 0.78] loses to" in v and "CIs do not overlap" in v
    assert compare(_task((0.71, 0.64, 0.78), (0.83, 0.79, 0.88))).outcome == "loses"


def test_verdict_overlap():
    v = verdict(_task((0.78, 0.70, 0.86), (0.74, 0.66, 0.82)))
    assert "beats" in v and "CIs overlap: the difference is not significant" in v
    assert compare(_task((0.78, 0.70, 0.86), (0.74, 0.66, 0.82))).overlap is True
    assert "ties with" in verdict(_task((0.780, 0.7, 0.86), (0.778, 0.7, 0.86)))


def test_verdict_confounded():
    v = verdict(_task((0.71, 0.64, 0.78), (0.83, 0.77, 0.88), length=0.90))
    assert v.endswith("Length alone reaches 0.90, as well as the best representation (0.83): this task is confounded.")
    v = verdict(_task((0.90, 0.85, 0.95), (0.70, 0.62, 0.78), length=0.75))
    assert "confounded" not in v and "Length alone reaches 0.75 (> 0.7)" in v


def test_verdict_ignores_supervised_and_controls_and_handles_gaps():
    probe = {"representation": "resid_mean", "family": "activation", "detector": "logistic", "supervised": True,
             "auroc": 0.99, "auroc_lo": 0.98, "auroc_hi": 1.0}
    ctrl = {"representation": "n_tokens", "family": "control", "detector": "identity", "supervised": False,
            "auroc": 0.97}
    assert "beats" in verdict(_task((0.90, 0.85, 0.95), (0.70, 0.62, 0.78), extra=(probe, ctrl)))
    assert "no unsupervised activation baseline" in verdict(_task((0.8, 0.7, 0.9), None))
    assert "no unsupervised KV-state result" in verdict(_task(None, (0.8, 0.7, 0.9)))
    assert "significance is unknown" in verdict(_task((0.8, None, None), (0.7, 0.6, 0.8)))
    assert "No length control" in verdict(_task((0.8, 0.7, 0.9), (0.7, 0.6, 0.8), length=None))


def test_verdict_and_summary_quote_the_held_out_choice():
    task = {**_task((0.80, 0.70, 0.90), (0.75, 0.65, 0.85)),
            "selection_corrected": {"n_repeats": 20, "wins": {"kv-state": {"activation": 0.3}},
                                    "families": {"kv-state": {"auroc": 0.61, "lo": 0.52, "hi": 0.70},
                                                 "activation": {"auroc": 0.66, "lo": 0.58, "hi": 0.74}}}}
    v = verdict(task)
    assert ("Chosen on half the groups and scored on the other half (20 random halvings), the best KV state "
            "reaches 0.61 [0.52, 0.70] and the best activation 0.66 [0.58, 0.74]; KV state is ahead in 30% of the halves.") in v
    assert v.index("beats") < v.index("Chosen") < v.index("Length alone")
    row = summary({"tasks": {"m/t": task}})[0]
    assert row["sel_kv"]["auroc"] == 0.61 and row["sel_act"]["auroc"] == 0.66
    html = render_html({"tasks": {"m/t": task}})
    assert "0.61 [0.52, 0.70] /" in html and "held-out choice" in html
    assert "Chosen on half" not in verdict(_task((0.80, 0.70, 0.90), (0.75, 0.65, 0.85)))  # older results


def test_given_verdict_is_kept_and_summary_winner():
    res = {"tasks": {"a/b": {**_task((0.9, 0.85, 0.95), (0.7, 0.6, 0.78)), "verdict": "hand-written"},
                     "a/c": _task((0.78, 0.70, 0.86), (0.74, 0.66, 0.82)),
                     "a/d": _task((0.71, 0.64, 0.78), (0.83, 0.77, 0.88), length=0.9)}}
    assert "hand-written" in render_html(res)
    assert [s["winner"] for s in summary(res)] == ["KV state", "KV state (CIs overlap)", "confounded (length)"]


# --------------------------------------------------------------------------------------------
# A real browser: the page renders, and the injected script is text, not an element
# --------------------------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_screenshot_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    shot = tmp_path / "shot.png"
    _run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables, highlights and figures, not a blank page

    dom = _run_chromium(exe, tmp_path, "--dump-dom", report.as_uri()).stdout
    assert "kvstate study" in dom and "Unsupervised detectors" in dom
    assert f"Ignore all rules {XSS_ESC} now" in dom  # serialised as text content
    assert "<script" not in dom.lower()  # no element was injected


def test_heldout_and_monitor_sections_render_and_escape():
    from kvstate.report import render_html

    row = {"family": "kv-state", "supervised": True, "representation": "kv-elu-S/n@end<script>", "detector": "logistic",
           "in_distribution_auroc": 0.95, "in_distribution_ci": [0.9, 0.99], "auroc": 0.55, "auroc_ci": [0.45, 0.65],
           "length_matched_auroc": 0.52, "threshold": 1.0, "tpr_at_benign_fpr": 0.1, "fpr_realised": 0.02, "test_scores": [0.1]}
    mon_row = {"monitor": "prefix probe", "auroc": 0.9, "auroc_ci": [0.8, 0.97], "threshold": 1.0, "tpr_at_benign_fpr": 0.3,
               "fpr_realised": 0.05, "median_tokens_to_flag": 7.0}
    results = {"meta": {"title": "t"}, "tasks": {},
               "heldout": {"m/a -> b": {"train": "a", "test": "b", "n_test": 10, "label_counts": {"0": 5, "1": 5},
                                        "length_auroc": 0.5, "calibration": "benign-chat", "n_calibration": 20, "fpr": 0.01,
                                        "rows": [row, {**row, "family": "activation", "representation": "act-resid-last@end"}],
                                        "layer_sweep": {}}},
               "monitor": {"m/a": {"representation": "kv-elu-S/n-hn@end", "every": 4, "aggregate": "max", "n_fit": 10,
                                   "n_test": 10, "n_anomalous": 5, "calibration": "benign-chat", "n_calibration": 10, "fpr": 0.01,
                                   "max_new_tokens": 16, "rows": [mon_row], "end_state_study_probe": {"auroc": 0.97, "auroc_ci": None},
                                   "note": ""}}}
    html = render_html(results)
    for needle in ('id="headline"', 'id="heldout"', 'id="monitors"', "prefix probe", "m/a -&gt; b", "0.55 [0.45, 0.65]"):
        assert needle in html, needle
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'id="monitor"' not in html  # the older monitor table only for older results
    assert "State options" not in html  # blocks from before the ablation render without it


def test_ablation_table_says_when_no_option_beats_the_plain_state():
    from kvstate.report import render_html

    def opt(option, auc, lo, rep="kv-elu-S/n@end"):
        return {"option": option, "representation": rep, "in_distribution_auroc": 0.9, "in_distribution_ci": [0.8, 0.95],
                "auroc": auc, "auroc_ci": [lo, auc + 0.05], "threshold": 0.0, "tpr_at_benign_fpr": 0.2, "fpr_realised": 0.1}

    def page(ablation):
        block = {"train": "a", "test": "b", "n_test": 10, "label_counts": {"0": 5, "1": 5}, "length_auroc": 0.5,
                 "calibration": None, "n_calibration": 0, "fpr": 0.01, "rows": [], "layer_sweep": {}, "ablation": ablation}
        return render_html({"meta": {"title": "t"}, "tasks": {}, "heldout": {"m/a -> b": block}})

    flat = page([opt("plain S/n", 0.60, 0.5), opt("decay 0.9", 0.62, 0.55), opt("activation (best)", 0.8, 0.7, "act-resid-last@end")])
    assert "State options" in flat and "+0.02" in flat and "+0.20" in flat and "No state option beats" in flat
    gain = page([opt("plain S/n", 0.60, 0.5), opt("decay 0.9", 0.80, 0.70)])
    assert "+0.20" in gain and "No state option beats" not in gain
