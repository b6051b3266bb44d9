"""Near-duplicate prompts across the public harmful/benign sources (issue 28), before any model work.

Run (KVSTATE_DATA pointing at the public benchmark files, e.g. ../shared/benchmarks):

    PYTHONPATH=src python results/near_duplicates.py > results/near_duplicates.md

Texts are each item's last user message; character 5-gram Jaccard >= 0.8 on normalised text
(kvstate.data.dedup). Prints the per-source-pair report and the pairs themselves.
"""

from __future__ import annotations

import time

from kvstate.data import load_suite
from kvstate.data.dedup import near_duplicates, overlap_report

SOURCES = ("advbench", "harmbench", "maliciousinstruct", "donotanswer", "misuse", "xstest",
           "self-instruct", "halueval-general-queries", "rho-overrefusal", "benign-chat")


def main() -> None:
    texts = {}
    for name in SOURCES:
        suite = load_suite(name)
        texts[name] = [next(m["content"] for m in reversed(it.messages) if m["role"] == "user") for it in suite.items]
    t0 = time.perf_counter()
    pairs = near_duplicates(texts)
    secs = time.perf_counter() - t0
    total = sum(map(len, texts.values()))
    print(f"# Near-duplicates across sources (character 5-gram Jaccard >= 0.8)\n\n{total} texts in "
          f"{len(SOURCES)} sources ({', '.join(f'{k} {len(v)}' for k, v in texts.items())}); "
          f"{len(pairs)} cross-source pairs found in {secs:.1f} s.\n")
    rep = overlap_report(pairs)
    if len(rep):
        print("| " + " | ".join(rep.columns) + " |\n|" + "---|" * len(rep.columns))
        for row in rep.itertuples(index=False):
            print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    else:
        print("No overlapping pair of sources.")
    print("\n## Pairs\n")
    for r in pairs.itertuples():
        a, b = texts[r.source_a][r.index_a], texts[r.source_b][r.index_b]
        print(f"- {r.jaccard:.2f} {r.source_a}[{r.index_a}] {a[:90]!r} ~ {r.source_b}[{r.index_b}] {b[:90]!r}")


if __name__ == "__main__":
    main()
