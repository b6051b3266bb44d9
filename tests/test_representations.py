"""All representations from one pass: consistent with extract(), padding-safe, correct activations."""

import numpy as np
import pytest
import torch
from conftest import PROMPTS, tiny_model

import kvstate
from kvstate.capture import encode_all
from kvstate.representations import Reducer, RepresentationSettings, capture_representations, family

SETTINGS = RepresentationSettings(layers=(0, 1), max_dim=256)


@pytest.fixture(scope="module", params=["llama", "gemma3", "gpt2"])
def captured(request):
    lm = tiny_model(request.param)
    return lm, capture_representations(lm, PROMPTS, SETTINGS, batch_size=3), capture_representations(lm, PROMPTS, SETTINGS, batch_size=1)


def test_names_dims_and_families(captured):
    lm, c, _ = captured
    names = set(c.rows[0])
    for expected in ["kv-identity-S/n@end", "kv-elu-S|z|@end", "kv-taylor-svals@end", "kv-attnw-S@end", "kv-h2o-S/n@end",
                     "kv-hier-S/n@end", "act-resid-last@end", "act-resid-mean@end", "act-heads-last@end",
                     "act-llmcheck-attn@end", "act-llmcheck-hidden@end", "act-ppl@end", "act-entropy@end",
                     "ctl-length@end", "ctl-bow@end", "sweep-kv/0", "sweep-resid/1", "kv-identity-S/n@prompt_end"]:
        assert expected in names, expected
    assert ("kv-identity-S/n-pre@end" in names) == (lm.info["arch"] != "gpt2")
    assert all(np.isfinite(v).all() for row in c.rows for v in row.values())
    assert all(len(row[n]) <= 256 for row in c.rows for n in row)
    assert family("kv-elu-S/n@end") == "kv-state" and family("sweep-resid/3") == "activation" and family("ctl-bow") == "control"


def test_batched_equals_unbatched(captured):
    _, batched, single = captured
    for a, b in zip(batched.rows, single.rows):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_kv_identity_matches_extract(captured):
    lm, c, _ = captured
    st = kvstate.extract(lm, PROMPTS, layers=[0, 1])
    X = st.features("S/n", read="end")
    if X.shape[1] <= 256:
        np.testing.assert_allclose(np.stack([r["kv-identity-S/n@end"] for r in c.rows]), X, rtol=1e-4, atol=1e-5)


def test_residual_and_perplexity_match_a_plain_forward():
    lm = tiny_model("qwen2")
    c = capture_representations(lm, PROMPTS[2:], SETTINGS)
    ids = torch.tensor([encode_all(lm, PROMPTS[2:])[0].ids])
    with torch.inference_mode():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    last = torch.cat([out.hidden_states[1][0, -1], out.hidden_states[2][0, -1]]).numpy()
    np.testing.assert_allclose(c.rows[0]["act-resid-last"], last, rtol=1e-4, atol=1e-5)
    nll = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:]).item()
    assert c.rows[0]["act-ppl"][0] == pytest.approx(nll, rel=1e-4)
    assert c.rows[0]["ctl-length"][0] == ids.shape[1]


@pytest.mark.parametrize("kind", ["gaussian", "sparse"])
def test_reducer_is_data_independent_and_seeded(kind):
    x = np.random.default_rng(0).normal(size=(5, 1000)).astype(np.float32)
    a, b = Reducer(64, 0, kind)(x), Reducer(64, 0, kind)(x[:2])
    assert a.shape == (5, 64) and a.dtype == np.float32
    np.testing.assert_allclose(a[:2], b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(Reducer(64, 1, kind)(x), a)
    d_before = np.linalg.norm(x[0] - x[1])
    assert abs(np.linalg.norm(a[0] - a[1]) / d_before - 1) < 0.3
    np.testing.assert_array_equal(Reducer(2000, 0, kind)(x), x)  # narrow vectors pass unchanged


@pytest.mark.parametrize("kind", ["gaussian", "sparse"])
def test_reducer_many_equals_one_call_per_array(kind):
    """The recorder projects all names of a batch at once: one product per width, in input order."""
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(n, d)).astype(np.float32) for n, d in [(3, 500), (2, 40), (4, 500), (1, 300), (2, 500)]]
    red = Reducer(64, 0, kind)
    got = red.many(xs)
    assert [g.shape for g in got] == [(3, 64), (2, 40), (4, 64), (1, 64), (2, 64)]
    for g, x in zip(got, xs):
        np.testing.assert_allclose(g, red(x), rtol=1e-5, atol=1e-5)  # float32 rounding of a longer product
    assert red.many([]) == []
    assert len({Reducer(64, 0, kind), Reducer(64, 0, kind), Reducer(64, 1, kind)}) == 2  # groups by matrix


def test_sparse_projection_preserves_distances_at_monitor_scale():
    """The monitor's case: ~37k state features to 2048, where the dense matrix would be 288 MiB."""
    x = np.random.default_rng(1).normal(size=(6, 36_864)).astype(np.float32)
    y = Reducer(2048, 0, "sparse")(x)
    for i, j in [(0, 1), (2, 3), (4, 5)]:
        assert abs(np.linalg.norm(y[i] - y[j]) / np.linalg.norm(x[i] - x[j]) - 1) < 0.1


def test_projection_setting_is_checked_and_keeps_old_store_settings():
    with pytest.raises(ValueError, match="projection must be one of 'gaussian', 'sparse'; got 'dense'"):
        RepresentationSettings(projection="dense")
    assert "projection" not in RepresentationSettings().to_dict()  # stores made before the option stay valid
    sparse = RepresentationSettings(projection="sparse")
    assert RepresentationSettings.from_dict(sparse.to_dict()) == sparse
