"""Folded scoring (issue #17): an affine detector scored as one dot product with the unprojected
read-out gives the dense path's scores; other detectors fall back to the dense path."""

import numpy as np
import pytest
from conftest import tiny_model
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kvstate.capture import encode_all, make_batch
from kvstate.detect import get_detector
from kvstate.monitor import Monitor, MonitorSpec
from kvstate.monitor.fold import affine_form
from kvstate.representations import Reducer, RepresentationSettings

PROMPTS = ["Tell me about cats", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]]


def _spec(lm, rep, max_dim, projection="gaussian", threshold=None):
    layers = list(range(lm.num_layers))
    settings = RepresentationSettings(layers=tuple(layers), max_dim=max_dim, projection=projection, compress=(8, 6))
    return MonitorSpec(rep, layers, {"name": "elu"}, settings.to_dict(), threshold=threshold)


def _fitted(lm, spec, name, **params):
    """A detector fitted on the monitor's own features of a short generation, plus seeded noise around them."""
    mon = Monitor(lm, spec)
    mon.generate(PROMPTS, max_new_tokens=3)
    base = mon.features()
    rng = np.random.default_rng(0)
    spread = base.std() + 1e-3
    X = np.concatenate([base[i % len(base)] + rng.normal(scale=spread, size=(20, base.shape[1])) for i in range(2)])
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    X[y == 1] += spread  # a planted direction, so the probe has something to find
    det = get_detector(name, **params)
    return det.fit(X, y) if det.supervised else det.fit(X)


def _both(lm, spec, det, **kwargs):
    folded = Monitor(lm, spec, det, **kwargs)
    res_f = folded.generate(PROMPTS, max_new_tokens=6)
    dense = Monitor(lm, spec, det, fold=False, **kwargs)
    res_d = dense.generate(PROMPTS, max_new_tokens=6)
    return folded, res_f, dense, res_d


def _assert_same(a, b):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    scale = np.nanmax(np.abs(b))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", ["logistic", "diffmean"])
@pytest.mark.parametrize("rep", ["kv-elu-S/n", "kv-elu-S/n-hn", "kv-elu-ASB/n"])
@pytest.mark.parametrize("max_dim,projection", [(64, "gaussian"), (64, "sparse"), (100_000, "gaussian")])
def test_folded_scores_equal_dense_scores(name, rep, max_dim, projection):
    lm = tiny_model("llama")
    spec = _spec(lm, rep, max_dim, projection)
    det = _fitted(lm, spec, name)
    folded, res_f, dense, res_d = _both(lm, spec, det)
    assert folded.scoring == "folded" and dense.scoring == "dense"
    D = folded.readout().shape[1]
    assert (D > max_dim) == (max_dim == 64)  # the small max_dim does force the projection
    if rep.endswith("ASB/n"):  # ... except on the compressed state, which is kept whole
        assert dense.features().shape[1] == D
    np.testing.assert_array_equal(res_f.sequences, res_d.sequences)
    assert np.isfinite(res_d.scores).all() and np.ptp(res_d.scores) > 0  # scores move with the state
    _assert_same(res_f.scores, res_d.scores)


@pytest.mark.parametrize(("name", "params"), [("lpm", {}), ("mlpm", {"n_blocks": 4}), ("softauc", {}),
                                              ("stack", {"n_blocks": 4})])
def test_issue31_readouts_fold_like_the_logistic_probe(name, params):
    """The anchors' read-outs (issue #31) are affine: folded scores equal the dense detector's."""
    lm = tiny_model("llama")
    spec = _spec(lm, "kv-elu-S/n-hn", 64)
    det = _fitted(lm, spec, name, **params)
    folded, res_f, dense, res_d = _both(lm, spec, det)
    assert folded.scoring == "folded" and dense.scoring == "dense"
    assert np.isfinite(res_d.scores).all() and np.ptp(res_d.scores) > 0
    _assert_same(res_f.scores, res_d.scores)


