"""kvstate.plan: every number for a small config worked out by hand."""

from __future__ import annotations

import json

import pytest

from kvstate.state.plan import format_plan, known_configs, plan

SMALL = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100, "intermediate_size": 128,
         "max_position_embeddings": 256, "tie_word_embeddings": False}


def _plan(**kw):
    args = dict(n_items=10, mean_tokens=10, layer_schemes=("middle", "all"), phis=("identity", "taylor"),
                dtype="bfloat16", gpu_flops=1e6, batch_size=8)
    return plan(SMALL, **{**args, **kw})


def test_params_by_hand():
    # per layer: q 64*64 + k,v 2*64*32 + o 64*64 = 12288; MLP 3*64*128 = 24576; 2 norms 128 -> 36992
    # embed 100*64 = 6400, untied head 6400, final norm 64
    p = _plan()
    assert p["model"]["params"] == 6400 + 4 * 36992 + 64 + 6400 == 160832
    assert p["model"]["params_matmul"] == 160832 - 6400
    tied = plan({**SMALL, "tie_word_embeddings": True}, n_items=1, mean_tokens=1)
    assert tied["model"]["params"] == 160832 - 6400 and tied["model"]["params_matmul"] == 160832 - 6400


def test_state_sizes_and_reduction_flops_by_hand():
    rows = {(r["scheme"], r["phi"]): r for r in _plan()["states"]}
    ident_all = rows[("all", "identity")]
    # 4 layers x 2 kv heads x (16*16 S + 16 z) + 4 counts, float32
    assert ident_all["bytes_per_prompt"] == (4 * 2 * (16 * 16 + 16) + 4) * 4 == 8720
    assert ident_all["store_bytes"] == 87200
    assert rows[("middle", "identity")]["bytes_per_prompt"] == (2 * 272 + 1) * 4
    # layers x kv heads x tokens x d_phi x d_v x 2
    assert ident_all["state_flops_per_item"] == 2 * 4 * 2 * 10 * 16 * 16 == 40960
    taylor = rows[("middle", "taylor")]
    assert taylor["d_phi"] == 1 + 16 + 256
    assert taylor["bytes_per_prompt"] == (2 * (273 * 16 + 273) + 1) * 4
    assert _plan(reads=2)["states"][0]["bytes_per_prompt"] == 2 * rows[("middle", "identity")]["bytes_per_prompt"]


def test_flops_time_and_memory_by_hand():
    p = _plan()
    f = p["compute"]["forward_flops_per_item"]
    assert f["linear"] == 2 * 154432 * 10
    assert f["attention"] == 4 * 4 * 10 * 10 * 4 * 16 == 102400
    assert p["compute"]["seconds_forward"] == pytest.approx(10 * (3088640 + 102400) / 1e6)
    extra = 40960 + 2 * 4 * 2 * 10 * 273 * 16
    assert p["compute"]["seconds_total[all]"] == pytest.approx(10 * (3191040 + extra) / 1e6)
    m = p["memory"]
    assert m["weights"] == 160832 * 2
    assert m["kv_cache"] == 2 * 4 * 2 * 16 * 80 * 2  # layers x kv heads x head_dim x batch*tokens x bf16, K and V
    assert m["logits_fp32"] == 80 * 100 * 4
    assert plan(SMALL, n_items=1, mean_tokens=10, dtype="4bit")["memory"]["weights"] == 160832 / 2


def test_sliding_window_caps_attention():
    p = plan({**SMALL, "sliding_window": 4}, n_items=1, mean_tokens=10)
    assert p["compute"]["forward_flops_per_item"]["attention"] == 4 * 4 * 10 * 4 * 64
    off = plan({**SMALL, "sliding_window": 4, "use_sliding_window": False}, n_items=1, mean_tokens=10)
    assert off["model"]["sliding_window"] is None


def test_known_configs_match_published_sizes():
    sizes = {"Llama-3.1-8B": 8.03e9, "Llama-3.1-70B": 70.55e9, "Mistral-7B-v0.1": 7.24e9, "Qwen2.5-0.5B": 0.494e9,
             "Qwen2.5-1.5B": 1.54e9, "Qwen2.5-7B": 7.62e9, "SmolLM2-135M": 0.1345e9}
    assert set(sizes) <= set(known_configs())
    for name, n in sizes.items():
        assert plan(name, n_items=1, mean_tokens=8)["model"]["params"] == pytest.approx(n, rel=0.005), name
    assert plan("mistral-7b-v0.1", n_items=1, mean_tokens=8)["model"]["sliding_window"] == 4096


def test_config_from_file_and_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    assert plan(tmp_path, n_items=1, mean_tokens=4)["model"]["params"] == 160832
    assert plan(tmp_path / "config.json", n_items=1, mean_tokens=4)["model"]["name"] == tmp_path.name
    with pytest.raises(ValueError, match="no config"):
        plan("no-such-model", n_items=1, mean_tokens=4)
    with pytest.raises(ValueError, match="lacks 'vocab_size'"):
        plan({k: v for k, v in SMALL.items() if k != "vocab_size"}, n_items=1, mean_tokens=4)
    with pytest.raises(ValueError, match="unknown dtype"):
        plan(SMALL, n_items=1, mean_tokens=4, dtype="int3")


def test_format_plan_is_markdown():
    text = format_plan(_plan())
    assert text.startswith("### ") and "| all | 4 | identity | 16 | 8.5 KiB |" in text
    assert "TFLOP/s sustained" in text
