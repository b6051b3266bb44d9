"""Issue #16 read-outs in the one-pass recorder and the reference-centring transformer."""

import numpy as np
import pytest
import torch
from conftest import PROMPTS, tiny_model
from sklearn.base import clone

import kvstate
from kvstate.representations import RepresentationSettings, StateCentering, capture_representations

ON = RepresentationSettings(layers=(0, 1), phis=("identity", "elu"), sweep=False, max_dim=8192,
                            decays=(1.0, 0.9), compress=(4, 3), deltas=True, query_states=True)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def captured(request):
    lm = tiny_model(request.param)
    return lm, capture_representations(lm, PROMPTS, ON, batch_size=3), capture_representations(lm, PROMPTS, ON, batch_size=1)


def stack(c, name):
    return np.stack([r[name] for r in c.rows])


def test_new_names_match_extract(captured):
    lm, c, _ = captured
    names = set(c.rows[0])
    for n in ["kv-elu-S/n-decay0.9@end", "kv-elu-S/n-decay1@prompt_end", "kv-elu-ASB/n@end", "kv-elu-dS/n@end",
              "kv-identity-dS/n@end"]:
        assert n in names, n
    assert "kv-elu-dS/n@prompt_end" not in names
    np.testing.assert_allclose(stack(c, "kv-elu-S/n-decay1@end"), stack(c, "kv-elu-S/n@end"), rtol=1e-5, atol=1e-6)
    st = kvstate.extract(lm, PROMPTS, layers=[0, 1], phi="elu", reads=["prompt_end", "end"])
    dec = kvstate.extract(lm, PROMPTS, layers=[0, 1], phi="elu", reads=["prompt_end", "end"], gamma=0.9)
    np.testing.assert_allclose(stack(c, "kv-elu-S/n-decay0.9@end"), dec.features("S/n", "end"), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stack(c, "kv-elu-ASB/n@end"), st.compress(4, 3, seed=ON.seed).features("S/n", "end"),
                               rtol=1e-4, atol=1e-5)
    delta = st.delta()
    ref = delta.features("S/n", "delta")
    ref[delta.n[:, 0, 0].numpy() == 0] = 0  # no reply: the recorder stores zeros
    np.testing.assert_allclose(stack(c, "kv-elu-dS/n@end"), ref, rtol=1e-4, atol=1e-5)
    # the query state: every head's whole S/n, then every head's z/n (pack_states), at the end only, never projected
    from kvstate.detect import pack_states

    assert "kv-elu-Sz/n@prompt_end" not in names and "kv-identity-Sz/n@end" not in names  # positive maps only
    Sz = stack(c, "kv-elu-Sz/n@end")
    assert c.dims["kv-elu-Sz/n@end"] == Sz.shape[1]
    z_n = st.readout("z", "end").numpy() / st.n[:, -1].clamp_min(1.0).numpy()[:, :, None, None]  # n: (N, R, L)
    np.testing.assert_allclose(Sz, pack_states(st.readout("S/n", "end").numpy(), z_n), rtol=1e-4, atol=1e-5)


def test_new_names_batched_equals_unbatched(captured):
    _, batched, single = captured
    for a, b in zip(batched.rows, single.rows):
        for name in a:
            if "decay" in name or "ASB" in name or "dS" in name or "Sz/n" in name:
                np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_options_are_off_by_default_and_keep_the_settings_hash():
    d = RepresentationSettings().to_dict()
    assert not {"decays", "compress", "deltas", "projection", "query_states"} & set(d)
    on = ON.to_dict()
    assert on["decays"] == (1.0, 0.9) and on["compress"] == (4, 3) and on["deltas"] is True
    assert RepresentationSettings.from_dict({**on, "decays": [1.0, 0.9], "compress": [4, 3]}) == ON
    with pytest.raises(ValueError, match="decays must be in"):
        RepresentationSettings(decays=(2.0,))
    with pytest.raises(ValueError, match="compress must be"):
        RepresentationSettings(compress=(4,))


def test_default_recording_has_none_of_the_new_names():
    lm = tiny_model("llama")
    c = capture_representations(lm, PROMPTS[1:2], RepresentationSettings(layers=(1,), phis=("elu",), sweep=False))
    assert not [n for n in c.rows[0] if "decay" in n or "ASB" in n or "dS/" in n or "Sz/" in n]


# ------------------------------------------------------------------ centring


def test_centering_per_head_mean_and_scale():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 2, 3, 4, 4)) * np.arange(1, 7).reshape(1, 2, 3, 1, 1) + 5.0
    c = StateCentering(scale="head").fit(ref)
    out = c.transform(ref)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    # each head's centred states have RMS norm 1 on the reference
    np.testing.assert_allclose(np.sqrt((out.reshape(40, 6, -1) ** 2).sum(-1).mean(0)), 1.0, rtol=1e-5)
    # flat rows with n_heads give the same numbers
    flat = StateCentering(n_heads=6, scale="head").fit(ref.reshape(40, -1)).transform(ref.reshape(40, -1))
    np.testing.assert_allclose(flat, out.reshape(40, -1), rtol=1e-5, atol=1e-6)
    plain = StateCentering().fit(ref).transform(ref[:3])
    np.testing.assert_allclose(plain, (ref[:3] - ref.mean(0)).astype(np.float32), rtol=1e-5, atol=1e-5)
    assert clone(c).get_params() == c.get_params()


