"""Load on the served monitor: tokens/s and latency at 1, 4 and 16 concurrent streams, with and without the monitor.

Two Serve applications on one local Ray cluster, loopback only: ``mon`` (the monitor: running KV
state + detector per token, like ``kvstate serve``) and ``base`` (the same gateway, batching and
greedy generation, without the state). Each concurrency level runs a bounded number of streamed
requests against each application in turn (base, mon, then again, so that drifting machine load
hits both alike); a warm-up request per application is not counted. ``--variants every4,sparse,folded``
adds columns for cheaper monitors (score every 4th token; a sparse projection; a logistic probe, which
the monitor scores folded: one dot product with the unprojected read-out). The monitor is a realistic
default: kv-elu-S/n-hn on the upper 3 layers with the study's 2048-d projection and a Mahalanobis
detector (fitted on seeded noise of the right dimension: the cost does not depend on what it learned).

    python benchmarks/serve_load.py                     # smollm2-135m, ~3-5 min on 2 shared cores
    python benchmarks/serve_load.py --concurrency 1,4 --rounds 1 --max-tokens 16   # a quick look

Writes benchmarks/results/serve_load.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run.py: the benchmarks' shared helpers

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "Explain photosynthesis briefly.",
           "Give me three tips for sleeping better.", "What is 17 times 23?", "Name a famous painter and one painting.",
           "How do airplanes stay in the air?", "Translate 'good morning' into Spanish."]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrent streams")
    p.add_argument("--requests", type=int, default=2, help="requests per stream slot per round (bounded: c * this)")
    p.add_argument("--rounds", type=int, default=2, help="base/mon alternations per level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--variants", default="", help="extra monitor columns: every4 (score every 4th token), "
                   "sparse (sparse JL projection instead of the dense one), folded (a logistic probe, scored "
                   "folded), comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def make_monitor(model: str, folder: Path, seed: int, projection: str = "gaussian", detector: str = "mahalanobis") -> str:
    """A monitor folder for ``model``: the study's default kv read-out and ``detector`` (fitted on seeded noise
    of the spec's width by :func:`run.monitor_detector`, as in the in-process monitor benchmarks)."""
    from run import monitor_detector

    from kvstate.capture import select_layers
    from kvstate.models import load_model
    from kvstate.monitor import MonitorSpec, save_monitor
    from kvstate.representations import RepresentationSettings

    lm = load_model(model)
    layers = select_layers("upper3", lm.num_layers)
    spec = MonitorSpec("kv-elu-S/n-hn", list(layers), {"name": "elu"}, RepresentationSettings(layers=tuple(layers), projection=projection).to_dict(),
                       model=lm.name)
    det, dim = monitor_detector(lm, spec, detector, seed=seed)
    save_monitor(folder, spec, det)
    return f"{spec.representation} layers {list(layers)} ({dim}-d, {projection} projection), {detector}"


def one_stream(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, n, scored = None, 0, 0
    for ch in client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                             max_tokens=max_tokens, stream=True):
        ext = getattr(ch, "kvstate", None)
        if ch.choices and ch.choices[0].finish_reason is None and ext is not None:
            n += 1
            scored += ext.get("score") is not None
            if first is None:
                first = time.perf_counter() - t0
    return {"latency_s": time.perf_counter() - t0, "ttft_s": first, "tokens": n, "scored": scored}


def run_level(client, model: str, c: int, n_requests: int, max_tokens: int) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        rows = list(pool.map(lambda p: one_stream(client, model, p, max_tokens), prompts))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "rows": rows}


