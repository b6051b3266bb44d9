"""Score a file of prompts with a detector folder: streamed in chunks, resumable, bounded memory.

Input: ``.jsonl`` (one object per line with ``text`` or ``messages``, optional ``response``,
``id``, ``label``), ``.csv`` (same columns; ``messages`` JSON-encoded), ``.parquet``, or a text file
or ``-`` (standard input) with one prompt per line. Output: one row per input row with ``id``,
``score``, ``flag`` (and ``label`` when the input has one), as parquet or CSV.

Each finished chunk is written atomically to ``OUT.parts/``; a re-run skips the chunks already
there (after checking they came from the same detector, input and chunk size), then joins them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write, read_json, write_json
from ..evaluate import metrics
from ..models import LoadedModel
from .folder import Detector

__all__ = ["iter_prompt_chunks", "score_file"]


def _missing(v: Any) -> bool:
    """None, NaN (pandas' empty cell) or an empty string."""
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _row(obj: Any, where: str) -> dict:
    if isinstance(obj, str):
        return {"messages": [{"role": "user", "content": obj}]}
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with 'text' or 'messages', got {type(obj).__name__}")
    row = {k: obj[k] for k in ("id", "label", "group", "response") if not _missing(obj.get(k))}
    msgs = obj.get("messages")
    if isinstance(msgs, str) and msgs.strip().startswith("["):
        msgs = json.loads(msgs)
    if msgs is None and obj.get("text") is not None:
        msgs = [{"role": "user", "content": str(obj["text"])}]
    if not msgs:
        raise ValueError(f"{where}: no 'text' or 'messages'; give each row a prompt")
    row["messages"] = list(msgs)
    if "label" in row:
        try:
            row["label"] = int(row["label"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {row['label']!r} is not 0 or 1") from None
    return row


def iter_prompt_chunks(path: str | Path, chunk: int = 32) -> Iterator[list[dict]]:
    """Rows of a prompt file, ``chunk`` at a time, without reading the whole file into memory."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    name = str(path)
    buf: list[dict] = []

    def flush() -> Iterator[list[dict]]:
        if buf:
            yield list(buf)
            buf.clear()

    if name == "-" or Path(name).suffix.lower() not in (".jsonl", ".csv", ".parquet"):
        stream = sys.stdin if name == "-" else None
        try:
            fh = stream or open(name, encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{name}: cannot read the prompt file ({e.strerror or e})") from None
        try:
            for i, line in enumerate(fh):
                if line.strip():
                    buf.append(_row(line.rstrip("\n"), f"{name}:{i + 1}"))
                if len(buf) >= chunk:
                    yield from flush()
        except UnicodeDecodeError:
            raise ValueError(f"{name}: not UTF-8 text; save the prompts as UTF-8") from None
        finally:
            if stream is None:
                fh.close()
        yield from flush()
        return
    p = Path(name)
    if not p.is_file():
        raise ValueError(f"{p}: no such file; give a .jsonl, .csv, .parquet or text file of prompts")
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(p, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        buf.append(_row(json.loads(line), f"{p.name}:{i + 1}"))
                    if len(buf) >= chunk:
                        yield from flush()
        elif suffix == ".csv":
            for df in pd.read_csv(p, dtype=str, keep_default_na=False, chunksize=chunk):
                buf.extend(_row(r, f"{p.name}") for r in df.to_dict("records"))
                yield from flush()
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(p).iter_batches(batch_size=chunk):
                buf.extend(_row(r, f"{p.name}") for r in batch.to_pylist())
                yield from flush()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid {suffix[1:]} ({str(e).splitlines()[0]}); fix the file") from None
    except (pd.errors.ParserError, OSError) as e:
        raise ValueError(f"{p}: cannot read as {suffix[1:]} ({str(e).splitlines()[0]})") from None
    yield from flush()


def _fingerprint(detector_dir: Path, source: str, chunk: int) -> str:
    h = hashlib.sha256((detector_dir / "detector.json").read_bytes())
    h.update((detector_dir / "estimator.safetensors").read_bytes())
    h.update(f"|{Path(source).resolve() if source != '-' else '-'}|{chunk}".encode())
    return h.hexdigest()


def score_file(detector_dir: str | Path, lm: LoadedModel, source: str | Path, out: str | Path, *, chunk: int = 32,
               batch_size: int = 8, progress: Callable[[int], None] | None = None) -> dict:
    """Score every row of ``source`` into ``out`` (parquet, or CSV by suffix); resumable by chunk.

    Returns a summary: rows, chunks computed and reused, and, when every row has a 0/1 label,
    AUROC and the TPR and FPR at the detector's threshold.
    """
    detector_dir, out = Path(detector_dir), Path(out)
    det = Detector.load(detector_dir)
    det.check_model(lm)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{out}: the output must end in .parquet or .csv")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a .parquet or .csv file name")
    parts = out.with_name(out.name + ".parts")
    fingerprint = _fingerprint(detector_dir, str(source), chunk)
    manifest = parts / "manifest.json"
    if manifest.exists() and read_json(manifest, "scoring manifest").get("fingerprint") != fingerprint:
        raise ValueError(f"{parts} holds a run with another detector, input or chunk size; delete it to start over")
    parts.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"fingerprint": fingerprint, "source": str(source), "chunk": chunk})
    computed = reused = 0
    for k, rows in enumerate(iter_prompt_chunks(source, chunk)):
        part = parts / f"chunk-{k:06d}.parquet"
        if part.exists():
            reused += 1
        else:
            scores = det.score(lm, rows, batch_size=batch_size, chunk=chunk, start=k * chunk)
            df = pd.DataFrame({"row": np.arange(k * chunk, k * chunk + len(rows)),
                               "id": [str(r.get("id", k * chunk + i)) for i, r in enumerate(rows)],
                               "score": scores,
                               "flag": det.flag(scores) if det.threshold is not None else np.zeros(len(rows), bool),
                               "label": [int(r.get("label", -1)) for r in rows]})
            atomic_write(part, lambda p, df=df: df.to_parquet(p, index=False))
            computed += 1
        if progress is not None:
            progress(len(rows))
    files = sorted(parts.glob("chunk-*.parquet"))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame(
        columns=["row", "id", "score", "flag", "label"])
    labelled = bool(len(df)) and df["label"].isin([0, 1]).all()
    if not labelled:
        df = df.drop(columns="label")
    if out.suffix.lower() == ".csv":
        atomic_write(out, df.to_csv(index=False))
    else:
        atomic_write(out, lambda p: df.to_parquet(p, index=False))
    shutil.rmtree(parts)
    summary: dict[str, Any] = {"rows": int(len(df)), "chunks_computed": computed, "chunks_reused": reused,
                               "threshold": det.threshold, "out": str(out)}
    if labelled and df["label"].nunique() == 2:
        y, s = df["label"].to_numpy(), df["score"].to_numpy()
        summary["auroc"] = metrics(y, s)["auroc"]
        if det.threshold is not None:
            summary["tpr_at_threshold"] = float((s[y == 1] > det.threshold).mean())
            summary["fpr_at_threshold"] = float((s[y == 0] > det.threshold).mean())
    return summary
