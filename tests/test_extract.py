"""extract(): options, token selections and one-line errors for bad input."""

import pytest
import torch
from conftest import PROMPTS, tiny_model

import kvstate
from kvstate.capture.tokens import as_prompt, encode


def test_several_phi_in_one_pass_match_single_runs():
    lm = tiny_model("llama")
    many = kvstate.extract(lm, PROMPTS, phi=["identity", "elu", {"name": "random", "n_features": 32}, "taylor"])
    assert set(many) == {"identity", "elu", "random32", "taylor"}
    one = kvstate.extract(lm, PROMPTS, phi="elu")
    torch.testing.assert_close(many["elu"].S, one.S)
    assert many["taylor"].S.shape[4] == 1 + 16 + 16 * 16


def test_token_spans_and_skip_first():
    lm = tiny_model("llama")
    p = PROMPTS[0]
    e = encode(lm.tokenizer, as_prompt(p))
    assert "".join(lm.tokenizer.decode([i]) for i, lab in zip(e.ids, e.labels) if lab == "user") == "Capital of France?"
    assert "".join(lm.tokenizer.decode([i]) for i, lab in zip(e.ids, e.labels) if lab == "system") == "Answer in one word."
    full = kvstate.extract(lm, [p])
    content = kvstate.extract(lm, [p], span="content")
    user = kvstate.extract(lm, [p], span="user")
    skip = kvstate.extract(lm, [p], skip_first=1)
    assert full.n[0, 0, 0] == len(e)
    assert content.n[0, 0, 0] == sum(lab != "template" for lab in e.labels)
    assert user.n[0, 0, 0] == len("Capital of France?")
    assert skip.n[0, 0, 0] == len(e) - 1
    assert not torch.allclose(full.S, skip.S)


def test_response_span_is_teacher_forced_reply():
    lm = tiny_model("llama")
    e = encode(lm.tokenizer, as_prompt(PROMPTS[1]))
    assert lm.tokenizer.decode(e.ids[e.prompt_len:]) == "Blue, like the sea."
    assert lm.tokenizer.decode(e.ids[: e.prompt_len]).endswith("<|im_start|>assistant\n")
    st = kvstate.extract(lm, [PROMPTS[1]], span="response")
    assert st.n[0].tolist() == [[0, 0], [len("Blue, like the sea.")] * 2]


def test_raw_text_mode_without_template():
    lm = tiny_model("llama")
    st = kvstate.extract(lm, ["plain text"], chat=False)
    assert st.meta["n_tokens"] == [len("plain text")]


def test_save_load_round_trip(tmp_path):
    lm = tiny_model("gemma3")
    st = kvstate.extract(lm, PROMPTS, phi={"name": "random", "n_features": 16, "seed": 3}, rope="pre", layers=[0, 2])
    path = st.save(tmp_path / "s.safetensors")
    back = kvstate.KVState.load(path)
    assert torch.equal(back.S, st.S) and torch.equal(back.z, st.z) and torch.equal(back.n, st.n)
    assert (back.layers, back.reads, back.phi, back.meta) == (st.layers, st.reads, st.phi, st.meta)
    assert back.features("S/n", layers=[2], normalize="head").shape == (3, 1 * 16 * 16)


def test_load_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a kvstate file"):
        kvstate.KVState.load(tmp_path / "x.safetensors")


def test_deterministic_across_runs():
    lm = tiny_model("qwen2")
    a = kvstate.extract(lm, PROMPTS, phi="random")
    b = kvstate.extract(lm, PROMPTS, phi="random")
    assert torch.equal(a.S, b.S)


def test_attend_reads_out_linear_attention():
    lm = tiny_model("llama")
    st = kvstate.extract(lm, PROMPTS[:2], phi="elu")
    q = torch.randn(2, 4, 1, 16)
    out = st.attend(q, layer=1)
    assert out.shape == (2, 4, 1, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, prompts, message",
    [
        ({}, [""], "empty prompt"),
        ({}, [], "no prompts"),
        ({"layers": [5]}, ["hi"], "bad layer index 5"),
        ({"layers": [-3]}, ["hi"], "bad layer index -3"),
        ({"rope": "middle"}, ["hi"], "rope must be"),
        ({"window": "tiny"}, ["hi"], "window must be"),
        ({"span": "nowhere"}, ["hi"], "span must be one of"),
        ({"reads": ["middle"]}, ["hi"], "read point must be one of"),
        ({"phi": "softmax"}, ["hi"], "unknown feature map"),
        ({}, ["x" * 300], "more than .* context of 256"),
        ({}, [[{"role": "robot", "content": "hi"}]], "role must be"),
    ],
)
def test_bad_input_gives_one_line_error(kwargs, prompts, message):
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match=message) as err:
        kvstate.extract(lm, prompts, **kwargs)
    assert "\n" not in str(err.value)


def test_negative_layers_count_from_the_end():
    lm = tiny_model("llama")
    assert kvstate.extract(lm, ["hi"], layers=[-1]).layers == [1]


def test_learned_phi_by_config_works_in_extract(tmp_path):
    from kvstate.state.learned import train_learned_phi

    lm = tiny_model("llama")
    learned = train_learned_phi(lm, PROMPTS, steps=5, seed=0)
    path = learned.save(tmp_path / "phi.safetensors")
    st = kvstate.extract(lm, PROMPTS, phi={"name": "learned", "path": str(path)})
    ref = kvstate.extract(lm, PROMPTS, phi=learned)
    assert torch.equal(st.S, ref.S) and torch.isfinite(st.S).all()
