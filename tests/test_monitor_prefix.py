"""The monitor with any detector: streaming aggregation, prefix-state training, detector folders.

Planted signal: replies are forced token by token; anomalous replies are normal ones with one
signal token inserted at step t. Its keys and values enter the running state with the next forward
pass, so the first state that can show it is the state scored at step t + 1.
"""

import numpy as np
import pytest
from conftest import tiny_model

from kvstate.deploy import Detector
from kvstate.detect import make_detector, threshold_for_fpr
from kvstate.evaluate import fit_clone
from kvstate.monitor import Aggregator, Monitor, MonitorSpec, fit_prefix_detector, load_monitor, prefix_states
from kvstate.representations import RepresentationSettings

STEPS = 14


def _setup():
    lm = tiny_model("llama")
    layers = list(range(lm.num_layers))
    settings = RepresentationSettings(layers=tuple(layers), phis=("identity",), max_dim=100_000)
    spec = MonitorSpec("kv-identity-S/n", layers, {"name": "identity"}, settings.to_dict())
    tok = lm.tokenizer
    letters = [tok.convert_tokens_to_ids(c) for c in "abcdefghij"]
    signal = tok.convert_tokens_to_ids("#")
    assert signal not in letters and None not in letters + [signal]
    return lm, spec, letters, signal


def _plans(n: int, seed: int, letters, signal, onsets):
    rng = np.random.default_rng(seed)
    plans = [list(rng.choice(letters, STEPS)) for _ in range(n)]
    for p, t in zip(plans, onsets):
        if t is not None:
            p[t] = signal
    return plans


def _generate(lm, spec, det, plans, prompts, **kw):
    T0 = {}

    def allowed(b, ids):
        T0.setdefault(b, len(ids))
        return [int(plans[b][min(len(ids) - T0[b], STEPS - 1)])]

    return Monitor(lm, spec, det, **kw).generate(prompts, max_new_tokens=STEPS, prefix_allowed_tokens_fn=allowed)


def _prompts(n, start=0):
    return [f"Tell me about topic {start + i}" for i in range(n)]


def test_aggregator_options():
    s = [np.array([1.0, np.nan]), np.array([3.0, 2.0]), np.array([np.nan, 0.0]), np.array([2.0, 4.0])]
    assert [a[0] for a in map(Aggregator("max").update, s)] == [1.0, 3.0, 3.0, 3.0]
    agg = Aggregator("mean", window=2)
    out = [agg.update(x).copy() for x in s]
    assert out[-1].tolist() == [2.5, 2.0] and np.isnan(out[0][1])
    agg = Aggregator("ema", alpha=0.5)
    assert [agg.update(x)[1] for x in s][1:] == [2.0, 1.0, 2.5]
    with pytest.raises(ValueError, match="aggregate must be one of"):
        Aggregator("median")


def test_prefix_probe_flags_the_planted_signal_when_it_enters_the_state():
    lm, spec, letters, signal = _setup()
    n = 24
    onsets = [None] * n + list(np.random.default_rng(1).integers(2, 10, n))
    plans = _plans(2 * n, 0, letters, signal, onsets)
    prompts = _prompts(2 * n)
    states = []
    for s in range(0, 2 * n, 8):
        part = plans[s : s + 8]
        T0 = {}

        def allowed(b, ids, part=part, T0=T0):
            T0.setdefault(b, len(ids))
            return [int(part[b][min(len(ids) - T0[b], STEPS - 1)])]

        states.append(prefix_states(lm, prompts[s : s + 8], spec, every=1, max_new_tokens=STEPS, batch_size=8,
                                    prefix_allowed_tokens_fn=allowed))
    X = np.concatenate([st.X for st in states])
    step = np.concatenate([st.step for st in states])
    row = np.concatenate([st.row + 8 * i for i, st in enumerate(states)])
    # the signal token generated at step t is in the state from step t + 1 on
    y = np.array([int(onsets[r] is not None and step_ >= onsets[r] + 1) for r, step_ in zip(row, step)])
    from kvstate.monitor import PrefixStates

    probe = fit_prefix_detector(PrefixStates(X, row, step, [], []), y, detector="logistic")
    # threshold per reply on fresh normal generations
    normal = _plans(24, 5, letters, signal, [None] * 24)
    calib = _generate(lm, spec, probe, normal, _prompts(24, 100))
    spec.threshold = threshold_for_fpr(calib.peak, 0.0)
    t = 6
    twins = _plans(2, 9, letters, signal, [None, None])  # the same replies without the signal token
    test_plans = [list(p) for p in twins] + twins
    for p in test_plans[:2]:
        p[t] = signal
    prompts = _prompts(2, 200) * 2
    res = _generate(lm, spec, probe, test_plans, prompts)
    assert res.stopped_at == [t + 1, t + 1, None, None]
    # an end-state-only probe (fit on whole replies, one label each) cannot see the token earlier:
    # up to step t its scores equal those of the same replies without the signal
    ends = X[step == STEPS - 1]
    end_y = np.array([int(onsets[r] is not None) for r in row[step == STEPS - 1]])
    end_probe = fit_clone(make_detector("logistic", X.shape[1]), ends, end_y)
    res_end = _generate(lm, spec, end_probe, test_plans, prompts)
    np.testing.assert_allclose(res_end.scores[:2, : t + 1], res_end.scores[2:, : t + 1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(res_end.scores[:2, t + 1], res_end.scores[2:, t + 1])


def test_monitor_takes_a_detector_folder_and_refuses_other_models(tmp_path):
    lm, spec, letters, signal = _setup()
    rng = np.random.default_rng(0)
    from kvstate.deploy import fit_detector

    X = rng.normal(size=(20, 4 * 8 * 8 * lm.num_layers // 2))
    det = fit_detector(X, np.r_[np.zeros(10, int), np.ones(10, int)], "kv-identity-S/n@end", "logistic", model=lm.name,
                       dtype=lm.dtype, settings=RepresentationSettings(layers=(0, 1), phis=("identity",)).to_dict())
    det.threshold = 0.5
    det.save(tmp_path / "det")
    spec2, est = load_monitor(tmp_path / "det")
    assert spec2.representation == "kv-identity-S/n@end" and spec2.layers == [0, 1] and spec2.threshold == 0.5
    assert spec2.phi == {"name": "identity"} and spec2.model == lm.name
    act = Detector(det.estimator, "act-resid-last@end", lm.name, lm.dtype, det.settings)
    act.save(tmp_path / "act")
    with pytest.raises(ValueError, match="rebuilds kv-state read-outs"):
        load_monitor(tmp_path / "act")
    other = tiny_model("qwen2")
    with pytest.raises(ValueError, match="fitted on tiny-llama .* tiny-qwen2"):
        Monitor.from_detector(other, Detector.load(tmp_path / "det"))
