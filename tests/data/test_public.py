"""Public benchmark suites: the data directory, pinned files, `kvstate data fetch` (offline only).

Suites that read the benchmark files skip when the data directory (KVSTATE_DATA; `make test`
points it at ../shared/benchmarks) does not hold them. No test reaches the network.
"""

import hashlib
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvstate.cli import app
from kvstate.data import load_suite, public
from kvstate.data.public import FILES, PublicFile, data_dir, public_file
from kvstate.data.registry import SUITES
from kvstate.data.suites.deception import STATE_FACT
from kvstate.data.suites.public import GOT, GOT_NAMES, PUBLIC

runner = CliRunner()
HAVE_DATA = all(public.present(f) for f in FILES)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="public benchmark files not in the data directory "
                                                      "(set KVSTATE_DATA, e.g. to ../shared/benchmarks)")


def _one_line(result):
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_data_dir_from_env_or_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTATE_DATA", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d"
    monkeypatch.delenv("KVSTATE_DATA")
    monkeypatch.setenv("KVSTATE_CACHE", str(tmp_path / "c"))
    assert data_dir() == tmp_path / "c" / "data"


def test_every_public_suite_is_registered_with_its_files():
    for name, spec in PUBLIC.items():
        assert SUITES[name].files == spec.files and all(f in FILES for f in spec.files)
    assert {f for s in PUBLIC.values() for f in s.files} == set(FILES)  # every pinned file is used
    assert all(len(f.commit) == 40 and len(f.sha256) == 64 for f in FILES.values())


def test_missing_file_is_one_line_naming_file_fetch_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTATE_DATA", str(tmp_path))
    with pytest.raises(ValueError) as exc:
        PUBLIC["xstest"].build()  # the builder itself: the parquet cache may hold the suite already
    msg = str(exc.value)
    assert "\n" not in msg and "harm/xstest_v2_prompts.csv" in msg and "kvstate data fetch xstest" in msg
    assert str(tmp_path) in msg


def test_a_file_with_other_bytes_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTATE_DATA", str(tmp_path))
    (tmp_path / "harm").mkdir()
    (tmp_path / "harm" / "MaliciousInstruct.txt").write_text("How to bake bread?\n")
    with pytest.raises(ValueError, match="not the pinned"):
        public_file("harm/MaliciousInstruct.txt", "maliciousinstruct")


def test_fetch_offline_exits_2_with_one_line_naming_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTATE_DATA", str(tmp_path))
    monkeypatch.setattr(public, "RAW", "http://127.0.0.1:9")  # nothing listens: unreachable
    line = _one_line(runner.invoke(app, ["data", "fetch", "maliciousinstruct"]))
    assert line.startswith("error:") and str(tmp_path) in line.replace("\n", "")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial file left


def test_fetch_unknown_name_is_one_line():
    line = _one_line(runner.invoke(app, ["data", "fetch", "advbench"]))  # a PyPI suite: no files
    assert "not a public suite" in line


class _Response(io.BytesIO):
    pass


def _fake(payload: bytes):
    return lambda url, timeout: _Response(payload)


def test_fetch_checks_sha256_and_leaves_nothing_behind_on_mismatch(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTATE_DATA", str(tmp_path))
    good = b"statement,label\nThe sky is blue.,1\n"
    spec = PublicFile("truth/toy.csv", "o/r", "0" * 40, "toy.csv", "MIT", hashlib.sha256(good).hexdigest())
    monkeypatch.setitem(FILES, spec.path, spec)
    with pytest.raises(ValueError, match="refused"):
        public.fetch([spec.path], opener=_fake(good + b"tampered"))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert public.fetch([spec.path], opener=_fake(good)) == [tmp_path / "truth" / "toy.csv"]
    assert (tmp_path / "truth" / "toy.csv").read_bytes() == good
    calls = []
    public.fetch([spec.path], opener=lambda url, timeout: calls.append(url))  # present: not downloaded
    assert calls == []


def test_data_list_shows_data_dir_and_presence(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSTATE_DATA", str(tmp_path))
    out = runner.invoke(app, ["data", "list", "--no-build", "--no-stats"], terminal_width=400).output
    assert str(tmp_path) in out and "missing" in out and "got-cities" in out


@needs_data
def test_public_suites_counts_and_labels():
    want = {"xstest": {0: 250, 1: 200}, "maliciousinstruct": {1: 100}, "self-instruct": {0: 427},
            "halueval-general-queries": {0: 4507}, "halueval-general": {0: 3692, 1: 815},
            "got-cities": {0: 748, 1: 748}}
    for name, counts in want.items():
        assert load_suite(name).label_counts() == counts, name
    xs = load_suite("xstest")
    assert all(it.response is None and it.meta["type"] for it in xs.items)
    unsafe = {it.meta["type"] for it in xs.items if it.label == 1}
    assert unsafe and all(t.startswith("contrast_") for t in unsafe)
    got_files = {p.stem for p in (data_dir() / GOT).glob("*.csv")}
    assert set(GOT_NAMES) == got_files and all(f"got-{v}" in SUITES for v in GOT_NAMES.values())


@needs_data
def test_got_presents_statements_as_truefalse_does_with_1_false():
    s = load_suite("got-neg-cities")
    it = next(i for i in s.items if i.response == "The city of Krasnodar is not in Russia.")
    assert it.label == 1 and it.messages == [{"role": "user", "content": STATE_FACT}]
    same = [i for i in s.items if i.group == it.group]
    assert {i.label for i in same} == {0, 1} and len({i.split for i in same}) == 1


@needs_data
def test_liedetector_pairs_share_a_group():
    s = load_suite("liedetector-questions")
    by_group = {}
    for it in s.items:
        by_group.setdefault(it.group, []).append(it)
    assert all(sorted(i.label for i in g) == [0, 1] and len({i.split for i in g}) == 1 for g in by_group.values())
    assert all(i.response and i.messages[-1]["content"].endswith("?") for i in s.items[:50])


def test_pypi_single_source_suites():
    assert load_suite("advbench").label_counts() == {1: 520}
    assert load_suite("harmbench").label_counts() == {1: 200}
    assert set(load_suite("rho-overrefusal").label_counts()) == {0}
    dna = load_suite("donotanswer")
    assert set(dna.label_counts()) == {1} and {it.meta["risk_area"] for it in dna.items} >= {"malicious_uses"}


def test_make_and_ci_point_kvstate_data_at_shared_benchmarks():
    root = Path(__file__).resolve().parents[2]
    assert "KVSTATE_DATA" in (root / "Makefile").read_text() and "shared/benchmarks" in (root / "Makefile").read_text()
    assert "KVSTATE_DATA" in (root / ".ci" / "run").read_text()

