"""Compare the numbers of two results.json files (e.g. a study before and after a code change).

    python results/compare_results.py OLD/results.json NEW/results.json [--atol 1e-9]

Every number under ``tasks`` (each representation x detector row, the held-out choice, the layer
sweep, the controls) and ``transfer`` is compared; keys that carry run times or dates are skipped.
Exits 1 and lists the differences when any number moved by more than ``--atol`` or a key is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

SKIP = {"seconds", "time_per_item_ms", "created", "command", "notes", "config"}


def _walk(a, b, path: str, out: list[str], atol: float) -> int:
    if isinstance(a, dict) and isinstance(b, dict):
        n = 0
        for k in sorted(set(a) | set(b)):
            if k in SKIP:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'new' if k in b else 'old'}")
                continue
            n += _walk(a[k], b[k], f"{path}/{k}", out, atol)
        return n
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} vs {len(b)} entries")
            return 0
        return sum(_walk(x, y, f"{path}[{i}]", out, atol) for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (math.isclose(a, b, rel_tol=0, abs_tol=atol) or (math.isnan(a) and math.isnan(b))):
            out.append(f"{path}: {a!r} -> {b!r}")
        return 1
    if a != b:
        out.append(f"{path}: {a!r} -> {b!r}")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--atol", type=float, default=1e-9)
    args = p.parse_args(argv)
    old, new = (json.load(open(f)) for f in (args.old, args.new))
    diffs: list[str] = []
    n = sum(_walk(old.get(k, {}), new.get(k, {}), k, diffs, args.atol) for k in ("tasks", "transfer"))
    print(f"compared {n} values under tasks/ and transfer/: {len(diffs)} differ (atol {args.atol:g})")
    for d in diffs[:50]:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
