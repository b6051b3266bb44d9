"""CLI wiring (the maths is tested elsewhere): commands run, bad input gives one clean line."""

import json

from typer.testing import CliRunner

from kvstate.cli import app

runner = CliRunner()


def test_models_list():
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "smollm2-135m" in res.output


def test_extract_unknown_model_is_one_line_error():
    res = runner.invoke(app, ["extract", "hi", "--model", "nope"])
    assert res.exit_code == 2
    assert "unknown model 'nope'" in res.output and len(res.output.strip().splitlines()) == 1


def test_extract_unwritable_output(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # chmod does not stop root, a file in the way does
    res = runner.invoke(app, ["extract", "hi", "-o", str(blocker / "sub" / "s.safetensors")])
    assert res.exit_code == 2 and "choose another --out" in res.output


def test_extract_bad_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "ok"}\nnot json\n')
    res = runner.invoke(app, ["extract", "-f", str(f)])
    assert res.exit_code == 2 and "p.jsonl:2 is not valid JSON" in res.output


def test_extract_on_local_model(tmp_path):
    from conftest import tiny_model

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [{"text": "hello"}, {"messages": [{"role": "user", "content": "hi"}], "response": "yo"}]))
    out = tmp_path / "out" / "s.safetensors"
    res = runner.invoke(app, ["extract", "-f", str(f), "-m", str(tmp_path / "m"), "-o", str(out), "--phi", "identity", "--phi", "elu"])
    assert res.exit_code == 0, res.output
    from kvstate import KVState

    st = KVState.load(out.with_name("s.elu.safetensors"))
    assert len(st) == 2 and st.reads == ["prompt_end", "end"]


def test_plan_command():
    res = runner.invoke(app, ["plan", "Llama-3.1-8B", "--n-items", "100"])
    assert res.exit_code == 0 and "8.03 B params" in res.output and "| upper3 |" in res.output
    res = runner.invoke(app, ["plan", "GPT-9"])
    assert res.exit_code == 2 and "unknown config 'GPT-9'" in res.output


def test_unknown_engine(tmp_path):
    res = runner.invoke(app, ["study", "--engine", "spark", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "engine must be one of 'local', 'ray'; got 'spark'" in res.output
