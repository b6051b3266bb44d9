"""The reference equalities on every device the machine has (cpu; cuda where present), in float32 and
bfloat16 (issue 29): batched == unbatched, recurrent == parallel, cache == hooks, the monitor's last
state == one pass, folded == dense.

Tolerances are argued, not tuned. The state is kept in float32 whatever the model's dtype.

- ``ACC``: where both sides reduce the *same* k, v (recurrent vs parallel, cache vs hooks, folded vs
  dense), they differ only by float32 summation order: at most ~T * 2**-24 relative to the sum of
  the absolute terms, ``M = sum_t |phi(k_t)| |v_t|^T``; T <= 64 here, so 1e-5 * M bounds it.
- ``propagated``: where the model runs twice on different shapes (a padded batch vs one item; one
  decode step at a time vs one pass), k and v themselves differ by the model's own rounding. For
  each token phi1 v1^T - phi2 v2^T = (phi1 - phi2) v1^T + phi2 (v1 - v2)^T exactly, so
  ``|dS| <= sum_t |dphi| |v1|^T + |phi2| |dv|^T`` (+ ACC): the tests check the states against this
  bound computed from the k, v the two runs produced, so kvstate adds nothing to the model's own
  difference, and check separately that those k, v agree to ``KV_RTOL`` of their largest value.
- ``KV_RTOL``: float32 1e-4 (the cpu suite's tolerance); bfloat16: unit roundoff 2**-8 times 16,
  about eight roundings per layer (norm, q/k/v projection, attention, o_proj, residual, MLP) over
  the tiny models' two layers, each at most half an ulp of the largest value it feeds.
"""

import numpy as np
import pytest
import torch
from conftest import PROMPTS, tiny_model_on

import kvstate
from kvstate.capture import KVCapture, encode_all, make_batch
from kvstate.detect import get_detector
from kvstate.monitor import Monitor, MonitorSpec
from kvstate.representations import RepresentationSettings
from kvstate.state import parallel_state, recurrent_state
from kvstate.state.phi import get_phi

DTYPES = ["float32", "bfloat16"]
ACC = 1e-5
KV_RTOL = {"float32": 1e-4, "bfloat16": 16 * 2.0**-8}


def _abs_sum(k, v, phi="identity", w=None):
    """M = sum_t w_t |phi(k_t)| |v_t|^T per head: the scale of the float32 summation error."""
    f = get_phi(phi)(k.float()).abs()
    w = torch.ones(k.shape[0], k.shape[2], device=k.device) if w is None else w
    return torch.einsum("bt,bhtf,bhte->bhfe", w.float(), f, v.float().abs())


def _propagated(k1, v1, k2, v2, phi="identity"):
    """sum_t |phi(k1) - phi(k2)| |v1|^T + |phi(k2)| |v1 - v2|^T per head (B, H, f, e)."""
    f = get_phi(phi)
    p1, p2 = f(k1.float()), f(k2.float())
    return (torch.einsum("bhtf,bhte->bhfe", (p1 - p2).abs(), v1.float().abs())
            + torch.einsum("bhtf,bhte->bhfe", p2.abs(), (v1.float() - v2.float()).abs()))


def _assert_within(a, b, bound, what):
    a, b, bound = a.cpu().float(), b.cpu().float(), bound.cpu().float()
    excess = ((a - b).abs() - bound).max().item()
    assert excess <= 0, f"{what}: |difference| exceeds the argued bound by {excess:.3g}"


def _assert_kv_close(x, y, dtype, what):
    scale = max(x.abs().max().item(), 1e-30)
    assert (x.float() - y.float()).abs().max().item() <= KV_RTOL[dtype] * scale, f"{what}: k/v differ beyond KV_RTOL"


