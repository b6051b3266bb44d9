"""Items/s of the capture: local single-process engine vs Ray Data with 1 and 2 model replicas.

Every engine captures the same suite items (all representations of a quick study) into a fresh
Store; wall time includes loading the model (each Ray replica loads its own) but not starting
Ray itself, which is reported separately. Arrays are checked against the local engine's.
Writes ray_throughput.json and ray_throughput.md to --out.

    python benchmarks/ray_throughput.py                 # smollm2-135m, 32 jailbreak items, ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--suite", default="jailbreak")
    p.add_argument("--items", type=int, default=32, help="suite limit (>= ~20 keeps both classes)")
    p.add_argument("--chunk", type=int, default=8, help="items per work unit / store shard")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def _local(args, items, settings, root: Path) -> dict:
    from kvstate.models import load_model
    from kvstate.store import StudyLayout
    from kvstate.study import StudyConfig, capture_suite

    t0, cpu0 = time.perf_counter(), time.process_time()
    lm = load_model(args.model)
    t_load = time.perf_counter() - t0
    cfg = StudyConfig(chunk=args.chunk, batch_size=args.batch_size, seed=args.seed)
    index = capture_suite(lm, items, StudyLayout(root), cfg, settings, args.suite).index
    wall = time.perf_counter() - t0
    return {"engine": "local (1 process, torch threads=%d)" % torch.get_num_threads(), "workers": 1,
            "seconds": wall, "model_load_seconds": t_load, "cpu_seconds": time.process_time() - cpu0, "items": len(index),
            "store": str(root / "store" / lm.name / args.suite)}


def _ray(args, items, settings, root: Path, workers: int) -> dict:
    from kvstate.study.ray import run_ray_extraction

    cpus = max(1, (os.cpu_count() or 1) // workers)
    res = run_ray_extraction(args.model, items, root, settings, num_workers=workers, batch_size=args.batch_size,
                             chunk=args.chunk, cpus_per_worker=cpus)
    return {"engine": f"ray, {workers} worker(s) x {cpus} CPU", "workers": workers, "seconds": res.seconds,
            "items": res.computed, "store": str(root)}


def _max_diff(a_root: str, b_root: str) -> float:
    """Largest difference relative to each representation's scale (float rounding shows as ~1e-6)."""
    from kvstate.store import Store

    a, b = Store(a_root), Store(b_root)
    keys = list(a.index()["item_key"])
    _, xa = a.load(keys=keys)
    _, xb = b.load(keys=keys)
    return float(max(np.abs(xa[n] - xb[n]).max() / max(np.abs(xa[n]).max(), 1e-12) for n in xa))


def _timed(fn, *args) -> dict:
    """Run one engine and record the machine's load average around it (the cores may be shared)."""
    before = os.getloadavg()[0]
    out = fn(*args)
    out["load_avg_1min"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    return out


def main(argv: list[str] | None = None) -> dict:
    import ray

    from kvstate.data import load_suite
    from kvstate.representations import RepresentationSettings
    from kvstate.study.ray import resolve_settings

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    items = load_suite(args.suite, limit=args.items, seed=args.seed).items
    settings = resolve_settings(args.model, RepresentationSettings(phis=("identity", "elu", "random"), seed=args.seed),
                                layers="upper3")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs.append(_timed(_local, args, items, settings, tmp / "local"))
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            for w in (1, 2):
                runs.append(_timed(_ray, args, items, settings, tmp / f"ray{w}", w))
                runs[-1]["max_abs_diff_vs_local"] = _max_diff(runs[0]["store"], runs[-1]["store"])
        finally:
            ray.shutdown()
        again = _timed(_local, args, items, settings, tmp / "local-again")  # same engine later: shows the noise
        again["engine"] = "local again, after the Ray runs"
        runs.append(again)
    for r in runs:
        r["items_per_second"] = r["items"] / r["seconds"]
        r["speedup_vs_local"] = r["items_per_second"] / (runs[0]["items"] / runs[0]["seconds"])
        r.pop("store")
    result = {"model": args.model, "suite": args.suite, "items": len(items), "chunk": args.chunk,
              "batch_size": args.batch_size, "layers": list(settings.layers), "phis": list(settings.phis),
              "ray_init_seconds": ray_start, "cpu_count": os.cpu_count(), "machine": platform.platform(),
              "python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_throughput.json").write_text(json.dumps(result, indent=1))
    (args.out / "ray_throughput.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def to_markdown(r: dict) -> str:
    lines = [f"# Capture throughput: local engine vs Ray ({r['model']}, {r['items']} {r['suite']} items)", "",
             f"{r['cpu_count']} CPU cores, torch {r['torch']}, ray {r['ray']}; chunk {r['chunk']}, batch {r['batch_size']}, "
             f"layers {r['layers']}, phis {r['phis']}. Wall time includes each engine's model load(s) "
             f"(local engine: {r['runs'][0]['model_load_seconds']:.1f} s, CPU time {r['runs'][0]['cpu_seconds']:.0f} s); "
             f"starting Ray took {r['ray_init_seconds']:.1f} s more. The load average (1 min, before/after) shows "
             "how busy the shared cores were.", "",
             "| engine | seconds | items/s | vs local | max rel. diff vs local | load avg |",
             "|---|---:|---:|---:|---:|---:|"]
    for x in r["runs"]:
        diff = f"{x['max_abs_diff_vs_local']:.1e}" if "max_abs_diff_vs_local" in x else "-"
        load = "/".join(str(v) for v in x["load_avg_1min"])
        lines.append(f"| {x['engine']} | {x['seconds']:.1f} | {x['items_per_second']:.2f} | "
                     f"{x['speedup_vs_local']:.2f}x | {diff} | {load} |")
    if r.get("notes"):  # observations added after a run (the committed results carry them)
        lines += ["", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
