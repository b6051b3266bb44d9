"""Runtime monitor: the running state equals a one-pass state; stopping is exact; save/load."""

import numpy as np
import pytest
import torch
from conftest import tiny_model

from kvstate.capture import KVCapture, encode_all
from kvstate.detect import get_detector
from kvstate.monitor import Monitor, MonitorSpec, load_monitor, save_monitor
from kvstate.representations import RepresentationSettings
from kvstate.state import parallel_state

PROMPTS = ["Tell me about cats", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]]


def _spec(lm, phi="elu", rep="kv-elu-S/n", threshold=None):
    layers = list(range(lm.num_layers))
    return MonitorSpec(rep, layers, {"name": phi}, RepresentationSettings(layers=tuple(layers), max_dim=10_000).to_dict(),
                       threshold=threshold)


def one_pass_state(lm, ids, layer, phi, rope="post"):
    """Reference: one forward over the unpadded token ids, then the parallel state."""
    seen = {}
    with torch.inference_mode(), KVCapture(lm.model, lambda c: seen.__setitem__(c.layer, (c.new_keys(rope), c.new_values()))):
        lm.model(input_ids=torch.tensor([ids]))
    return parallel_state(*seen[layer], phi)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
@pytest.mark.parametrize("rope", ["post", "pre"])
def test_running_state_equals_one_pass_over_prompt_and_reply(arch, rope):
    lm = tiny_model(arch)
    rep = "kv-elu-S/n-pre" if rope == "pre" else "kv-elu-S/n"
    first = Monitor(lm, _spec(lm, rep=rep)).generate(PROMPTS, max_new_tokens=6)
    # make row 0 end early: its 3rd generated token becomes an eos token
    eos = int(first.sequences[0, first.prompt_len + 2])
    lm.model.generation_config.eos_token_id = eos
    try:
        mon = Monitor(lm, _spec(lm, rep=rep))
        res = mon.generate(PROMPTS, max_new_tokens=6)
    finally:
        lm.model.generation_config.eos_token_id = 257
    S, z, n = mon.state()
    enc = encode_all(lm, PROMPTS)
    for i, e in enumerate(enc):
        gen = res.sequences[i, res.prompt_len:].tolist()
        if eos in gen:
            gen = gen[: gen.index(eos) + 1]
        ids = e.ids + gen
        assert n[i, 0] == len(ids)
        for li, layer in enumerate(mon.spec.layers):
            S_ref, z_ref, _ = one_pass_state(lm, ids, layer, "elu", rope)
            torch.testing.assert_close(S[i, li], S_ref[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(z[i, li], z_ref[0], atol=1e-4, rtol=1e-4)


def _live_vs_stored(lm, spec, settings, name):
    """The monitor's features after forcing a reply token by token, and the recorder's for prompt + reply."""
    from kvstate.representations import capture_representations

    mon = Monitor(lm, spec)
    reply = "Yes, cats."
    forced = lm.tokenizer(reply, add_special_tokens=False)["input_ids"]
    T0 = len(encode_all(lm, PROMPTS[:1])[0].ids)
    # force the reply token by token so that text and ids round-trip exactly
    mon.generate(PROMPTS[:1], max_new_tokens=len(forced),
                 prefix_allowed_tokens_fn=lambda b, ids: [forced[min(len(ids) - T0, len(forced) - 1)]])
    cap = capture_representations(lm, [{"messages": [{"role": "user", "content": PROMPTS[0]}], "response": reply}],
                                  settings)
    return mon.features()[0], cap.rows[0][name]


@pytest.mark.parametrize("projection", ["gaussian", "sparse"])
def test_monitor_features_equal_study_features(projection):
    lm = tiny_model("llama")
    spec = _spec(lm, rep="kv-elu-S/n-hn")
    settings = RepresentationSettings(layers=(0, 1), max_dim=64, projection=projection)
    spec.settings = settings.to_dict()  # max_dim forces the JL reduction
    live, stored = _live_vs_stored(lm, spec, settings, "kv-elu-S/n-hn@end")
    np.testing.assert_allclose(live, stored, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_monitor_keeps_the_decayed_state_the_study_stored(arch):
    """kv-elu-S/n-decay0.9: the monitor's running state decays per token as the recorder's parallel
    form does, so its features at the end of the reply equal the stored ones."""
    lm = tiny_model(arch)
    settings = RepresentationSettings(layers=(0, 1), phis=("elu",), ablation_phis=("elu",), sweep=False, max_dim=64,
                                      decays=(0.9,))
    spec = _spec(lm, rep="kv-elu-S/n-decay0.9")
    spec.layers, spec.settings = [0, 1], settings.to_dict()
    live, stored = _live_vs_stored(lm, spec, settings, "kv-elu-S/n-decay0.9@end")
    np.testing.assert_allclose(live, stored, rtol=1e-4, atol=1e-5)
    plain, _ = _live_vs_stored(lm, MonitorSpec("kv-elu-S/n", [0, 1], {"name": "elu"}, settings.to_dict()), settings,
                               "kv-elu-S/n@end")
    assert np.abs(plain - live).max() > 1e-3  # the decay changed the state


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_monitor_keeps_the_compressed_state_the_study_stored(arch):
    """kv-elu-ASB/n: the monitor keeps A S B^T itself (updated from A phi(k), B v), never the full
    state or a projection matrix, and its features equal the stored, unprojected ones."""
    lm = tiny_model(arch)
    settings = RepresentationSettings(layers=(0, 1), phis=("elu",), ablation_phis=("elu",), sweep=False, max_dim=8,
                                      compress=(4, 3))
    spec = MonitorSpec("kv-elu-ASB/n", [0, 1], {"name": "elu"}, settings.to_dict())
    live, stored = _live_vs_stored(lm, spec, settings, "kv-elu-ASB/n@end")
    H = lm.model.config.num_key_value_heads
    assert live.shape == stored.shape == (2 * H * 4 * 3,)  # wider than max_dim, and not projected
    np.testing.assert_allclose(live, stored, rtol=1e-4, atol=1e-5)


def test_monitor_applies_a_learned_phi_per_layer(tmp_path):
    """A study's Hedgehog map has weights per layer: each running state uses its own layer's map."""
    from kvstate.state.learned import train_learned_phi

    lm = tiny_model("qwen2")
    path = train_learned_phi(lm, PROMPTS, [0, 1], n_features=8, steps=5, seed=1).save(tmp_path / "phi.safetensors")
    settings = RepresentationSettings(layers=(0, 1), phis=(f"learned:{path}",), ablation_phis=(), sweep=False, max_dim=8192)
    spec = MonitorSpec("kv-learned-S/n", [0, 1], {"name": "learned", "path": str(path)}, settings.to_dict())
    live, stored = _live_vs_stored(lm, spec, settings, "kv-learned-S/n@end")
    np.testing.assert_allclose(live, stored, rtol=1e-4, atol=1e-5)


def test_random_phi_monitor_scores_the_stored_features_when_the_seed_is_not_zero():
    """A study with seed != 0: fit_monitor once built its random features with the study seed while
    the recorder used the phi spec's own (seed 0), so the monitor scored other features than stored."""
    from kvstate.monitor import fit_monitor

    lm = tiny_model("llama")
    settings = RepresentationSettings(layers=(0, 1), phis=("random",), ablation_phis=(), sweep=False, seed=3)
    rng = np.random.default_rng(0)
    spec, _ = fit_monitor(rng.normal(size=(12, 4)), np.r_[np.zeros(10, int), 1, 1], np.arange(12), "kv-random64-S/n@end",
                          settings.to_dict(), seed=3)
    live, stored = _live_vs_stored(lm, spec, settings, "kv-random64-S/n@end")
    np.testing.assert_allclose(live, stored, rtol=1e-4, atol=1e-5)


class Scripted:
    """A detector whose score at step t is known in advance."""

    def __init__(self, scores):
        self.scores, self.calls = scores, 0

    def decision_function(self, X):
        s = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        return np.full(X.shape[0], s)


def test_stop_at_first_crossing():
    lm = tiny_model("llama")
    det = Scripted([0.1, 0.2, 0.3, 0.9, 0.1, 0.95])
    mon = Monitor(lm, _spec(lm, threshold=0.5), det, stop=True)
    res = mon.generate(PROMPTS[:1], max_new_tokens=10)
    assert res.stopped_at == [3]
    assert res.sequences.shape[1] - res.prompt_len == 4  # tokens 0..3 generated, then stopped
    np.testing.assert_allclose(res.scores[0], [0.1, 0.2, 0.3, 0.9])


def test_flag_without_stopping_and_callback():
    lm = tiny_model("llama")
    seen = []
    mon = Monitor(lm, _spec(lm, threshold=0.5), Scripted([0.1, 0.9, 0.1]), on_step=lambda s, t, sc: seen.append(s))
    res = mon.generate(PROMPTS[:1], max_new_tokens=5)
    assert res.stopped_at == [1] and res.sequences.shape[1] - res.prompt_len == 5 and seen == [0, 1, 2, 3, 4]


def test_sampling_and_every_n_steps():
    lm = tiny_model("qwen2")
    torch.manual_seed(0)
    mon = Monitor(lm, _spec(lm), Scripted([0.0]), every=2)
    res = mon.generate(PROMPTS, max_new_tokens=5, do_sample=True, top_k=5)
    assert np.isnan(res.scores[:, 1::2]).all() and np.isfinite(res.scores[:, ::2]).all()


def test_save_load_round_trip(tmp_path):
    lm = tiny_model("llama")
    spec = _spec(lm)
    X = np.random.default_rng(0).normal(size=(40, 8))
    det = get_detector("mahalanobis").fit(X)
    save_monitor(tmp_path / "m", spec, det)
    spec2, det2 = load_monitor(tmp_path / "m")
    assert spec2 == spec
    np.testing.assert_array_equal(det.decision_function(X), det2.decision_function(X))
    with pytest.raises(ValueError, match="not a monitor or detector folder"):
        load_monitor(tmp_path)


class Norm:
    """A detector whose score is the feature norm (grows and moves with the state)."""

    def decision_function(self, X):
        return np.linalg.norm(X, axis=1)


def test_calibrate_sets_a_per_sequence_threshold():
    lm = tiny_model("llama")
    prompts = ["Tell me about cats", "Dogs?", "What is the weather like on Mars today", "Hi"]
    mon = Monitor(lm, _spec(lm), Norm(), every=2)
    threshold = mon.calibrate(prompts, fpr=0.0, max_new_tokens=6)
    assert mon.spec.threshold == threshold and mon.spec.notes["calibration"]["level"] == "sequence"
    res = Monitor(lm, _spec(lm), Norm(), every=2).generate(prompts, max_new_tokens=6)
    assert threshold == pytest.approx(np.nanmax(res.scores))  # fpr 0: the highest step of any normal sequence
    mon.stop = True
    again = mon.generate(prompts, max_new_tokens=6)
    assert mon.stop and again.stopped_at == [None] * 4  # no calibration sequence is flagged at any step
    # the quantile is over each sequence's highest step, not over all steps (which would be lower)
    peaks = np.nanmax(res.scores, axis=1)
    assert mon.calibrate(prompts, fpr=0.25, max_new_tokens=6) == pytest.approx(np.quantile(peaks, 0.75, method="higher"))  # threshold_for_fpr's tie rule
    assert np.quantile(peaks, 0.75) > np.nanquantile(res.scores, 0.75)
    with pytest.raises(ValueError, match="at least 2 normal prompts"):
        mon.calibrate(prompts[:1])
    with pytest.raises(ValueError, match="needs a fitted detector"):
        Monitor(lm, _spec(lm)).calibrate(prompts)


def test_stop_needs_threshold():
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="needs a threshold"):
        Monitor(lm, _spec(lm), Scripted([0]), stop=True)


@pytest.mark.slow
def test_running_state_equals_one_pass_on_smollm2():
    from test_models import smollm

    lm = smollm()
    layers = [0, 14, 29]
    spec = MonitorSpec("kv-elu-S/n", layers, {"name": "elu"}, RepresentationSettings(layers=tuple(layers)).to_dict())
    mon = Monitor(lm, spec)
    chats = [[{"role": "user", "content": "Name three colours."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]]
    res = mon.generate(chats, max_new_tokens=8)
    S, z, n = mon.state()
    enc = encode_all(lm, chats)
    eos = lm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, e in enumerate(enc):
        gen = res.sequences[i, res.prompt_len:].tolist()
        cut = next((j + 1 for j, t in enumerate(gen) if t in eos), len(gen))
        ids = e.ids + gen[:cut]
        assert n[i, 0] == len(ids)
        for li, layer in enumerate(layers):
            S_ref, z_ref, _ = one_pass_state(lm, ids, layer, "elu")
            torch.testing.assert_close(S[i, li], S_ref[0], atol=2e-3, rtol=1e-4)
            torch.testing.assert_close(z[i, li], z_ref[0], atol=2e-3, rtol=1e-4)