def test_every_n_and_stop_behave_as_dense():
    lm = tiny_model("llama")
    spec = _spec(lm, "kv-elu-S/n-hn", 64)
    det = _fitted(lm, spec, "logistic")
    probe = Monitor(lm, spec, det, fold=False).generate(PROMPTS, max_new_tokens=6)
    spec.threshold = float(np.quantile(probe.scores[:, ::2], 0.6))  # some rows cross at a scored step, not all at once
    folded, res_f, dense, res_d = _both(lm, spec, det, every=2, stop=True)
    assert folded.scoring == "folded"
    assert np.isnan(res_f.scores[:, 1::2]).all()
    _assert_same(res_f.scores, res_d.scores)
    assert res_f.stopped_at == res_d.stopped_at and any(s is not None for s in res_f.stopped_at)
    np.testing.assert_array_equal(res_f.sequences, res_d.sequences)


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "iforest"])
def test_non_affine_detectors_fall_back_to_dense(name):
    lm = tiny_model("llama")
    spec = _spec(lm, "kv-elu-S/n", 64)
    det = _fitted(lm, spec, name)
    folded, res_f, dense, res_d = _both(lm, spec, det)
    assert folded.scoring == "dense"
    np.testing.assert_array_equal(res_f.scores, res_d.scores)  # the same dense computation, bit for bit
    # and what it computes is the detector on the study's features, as before folding existed
    np.testing.assert_allclose(folded.score(), det.decision_function(folded.features()))


def test_affine_form_reads_pipelines_and_rejects_curved_scores():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 12)), np.r_[np.zeros(30, int), np.ones(30, int)]
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    w, c = affine_form(pipe.decision_function, 12)
    X32 = X.astype(np.float32)  # sklearn's scaler keeps float32 input in float32: equal to its rounding
    np.testing.assert_allclose(X32 @ w + c, pipe.decision_function(X32), rtol=1e-5, atol=1e-6)
    assert affine_form(lambda Z: (Z ** 2).sum(1), 12) is None
    assert affine_form(lambda Z: np.abs(Z).sum(1), 12) is None
    assert affine_form(lambda Z: np.where(Z[:, 0] > 0.5, 1.0, 0.0), 12) is None  # a step the basis alone misses
    with pytest.raises(ValueError, match="dim must be >= 1"):
        affine_form(pipe.decision_function, 0)


@pytest.mark.parametrize("projection", ["gaussian", "sparse"])
def test_reducer_adjoint_is_the_transposed_projection(projection):
    rng = np.random.default_rng(2)
    red = Reducer(32, seed=5, kind=projection)
    x = rng.normal(size=(4, 500)).astype(np.float32)
    w = rng.normal(size=32)
    np.testing.assert_allclose(red(x).astype(np.float64) @ w, x.astype(np.float64) @ red.adjoint(w, 500), rtol=1e-5)
    np.testing.assert_array_equal(red.adjoint(w[:20], 20), w[:20])  # narrow vectors are not projected
    with pytest.raises(ValueError, match="w must have shape"):
        red.adjoint(w, 20)


def test_lean_generate_changes_no_score():
    """Issue 29: a batch encoded once (Monitor.encode) and final_state=False (no extra forward of the last
    token) give the same sequences and scores; only the state then lacks the last token."""
    lm = tiny_model("llama")
    spec = _spec(lm, "kv-elu-S/n", 64)
    det = _fitted(lm, spec, "logistic")
    full = Monitor(lm, spec, det)
    res = full.generate(PROMPTS, max_new_tokens=5, min_new_tokens=5)
    lean = Monitor(lm, spec, det)
    batch = lean.encode(PROMPTS)
    res2 = lean.generate(batch, max_new_tokens=5, min_new_tokens=5, final_state=False)
    np.testing.assert_array_equal(res.sequences, res2.sequences)
    np.testing.assert_array_equal(res.scores, res2.scores)
    assert (full.state()[2] - lean.state()[2] == 1).all()  # n: one token fewer without the extra forward
    with pytest.raises(ValueError, match="Monitor.encode"):
        lean.generate(make_batch(encode_all(lm, PROMPTS), ["prompt_end", "end"], "all", 0, 257, "left"))


def test_capture_restricted_to_layers_calls_only_those():
    import torch

    from kvstate.capture import KVCapture

    lm = tiny_model("gemma3")
    seen = []
    with torch.inference_mode(), KVCapture(lm.model, lambda c: seen.append((c.layer, c.position_embeddings is None)),
                                           layers=[1], positions=False):
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert seen == [(1, True)]
