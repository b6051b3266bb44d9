"""QueryProbe: gradients, recovery of a planted per-head signal, sklearn conventions."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from kvstate.detect import QueryProbe, pack_states, probe_scores

SHAPE = (2, 3, 4, 4)  # L, H, f, e
PLANT = (1, 2)  # the head that carries the label


def planted(n=600, seed=0, kind="bilinear"):
    """Gaussian states; the label is a noisy threshold of one head's bilinear (or query) read."""
    rng = np.random.default_rng(seed)
    L, H, f, e = SHAPE
    S = rng.normal(size=(n, L, H, f, e))
    z = rng.uniform(0.5, 1.5, size=(n, L, H, f))
    u, v = rng.normal(size=f), rng.normal(size=e)
    Sh = S[:, PLANT[0], PLANT[1]]
    t = np.einsum("f,nfe,e->n", u, Sh, v)
    if kind == "query":
        q = rng.uniform(0.2, 1.0, size=f)
        t = np.einsum("f,nfe,e->n", q, Sh, v) / (z[:, PLANT[0], PLANT[1]] @ q)
    y = (t + 0.2 * t.std() * rng.normal(size=n) > np.median(t)).astype(int)
    return S, z, y


@pytest.mark.parametrize("kind", ["query", "bilinear"])
@pytest.mark.parametrize("with_z", [False, True])
def test_scores_gradcheck(kind, with_z):
    g = torch.Generator().manual_seed(0)
    L, H, f, e = SHAPE
    S = torch.randn(5, L, H, f, e, generator=g, dtype=torch.float64, requires_grad=True)
    z = (torch.rand(5, L, H, f, generator=g, dtype=torch.float64) + 0.5).requires_grad_() if with_z else None
    if kind == "bilinear":
        shapes = {"u": (L, H, 2, f), "v": (L, H, 2, e)}
    else:
        shapes = {"q": (L, H, f), "w": (L, H, e)}
    params = {k: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for k, s in shapes.items()}
    params["b"] = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(L, H, dtype=torch.float64)
    mask[0, 1] = 0
    names = list(params)

    def fn(*args):
        p = dict(zip(names, args[: len(names)]))
        return probe_scores(args[len(names)], args[len(names) + 1] if with_z else None, p, kind, mask)

    inputs = (*params.values(), S) + ((z,) if with_z else ())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_bilinear_scores_are_the_explicit_formula():
    g = torch.Generator().manual_seed(1)
    L, H, f, e = SHAPE
    S = torch.randn(3, L, H, f, e, generator=g, dtype=torch.float64)
    p = {"u": torch.randn(L, H, 1, f, generator=g, dtype=torch.float64),
         "v": torch.randn(L, H, 1, e, generator=g, dtype=torch.float64), "b": torch.tensor(0.5, dtype=torch.float64)}
    ref = sum(p["u"][l, h, 0] @ S[:, l, h] @ p["v"][l, h, 0] for l in range(L) for h in range(H)) + 0.5
    torch.testing.assert_close(probe_scores(S, None, p, "bilinear"), ref)


@pytest.mark.parametrize(("kind", "with_z"), [("bilinear", False), ("query", False), ("query", True)])
def test_recovers_planted_head_and_wrong_head_is_at_chance(kind, with_z):
    S, z, y = planted(kind="query" if with_z else "bilinear")
    X = pack_states(S, z if with_z else None)
    tr, te = slice(0, 400), slice(400, None)
    probe = QueryProbe(state_shape=SHAPE, kind=kind, with_z=with_z, random_state=0).fit(X[tr], y[tr])
    auc = roc_auc_score(y[te], probe.decision_function(X[te]))
    assert auc > 0.9, auc
    control = QueryProbe(state_shape=SHAPE, kind=kind, with_z=with_z, heads=[(0, 0)]).fit(X[tr], y[tr])
    auc_c = roc_auc_score(y[te], control.decision_function(X[te]))
    assert 0.35 < auc_c < 0.65, auc_c
    on_plant = QueryProbe(state_shape=SHAPE, kind=kind, with_z=with_z, heads=[PLANT]).fit(X[tr], y[tr])
    assert roc_auc_score(y[te], on_plant.decision_function(X[te])) > 0.9


def test_higher_score_is_more_positive_and_proba_follows_classes():
    S, _, y = planted()
    X = pack_states(S)
    labels = np.where(y == 1, "pos", "neg")  # "pos" > "neg": the positive class
    probe = QueryProbe(state_shape=SHAPE).fit(X[:400], labels[:400])
    s = probe.decision_function(X[400:])
    assert s[y[400:] == 1].mean() > s[y[400:] == 0].mean()
    P = probe.predict_proba(X[400:])
    assert list(probe.classes_) == ["neg", "pos"]
    np.testing.assert_allclose(P.sum(1), 1.0)
    np.testing.assert_allclose(P[:, 1], 1 / (1 + np.exp(-s)))
    # the unflattened 5-D array gives the same scores
    np.testing.assert_allclose(probe.decision_function(S[400:].astype(np.float32)), s)


def test_clone_get_params_round_trip_and_seeding():
    probe = QueryProbe(state_shape=SHAPE, kind="query", rank=2, heads=[(0, 1)], alpha=0.01, random_state=3)
    c = clone(probe)
    assert c.get_params() == probe.get_params()
    assert QueryProbe(**probe.get_params()).get_params() == probe.get_params()
    S, _, y = planted(n=120)
    X = pack_states(S)
    a = QueryProbe(state_shape=SHAPE, random_state=1).fit(X, y).decision_function(X)
    b = QueryProbe(state_shape=SHAPE, random_state=1).fit(X, y).decision_function(X)
    np.testing.assert_array_equal(a, b)


def test_parameter_count_is_linear_in_d():
    S, _, y = planted(n=60)
    probe = QueryProbe(state_shape=SHAPE, rank=1).fit(pack_states(S), y)
    L, H, f, e = SHAPE
    assert sum(np.asarray(p).size for p in probe.params_.values()) == L * H * (f + e) + 1


def test_one_line_errors():
    S, z, y = planted(n=60)
    with pytest.raises(ValueError, match="has 96 features.*needs 48"):
        QueryProbe(state_shape=(2, 3, 4, 2)).fit(pack_states(S), y)
    with pytest.raises(ValueError, match="state_shape must be"):
        QueryProbe().fit(pack_states(S), y)
    with pytest.raises(ValueError, match="outside state_shape"):
        QueryProbe(state_shape=SHAPE, heads=[(5, 0)]).fit(pack_states(S), y)
    with pytest.raises(ValueError, match="pack_states"):
        QueryProbe(state_shape=SHAPE, with_z=True).fit(S, y)
    with pytest.raises(ValueError, match="requires y"):
        QueryProbe(state_shape=SHAPE).fit(pack_states(S))
