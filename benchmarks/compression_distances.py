"""How well structured compression A S B^T preserves distances between real states (issue #16).

Exact per-item states (smollm2-135m, phi=elu, S/n at the end, every 6th layer) against
(a) A S B^T with seeded per-head A (a x d_phi), B (b x d_v) (kvstate.state.compression_matrices) and
(b) a dense per-head Gaussian sketch to the same a*b numbers (the unstructured JL baseline).
Reported: Pearson and Spearman correlation of pairwise Euclidean distances (raw and per-head
normalised), and the median |d'/d - 1|.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/compression_distances.py [model]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr

import kvstate
from kvstate.representations import headnorm

TOPICS = ["the weather", "a recipe for bread", "how to pick a lock", "the French revolution", "quantum computing",
          "a poem about cats", "tax evasion tricks", "learning the violin", "building a bomb", "gardening in spring",
          "the stock market", "a bedtime story", "hacking a wifi network", "black holes", "knitting a scarf",
          "writing a CV", "poisoning a neighbour", "the history of Rome", "training a puppy", "making sourdough"]
STYLES = ["Tell me about {}.", "Explain {} to a child.", "Write three sentences on {}."]


def main(model: str = "smollm2-135m") -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    lm = kvstate.load_model(model)
    prompts = [s.format(t) for t in TOPICS for s in STYLES]
    layers = list(range(0, lm.num_layers, 6))
    st = kvstate.extract(lm, prompts, phi="elu", layers=layers, batch_size=8, reads=["end"])
    S = st.readout("S/n")  # (N, L, H, f, e)
    N, L, H, f, e = S.shape
    out = {"model": model, "items": N, "layers": layers, "heads": H, "d_phi": f, "d_v": e, "rows": []}
    for normalize in (False, True):
        X = headnorm(S) if normalize else S
        d_exact = pdist(X.flatten(1).double().numpy())
        for a, b in [(4, 4), (8, 8), (16, 16), (32, 32)]:
            for kind in ("ASB", "dense"):
                if kind == "ASB":
                    A, B = kvstate.state.compression_matrices(H, f, e, a, b, seed=0)
                    Y = A @ X @ B.transpose(-1, -2)
                else:
                    g = torch.Generator().manual_seed(0)
                    P = torch.randn(H, a * b, f * e, generator=g) / np.sqrt(a * b)
                    Y = torch.einsum("hkd,nlhd->nlhk", P, X.flatten(3))
                d = pdist(Y.flatten(1).double().numpy())
                out["rows"].append({"headnorm": normalize, "a": a, "b": b, "kind": kind, "numbers": L * H * a * b,
                                    "pearson": round(float(pearsonr(d_exact, d)[0]), 4),
                                    "spearman": round(float(spearmanr(d_exact, d)[0]), 4),
                                    "median_rel_err": round(float(np.median(np.abs(d / d_exact - 1))), 4)})
    return out


if __name__ == "__main__":
    res = main(*sys.argv[1:])
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}))
    print(f"{'hn':>5} {'a x b':>7} {'kind':>6} {'numbers':>8} {'pearson':>8} {'spearman':>8} {'med|err|':>8}")
    for r in res["rows"]:
        print(f"{r['headnorm']!s:>5} {r['a']:>3}x{r['b']:<3} {r['kind']:>6} {r['numbers']:>8} {r['pearson']:>8} "
              f"{r['spearman']:>8} {r['median_rel_err']:>8}")
