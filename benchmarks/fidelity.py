"""How faithfully does each feature map phi reproduce smollm2-135m's softmax attention?

Trains a Hedgehog phi (kvstate.learned_phi) on the calibration prompts, then compares the causal
linear-attention output of every phi with the model's real attention output (before o_proj) on the
*held-out* prompts, per layer. Writes fidelity.json, fidelity.md, fidelity.png and the learned map
(fidelity_learned_phi.safetensors) to --out.

    python benchmarks/fidelity.py                     # every 3rd layer, ~12 min on a shared 2-core CPU
    python benchmarks/fidelity.py --every 1           # all layers
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import kvstate  # noqa: E402
from kvstate.state.fidelity import DEFAULT_PHIS, attention_fidelity, summarize  # noqa: E402
from kvstate.state.learned import CALIBRATION_PROMPTS, HELDOUT_PROMPTS, prompts_hash, train_learned_phi  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--every", type=int, default=3, help="evaluate layers 0, every, 2*every, ...")
    p.add_argument("--steps", type=int, default=150, help="Adam steps per layer for the learned phi")
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-first", type=int, default=1, help="query positions not scored (0 is exact for any positive phi)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def train(lm, layers: list[int], args: argparse.Namespace) -> tuple[object, float]:
    """Learned phi on the calibration prompts; returns the map (saved, so its config has a path) and seconds."""
    t = time.perf_counter()
    phi = train_learned_phi(lm, CALIBRATION_PROMPTS, layers, steps=args.steps, lr=args.lr, seed=args.seed)
    phi.save(args.out / "fidelity_learned_phi.safetensors")
    return phi, time.perf_counter() - t


def evaluate(lm, layers: list[int], phi, args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out fidelity for every phi, and the learned phi on its own training prompts (fit check)."""
    held = attention_fidelity(lm, HELDOUT_PROMPTS, [*DEFAULT_PHIS, phi], layers, skip_first=args.skip_first)
    train_fit = attention_fidelity(lm, CALIBRATION_PROMPTS, [phi], layers, skip_first=args.skip_first)
    return held, train_fit


def markdown(df: pd.DataFrame, summary: pd.DataFrame, train_fit: pd.DataFrame, meta: dict) -> str:
    """Per-layer table of 'rel. error / cosine' cells and the median-over-layers summary."""
    phis = list(dict.fromkeys(df["phi"]))
    cell = df.assign(c=df["rel_err"].map("{:.3f}".format) + " / " + df["cosine"].map("{:.3f}".format))
    wide = cell.pivot(index="layer", columns="phi", values="c")[phis]
    lines = [
        f"# phi fidelity: linear attention vs softmax attention ({meta['model']})", "",
        f"Command: `{meta['command']}`", "",
        f"Held-out prompts: {meta['n_heldout']} (sha256 {meta['heldout_sha256'][:12]}), learned phi trained on "
        f"{meta['n_calibration']} other prompts (sha256 {meta['calibration_sha256'][:12]}), {meta['steps']} Adam steps "
        f"per layer, seed {meta['seed']}. Metrics per (query token, query head), first {meta['skip_first']} "
        "position(s) of each prompt not scored; rel. error = ||y_hat - y|| / ||y|| against the model's attention "
        "output before o_proj. random/taylor use the model's scaling.", "",
        "## Median over layers", "",
        "| phi | rel. error (mean over tokens) | rel. error (median over tokens) | cosine | share of denominators <= 0 |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary.iterrows():
        lines.append(f"| {name} | {r.rel_err:.3f} | {r.rel_err_median:.3f} | {r.cosine:.3f} | {r.neg_den:.3f} |")
    fit = train_fit["rel_err"].median()
    lines += ["", f"Learned phi on its own training prompts: median rel. error {fit:.3f} (held-out: "
              f"{summary.loc['learned', 'rel_err']:.3f}).", "",
              "## Per layer: rel. error / cosine (means over held-out tokens and heads)", "",
              "| layer | " + " | ".join(phis) + " |", "|---" * (len(phis) + 1) + "|"]
    for layer, row in wide.iterrows():
        lines.append(f"| {layer} | " + " | ".join(row[p] for p in phis) + " |")
    lines += ["", "Identity linear attention has a signed denominator phi(q).z; where it is <= 0 the output is "
              "meaningless, hence its huge mean errors (divisions are guarded, not hidden).", "",
              "![fidelity per layer](fidelity.png)", ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    """Rel. error (log) and cosine per layer, one line per phi."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(df["phi"]):
        d = df[df.phi == name]
        axes[0].plot(d["layer"], d["rel_err"], marker="o", label=name)
        axes[1].plot(d["layer"], d["cosine"], marker="o", label=name)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="layer", ylabel="rel. error (mean, log)", title="||y_hat - y|| / ||y||")
    axes[1].set(xlabel="layer", ylabel="cosine (mean)", title="cosine(y_hat, y)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    lm = kvstate.load_model(args.model)
    layers = list(range(0, lm.num_layers, args.every))
    phi, train_s = train(lm, layers, args)
    t = time.perf_counter()
    df, train_fit = evaluate(lm, layers, phi, args)
    summary = summarize(df)
    cmd = "python benchmarks/fidelity.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {"command": cmd.strip(), "model": lm.name, "layers": layers, "steps": args.steps, "lr": args.lr,
            "seed": args.seed, "skip_first": args.skip_first, "n_calibration": len(CALIBRATION_PROMPTS),
            "calibration_sha256": prompts_hash(CALIBRATION_PROMPTS), "n_heldout": len(HELDOUT_PROMPTS),
            "heldout_sha256": prompts_hash(HELDOUT_PROMPTS), "train_seconds": round(train_s, 1),
            "eval_seconds": round(time.perf_counter() - t, 1), "torch": torch.__version__,
            "kvstate": kvstate.__version__, "python": platform.python_version(),
            "learned_phi": "fidelity_learned_phi.safetensors", "training_losses": phi.meta["losses"]}
    result = {"meta": meta, "summary": summary.reset_index().to_dict(orient="records"),
              "rows": df.to_dict(orient="records"), "learned_on_training_prompts": train_fit.to_dict(orient="records")}
    (args.out / "fidelity.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "fidelity.md").write_text(markdown(df, summary, train_fit, meta))
    plot(df, args.out / "fidelity.png")
    print(summary.to_string())


if __name__ == "__main__":
    main()
