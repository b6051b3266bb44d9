"""Label balance and shallow baselines of every suite of the round-2 studies, labelled by each
model's own cached replies (the study's own labels), printed as Markdown.

    .venv/bin/python results/suite_confounds.py runs/results/transfer-* > results/suites.md

Per (model, suite): items with a label, label 0 / 1, the share of 1 (wrong answers, violating
turns, complied or deceptive replies), the length AUROC, and the grouped-CV BoW AUROC on the prompt
alone, on the prompt's form (content words masked) and on prompt + reply
(:func:`kvstate.data.confounds`). A suite whose prompt-only BoW is > 0.8 is marked confounded.
Items the study dropped as too long are still counted here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from kvstate.data import confounds, load_suite
from kvstate.store import StudyLayout, suite_label


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def rows(folder: Path):
    layout = StudyLayout(folder)
    res = json.loads(layout.results.read_text())
    cfg = res["meta"]["config"]
    names = list(cfg["suites"]) + [t for tests in (cfg.get("transfer") or {}).values() for t in tests]
    for model in res["meta"]["models"]:
        model = model.split("/")[-1]
        for name in dict.fromkeys(names):
            suite = load_suite(name, limit=cfg["limit"], seed=cfg["seed"])
            if suite.generation:
                cache = layout.replies(model, suite.name)
                if not cache.exists():
                    continue
                suite = suite.label_with(json.loads(cache.read_text()), strict=False)
            yield model, suite_label(name), confounds(suite, seed=cfg["seed"])


def main(folders: list[Path]) -> None:
    print("| model | suite | labelled | label 0 / 1 | share of 1 | length AUROC | BoW prompt | BoW form | "
          "BoW prompt+reply | confounded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        for model, suite, c in rows(folder):
            lab = c["labels"]
            n0, n1 = lab.get(0, lab.get("0", 0)), lab.get(1, lab.get("1", 0))
            print(f"| {model} | {suite} | {n0 + n1} | {n0} / {n1} | {_f(c['balance'])} | {_f(c['length_auroc'])} | "
                  f"{_f(c['bow_prompt'])} | {_f(c['bow_form'])} | {_f(c['bow_prompt_reply'])} | "
                  f"{'yes' if c['confounded'] else 'no' if c['confounded'] is False else '–'} |")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
