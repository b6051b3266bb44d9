"""Issue #31 item 4: the calibration items are read where the detector reads its items.

``benign-chat`` generates replies (checker ``none``), so its ``@end`` state is read after a reply,
while a prompt-only item's ``@end`` is the prompt's end. A prompt detector's threshold must come
from calibration prompts read at the prompt (no reply); a reply detector's from items with a reply.
Both in the study's held-out transfer and in ``kvstate fit``'s ``calibration_features``.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model

from kvstate.data import Item
from kvstate.deploy import calibration_features, fit_from_suite
from kvstate.detect import threshold_for_fpr
from kvstate.study import StudyConfig
from kvstate.study.transfer import _transfer_row
from kvstate.study.types import SuiteData

REP = "kv-elu-S/n-hn@end"
PROMPT = "kv-elu-S/n-hn@prompt_end"


def _suite(name: str, X_prompt: np.ndarray, X_end: np.ndarray, y: np.ndarray, reply: bool) -> SuiteData:
    items = [Item(f"{name}{i}", f"g{i}", [{"role": "user", "content": f"q{i}"}], "a reply" if reply else None, int(c), "t")
             for i, c in enumerate(y)]
    index = pd.DataFrame({"label": y, "group": [it.group for it in items], "n_tokens": 10})
    return SuiteData(name, index, {REP: X_end, PROMPT: X_prompt}, items)


def _data(seed: int = 0, n: int = 60, d: int = 6):
    rng = np.random.default_rng(seed)

    def prompts(m, shift=0.0):
        y = np.r_[np.zeros(m, int), np.ones(m, int)]
        return rng.normal(size=(2 * m, d)) + 2.0 * y[:, None] * np.eye(d)[0] + shift, y

    X, y = prompts(n)
    train = _suite("train", X, X, y, reply=False)  # prompt-only: @end is the prompt's end
    Xt, yt = prompts(n)
    test = _suite("test", Xt, Xt, yt, reply=False)
    # benign calibration items with generated replies: at the prompt they look like the negatives;
    # after the reply, the state has moved along the probe's direction
    Xc = rng.normal(size=(200, d))
    calib = _suite("benign", Xc, Xc + 3.0 * np.eye(d)[0], np.zeros(200, int), reply=True)
    return train, test, calib


ROW = {"representation": REP, "detector": "logistic", "auroc": 0.9, "auroc_lo": 0.8, "auroc_hi": 1.0}


def test_study_calibrates_a_prompt_detector_at_the_prompt():
    train, test, calib = _data()
    cfg = StudyConfig(n_boot=20, transfer_fpr=0.05)
    out, s = _transfer_row(train, ROW, test, calib, cfg)
    from kvstate.study.transfer import fit_choice

    est = fit_choice(train, ROW, cfg)
    at_prompt = threshold_for_fpr(est.decision_function(calib.arrays[PROMPT]), 0.05)
    after_reply = threshold_for_fpr(est.decision_function(calib.arrays[REP]), 0.05)
    assert after_reply > at_prompt + 1.0  # the two read points do give different thresholds here
    assert out["threshold"] == pytest.approx(at_prompt) and out["calibration_read"] == "prompt"
    # read at the prompt, the benign FPR carries over to the test's own negatives
    assert out["fpr_realised"] <= 0.15


def test_study_calibrates_a_reply_detector_after_the_reply():
    train, test, calib = _data()
    test = _suite("test", test.arrays[PROMPT], test.arrays[REP], test.y, reply=True)
    cfg = StudyConfig(n_boot=20, transfer_fpr=0.05)
    out, _ = _transfer_row(train, ROW, test, calib, cfg)
    from kvstate.study.transfer import fit_choice

    est = fit_choice(train, ROW, cfg)
    assert out["threshold"] == pytest.approx(threshold_for_fpr(est.decision_function(calib.arrays[REP]), 0.05))
    assert out["calibration_read"] == "reply"


def test_calibration_representation():
    from kvstate.deploy import calibration_representation

    assert calibration_representation(REP, reply=False) == PROMPT
    assert calibration_representation(REP, reply=True) == REP
    assert calibration_representation(PROMPT, reply=True) == PROMPT


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_fit_calibrates_a_prompt_detector_without_the_replies(tmp_path):
    """``kvstate fit``'s calibration features: a detector fitted on prompts alone reads the
    calibration prompts without a reply, even when the calibration file carries replies."""
    lm = tiny_model("llama")
    topics = ["cats", "rivers", "bread", "music", "trains", "stars"]
    train = _write(tmp_path / "train.jsonl", [
        {"id": f"t{i}", "text": f"Tell me about {topics[i % 6]}" + (" and destroy it" if i % 2 else " briefly"),
         "label": i % 2, "group": f"g{i // 2}"} for i in range(16)])
    rows = [{"id": f"b{i}", "text": f"Please say something nice about {topics[i % 6]} number {i}.", "label": 0}
            for i in range(8)]
    calib = _write(tmp_path / "calib.jsonl", [{**r, "response": "Sure! Here is a long and cheerful reply " * 3}
                                              for r in rows])
    det = fit_from_suite(lm, train, REP, "logistic", layers="all", phis=("elu",), batch_size=4)
    X, prov = calibration_features(det, lm, calib, limit=8, batch_size=4)
    no_reply = det.features(lm, [{"messages": [{"role": "user", "content": r["text"]}]} for r in rows], batch_size=4)
    with_reply = det.features(lm, [{"messages": [{"role": "user", "content": r["text"]}], "response": "x " * 20}
                                   for r in rows], batch_size=4)
    assert not np.allclose(with_reply, no_reply, rtol=1e-3)  # the reply does move the @end state
    order = np.argsort([r["id"] for r in rows])  # the suite may reorder items; compare as sets of rows
    np.testing.assert_allclose(np.sort(X, axis=0), np.sort(no_reply[order], axis=0), rtol=1e-4, atol=1e-5)
    assert det.training["reply"] is False and prov["read"] == "prompt"