def summarize(runs: list[dict]) -> dict:
    rows = [r for run in runs for r in run["rows"]]
    lat = np.array([r["latency_s"] for r in rows])
    ttft = np.array([r["ttft_s"] for r in rows if r["ttft_s"] is not None])
    tokens, wall = sum(r["tokens"] for r in rows), sum(run["wall_s"] for run in runs)
    return {"requests": len(rows), "tokens": tokens, "scored_tokens": sum(r["scored"] for r in rows), "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2), "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
            "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
            "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3) if len(ttft) else None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import openai
    import ray
    from ray import serve

    from kvstate.models import model_name
    from kvstate.serve.app import build_app

    levels = [int(c) for c in args.concurrency.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - {"every4", "sparse", "folded"}
    if unknown:
        raise SystemExit(f"unknown --variants {sorted(unknown)}; use every4, sparse, folded")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        monitors = {"gaussian": make_monitor(args.model, Path(tmp) / "gaussian", args.seed)}
        if "sparse" in variants:
            monitors["sparse"] = make_monitor(args.model, Path(tmp) / "sparse", args.seed, "sparse")
        if "folded" in variants:
            monitors["logistic"] = make_monitor(args.model, Path(tmp) / "logistic", args.seed, detector="logistic")
        # mode -> (monitor folder, monitor on, every)
        modes = {"base": ("gaussian", False, 1), "mon": ("gaussian", True, 1)}
        if "every4" in variants:
            modes["mon-every4"] = ("gaussian", True, 4)
        if "sparse" in variants:
            modes["mon-sparse"] = ("sparse", True, 1)
        if "folded" in variants:
            modes["mon-folded"] = ("logistic", True, 1)
        ray.init(num_cpus=2 + len(modes), include_dashboard=False, log_to_driver=False)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            common = dict(replicas=1, stop=False, max_batch_size=args.max_batch_size, batch_wait_s=0.02,
                          default_max_tokens=args.max_tokens, cpus_per_replica=1)
            for k, (folder, monitor, every) in modes.items():
                serve.run(build_app(Path(tmp) / folder, args.model, monitor=monitor, every=every, **common), name=k,
                          route_prefix=f"/{k}")
            name = model_name(args.model)
            clients = {k: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/{k}/v1", api_key="none", max_retries=0, timeout=300)
                       for k in modes}
            for cl in clients.values():  # warm-up, not counted
                one_stream(cl, name, PROMPTS[0], 4)
            results = {}
            for c in levels:
                runs = {k: [] for k in modes}
                for _ in range(args.rounds):
                    for k in modes:  # interleaved, so that drifting load hits every column alike
                        runs[k].append(run_level(clients[k], name, c, c * args.requests, args.max_tokens))
                summary = {k: summarize(v) for k, v in runs.items()}
                base = summary["base"]
                entry = {"without_monitor": base, "with_monitor": summary["mon"]}
                for k in modes:
                    if k not in ("base", "mon"):
                        entry[k] = summary[k]
                entry["throughput_overhead"] = {k: round(1 - summary[k]["tokens_per_s"] / base["tokens_per_s"], 4)
                                                for k in modes if k != "base"}
                results[str(c)] = entry
                line = ", ".join(f"{k} {summary[k]['tokens_per_s']:.1f} ({100 * entry['throughput_overhead'][k]:+.1f}%)"
                                 for k in modes if k != "base")
                print(f"c={c:>2}: base {base['tokens_per_s']:.1f} tok/s; {line}; p50/p95 latency "
                      + ", ".join(f"{k} {summary[k]['latency_p50_s']}/{summary[k]['latency_p95_s']} s" for k in modes), flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    out = {
        "what": "streamed chat completions through kvstate serve (Ray Serve, loopback), greedy, fixed max_tokens",
        "model": args.model, "monitors": monitors,
        "modes": {k: {"monitor_folder": f, "monitor": m, "every": e} for k, (f, m, e) in modes.items()}, "concurrency": levels, "max_tokens": args.max_tokens,
        "requests_per_level_per_mode": [c * args.requests * args.rounds for c in levels], "rounds": args.rounds,
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "max_batch_size": args.max_batch_size, "goal": "throughput overhead <= 5%",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine: other jobs may run at the same time; compare the two columns, not absolute numbers"},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out / 'serve_load.json'}")
    return out


if __name__ == "__main__":
    main()
