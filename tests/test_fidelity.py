"""Fidelity of linear attention to the model's own softmax attention, on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS, tiny_model

from kvstate.state import causal_linear_attention
from kvstate.state.fidelity import (
    COLUMNS,
    allowed_keys,
    attention_fidelity,
    compare,
    masked_linear_attention,
    summarize,
    with_scaling,
)
from kvstate.state.phi import get_phi


@pytest.mark.parametrize("phi", ["identity", "elu", {"name": "random", "n_features": 32}, "taylor"])
def test_quadratic_form_equals_recurrent_causal_linear_attention(phi):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 5)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    fast, _ = masked_linear_attention(q, k, v, get_phi(phi), causal)
    ref = causal_linear_attention(q, k, v, get_phi(phi))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_exact_kernel_reproduces_softmax():
    """phi(x) = exp features of a one-hot alphabet: phi(q).phi(k) = exp(q.k) exactly -> zero error."""
    torch.manual_seed(0)
    T, d = 6, 4
    idx_q, idx_k = torch.randint(0, d, (1, 1, T)), torch.randint(0, d, (1, 1, T))
    q, k = torch.nn.functional.one_hot(idx_q, d).float(), torch.nn.functional.one_hot(idx_k, d).float()
    v = torch.randn(1, 1, T, 3)

    class OneHotExp(get_phi("identity").__class__):
        def __call__(self, x):  # exp(q.k) = 1 + (e-1) [q == k] for one-hot q, k
            return torch.cat([torch.ones_like(x[..., :1]), x * math.sqrt(math.e - 1)], dim=-1)

    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    y_hat, den = masked_linear_attention(q, k, v, OneHotExp(), causal)
    y = torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~causal, float("-inf")), -1) @ v
    torch.testing.assert_close(y_hat, y)
    assert (den > 0).all()


def test_compare_metrics():
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    rel, cos = compare(torch.tensor([[1.0, 0.0], [0.0, -2.0]]), y)
    assert rel.tolist() == [0.0, 2.0] and cos.tolist() == [1.0, -1.0]


def test_with_scaling_only_fills_unset_scale():
    assert with_scaling(get_phi("taylor"), 0.5).scale == 0.5
    assert with_scaling(get_phi({"name": "taylor", "scale": 0.1}), 0.5).scale == 0.1
    assert with_scaling(get_phi("elu"), 0.5).config() == {"name": "elu"}


def test_frame_shape_columns_and_finite():
    lm = tiny_model("llama")
    phis = ["identity", "elu", {"name": "random", "n_features": 64}, "taylor"]
    df = attention_fidelity(lm, PROMPTS, phis)
    assert list(df.columns) == COLUMNS
    assert len(df) == lm.num_layers * len(phis)
    assert list(df["phi"][: len(phis)]) == ["identity", "elu", "random64", "taylor"]
    assert df[["rel_err", "rel_err_median", "cosine"]].map(math.isfinite).all().all()
    assert (df["cosine"].abs() <= 1 + 1e-6).all()
    assert (df.loc[df.phi != "identity", "neg_den"] == 0).all()  # positive maps never flip the sign
    assert df["n"].nunique() == 1
    print("\n" + df.to_string())
    s = summarize(df)
    assert list(s.index) == ["identity", "elu", "random64", "taylor"]


def test_error_drops_with_random_feature_count():
    """Random features are an unbiased estimate of exp(s q.k): more features, less error."""
    lm = tiny_model("llama")
    counts = [8, 128, 2048]
    phis = [{"name": "random", "n_features": m, "seed": 1} for m in counts]
    df = attention_fidelity(lm, PROMPTS, phis, skip_first=1)
    err = df.groupby("phi")["rel_err"].mean()
    errs = [err[f"random{m}s1"] for m in counts]
    print(dict(zip(counts, errs)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.5 * errs[0]


def test_padding_does_not_change_numbers():
    lm = tiny_model("llama")
    alone = [attention_fidelity(lm, [p], ["elu"]) for p in PROMPTS]
    batched = attention_fidelity(lm, PROMPTS, ["elu"], batch_size=3)
    n_alone = sum(int(a["n"].iloc[0]) for a in alone)
    assert int(batched["n"].iloc[0]) == n_alone  # padding positions are not scored
    # the pooled mean is the token-weighted mean of the per-prompt means
    for layer in range(lm.num_layers):
        pooled = sum(float(a.loc[a.layer == layer, "rel_err"].iloc[0]) * int(a["n"].iloc[0]) for a in alone) / n_alone
        assert float(batched.loc[batched.layer == layer, "rel_err"].iloc[0]) == pytest.approx(pooled, rel=1e-4)


def test_sliding_window_mask_is_used():
    lm = tiny_model("mistral")  # sliding_window=8: keys outside the window must not enter
    df = attention_fidelity(lm, [PROMPTS[2]], ["elu"], layers=[0])
    assert len(df) == 1 and math.isfinite(df["rel_err"].iloc[0])


def test_allowed_keys_none_mask_is_causal():
    class Call:
        key, mask, q_len = torch.zeros(1, 1, 4, 2), None, 4
    m = allowed_keys(Call())
    assert m.shape == (1, 1, 4, 4) and torch.equal(m[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_duplicate_phi_labels_rejected():
    with pytest.raises(ValueError, match="distinct"):
        attention_fidelity(tiny_model("llama"), PROMPTS[:1], ["elu", "elu"])
