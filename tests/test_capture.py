"""Capture on tiny random models of several architectures: exact, padding-safe, cache-consistent."""

import sys

import pytest
import torch
from conftest import PROMPTS, ROPE_ARCHS, byte_tokenizer, tiny_model

import kvstate
from kvstate.capture import KVCapture, UnsupportedModelError, encode_all, make_batch, rotate
from kvstate.state import parallel_state


def _batch(lm, prompts, side="right"):
    enc = encode_all(lm, prompts)
    return make_batch(enc, ["end"], "all", 0, lm.tokenizer.pad_token_id, side)


def _forward(lm, b, **kw):
    return lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, **kw)


@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_leaves_logits_identical(arch, side):
    lm = tiny_model(arch)
    b = _batch(lm, PROMPTS, side)
    with torch.inference_mode():
        plain = _forward(lm, b).logits
        calls = []
        with KVCapture(lm.model, calls.append):
            captured = _forward(lm, b).logits
    assert len(calls) == lm.num_layers
    assert torch.equal(plain, captured)
    assert lm.model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("phi", ["identity", "elu"])
def test_batched_equals_unbatched_under_padding(arch, side, phi):
    lm = tiny_model(arch)
    batched = kvstate.extract(lm, PROMPTS, batch_size=3, padding_side=side, phi=phi)
    for i, p in enumerate(PROMPTS):
        alone = kvstate.extract(lm, [p], phi=phi, reads=batched.reads)
        torch.testing.assert_close(batched.readout("S/n")[i], alone.readout("S/n")[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.z[i] / batched.n[i, ..., None, None], alone.z[0] / alone.n[0, ..., None, None],
                                   atol=1e-4, rtol=1e-4)
        assert torch.equal(batched.n[i], alone.n[0])


def test_state_from_capture_equals_state_from_kv_cache(arch):
    lm = tiny_model(arch)
    st = kvstate.extract(lm, PROMPTS[2:], reads=["end"])
    b = _batch(lm, PROMPTS[2:])
    seen = {}
    with torch.inference_mode(), KVCapture(lm.model, lambda c: seen.__setitem__(c.layer, (c.new_keys(), c.new_values()))):
        out = _forward(lm, b, use_cache=True)
    cache = out.past_key_values
    T = b.input_ids.shape[1]
    for li, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values
        if k.shape[2] == T:  # full-attention layer: the cache holds every token
            S, z, n = parallel_state(k, v, "identity")
            torch.testing.assert_close(st.S[0, 0, li], S[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(st.z[0, 0, li], z[0], atol=1e-4, rtol=1e-4)
        else:  # sliding-window layer: the cache keeps the last window-1 tokens, the ones the hooks saw last
            assert k.shape[2] < T
            torch.testing.assert_close(k, seen[li][0][:, :, -k.shape[2]:])
            torch.testing.assert_close(v, seen[li][1][:, :, -v.shape[2]:])


def test_gqa_keeps_one_state_per_kv_head(arch):
    lm = tiny_model(arch)
    st = kvstate.extract(lm, PROMPTS[:1])
    cfg = lm.model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    assert st.S.shape[3] == kv_heads
    assert st.S.shape[2] == lm.num_layers


@pytest.mark.parametrize("arch", ROPE_ARCHS)
def test_pre_rope_keys_rotated_equal_post_rope_keys(arch):
    lm = tiny_model(arch)
    b = _batch(lm, PROMPTS, "left")
    calls = []
    with torch.inference_mode(), KVCapture(lm.model, calls.append):
        _forward(lm, b)
    for c in calls:
        pre, post = c.new_keys("pre"), c.new_keys("post")
        cos, sin = c.position_embeddings
        # the model's own rotary function, not ours
        apply = sys.modules[type(c.module).__module__].apply_rotary_pos_emb
        _, rotated = apply(c.query, pre, cos, sin)
        torch.testing.assert_close(rotated, post, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rotate(pre, cos, sin), post, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(pre, post)


def test_pre_rope_states_do_not_depend_on_absolute_position():
    """Shifting a text by padding-free prefix tokens changes post-RoPE keys but not pre-RoPE keys."""
    lm = tiny_model("llama")
    calls = {}
    for shift in (0, 5):
        ids = torch.tensor([[7] * shift + [40, 41, 42, 43]])
        pos = torch.arange(ids.shape[1])[None]
        got = []
        with torch.inference_mode(), KVCapture(lm.model, got.append):
            lm.model(input_ids=ids, position_ids=pos)
        calls[shift] = got[0]  # layer 0 sees the embeddings directly
    torch.testing.assert_close(calls[0].new_keys("pre")[:, :, -4:], calls[5].new_keys("pre")[:, :, -4:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(calls[0].new_keys("post")[:, :, -4:], calls[5].new_keys("post")[:, :, -4:], atol=1e-3)


def test_sliding_window_option_restricts_to_the_attended_window():
    lm = tiny_model("gemma3")  # layers 0, 1 slide over 8 tokens, layer 2 is global
    full = kvstate.extract(lm, PROMPTS[2:], window="full")
    win = kvstate.extract(lm, PROMPTS[2:], window="layer")
    T = full.meta["n_tokens"][0]
    assert full.n[0, 0].tolist() == [T, T, T]
    assert win.n[0, 0].tolist() == [8, 8, T]
    b = _batch(lm, PROMPTS[2:])
    seen = {}
    with torch.inference_mode(), KVCapture(lm.model, lambda c: seen.__setitem__(c.layer, (c.new_keys(), c.new_values()))):
        _forward(lm, b)
    k, v = seen[0]
    S, _, _ = parallel_state(k[:, :, -8:], v[:, :, -8:], "identity")
    torch.testing.assert_close(win.S[0, 0, 0], S[0], atol=1e-4, rtol=1e-4)


def test_gpt2_has_no_rope_and_says_so():
    lm = tiny_model("gpt2")
    st = kvstate.extract(lm, PROMPTS[:1])
    assert torch.isfinite(st.S).all()
    with pytest.raises(UnsupportedModelError, match="no rotary embedding"):
        kvstate.extract(lm, PROMPTS[:1], rope="pre")


def test_model_without_attention_interface_is_refused():
    from transformers import AutoModelForCausalLM, BloomConfig

    model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=272, hidden_size=32, n_layer=1, n_head=2))
    lm = kvstate.from_hf(model, byte_tokenizer())
    with pytest.raises(UnsupportedModelError, match="AttentionInterface"):
        kvstate.extract(lm, ["hello"])


def test_two_reads_in_one_pass_equal_separate_passes():
    lm = tiny_model("qwen2")
    p = PROMPTS[1]
    both = kvstate.extract(lm, [p])
    assert both.reads == ["prompt_end", "end"]
    prompt_only = kvstate.extract(lm, [{"messages": p["messages"]}])
    torch.testing.assert_close(both.S[0, 0], prompt_only.S[0, 0], atol=1e-4, rtol=1e-4)
    assert both.n[0, 0, 0] < both.n[0, 1, 0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_recomputed_attention_probs_equal_eager_weights(arch, side):
    lm = tiny_model(arch)
    b = _batch(lm, PROMPTS, side)
    calls = []
    with torch.inference_mode(), KVCapture(lm.model, calls.append):
        _forward(lm, b)
    lm.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            eager = _forward(lm, b, output_attentions=True).attentions
    finally:
        lm.model.set_attn_implementation("sdpa")
    real = b.attention_mask.bool()[:, None, :, None]  # compare rows of real query tokens only
    for c, ref in zip(calls, eager):
        torch.testing.assert_close(c.probs().masked_fill(~real, 0), ref.masked_fill(~real, 0), atol=1e-5, rtol=1e-4)
