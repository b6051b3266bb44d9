"""CLI fuzz (issue #19): every command with malformed values for its options.

Each case must fail during validation, before any model loads: exit code 2, one `error:` line on
stderr, no traceback, and no file under the sandbox changed (hashed before and after).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model_folder, tree_hash
from typer.testing import CliRunner

from kvstate.cli import app

runner = CliRunner()


def _rows(n: int = 16) -> str:
    return "\n".join(json.dumps({"id": f"i{i}", "text": f"item {i // 2}" + (" bad" if i % 2 else ""), "label": i % 2,
                                 "group": f"g{i // 2}"}) for i in range(n))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """Inputs of every kind a command may be handed: good, missing, truncated, of the wrong kind."""
    from kvstate.detect import get_detector
    from kvstate.monitor import MonitorSpec, save_monitor

    root = tmp_path_factory.mktemp("fuzz")
    tiny_model_folder(root / "m")
    shutil.copytree(root / "m", root / "trunc")
    w = (root / "trunc" / "model.safetensors").read_bytes()
    (root / "trunc" / "model.safetensors").write_bytes(w[: len(w) // 2])
    shutil.copytree(root / "m", root / "notok")
    for p in (root / "notok").glob("tokenizer*"):
        p.unlink()
    (root / "file.txt").write_text("just a file\n")
    (root / "dir").mkdir()
    (root / "bad.txt").write_bytes(b"\xff\xfe not utf-8\n")
    (root / "p.jsonl").write_text(_rows())
    (root / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (root / "other.safetensors").write_bytes(b"not a kvstate file")
    for name, text in {"study_trunc": '{"meta": {"config": ', "study_empty": "{}",
                       "study_fake": json.dumps({"meta": {"config": {}, "notes": []}, "tasks": {}})}.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(text)
    (root / "study_fake" / "store").mkdir()
    det = get_detector("mahalanobis").fit(np.random.default_rng(0).normal(size=(20, 4)))
    spec = MonitorSpec("kv-identity-S/n@end", [0], {"name": "identity"}, {}, threshold=1.0, fpr=0.01)
    for name in ("mon", "mon_det", "mon_json"):
        save_monitor(root / name, spec, det)
    d = (root / "mon_det" / "detector.safetensors").read_bytes()
    (root / "mon_det" / "detector.safetensors").write_bytes(d[: len(d) - 16])
    (root / "mon_json" / "monitor.json").write_text('{"representation": ')
    from kvstate.deploy import fit_detector
    from kvstate.representations import RepresentationSettings

    fitted = fit_detector(np.random.default_rng(0).normal(size=(20, 4)), np.r_[np.zeros(10, int), np.ones(10, int)],
                          "kv-identity-S/n@end", "logistic", model="m", dtype="float32",
                          settings=RepresentationSettings(layers=(0, 1)).to_dict())
    for name in ("det", "det_trunc"):
        fitted.save(root / name)
    e = (root / "det_trunc" / "estimator.safetensors").read_bytes()
    (root / "det_trunc" / "estimator.safetensors").write_bytes(e[: len(e) // 2])
    (root / "studdy.toml").write_text("[studdy]\nlimit = 4\n")
    (root / "invalid.toml").write_text("[study\nlimit = 4\n")
    (root / "limit_str.toml").write_text('[study]\nlimit = "16"\n')
    (root / "suites_str.toml").write_text('[study]\nsuites = "x.jsonl"\n')
    (root / "splits1.toml").write_text(f'[study]\nn_splits = 1\nmodels = ["{root / "m"}"]\nsuites = ["{root / "p.jsonl"}"]\n')
    (root / "unknown_key.toml").write_text("[study]\nlimt = 4\n")
    return root


M, T = "{root}/m", "{root}/trunc"
P = "{root}/p.jsonl"
CASES: dict[str, list[list[str]]] = {
    "models list": [["models", "list", "--bogus"]],
    "models fetch": [["models", "fetch", "no-such-model"], ["models", "fetch"]],
    "data list": [["data", "list", "--bogus"], ["data", "list", "--build", "maybe"]],
    "data fetch": [["data", "fetch"], ["data", "fetch", "no-such-suite"], ["data", "fetch", "advbench"],
                   ["data", "fetch", "xstest", "--bogus"]],
    "data show": [["data", "show", "no-such-suite"], ["data", "show", "{root}/missing.jsonl"], ["data", "show", "{root}/bad.jsonl"],
                  ["data", "show", "{root}/dir"], ["data", "show", P, "--n", "-1"], ["data", "show", P, "--limit", "0"],
                  ["data", "show", P, "--limit", "abc"], ["data", "show", P, "--seed", ""]],
    "extract": [
        ["extract", "hi", "-m", "{root}/missing"], ["extract", "hi", "-m", "{root}/file.txt"], ["extract", "hi", "-m", "{root}/dir"],
        ["extract", "hi", "-m", T], ["extract", "hi", "-m", "{root}/notok"], ["extract", "hi", "-m", ""],
        ["extract", "hi", "-m", M, "-o", "{root}/dir"], ["extract", "hi", "-m", M, "-o", "{root}/file.txt"],
        ["extract", "hi", "-m", M, "-o", "{root}/other.safetensors"], ["extract", "hi", "-m", M, "-o", "/proc/x.safetensors"],
        ["extract", "hi", "-m", M, "-o", "{root}/file.txt/sub/x.safetensors"], ["extract", "hi", "-m", M, "-o", ""],
        ["extract", "-m", M, "-f", "{root}/missing.jsonl"], ["extract", "-m", M, "-f", "{root}/dir"],
        ["extract", "-m", M, "-f", "{root}/bad.txt"], ["extract", "-m", M, "-f", "{root}/bad.jsonl"], ["extract", "-m", M],
        ["extract", "hi", "-m", M, "--skip-first", "-1"], ["extract", "hi", "-m", M, "--skip-first", "x"],
        ["extract", "hi", "-m", M, "--batch-size", "0"], ["extract", "hi", "-m", M, "--batch-size", "abc"],
        ["extract", "hi", "-m", M, "--layers", ""], ["extract", "hi", "-m", M, "--layers", "99"],
        ["extract", "hi", "-m", M, "--layers", "abc"], ["extract", "hi", "-m", M, "--rope", "x"],
        ["extract", "hi", "-m", M, "--window", ""], ["extract", "hi", "-m", M, "--span", "x"],
        ["extract", "hi", "-m", M, "--phi", "nope"], ["extract", "hi", "-m", M, "--phi", "random:x"],
        ["extract", "hi", "-m", M, "--dtype", "int8"]],
    "study": [
        ["study", "-o", "{root}/file.txt", "--quick"], ["study", "-c", "{root}/missing.toml", "-o", "{root}/o"],
        ["study", "-c", "{root}/dir", "-o", "{root}/o"], ["study", "-c", "{root}/bad.txt", "-o", "{root}/o"],
        ["study", "-c", "{root}/studdy.toml", "-o", "{root}/o"], ["study", "-c", "{root}/invalid.toml", "-o", "{root}/o"],
        ["study", "-c", "{root}/limit_str.toml", "-o", "{root}/o"], ["study", "-c", "{root}/suites_str.toml", "-o", "{root}/o"],
        ["study", "-c", "{root}/unknown_key.toml", "-o", "{root}/o"], ["study", "-c", "{root}/splits1.toml", "-o", "{root}/o"],
        ["study", "--suites", "", "-o", "{root}/o"], ["study", "--models", "", "-o", "{root}/o"],
        ["study", "--layers", "", "-o", "{root}/o"], ["study", "--limit", "0", "-o", "{root}/o"],
        ["study", "--limit", "-1", "-o", "{root}/o"], ["study", "--limit", "abc", "-o", "{root}/o"],
        ["study", "--engine", "spark", "-o", "{root}/o"], ["study", "--workers", "0", "-o", "{root}/o"],
        ["study", "--dtype", "int8", "-o", "{root}/o"], ["study", "--seed", "abc", "-o", "{root}/o"],
        ["study", "--models", M, "--suites", "{root}/missing.jsonl", "-o", "{root}/o"],
        ["study", "--models", M, "--suites", "{root}/bad.jsonl", "-o", "{root}/o"],
        ["study", "--models", M, "--suites", "no-such-suite", "-o", "{root}/o"],
        ["study", "--models", "{root}/missing", "--suites", P, "-o", "{root}/o"],
        ["study", "--models", T, "--suites", P, "-o", "{root}/o"], ["study", "--models", "{root}/notok", "--suites", P, "-o", "{root}/o"],
        ["study", "--models", M, "--suites", P, "--layers", "99", "-o", "{root}/o"],
        ["study", "--models", M, "--suites", P, "--limit", "2", "-o", "{root}/o"],
        ["study", "--models", M, "--suites", P, "-o", "{root}/file.txt/sub"], ["study", "--models", M, "--suites", P, "-o", "/proc/x"]],
    "evaluate": [
        ["evaluate", "-o", "{root}/missing"], ["evaluate", "-o", "{root}/study_trunc"], ["evaluate", "-o", "{root}/study_empty"],
        ["evaluate", "-o", "{root}/file.txt"], ["evaluate", "-o", "{root}/study_fake"],
        ["evaluate", "-o", "{root}/study_fake", "--n-boot", "0"], ["evaluate", "-o", "{root}/study_fake", "--n-boot", "x"],
        ["evaluate", "-o", "{root}/study_fake", "--n-splits", "1"], ["evaluate", "-o", "{root}/study_fake", "--detectors", ""],
        ["evaluate", "-o", "{root}/study_fake", "--detectors", "nope"], ["evaluate", "-o", "{root}/study_fake", "--representations", ""]],
    "report": [["report", "-o", "{root}/missing"], ["report", "-o", "{root}/study_trunc"], ["report", "-o", "{root}/study_empty"],
               ["report", "-o", "{root}/file.txt"], ["report", "-o", ""]],
    "plan": [["plan", "GPT-9"], ["plan", "{root}/file.txt"], ["plan", "{root}/dir"], ["plan", "{root}/study_trunc/results.json"],
             ["plan", "Llama-3.1-8B", "--n-items", "0"], ["plan", "Llama-3.1-8B", "--n-items", "-5"],
             ["plan", "Llama-3.1-8B", "--n-items", "abc"], ["plan", "Llama-3.1-8B", "--mean-tokens", "0"],
             ["plan", "Llama-3.1-8B", "--gpu-flops", "-1"], ["plan", "Llama-3.1-8B", "--dtype", "int8"], ["plan", ""]],
    "train-monitor": [
        ["train-monitor", "--study", "{root}/missing", "--suite", "p", "-o", "{root}/mon_new"],
        ["train-monitor", "--study", "{root}/file.txt", "--suite", "p", "-o", "{root}/mon_new"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/mon_new"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/file.txt"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/dir/../study_fake"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/mon_new", "--fpr", "0"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/mon_new", "--fpr", "1.5"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/mon_new", "--max-new-tokens", "0"],
        ["train-monitor", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/mon_new", "--detector", "logistic"],
        ["train-monitor", "--study", "{root}/study_fake", "-o", "{root}/mon_new"]],
    "monitor": [
        ["monitor", "hi", "-d", "{root}/missing", "-m", M], ["monitor", "hi", "-d", "{root}/file.txt", "-m", M],
        ["monitor", "hi", "-d", "{root}/dir", "-m", M], ["monitor", "hi", "-d", "{root}/mon_det", "-m", M],
        ["monitor", "hi", "-d", "{root}/mon_json", "-m", M], ["monitor", "hi", "-d", "{root}/mon", "-m", T],
        ["monitor", "hi", "-d", "{root}/mon", "-m", "{root}/missing"], ["monitor", "hi", "-d", "{root}/mon", "-m", "{root}/notok"],
        ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--every", "0"],
        ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--every", "-2"],
        ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--max-new-tokens", "-1"],
        ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--max-new-tokens", "0"], ["monitor", "-d", "{root}/mon", "-m", M],
        ["monitor", "hi", "-d", "{root}/det", "-m", M, "--stop"], ["monitor", "hi", "-d", "{root}/det_trunc", "-m", M],
        ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--aggregate", "median"],
        ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--window", "0"], ["monitor", "hi", "-d", "{root}/mon", "-m", M, "--alpha", "2"]],
    "fit": [
        ["fit", "--study", "{root}/missing", "--suite", "p", "-o", "{root}/d_new"],
        ["fit", "--study", "{root}/study_trunc", "--suite", "p", "-o", "{root}/d_new"],
        ["fit", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/d_new"],
        ["fit", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/file.txt"],
        ["fit", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/d_new", "--fpr", "0"],
        ["fit", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/d_new", "--fpr", "1.5"],
        ["fit", "--study", "{root}/study_fake", "--suite", "p", "-o", "{root}/d_new", "--calibration-items", "0"],
        ["fit", "--suite", P, "-m", M, "-o", "{root}/d_new"], ["fit", "--study", "{root}/study_fake", "-o", "{root}/d_new"],
        ["fit", "--task", "nope", "-o", "{root}/d_new"], ["fit", "--task", "harmful-request", "--suite", "p", "-o", "{root}/d_new"],
        ["fit", "--task", "harmful-request", "--detector", "logistic", "-o", "{root}/d_new"],
        ["fit", "--task", "truth", "--family", "nope", "-o", "{root}/d_new"]],
    "benchmark run": [["benchmark", "run"], ["benchmark", "run", "-t", "nope", "-o", "{root}/b"],
                      ["benchmark", "run", "-c", "{root}/missing.toml", "-o", "{root}/b"],
                      ["benchmark", "run", "-t", "truth", "-m", "no-such-model", "-o", "{root}/b"],
                      ["benchmark", "run", "-t", "truth", "--max-per-source", "1", "-o", "{root}/b"],
                      ["benchmark", "run", "-t", "truth", "--dtype", "float8", "-o", "{root}/b"]],
    "benchmark table": [["benchmark", "table"], ["benchmark", "table", "-o", "{root}/missing"]],
    "benchmark tasks": [["benchmark", "tasks", "--bogus"]],
    "score": [
        ["score", P, "-d", "{root}/missing"], ["score", P, "-d", "{root}/dir"], ["score", P, "-d", "{root}/mon"],
        ["score", P, "-d", "{root}/det_trunc"], ["score", P, "-d", "{root}/file.txt"],
        ["score", "{root}/missing.jsonl", "-d", "{root}/det", "-m", M], ["score", "{root}/dir", "-d", "{root}/det", "-m", M],
        ["score", P, "-d", "{root}/det", "-m", M, "-o", "{root}/dir"], ["score", P, "-d", "{root}/det", "-m", M, "-o", "{root}/o.txt"],
        ["score", P, "-d", "{root}/det", "-m", M, "--batch-size", "0"], ["score", P, "-d", "{root}/det", "-m", M, "--chunk", "0"],
        ["score", P, "-d", "{root}/det", "-m", "{root}/missing"], ["score", P, "-d", "{root}/det", "-m", T], ["score", "-d", "{root}/det"]],
    "serve": [
        ["serve", "-d", "{root}/missing"], ["serve", "-d", "{root}/dir"], ["serve", "-d", "{root}/file.txt"],
        ["serve", "-d", "{root}/mon_json"], ["serve", "-d", "{root}/det_trunc"], ["serve", "-d", "{root}/mon", "-m", "{root}/missing"],
        ["serve", "-d", "{root}/mon", "-m", M, "--port", "0"], ["serve", "-d", "{root}/mon", "-m", M, "--port", "abc"],
        ["serve", "-d", "{root}/mon", "-m", M, "--replicas", "0"], ["serve", "-d", "{root}/mon", "-m", M, "--max-batch-size", "0"],
        ["serve", "-d", "{root}/mon", "-m", M, "--max-tokens", "-1"], ["serve", "-d", "{root}/mon", "-m", M, "--every", "0"],
        ["serve", "-d", "{root}/mon", "-m", M, "--cpus-per-replica", "0"], ["serve"]],
}
FLAT = [(cmd, args) for cmd, cases in CASES.items() for args in cases]


def test_every_command_is_fuzzed():
    """The table covers every command `kvstate --help` lists (demo runs the quick study: excluded)."""
    import typer.main

    group = typer.main.get_command(app)
    listed = set()
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        listed |= {f"{name} {s}" for s in sub} if sub else {name}
    assert listed - {"demo"} == set(CASES), listed ^ set(CASES)
    assert len(FLAT) >= 100


@pytest.mark.parametrize("cmd, args", FLAT, ids=[f"{c}:{' '.join(a[1:])[:60]}" for c, a in FLAT])
def test_bad_input_is_one_line_and_changes_nothing(sandbox, monkeypatch, cmd, args):
    import transformers

    def no_model(*a, **k):
        raise AssertionError("a model was loaded: the case must fail during validation")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    before = tree_hash(sandbox)
    res = runner.invoke(app, [a.format(root=sandbox) for a in args])
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert tree_hash(sandbox) == before
