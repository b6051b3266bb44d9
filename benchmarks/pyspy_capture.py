"""Loop kvstate's capture path for a sampling profiler, then aggregate py-spy's collapsed stacks.

    py-spy record --format raw -o benchmarks/results/pyspy_capture.txt --rate 200 -- \
        python benchmarks/pyspy_capture.py --tokens 128 --batch 1 --n 20
    python benchmarks/pyspy_capture.py --aggregate benchmarks/results/pyspy_capture.txt

The aggregate prints, for a few functions of interest, the share of samples whose stack contains
them (inclusive time): the model forward, kvstate's recorder, parallel_state, KVCapture enter/exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WATCH = {
    "StateRecorder.__call__ (kvstate/extract.py)": "StateRecorder.__call__ (kvstate/extract.py",
    "  parallel_state (kvstate/state.py)": "parallel_state (kvstate/state.py",
    "  einsum inside parallel_state": "einsum",
    "KVCapture._record (AttentionCall + listener)": "KVCapture._record (kvstate/capture.py",
    "kvstate_attention wrapper (incl. inner sdpa)": "kvstate_attention (kvstate/capture.py",
    "sdpa_attention_forward (the model's own attention)": "sdpa_attention_forward",
    "KVCapture.__enter__": "KVCapture.__enter__ (kvstate/capture.py",
    "KVCapture.__exit__": "KVCapture.__exit__ (kvstate/capture.py",
    "set_attn_implementation": "set_attn_implementation",
    "KVCapture._remember_positions (pre-hook)": "KVCapture._remember_positions",
    "StateRecorder.end (stack per-layer states)": "StateRecorder.end (kvstate/extract.py",
}
ROOT = "f (run.py:"  # the benchmarked capture call (Methods.setup's closure)


def aggregate(path: Path) -> dict:
    """Inclusive share of each watched function among samples inside the capture call."""
    total = 0
    hits: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        if ROOT not in stack:
            continue
        total += n
        for label, needle in WATCH.items():
            if needle in stack:
                hits[label] += n
    return {"samples_in_capture_call": total, "inclusive_share": {k: round(hits[k] / total, 4) for k in WATCH if total}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--aggregate", type=Path)
    a = ap.parse_args()
    if a.aggregate:
        import json

        print(json.dumps(aggregate(a.aggregate), indent=1))
        return
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import Methods, synthetic_ids

    import kvstate

    torch.set_num_threads(2)
    lm = kvstate.load_model("smollm2-135m")
    f = Methods(lm, ["kvstate_capture"]).setup("kvstate_capture", synthetic_ids(lm, a.batch, a.tokens))
    for _ in range(a.n):
        f()


if __name__ == "__main__":
    main()
