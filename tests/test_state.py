"""State maths against naive references (no model needed)."""


import pytest
import torch

from kvstate.state import RecurrentState, causal_linear_attention, linear_attention, parallel_state, readout, recurrent_state
from kvstate.state.phi import PHI_NAMES, get_phi


def kv(B=2, H=3, T=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, d, generator=g), torch.randn(B, H, T, d, generator=g)


@pytest.mark.parametrize("phi", PHI_NAMES)
def test_parallel_equals_naive_loop(phi):
    k, v = kv()
    w = (torch.rand(2, 7, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    S, z, n = parallel_state(k, v, phi, w)
    f = get_phi(phi)
    for b in range(2):
        for h in range(3):
            S_ref = sum(w[b, t] * torch.outer(f(k[b, h, t]), v[b, h, t]) for t in range(7))
            z_ref = sum(w[b, t] * f(k[b, h, t]) for t in range(7))
            torch.testing.assert_close(S[b, h], S_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(z[b, h], z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(n, w.sum(-1))


@pytest.mark.parametrize("phi", PHI_NAMES)
def test_recurrent_equals_parallel(phi):
    k, v = kv(T=11)
    w = torch.ones(2, 11)
    w[0, :3] = 0  # left padding in item 0
    S, z, n = parallel_state(k, v, phi, w)
    Sr, zr, nr = recurrent_state(k, v, phi, w)
    torch.testing.assert_close(S, Sr, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z, zr, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(n, nr)


def test_state_is_additive_over_chunks():
    k, v = kv(T=12)
    st = RecurrentState("elu").update(k[:, :, :5], v[:, :, :5]).update(k[:, :, 5:], v[:, :, 5:])
    S, z, _ = parallel_state(k, v, "elu")
    torch.testing.assert_close(st.S, S, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.z, z, rtol=1e-5, atol=1e-5)


def test_several_read_points_in_one_pass():
    k, v = kv(T=9)
    w = torch.zeros(2, 2, 9)
    w[:, 0, :4] = 1
    w[:, 1, :] = 1
    S, z, n = parallel_state(k, v, "identity", w)
    S4, _, _ = parallel_state(k[:, :, :4], v[:, :, :4], "identity")
    torch.testing.assert_close(S[:, 0], S4)
    assert n.tolist() == [[4, 9], [4, 9]]


def test_identity_linear_attention_equals_explicit_formula():
    k, v = kv(B=1, H=2, T=6, d=4)
    q = torch.randn(1, 2, 1, 4, generator=torch.Generator().manual_seed(3))
    S, z, _ = parallel_state(k, v, "identity")
    out = linear_attention(q, S, z, "identity")
    for h in range(2):
        scores = k[0, h] @ q[0, h, 0]  # (T,)
        ref = (scores[:, None] * v[0, h]).sum(0) / scores.sum()
        torch.testing.assert_close(out[0, h, 0], ref, rtol=1e-4, atol=1e-5)


def test_causal_linear_attention_matches_masked_quadratic_form():
    k, v = kv(B=1, H=2, T=5, d=4)
    q = torch.randn(1, 4, 5, 4, generator=torch.Generator().manual_seed(4))  # GQA: 4 query heads, 2 kv heads
    out = causal_linear_attention(q, k, v, "elu")
    f = get_phi("elu")
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    A = (f(q) @ f(kk).transpose(-1, -2)).tril()
    ref = (A @ vv) / A.sum(-1, keepdim=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_taylor_kernel_is_second_order_exp():
    x, y = torch.randn(8) * 0.5, torch.randn(8) * 0.5
    f = get_phi("taylor", scale=1.0)
    s = x @ y
    torch.testing.assert_close(f(x) @ f(y), 1 + s + s * s / 2, rtol=1e-5, atol=1e-6)


def test_random_features_approximate_softmax_kernel():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 16, generator=g) * 0.3, torch.randn(200, 16, generator=g) * 0.3
    f = get_phi("random", n_features=4096, seed=1, scale=1.0)
    approx = (f(x) * f(y)).sum(-1)
    exact = torch.exp((x * y).sum(-1))
    assert ((approx - exact).abs() / exact).median() < 0.1
    # the same seed rebuilds the same map
    torch.testing.assert_close(f(x), get_phi({"name": "random", "n_features": 4096, "seed": 1, "scale": 1.0})(x))


def test_readouts():
    k, v = kv()
    S, z, n = parallel_state(k, v, "elu")
    torch.testing.assert_close(readout(S, z, n, "S/n"), S / 7)
    torch.testing.assert_close(readout(S, z, n, "S/|z|"), S / z.norm(dim=-1)[..., None, None])
    with pytest.raises(ValueError, match="Available"):
        readout(S, z, n, "bogus")


def test_memory_is_independent_of_length():
    for T in (16, 4096):
        k, v = kv(B=1, H=1, T=T, d=8)
        S, z, _ = parallel_state(k, v, "identity")
        assert S.shape == (1, 1, 8, 8) and z.shape == (1, 1, 8)


def test_unknown_phi_lists_available():
    with pytest.raises(ValueError, match="Available: elu"):
        get_phi("softmax")


def test_string_specs_for_parametrised_maps():
    assert get_phi("random:32").n_features == 32
    with pytest.raises(ValueError, match="unknown feature map 'softmax'"):
        get_phi("softmax:3")
