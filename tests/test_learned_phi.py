"""Learned (Hedgehog) feature map: file round-trip, determinism, per-layer use, and real fidelity."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPTS, tiny_model

from kvstate.state import causal_linear_attention, linear_attention, parallel_state
from kvstate.state.fidelity import attention_fidelity, summarize
from kvstate.state.learned import CALIBRATION_PROMPTS, HELDOUT_PROMPTS, LearnedPhi, prompts_hash, train_learned_phi
from kvstate.state.phi import FeatureMap, get_phi

TINY_TRAIN = PROMPTS + ["The quick brown fox jumps over the lazy dog.", "Count from one to ten, slowly."]


@pytest.fixture(scope="module")
def tiny_phi() -> LearnedPhi:
    return train_learned_phi(tiny_model("llama"), TINY_TRAIN, steps=40, lr=3e-2, seed=3)


def test_is_a_feature_map_with_metadata(tiny_phi):
    assert isinstance(tiny_phi, FeatureMap) and tiny_phi.name == "learned"
    assert tiny_phi.layers == [0, 1] and tiny_phi.dim(16) == 32
    assert tiny_phi.meta["prompts_sha256"] == prompts_hash(TINY_TRAIN) and tiny_phi.meta["seed"] == 3
    for stats in tiny_phi.meta["losses"].values():  # training lowered the KL to the real attention
        assert stats["kl"] < stats["kl_start"]


def test_needs_a_layer(tiny_phi):
    x = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="for_layer"):
        tiny_phi(x)
    f = tiny_phi.for_layer(1)
    assert f(x).shape == (1, 2, 5, 32)
    assert torch.allclose(f(x).sum(-1), torch.full((1, 2, 5), 2.0))  # two softmax halves
    with pytest.raises(ValueError, match="no layer 7"):
        tiny_phi.for_layer(7)
    with pytest.raises(ValueError, match="multiple"):
        f(torch.randn(1, 3, 5, 16))


def test_gqa_query_heads_share_their_kv_head_map(tiny_phi):
    f = tiny_phi.for_layer(0)
    k = torch.randn(1, 2, 5, 16)
    q = k.repeat_interleave(2, dim=1)  # 4 query heads, 2 per KV head
    torch.testing.assert_close(f(q), f(k).repeat_interleave(2, dim=1))


def test_save_load_round_trip(tiny_phi, tmp_path):
    path = tiny_phi.save(tmp_path / "phi.safetensors")
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    meta = json.loads(header["__metadata__"]["kvstate"])
    assert meta["layers"] == [0, 1] and meta["model"] == "tiny-llama" and meta["n_features"] == 16
    loaded = get_phi({"name": "learned", "path": str(path)})
    assert loaded.config() == {"name": "learned", "path": str(path)}
    x = torch.randn(2, 4, 6, 16)
    for layer in (0, 1):
        assert torch.equal(loaded.for_layer(layer)(x), tiny_phi.for_layer(layer)(x))
    pinned = get_phi({"name": "learned", "path": str(path), "layer": 1})
    assert pinned.config()["layer"] == 1 and torch.equal(pinned(x), tiny_phi.for_layer(1)(x))


def test_load_refuses_other_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a kvstate learned phi"):
        LearnedPhi.load(tmp_path / "other.safetensors")


def test_deterministic_under_seed(tiny_phi):
    again = train_learned_phi(tiny_model("llama"), TINY_TRAIN, steps=40, lr=3e-2, seed=3)
    other = train_learned_phi(tiny_model("llama"), TINY_TRAIN, steps=40, lr=3e-2, seed=4)
    for layer in tiny_phi.layers:
        assert torch.equal(again.weights[layer][0], tiny_phi.weights[layer][0])
        assert torch.equal(again.weights[layer][1], tiny_phi.weights[layer][1])
        assert not torch.equal(other.weights[layer][0], tiny_phi.weights[layer][0])


def test_usable_in_state_and_readout(tiny_phi):
    """The pinned map is an ordinary phi: parallel state + read-out equal the causal form at the end."""
    torch.manual_seed(0)
    f = tiny_phi.for_layer(1)
    q, k, v = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)
    S, z, _ = parallel_state(k, v, f)
    last = linear_attention(q[:, :, -1:], S.repeat_interleave(2, 1), z.repeat_interleave(2, 1), f)
    torch.testing.assert_close(last, causal_linear_attention(q, k, v, f)[:, :, -1:], rtol=1e-4, atol=1e-5)


def test_fidelity_applies_it_per_layer(tiny_phi):
    df = attention_fidelity(tiny_model("llama"), PROMPTS, ["elu", tiny_phi])
    assert set(df["phi"]) == {"elu", "learned"} and len(df) == 4
    with pytest.raises(ValueError, match="no weights for layers"):
        attention_fidelity(tiny_model("llama"), PROMPTS, [LearnedPhi({0: tiny_phi.weights[0]})], layers=[0, 1])


@pytest.mark.slow
def test_learned_phi_beats_identity_and_elu_on_heldout_smollm2(tmp_path):
    """The must-show: trained on calibration prompts, evaluated on different prompts."""
    import kvstate

    torch.manual_seed(0)
    lm = kvstate.load_model("smollm2-135m")
    layers = [2, 15, 28]
    assert not set(map(json.dumps, CALIBRATION_PROMPTS)) & set(map(json.dumps, HELDOUT_PROMPTS))
    phi = train_learned_phi(lm, CALIBRATION_PROMPTS, layers, steps=50, lr=3e-2, seed=0)
    phi = LearnedPhi.load(phi.save(tmp_path / "smollm2.safetensors"))
    df = attention_fidelity(lm, HELDOUT_PROMPTS, ["identity", "elu", phi], layers, skip_first=1)
    print("\n" + df.to_string() + "\n" + summarize(df).to_string())
    mean = df.groupby("phi")["rel_err"].mean()
    for layer in layers:
        rows = df[df.layer == layer].set_index("phi")["rel_err"]
        assert rows["learned"] < rows["elu"] and rows["learned"] < rows["identity"], (layer, rows.to_dict())
    assert mean["learned"] < 0.75 * min(mean["elu"], mean["identity"])