def _kv(lm, ids, mask=None, pos=None):
    """{layer: (k, v)} of one forward pass, on the model's device."""
    seen = {}
    dev = lm.model.device
    kw = {"attention_mask": mask.to(dev)} if mask is not None else {}
    if pos is not None:
        kw["position_ids"] = pos.to(dev)
    with torch.inference_mode(), KVCapture(lm.model, lambda c: seen.__setitem__(c.layer, (c.new_keys(), c.new_values()))):
        lm.model(input_ids=ids.to(dev), **kw)
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batched_equals_unbatched(device, dtype, arch):
    lm = tiny_model_on(arch, device, dtype)
    layers = list(range(lm.num_layers))
    batched = kvstate.extract(lm, PROMPTS, layers=layers, batch_size=3, padding_side="left")
    enc = encode_all(lm, PROMPTS)
    b = make_batch(enc, ["end"], "all", 0, lm.tokenizer.pad_token_id, "left")
    kv_b = _kv(lm, b.input_ids, b.attention_mask, b.position_ids)
    for i, e in enumerate(enc):
        alone = kvstate.extract(lm, [PROMPTS[i]], layers=layers, reads=batched.reads)
        assert torch.equal(batched.n[i], alone.n[0])
        kv_s = _kv(lm, torch.tensor([e.ids]))
        n = len(e.ids)
        for li, layer in enumerate(layers):
            k1, v1 = (x[i : i + 1, :, -n:] for x in kv_b[layer])  # left padding: the item's tokens are the last n
            k2, v2 = kv_s[layer]
            _assert_kv_close(k1, k2, dtype, f"{arch} layer {layer} keys")
            _assert_kv_close(v1, v2, dtype, f"{arch} layer {layer} values")
            bound = _propagated(k1, v1, k2, v2) + ACC * _abs_sum(k1, v1)
            _assert_within(batched.S[i, -1, li], alone.S[0, -1, li], bound[0], f"{arch} S, item {i}, layer {layer}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("phi", ["identity", "elu"])
def test_recurrent_equals_parallel(device, dtype, phi):
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(2, 3, 24, 8, generator=g).to(device, getattr(torch, dtype)) for _ in range(2))
    w = torch.ones(2, 24, device=device)
    w[0, :5] = 0  # left padding in item 0
    S, z, n = parallel_state(k, v, phi, w)
    Sr, zr, nr = recurrent_state(k, v, phi, w)
    assert S.device.type == Sr.device.type == device and S.dtype == torch.float32  # float32 state on the device
    _assert_within(S, Sr, ACC * _abs_sum(k, v, phi, w), "recurrent S")
    torch.testing.assert_close(n, nr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cache_equals_hooks(device, dtype, arch):
    lm = tiny_model_on(arch, device, dtype)
    prompt = PROMPTS[2]
    st = kvstate.extract(lm, [prompt], layers=list(range(lm.num_layers)), reads=["end"])
    ids = torch.tensor([encode_all(lm, [prompt])[0].ids], device=device)
    with torch.inference_mode():
        cache = lm.model(input_ids=ids, use_cache=True).past_key_values
    for li, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values
        if k.shape[2] != ids.shape[1]:
            continue  # a sliding-window layer keeps only its window (tests/test_capture.py checks those tokens)
        S, _, _ = parallel_state(k, v, "identity")
        _assert_within(st.S[0, 0, li], S[0], ACC * _abs_sum(k, v)[0], f"{arch} layer {li}")


def _spec(lm, rep="kv-elu-S/n", max_dim=10_000):
    layers = list(range(lm.num_layers))
    return MonitorSpec(rep, layers, {"name": "elu"}, RepresentationSettings(layers=tuple(layers), max_dim=max_dim).to_dict())


@pytest.mark.parametrize("dtype", DTYPES)
def test_monitor_last_state_equals_one_pass(device, dtype):
    lm = tiny_model_on("llama", device, dtype)
    mon = Monitor(lm, _spec(lm))
    decoded = {}  # the k, v each layer call gave the monitor, in order
    listen = mon._listen

    def record(call):
        decoded.setdefault(call.layer, []).append((call.new_keys(), call.new_values()))
        listen(call)

    mon._listen = record
    res = mon.generate(PROMPTS[2:], max_new_tokens=6, min_new_tokens=6)
    S, z, n = mon.state()
    assert S.device.type == device and S.dtype == torch.float32  # the running state lives on the model's device
    ids = res.sequences[0].tolist()
    assert n[0, 0].item() == len(ids)
    one = _kv(lm, torch.tensor([ids]))
    for li, layer in enumerate(mon.spec.layers):
        k1, v1 = (torch.cat(x, 2) for x in zip(*decoded[layer]))
        k2, v2 = one[layer]
        _assert_kv_close(k1, k2, dtype, f"layer {layer} keys")
        _assert_kv_close(v1, v2, dtype, f"layer {layer} values")
        bound = _propagated(k1, v1, k2, v2, "elu") + ACC * _abs_sum(k1, v1, "elu")
        S_ref, _, _ = parallel_state(k2, v2, "elu")
        _assert_within(S[0, li], S_ref[0], bound[0], f"monitor S, layer {layer}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_folded_equals_dense(device, dtype):
    lm = tiny_model_on("llama", device, dtype)
    spec = _spec(lm, max_dim=64)
    probe = Monitor(lm, spec)
    probe.generate(PROMPTS[:2], max_new_tokens=3)
    base = probe.features()
    rng = np.random.default_rng(0)
    spread = base.std() + 1e-3
    X = np.concatenate([base[i % 2] + rng.normal(scale=spread, size=(20, base.shape[1])) for i in range(2)])
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    X[y == 1] += spread
    det = get_detector("logistic").fit(X, y)
    folded = Monitor(lm, spec, det)
    res_f = folded.generate(PROMPTS[:2], max_new_tokens=6, final_state=False)
    dense = Monitor(lm, spec, det, fold=False)
    res_d = dense.generate(PROMPTS[:2], max_new_tokens=6, final_state=False)
    assert folded.scoring == "folded" and dense.scoring == "dense"
    np.testing.assert_array_equal(res_f.sequences, res_d.sequences)
    assert np.isfinite(res_d.scores).all() and np.ptp(res_d.scores) > 0
    # the same float32 state read two ways: float32 rounding of the read-out and the projection (test_monitor_fast)
    np.testing.assert_allclose(res_f.scores, res_d.scores, rtol=1e-5, atol=1e-5 * np.abs(res_d.scores).max())
