"""The house: the import contract (layers in data-flow order) holds, can fail, and no module is in an
import cycle (imports inside functions included)."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(src: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    return subprocess.run([LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contract_is_kept():
    res = _lint(ROOT / "src")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "1 kept, 0 broken" in res.stdout


def test_import_contract_fails_when_a_lower_layer_imports_a_higher_one(tmp_path):
    shutil.copytree(ROOT / "src" / "kvstate", tmp_path / "kvstate", ignore=shutil.ignore_patterns("__pycache__"))
    core = tmp_path / "kvstate" / "state" / "core.py"
    core.write_text(core.read_text() + "\n\ndef _bad():\n    from ..study import run_study  # a state module reaching up\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "kvstate.state.core -> kvstate.study" in res.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    succ = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in modules}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles():
    graph = grimp.build_graph("kvstate", cache_dir=None)
    assert _cycles(graph) == []


def test_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a  # hidden inside a function\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("cyc", cache_dir=None)) == [["cyc.a", "cyc.b"]]


@pytest.mark.parametrize("path", sorted((ROOT / "src" / "kvstate").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT / "src")))
def test_no_module_over_400_lines_without_a_reason(path):
    lines = path.read_text().splitlines()
    if len(lines) > 400:
        head = "\n".join(lines[:40])
        assert "Why this module is long" in head, f"{path.name} has {len(lines)} lines; split it or say why in its docstring"
