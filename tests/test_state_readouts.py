"""Decayed states, structured compression and span deltas (issue #16) against naive references."""

import pytest
import torch
from conftest import PROMPTS, tiny_model

import kvstate
from kvstate.state import (
    RecurrentState,
    compress_state,
    compression_matrices,
    decay_weights,
    parallel_state,
    recurrent_state,
)
from kvstate.state.phi import PHI_NAMES, get_phi


def kv(B=2, H=3, T=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, d, generator=g), torch.randn(B, H, T, d, generator=g)


def padded_weights(B=2, T=9):
    w = torch.ones(B, T)
    w[0, :3] = 0  # left padding in item 0
    w[1, -2:] = 0  # right padding in item 1
    w[1, 2] = 0  # an unselected token inside item 1
    return w


# ------------------------------------------------------------------ decay


@pytest.mark.parametrize("phi", ["identity", "elu", "taylor"])
@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_decayed_parallel_equals_naive_sum(phi, gamma):
    k, v = kv()
    w = padded_weights()
    S, z, n = parallel_state(k, v, phi, w, gamma=gamma)
    f = get_phi(phi)
    for b in range(2):
        sel = [t for t in range(9) if w[b, t] > 0]
        expo = {t: len(sel) - 1 - j for j, t in enumerate(sel)}  # selected tokens after t
        for h in range(3):
            S_ref = sum(gamma ** expo[t] * torch.outer(f(k[b, h, t]), v[b, h, t]) for t in sel)
            z_ref = sum(gamma ** expo[t] * f(k[b, h, t]) for t in sel)
            torch.testing.assert_close(S[b, h], S_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(z[b, h], z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(n[b], torch.tensor(sum(gamma ** e for e in expo.values())))


@pytest.mark.parametrize("phi", PHI_NAMES)
def test_decayed_recurrent_equals_decayed_parallel(phi):
    k, v = kv(T=11)
    w = padded_weights(T=11)
    S, z, n = parallel_state(k, v, phi, w, gamma=0.8)
    Sr, zr, nr = recurrent_state(k, v, phi, w, gamma=0.8)
    torch.testing.assert_close(S, Sr, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z, zr, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(n, nr)
    # chunks of any size give the same state
    st = RecurrentState(phi, gamma=0.8)
    for a, b in [(0, 4), (4, 5), (5, 11)]:
        st.update(k[:, :, a:b], v[:, :, a:b], w[:, a:b])
    torch.testing.assert_close(st.S, S, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(st.n, n)


def test_gamma_one_is_the_plain_state_and_decay_changes_it():
    k, v = kv()
    w = padded_weights()
    plain = parallel_state(k, v, "elu", w)
    for a, b in zip(plain, parallel_state(k, v, "elu", w, gamma=1.0)):
        torch.testing.assert_close(a, b)
    for a, b in zip(plain, recurrent_state(k, v, "elu", w, gamma=1.0)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(plain[0], parallel_state(k, v, "elu", w, gamma=0.9)[0])


def test_decay_ignores_padding_position():
    """The same tokens left-padded, right-padded or unpadded give the same decayed state."""
    k, v = kv(B=1, T=5)
    pad = torch.zeros(1, 3, 3, 8)
    ref = parallel_state(k, v, "elu", gamma=0.7)
    for kk, vv, w in [(torch.cat([pad, k], 2), torch.cat([pad, v], 2), torch.tensor([[0.0] * 3 + [1.0] * 5])),
                      (torch.cat([k, pad], 2), torch.cat([v, pad], 2), torch.tensor([[1.0] * 5 + [0.0] * 3]))]:
        for a, b in zip(ref, parallel_state(kk, vv, "elu", w, gamma=0.7)):
            torch.testing.assert_close(a, b)


def test_decay_weights_for_several_gammas_and_errors():
    w = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    dw = decay_weights(w, [1.0, 0.5])
    assert dw.shape == (1, 2, 4)
    torch.testing.assert_close(dw[0, 0], w[0])
    torch.testing.assert_close(dw[0, 1], torch.tensor([0.0, 0.25, 0.5, 1.0]))
    with pytest.raises(ValueError, match="gamma must be in"):
        parallel_state(*kv(), gamma=1.5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_decayed_extract_batched_equals_unbatched(arch, side):
    lm = tiny_model(arch)
    batched = kvstate.extract(lm, PROMPTS, batch_size=3, padding_side=side, phi="elu", gamma=0.9)
    assert batched.meta["gamma"] == 0.9
    plain = kvstate.extract(lm, PROMPTS, batch_size=3, padding_side=side, phi="elu")
    assert (batched.n < plain.n).all()  # decay is on
    for i, p in enumerate(PROMPTS):
        alone = kvstate.extract(lm, [p], phi="elu", reads=batched.reads, gamma=0.9)
        torch.testing.assert_close(batched.S[i], alone.S[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.z[i], alone.z[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.n[i], alone.n[0])


# ------------------------------------------------------------------ structured compression


@pytest.mark.parametrize("phi", ["identity", "elu", "taylor"])
def test_compressed_state_equals_projected_outer_products(phi):
    k, v = kv()
    w = padded_weights()
    f = get_phi(phi)
    A, B = compression_matrices(3, f.dim(8), 8, a=5, b=4, seed=3)
    assert A.shape == (3, 5, f.dim(8)) and B.shape == (3, 4, 8)
    Sc, zc, n = parallel_state(k, v, phi, w, project=(A, B))
    assert Sc.shape == (2, 3, 5, 4) and zc.shape == (2, 3, 5)
    S, z, n_full = parallel_state(k, v, phi, w)
    S2, z2 = compress_state(S, z, A, B)
    torch.testing.assert_close(Sc, S2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zc, z2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(n, n_full)
    for b in range(2):
        for h in range(3):
            ref = sum(w[b, t] * torch.outer(A[h] @ f(k[b, h, t]), B[h] @ v[b, h, t]) for t in range(9))
            torch.testing.assert_close(Sc[b, h], ref, rtol=1e-4, atol=1e-4)
    # recurrent form with decay and compression together
    Sr, zr, nr = recurrent_state(k, v, phi, w, gamma=0.9, project=(A, B))
    Sp, zp, _ = parallel_state(k, v, phi, w, gamma=0.9, project=(A, B))
    torch.testing.assert_close(Sr, Sp, rtol=1e-4, atol=1e-4)


def test_compression_matrices_are_seeded_and_checked():
    A1, B1 = compression_matrices(2, 8, 8, 4, 4, seed=0)
    A2, _ = compression_matrices(2, 8, 8, 4, 4, seed=0)
    A3, _ = compression_matrices(2, 8, 8, 4, 4, seed=1)
    assert torch.equal(A1, A2) and not torch.equal(A1, A3)
    assert not torch.equal(A1[0], A1[1])  # one pair per head
    with pytest.raises(ValueError, match="compression_matrices"):
        parallel_state(*kv(H=3), "elu", project=(A1, B1))
    with pytest.raises(ValueError, match="positive"):
        compression_matrices(2, 8, 8, 0, 4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_compressed_extract_is_padding_invariant(side):
    lm = tiny_model("qwen2")
    batched = kvstate.extract(lm, PROMPTS, batch_size=3, padding_side=side, phi="elu").compress(6, 5, seed=1)
    assert batched.S.shape[-2:] == (6, 5) and batched.meta["compress"] == [6, 5, 1]
    for i, p in enumerate(PROMPTS):
        alone = kvstate.extract(lm, [p], phi="elu", reads=batched.reads).compress(6, 5, seed=1)
        torch.testing.assert_close(batched.S[i], alone.S[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="uncompressed"):
        batched.attend(torch.zeros(3, 4, 1, 16))


# ------------------------------------------------------------------ span deltas


@pytest.mark.parametrize("phi", ["identity", "elu"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_delta_is_the_reply_state(phi, side):
    lm = tiny_model("llama")
    both = kvstate.extract(lm, PROMPTS, phi=phi, reads=["prompt_end", "end"], batch_size=3, padding_side=side)
    delta = both.delta()
    assert delta.reads == ["delta"] and delta.S.shape[1] == 1
    reply = kvstate.extract(lm, PROMPTS, phi=phi, reads=["end"], span="response", batch_size=1)
    torch.testing.assert_close(delta.S[:, 0], reply.S[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(delta.z[:, 0], reply.z[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(delta.n[:, 0], reply.n[:, 0])
    assert delta.n[1, 0, 0] == len("Blue, like the sea.") and delta.n[0, 0, 0] == 0  # no reply, empty delta
    torch.testing.assert_close(delta.readout("S/n", "delta")[1], reply.readout("S/n")[1], atol=1e-4, rtol=1e-4)


def test_delta_of_decayed_state_is_refused():
    lm = tiny_model("llama")
    st = kvstate.extract(lm, PROMPTS[1:2], reads=["prompt_end", "end"], gamma=0.9)
    with pytest.raises(ValueError, match="without gamma"):
        st.delta()
