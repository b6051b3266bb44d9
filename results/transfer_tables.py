"""Round-2 tables from results/transfer-<model>/results.json and results/request-<model>/results.json
(the deception-request study of the models that never give in to deception-pressure), printed as Markdown.

    .venv/bin/python results/transfer_tables.py > results/transfer.md

Table 1, held-out transfer: each family's probe and unsupervised detector, chosen on the training
suite's grouped CV only, fitted on all of it, scored on another dataset of the same task; TPR and the
realised FPR at a threshold set at 1% FPR on benign chat. Table 2, live monitors on held-out items.
Table 3, the state options of the read-out issue under the same protocol: per option the logistic
probe (the bilinear and virtual-query state probes for their own rows) with the best training-CV AUROC within that option,
with its change against the plain state. Table 4, the same changes as one option x task matrix: which
option moved which task, and whether its CI excludes the plain state's AUROC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _ci(auc, ci) -> str:
    if auc is None:
        return "–"
    return f"{auc:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")


def _md(text: str) -> str:
    """A table cell: a pipe inside a name (``S|z|``) would split the Markdown row."""
    return str(text).replace("|", "\\|")


def _f(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _model(folder: Path) -> str:
    return folder.name.removeprefix("transfer-").removeprefix("request-")


def main(folders: list[Path]) -> None:
    # by model, each model's transfer study before its deception-request study
    folders = sorted((f for f in folders if (f / "results.json").exists()),
                     key=lambda f: (_model(f), f.name.startswith("request-")))
    found = [(_model(f), json.loads((f / "results.json").read_text())) for f in folders]
    print("Held-out transfer (train on one suite, test on another dataset of the same task; threshold at 1% FPR on "
          "benign-chat prompts; choice of representation and detector on the training suite only).")
    print()
    print("| model | train -> test | family | detector kind | representation, detector | in distribution [CI] | "
          "transfer AUROC [CI] | length-matched | TPR @ 1% benign FPR | FPR realised | test length AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, res in found:
        for key, block in (res.get("heldout") or {}).items():
            for r in block["rows"]:
                print(f"| {m} | {key.split('/', 1)[1]} | {r['family']} | {'probe' if r['supervised'] else 'unsupervised'} | "
                      f"`{_md(r['representation'])}` {r['detector']} | {_ci(r['in_distribution_auroc'], r['in_distribution_ci'])} | "
                      f"{_ci(r['auroc'], r['auroc_ci'])} | {_f(r['length_matched_auroc'])} | {_f(r['tpr_at_benign_fpr'])} | "
                      f"{_f(r['fpr_realised'])} | {_f(block['length_auroc'])} |")
    print()
    print("Live monitors on held-out items (per-reply AUROC of the streaming aggregate; threshold at 1% FPR on "
          "benign-chat replies).")
    print()
    print("| model | suite | monitor | AUROC [CI] | TPR @ 1% benign FPR | FPR realised | median tokens to flag | "
          "end-state study probe |")
    print("|---|---|---|---|---|---|---|---|")
    for m, res in found:
        for key, mon in (res.get("monitor") or {}).items():
            if "rows" not in mon:
                continue
            ref = mon["end_state_study_probe"]
            for r in mon["rows"]:
                print(f"| {m} | {key.split('/', 1)[1]} | {r['monitor']} | {_ci(r['auroc'], r['auroc_ci'])} | "
                      f"{_f(r['tpr_at_benign_fpr'])} | {_f(r['fpr_realised'])} | {_f(r['median_tokens_to_flag'])} | "
                      f"{_ci(ref['auroc'], ref['auroc_ci'])} |")


    ablation(found)


def ablation(found: list[tuple[str, dict]]) -> None:
    print()
    print("State options under the transfer protocol (logistic probe; for their own rows, the rank-1 bilinear probe per head on the "
          "unflattened compressed state and the virtual query per head on the whole S/n and z/n; within each option the feature "
          "map with the best "
          "training-CV AUROC; delta = transfer AUROC minus the plain S/n state's on the same items).")
    print()
    print("| model | train -> test | option | representation | in distribution [CI] | transfer AUROC [CI] | "
          "delta vs plain | TPR @ 1% benign FPR | FPR realised |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, res in found:
        for key, block in (res.get("heldout") or {}).items():
            rows = block.get("ablation") or []
            plain = next((r["auroc"] for r in rows if r["option"] == "plain S/n"), None)
            for r in rows:
                delta = "–" if plain is None or r["auroc"] is None else f"{r['auroc'] - plain:+.2f}"
                print(f"| {m} | {key.split('/', 1)[1]} | {_md(r['option'])} | `{_md(r['representation'])}` | "
                      f"{_ci(r['in_distribution_auroc'], r['in_distribution_ci'])} | {_ci(r['auroc'], r['auroc_ci'])} | "
                      f"{delta} | {_f(r['tpr_at_benign_fpr'])} | {_f(r['fpr_realised'])} |")


    moved(found)


def moved(found: list[tuple[str, dict]]) -> None:
    """Option x (model, task) matrix of transfer AUROC changes against the plain state; ``*`` marks a
    change whose 95% CI excludes the plain state's AUROC (up or down)."""
    cols, cells = [], {}
    for m, res in found:
        for key, block in (res.get("heldout") or {}).items():
            rows = block.get("ablation") or []
            plain = next((r["auroc"] for r in rows if r["option"] == "plain S/n"), None)
            if plain is None:
                continue
            col = f"{m}: {key.split('/', 1)[1].split(' -> ')[0]}"
            cols.append(col)
            for r in rows:
                if r["option"] == "plain S/n" or r["auroc"] is None:
                    continue
                lo, hi = r.get("auroc_ci") or (None, None)
                sure = lo is not None and (lo > plain or hi < plain)
                cells[(r["option"], col)] = f"{r['auroc'] - plain:+.2f}" + ("*" if sure else "")
    if not cols:
        return
    print()
    print("Which option moved which task: transfer AUROC minus the plain S/n state's (* : the option's 95% CI excludes "
          "the plain state's AUROC; – : not recorded or not evaluable).")
    print()
    print("| option | " + " | ".join(_md(c) for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for option in sorted({o for o, _ in cells}):
        print(f"| {_md(option)} | " + " | ".join(cells.get((option, c), "–") for c in cols) + " |")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or sorted([*HERE.glob("transfer-*"), *HERE.glob("request-*")]))
