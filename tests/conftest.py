"""Shared fixtures: tiny random models of several architectures and a byte-level tokenizer.

Nothing here downloads: models are built from configs, the tokenizer from the 256 byte symbols.
"""

from __future__ import annotations

import os
from functools import lru_cache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
VOCAB = 272


@lru_cache(maxsize=None)
def byte_tokenizer():
    """A fast byte-level tokenizer (no merges) with a ChatML chat template and offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   additional_special_tokens=SPECIALS[2:])
    fast.chat_template = CHATML
    return fast


def _configs() -> dict:
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=256, eos_token_id=257, pad_token_id=257)
    return {
        "llama": LlamaConfig(**common),
        "qwen2": Qwen2Config(**common),
        "mistral": MistralConfig(**common, sliding_window=8),
        "phi3": Phi3Config(**common),
        "gemma3": Gemma3TextConfig(**{**common, "num_hidden_layers": 3, "num_key_value_heads": 1}, head_dim=16,
                                   sliding_window=8,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                           bos_token_id=256, eos_token_id=257),
    }


ARCHS = ["llama", "qwen2", "mistral", "phi3", "gemma3", "gpt2"]
ROPE_ARCHS = [a for a in ARCHS if a != "gpt2"]


@lru_cache(maxsize=None)
def tiny_model(arch: str):
    """A seeded random tiny model wrapped as a LoadedModel (fp32, sdpa, eval)."""
    from transformers import AutoModelForCausalLM

    from kvstate.models import from_hf

    torch.manual_seed(0)
    cfg = _configs()[arch]
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    # random init gives near-uniform attention; scale q/k so attention is peaked like a real model's
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj", "c_attn", "qkv_proj")) and p.ndim == 2:
                p.mul_(4.0)
    return from_hf(model, byte_tokenizer(), name=f"tiny-{arch}")


def tree_hash(root) -> dict:
    """Every file under ``root`` by its sha256 (folders as "dir"): "no existing output changed" checks."""
    import hashlib
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def tiny_model_folder(folder, arch: str = "llama"):
    """A tiny random model saved as a local HF folder (what a user passes as --model)."""
    lm = tiny_model(arch)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails: for checks that must refuse bad input before loading one."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded: the case must fail before")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


PROMPTS = [
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    {"messages": [{"role": "user", "content": "Name a colour"}], "response": "Blue, like the sea."},
    "Tell me a story about a cat who learned to read the newspaper",
]


# -- devices (issue 29): the reference tests run on every device the machine has ----------------------
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False): the cuda cases run on a GPU machine, " \
          "e.g. benchmarks/device_check.sh"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """``cpu`` always; ``cuda`` where ``torch.cuda.is_available()`` (skipped with the reason elsewhere)."""
    return request.param


@lru_cache(maxsize=None)
def tiny_model_on(arch: str, device: str, dtype: str = "float32"):
    """:func:`tiny_model` with its weights copied to ``device`` in ``dtype`` (the fp32 cpu one is shared)."""
    import copy

    from kvstate.models import from_hf

    base = tiny_model(arch)
    if device == "cpu" and dtype == "float32":
        return base
    model = copy.deepcopy(base.model).to(device=device, dtype=getattr(torch, dtype))
    return from_hf(model, byte_tokenizer(), name=f"tiny-{arch}")
