"""Label balance and shallow-baseline AUROCs of the generation suites after a model's own replies.

Run as a module (writes a JSON of the numbers and prints a markdown table)::

    PYTHONPATH=src HF_HUB_OFFLINE=1 python -m kvstate.data.measure --model smollm2-135m \\
        --limit 240 --max-new-tokens 32 --batch-size 8 --out measured-smollm2.json

For each suite, ``load_suite(name, limit=..., seed=...)`` picks whole groups; replies are made
greedily with :func:`kvstate.capture.generate.generate_replies` via :func:`kvstate.data.own_replies`
(turn by turn for multi-turn suites, unpressured probes first for ``deception-pressure``) and
cached as JSON under ``$KVSTATE_CACHE/measure/MODEL/`` so a rerun resumes. Then
``label_with`` labels them and :func:`kvstate.data.confounds` reports balance, length AUROC and
the BoW AUROCs (prompt only, form, prompt + reply).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from .._paths import cache_dir
from ..capture.generate import generate_replies
from ..models import load_model
from .confounds import confounds
from .own import own_replies
from .registry import load_suite

GENERATION_SUITES = ("hallucination-qa", "truthfulqa-gen", "deception-pressure",
                     "sysprompt-multiturn")
STATIC_SUITES = ("jailbreak-pairs",)


def measure(model: str, suites: tuple[str, ...] = GENERATION_SUITES, *, limit: int = 240,
            max_new_tokens: int = 32, batch_size: int = 8, seed: int = 0) -> dict:
    """Numbers per suite (see the module docstring); replies are cached and resumed."""
    import warnings


    lm = load_model(model)
    rows = {}
    for name in suites:
        suite = load_suite(name, limit=limit, seed=seed)
        path = cache_dir() / "measure" / model / f"{name}-l{limit}-s{seed}-t{max_new_tokens}.json"
        t0 = time.perf_counter()
        if path.exists():
            replies = json.loads(path.read_text())
        else:
            replies = own_replies(suite, lambda ps: generate_replies(
                lm, ps, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(replies, ensure_ascii=False, indent=0))
            os.replace(tmp, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labelled = suite.label_with(replies)
        row = confounds(labelled, seed=seed)
        row.update(items=len(suite), replies=len(replies), dropped=labelled.dropped,
                   seconds=round(time.perf_counter() - t0, 1))
        if name == "sysprompt-multiturn":
            per = {}
            for it in labelled.items:
                per.setdefault(it.meta["rule"], [0, 0])[it.label] += 1
            push = [it.label for it in labelled.items if it.meta["push"]]
            row.update(violated_by_rule={r: f"{v[1]}/{v[0] + v[1]}" for r, v in sorted(
                per.items())}, violated_on_push=sum(push) / max(len(push), 1))
        rows[name] = row
        print(name, _fmt(row), flush=True)
    return rows


def static(suites: tuple[str, ...] = STATIC_SUITES, seed: int = 0) -> dict:
    """Confounds of labelled suites that need no replies (full suites)."""
    return {name: confounds(load_suite(name, seed=seed), seed=seed) for name in suites}


def _fmt(row: dict) -> str:
    return json.dumps({k: (round(v, 3) if isinstance(v, float) and not math.isnan(v) else v)
                       for k, v in row.items()}, default=str)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kvstate.data.measure", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--suites", nargs="*", default=list(GENERATION_SUITES))
    ap.add_argument("--limit", type=int, default=240)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--static", action="store_true", help="also the suites needing no replies")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    a = ap.parse_args(argv)
    out = {"model": a.model, "limit": a.limit, "max_new_tokens": a.max_new_tokens,
           "batch_size": a.batch_size, "seed": a.seed,
           "suites": measure(a.model, tuple(a.suites), limit=a.limit,
                             max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                             seed=a.seed)}
    if a.static:
        out["static"] = static(seed=a.seed)
        for k, v in out["static"].items():
            print(k, _fmt(v), flush=True)
    if a.out:
        a.out.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
