"""Capture from models whose layers accelerate spreads over devices, offloaded to CPU or disk.

Big models are loaded with ``device_map``: some weights stay on "meta" and accelerate's hooks
bring them in per layer. States are reduced on each layer's own device and only the small
(d_phi x d_v) results move, so they must equal the single-device states, and the logits too.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import PROMPTS, VOCAB, byte_tokenizer

import kvstate
from kvstate.models import from_hf, load_model


def _config(arch: str):
    from transformers import LlamaConfig, MistralConfig

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=256, eos_token_id=257, pad_token_id=257)
    if arch == "llama3":  # GQA + the llama3 RoPE frequency scaling of Llama-3.1
        return LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    return MistralConfig(**common, sliding_window=8)


@pytest.fixture(scope="module", params=["llama3", "mistral"])
def saved(request, tmp_path_factory):
    """(arch, folder, reference LoadedModel on one device) for a seeded tiny model saved to disk."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(request.param), attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():  # peaked attention, like a trained model
        for name, p in model.named_parameters():
            if ("q_proj" in name or "k_proj" in name) and p.ndim == 2:
                p.mul_(4.0)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return request.param, folder, from_hf(model, byte_tokenizer(), name=f"tiny-{request.param}")


OPTIONS = dict(phi=["identity", "elu"], rope="pre", window="layer", batch_size=2)


def _logits(lm) -> torch.Tensor:
    ids = torch.tensor([list(b"Tell me a story about a cat")])
    with torch.inference_mode():
        return lm.model(input_ids=ids).logits.float().cpu()


def _assert_same(ref, lm) -> None:
    a, b = kvstate.extract(ref, PROMPTS, **OPTIONS), kvstate.extract(lm, PROMPTS, **OPTIONS)
    for key in a:
        for part in ("S", "z", "n"):
            torch.testing.assert_close(getattr(b[key], part), getattr(a[key], part), atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(lm), _logits(ref), atol=1e-5, rtol=0)


def test_device_map_with_disk_and_cpu_offload(saved, tmp_path):
    arch, folder, ref = saved
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "disk",
                  "model.layers.1": "cpu", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "disk"}
    lm = load_model(folder, device_map=device_map, offload_folder=tmp_path / "offload")
    assert lm.info["device_map"]["model.layers.0"] == "disk"
    if arch == "llama3":
        assert lm.config.rope_parameters["rope_type"] == "llama3"
    meta = [n for n, p in lm.model.named_parameters() if p.device.type == "meta"]
    assert any(n.startswith("model.layers.0.") for n in meta), "layer 0 should be offloaded (weights on meta)"
    _assert_same(ref, lm)


def test_accelerate_cpu_offload(saved):
    """accelerate.cpu_offload per decoder layer: layer weights on meta, streamed in by hooks per forward."""
    from accelerate import cpu_offload
    from transformers import AutoModelForCausalLM

    arch, folder, ref = saved
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    for layer in model.model.layers:
        cpu_offload(layer, execution_device="cpu")
    lm = from_hf(model, byte_tokenizer())
    assert {p.device.type for n, p in model.named_parameters() if ".layers." in n} == {"meta"}
    _assert_same(ref, lm)


def test_offloaded_embedding(saved, tmp_path):
    arch, folder, ref = saved
    device_map = {"model.embed_tokens": "disk", "model.rotary_emb": "cpu", "model.layers": "cpu",
                  "model.norm": "cpu", "lm_head": "cpu"}
    lm = load_model(folder, device_map=device_map, offload_folder=tmp_path / "offload")
    _assert_same(ref, lm)


def test_quantization_errors(saved):
    _, folder, _ = saved
    with pytest.raises(ValueError, match="unknown quantization"):
        load_model(folder, quantization="3bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ValueError, match="needs bitsandbytes"):
            load_model(folder, quantization="8bit")
    elif not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            load_model(folder, quantization="4bit")


def test_max_memory_implies_auto_placement():
    from kvstate.models.core import _placement_kwargs

    kw = _placement_kwargs(None, {"cpu": "1GiB"}, None, None, "float32")
    assert kw == {"device_map": "auto", "max_memory": {"cpu": "1GiB"}}
    assert _placement_kwargs(None, None, None, None, "float32") == {}
