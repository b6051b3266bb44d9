"""Memory of `kvstate score` on big files: peak RSS when scoring 1,000 and 10,000 rows, side by side.

The scorer reads the file chunk by chunk and writes each chunk's scores to disk, so its memory should
not grow with the number of rows. Each size runs in its own process (peak RSS is per process), on a
tiny random llama (the cost of the model is not what is measured). Writes
benchmarks/results/score_stream.json.

    python benchmarks/score_stream.py [--rows 1000 10000] [--chunk 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(folder: str, det: str, rows: int, chunk: int) -> dict:
    from kvstate.deploy import score_file
    from kvstate.models import load_model

    src = Path(folder) / f"rows{rows}.jsonl"
    with open(src, "w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": i, "text": f"Request {i}: tell me about item {i % 97} in a few words.", "label": i % 2}) + "\n")
    lm = load_model(folder)
    t0 = time.perf_counter()
    summary = score_file(det, lm, src, Path(folder) / f"out{rows}.parquet", chunk=chunk, batch_size=8)
    return {"rows": rows, "seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows_scored": summary["rows"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))))
        return 0
    sys.path.insert(0, str(HERE.parent / "tests"))
    import numpy as np
    from conftest import tiny_model

    from kvstate.deploy import fit_detector
    from kvstate.representations import RepresentationSettings

    with tempfile.TemporaryDirectory() as tmp:
        lm = tiny_model("llama")
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        settings = RepresentationSettings(layers=(0, 1), phis=("identity", "elu"))
        rng = np.random.default_rng(0)
        det = fit_detector(rng.normal(size=(40, 1)), np.r_[np.zeros(20, int), np.ones(20, int)], "ctl-length@end", "logistic",
                           model=Path(tmp).name, dtype="float32", settings=settings.to_dict())
        det.threshold = 0.0
        det.save(Path(tmp) / "det")
        runs = []
        for n in args.rows:
            out = subprocess.run([sys.executable, __file__, "--child", tmp, str(Path(tmp) / "det"), str(n), str(args.chunk)],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    res = {"benchmark": "kvstate score: peak RSS vs rows (tiny llama, chunked, one process per size)", "chunk": args.chunk,
           "runs": runs, "rss_ratio_largest_vs_smallest": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]}
    out = HERE / "results" / "score_stream.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