@pytest.mark.parametrize("name", sorted(kvstate.detect.DETECTORS))
def test_reference_centring_changes_no_score_of_a_standardised_detector(name):
    """Why reference-centred states are not a row of the study: centring by a fixed benign mean,
    even with the per-head scale, is a per-feature positive affine map, which every registered
    detector's StandardScaler undoes. Scores of the centred states equal those of the plain ones
    (a detector that did not standardise would fail this)."""
    from kvstate.detect import DETECTORS

    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 4, 6)) * np.array([1.0, 5.0, 0.2, 3.0])[None, :, None] + 2.0
    y = (X[:, 0, 0] + X[:, 1, 1] / 5 > 2.5).astype(int)
    X = X.reshape(80, -1)
    ref = rng.normal(loc=4.0, scale=2.0, size=(30, 24))
    c = StateCentering(n_heads=4, scale="head").fit(ref)
    det = DETECTORS[name](random_state=0) if "random_state" in DETECTORS[name]().get_params() else DETECTORS[name]()
    train = slice(0, 60)
    yt = y[train] if det.supervised else None
    Xa = X[train] if det.supervised else X[train][y[train] == 0]
    plain = clone(det).fit(Xa, yt).decision_function(X[60:])
    centred = clone(det).fit(c.transform(Xa), yt).decision_function(c.transform(X[60:]))
    np.testing.assert_allclose(centred, plain, rtol=1e-3, atol=1e-3 * np.abs(plain).max())


def test_centering_on_real_states_and_errors():
    lm = tiny_model("qwen2")
    st = kvstate.extract(lm, PROMPTS, phi="elu", reads=["end"])
    S = st.readout("S/n").numpy()
    c = StateCentering().fit(S[:2])
    np.testing.assert_allclose(c.transform(S[2:]), S[2:] - S[:2].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        c.transform(S[:, :1])
    with pytest.raises(ValueError, match="n_heads"):
        StateCentering().fit(S.reshape(3, -1))
    with pytest.raises(ValueError, match="equal blocks"):
        StateCentering(n_heads=7).fit(S.reshape(3, -1))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_learned_phi_states_and_readout_match_extract(arch, tmp_path):
    """A study's Hedgehog map is recorded like any phi: its state equals kvstate.extract's and its
    own-query read-out applies each KV head's map to that head's query group (GQA, several reads)."""
    import torch

    from kvstate.state.learned import collect_qk, train_learned_phi

    lm = tiny_model(arch)
    layers = list(range(lm.num_layers))
    path = train_learned_phi(lm, PROMPTS, layers, n_features=8, steps=5, seed=1).save(tmp_path / "phi.safetensors")
    spec = f"learned:{path}"
    settings = RepresentationSettings(layers=tuple(layers), phis=("elu", spec), sweep=False, max_dim=8192)
    c = capture_representations(lm, PROMPTS, settings, batch_size=3)
    assert {"kv-learned-S/n@end", "kv-learned-attn@prompt_end", "kv-learned-attn@end"} <= set(c.rows[0])
    st = kvstate.extract(lm, PROMPTS, layers=layers, phi=spec, reads=["prompt_end", "end"])
    np.testing.assert_allclose(stack(c, "kv-learned-S/n@end"), st.features("S/n", "end"), rtol=1e-4, atol=1e-5)
    seqs = [collect_qk(lm, [p], layers)[0] for p in PROMPTS]  # one prompt at a time: runs sort items by length
    q_end = {l: torch.stack([s[l][0][0][:, -1:] for s in seqs]) for l in layers}  # (N, Hq, 1, d): each item's last query
    ref = torch.cat([st.attend(q_end[l], "end", l)[:, :, 0].flatten(1) for l in layers], 1)
    np.testing.assert_allclose(stack(c, "kv-learned-attn@end"), ref.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ benign reference queries


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_reference_query_readout_is_the_mean_benign_feature_reading_the_state(arch, tmp_path):
    from kvstate.state.learned import LearnedPhi, load_reference_queries, reference_queries, save_reference_queries
    from kvstate.state.phi import get_phi

    lm = tiny_model(arch)
    refs = reference_queries(lm, [0, 1], prompts=["Hello there, how are you?", "What is two plus two?", "Name a colour."])
    assert sorted(refs) == [0, 1] and refs[0].shape[0] == 3  # (K prompts, Hq, d) per layer
    path = save_reference_queries(tmp_path / "refq.safetensors", refs, {"model": arch})
    assert torch.equal(load_reference_queries(path)[0][1], refs[1])
    s = RepresentationSettings(layers=(0, 1), phis=("identity", "elu"), sweep=False, max_dim=8192, ref_queries=str(path))
    batched, single = (capture_representations(lm, PROMPTS, s, batch_size=b) for b in (3, 1))
    st = kvstate.extract(lm, PROMPTS, layers=[0, 1], phi="elu", reads=["prompt_end", "end"])
    for r, read in enumerate(["prompt_end", "end"]):
        expected = []
        for li in (0, 1):
            S, z = st.S[:, r, li], st.z[:, r, li]  # (N, H, f, e), (N, H, f)
            m = get_phi("elu")(refs[li]).mean(0)  # (Hq, f): the mean benign feature per query head
            rep = m.shape[0] // S.shape[1]
            num = torch.einsum("hf,nhfe->nhe", m, S.repeat_interleave(rep, 1))
            den = torch.einsum("hf,nhf->nh", m, z.repeat_interleave(rep, 1))
            expected.append((num / den[..., None]).flatten(1))
        got = stack(batched, f"kv-elu-refq@{read}")
        np.testing.assert_allclose(got, torch.cat(expected, 1).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, stack(single, f"kv-elu-refq@{read}"), rtol=1e-3, atol=1e-4)  # padding changes nothing
    other = LearnedPhi({0: (torch.eye(4), torch.zeros(4))}).save(tmp_path / "phi.safetensors")
    with pytest.raises(ValueError, match="not a kvstate reference-query file"):
        load_reference_queries(other)
