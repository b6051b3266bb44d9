"""Score a file of prompts with a detector folder: streamed in chunks, resumable, bounded memory.

Input: ``.jsonl`` (one object per line with ``text`` or ``messages``, optional ``response``,
``id``, ``label``), ``.csv`` (same columns; ``messages`` JSON-encoded), ``.parquet``, or a text file
or ``-`` (standard input) with one prompt per line. Output: one row per input row with ``id``,
``score``, ``flag`` (and ``label`` when the input has one), as parquet or CSV.

Each finished chunk is written atomically to ``OUT.parts/`` under a name keyed on the detector's
files, the chunk size and the chunk's own rows; a re-run reuses a chunk only when all of these match
(so an edited input, shrunk file or other stdin is scored again), then joins exactly the chunks of
this input. One run at a time writes an output (a lock in ``OUT.parts/``); an existing output is
replaced only when kvstate wrote it, and never when it is the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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

try:  # POSIX advisory locks, as the study's store takes them
    import fcntl
except ImportError:  # pragma: no cover - elsewhere one writer per output is only documented
    fcntl = None  # type: ignore[assignment]

__all__ = ["check_output", "iter_prompt_chunks", "score_file"]

PARTS_FORMAT = "kvstate-score-parts/1"
COLUMNS = ["row", "id", "score", "flag", "label"]


def _missing(v: Any) -> bool:
    """None, NaN (pandas' empty cell) or an empty string."""
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _kind(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


def _label(v: Any, where: str) -> int:
    """0 or 1 (also 0.0/1.0 and "0"/"1", as CSV and parquet write them); anything else names the row."""
    if isinstance(v, str) and v.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and v in (0, 1):
        return int(v)
    raise ValueError(f"{where}: label {v!r} is not 0 or 1; give every row 0 or 1, or leave every label empty")


def _messages(msgs: Any, where: str) -> list[dict]:
    """A non-empty list of {"role": str, "content": str}; a CSV cell may hold it as JSON text."""
    if isinstance(msgs, str):
        if not msgs.strip().startswith("["):
            raise ValueError(f"{where}: 'messages' is a string; give a JSON list of {{\"role\", \"content\"}} objects, "
                             "or put the prompt in 'text'")
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: 'messages' is not a valid JSON list ({e.msg}); fix the row") from None
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects, "
                         f"got {_kind(msgs)}")
    for j, m in enumerate(msgs):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: 'messages'[{j}] must be an object with string 'role' and 'content', got {_kind(m)}")
    return [dict(m) for m in msgs]


def _row(obj: Any, where: str) -> dict:
    if isinstance(obj, str):
        return {"messages": [{"role": "user", "content": obj}]}
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with 'text' or 'messages', got {type(obj).__name__}")
    row = {k: obj[k] for k in ("id", "label", "group", "response") if not _missing(obj.get(k))}
    if "response" in row and not isinstance(row["response"], str):
        raise ValueError(f"{where}: 'response' must be a string, got {_kind(row['response'])}")
    if not _missing(obj.get("messages")):
        row["messages"] = _messages(obj["messages"], where)
    elif not _missing(obj.get("text")):
        if not isinstance(obj["text"], str):
            raise ValueError(f"{where}: 'text' must be a string, got {_kind(obj['text'])}")
        row["messages"] = [{"role": "user", "content": obj["text"]}]
    else:
        raise ValueError(f"{where}: no 'text' or 'messages'; give each row a prompt")
    if "label" in row:
        row["label"] = _label(row["label"], where)
    return row


def iter_prompt_chunks(path: str | Path, chunk: int = 32) -> Iterator[list[dict]]:
    """Rows of a prompt file, ``chunk`` at a time, without reading the whole file into memory.

    A bad row is a one-line ``ValueError`` naming the row and the field. Labels are 0 or 1 on every
    row, or on none.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    name = str(path)
    buf: list[dict] = []
    first: list[bool] = []  # whether the first row had a label: every later row must agree

    def add(obj: Any, where: str) -> None:
        row = _row(obj, where)
        if not first:
            first.append("label" in row)
        if ("label" in row) != first[0]:
            raise ValueError(f"{where}: {'no label' if first[0] else 'a label'}, but the first row has "
                             f"{'one' if first[0] else 'none'}; label every row 0 or 1, or none")
        buf.append(row)

    def flush() -> Iterator[list[dict]]:
        if buf:
            yield list(buf)
            buf.clear()

    if name == "-" or Path(name).suffix.lower() not in (".jsonl", ".csv", ".parquet"):
        stream = sys.stdin if name == "-" else None
        where = "stdin" if name == "-" else name
        try:
            fh = stream or open(name, encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{name}: cannot read the prompt file ({e.strerror or e})") from None
        try:
            for i, line in enumerate(fh):
                if line.strip():
                    add(line.rstrip("\n"), f"{where}:{i + 1}")
                if len(buf) >= chunk:
                    yield from flush()
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not UTF-8 text; save the prompts as UTF-8") from None
        finally:
            if stream is None:
                fh.close()
        yield from flush()
        return
    p = Path(name)
    if not p.is_file():
        raise ValueError(f"{p}: no such file; give a .jsonl, .csv, .parquet or text file of prompts")
    suffix = p.suffix.lower()
    n = 0
    try:
        if suffix == ".jsonl":
            with open(p, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{p.name}:{i + 1}: not valid JSON ({e.msg}); write one JSON object per line") from None
                        add(obj, f"{p.name}:{i + 1}")
                    if len(buf) >= chunk:
                        yield from flush()
        elif suffix == ".csv":
            for df in pd.read_csv(p, dtype=str, keep_default_na=False, chunksize=chunk):
                for r in df.to_dict("records"):
                    n += 1
                    add(r, f"{p.name} row {n}")
                yield from flush()
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(p).iter_batches(batch_size=chunk):
                for r in batch.to_pylist():
                    n += 1
                    add(r, f"{p.name} row {n}")
                yield from flush()
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not valid {suffix[1:]} ({str(e).splitlines()[0]}); fix the file") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p}: no prompts (the file is empty); give one prompt per row") from None
    except (pd.errors.ParserError, OSError) as e:
        raise ValueError(f"{p}: cannot read as {suffix[1:]} ({str(e).splitlines()[0]})") from None
    yield from flush()


def _parts(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _is_scores_file(path: Path) -> bool:
    """Whether ``path`` holds what :func:`score_file` writes (its columns), so a re-run may replace it."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8") as fh:
                cols = fh.readline().strip().split(",")
        else:
            import pyarrow.parquet as pq

            cols = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 - anything unreadable is "not a scores file"
        return False
    return cols in (COLUMNS, COLUMNS[:-1])


def _is_parts(parts: Path) -> bool:
    """An empty folder, or one whose manifest :func:`score_file` wrote."""
    manifest = parts / "manifest.json"
    if not manifest.exists():
        return all(f.name == ".lock" for f in parts.iterdir())
    doc = read_json(manifest, "scoring manifest")
    return isinstance(doc, dict) and (doc.get("format") == PARTS_FORMAT or "fingerprint" in doc)


def check_output(source: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """The output rules of :func:`score_file`, checked before any model work (one-line ``ValueError``):
    ``.parquet`` or ``.csv``; not a folder; never the input file; an existing file only when it is a
    kvstate scores file (or ``force``); ``OUT.parts`` absent or kvstate's own chunk folder."""
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{out}: the output must end in .parquet or .csv")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a .parquet or .csv file name")
    if str(source) != "-" and out.exists() and Path(source).exists() and os.path.samefile(out, source):
        raise ValueError(f"--out {out} is the input file; write the scores to another file")
    if out.exists() and not force and not _is_scores_file(out):
        raise ValueError(f"{out} exists and is not a kvstate scores file; choose another --out or pass --force")
    parts = _parts(out)
    if parts.exists() and not parts.is_dir():
        raise ValueError(f"{parts} is a file, but kvstate keeps the chunks of {out.name} there; move it or choose another --out")
    if parts.is_dir() and not _is_parts(parts):
        raise ValueError(f"{parts / 'manifest.json'}: not a kvstate scoring manifest; move {parts} or choose another --out")
    return out


def _disk_error(folder: Path, e: OSError) -> ValueError:
    return ValueError(f"cannot write to {folder} ({e.strerror or e}); free space there or choose another --out")


def _lock(parts: Path):
    """Hold ``parts/.lock`` exclusively (released by the kernel if the process dies); a second run
    on the same output fails at once instead of interleaving chunks."""
    try:
        fh = open(parts / ".lock", "a+")
    except OSError as e:
        raise _disk_error(parts, e) from None
    if fcntl is not None:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ValueError(f"another kvstate score is writing {parts.name[:-len('.parts')]} (it holds {parts / '.lock'}); "
                             "wait for it to finish or choose another --out") from None
    return fh


def _tidy(parts: Path, *, chunks: bool) -> None:
    """Remove kvstate's files from ``parts`` (chunks too when ``chunks``), then the folder if empty."""
    names = ["manifest.json", ".lock"] if chunks or not any(parts.glob("chunk-*.parquet")) else []
    paths = [parts / n for n in names] + (list(parts.glob("chunk-*.parquet")) if chunks else [])
    for f in paths:
        with contextlib.suppress(OSError):
            f.unlink()
    with contextlib.suppress(OSError):
        parts.rmdir()


def _detector_key(detector_dir: Path, chunk: int) -> str:
    h = hashlib.sha256()
    for f in sorted(detector_dir.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(f"|{chunk}".encode())
    return h.hexdigest()


def _chunk_key(detector: str, start: int, rows: list[dict]) -> str:
    """A chunk's file is reused only for the same detector, chunk size, position and rows (labels, ids
    and text all count): a changed input is scored again, whatever its path."""
    text = json.dumps([detector, start, rows], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def score_file(detector_dir: str | Path, lm: LoadedModel | Callable[[], LoadedModel], source: str | Path, out: str | Path,
               *, chunk: int = 32, batch_size: int = 8, progress: Callable[[int], None] | None = None,
               force: bool = False) -> dict:
    """Score every row of ``source`` into ``out`` (parquet, or CSV by suffix); resumable by chunk.

    Parameters
    ----------
    lm : LoadedModel or callable
        The detector's model, or a function that loads it: then it loads only when a chunk needs
        scoring, after every check (output, lock, the whole input file) has passed.
    force : bool, default False
        Replace an existing ``out`` that is not a kvstate scores file (never the input itself).

    Returns a summary: rows, chunks computed and reused, and, when every row has a 0/1 label,
    AUROC and the TPR and FPR at the detector's threshold. A failed run leaves its finished chunks
    in ``OUT.parts/`` for the next run (and no ``OUT.parts/`` when it finished none).
    """
    detector_dir, out = Path(detector_dir), Path(out)
    det = Detector.load(detector_dir)
    if isinstance(lm, LoadedModel):
        det.check_model(lm)
    check_output(source, out, force=force)
    if str(source) != "-" and not sum(len(c) for c in iter_prompt_chunks(source, chunk)):  # every row, before the model
        raise ValueError(f"{source}: no prompts; give one prompt per line or row")
    parts = _parts(out)
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _disk_error(out.parent, e) from None
    fh = _lock(parts)
    try:
        return _score_locked(det, _detector_key(detector_dir, chunk), lm, source, out, parts, chunk, batch_size, progress)
    except BaseException:
        _tidy(parts, chunks=False)
        raise
    finally:
        fh.close()


def _score_locked(det: Detector, key: str, lm: Any, source: str | Path, out: Path, parts: Path, chunk: int,
                  batch_size: int, progress: Callable[[int], None] | None) -> dict:
    try:
        write_json(parts / "manifest.json", {"format": PARTS_FORMAT, "detector": key, "source": str(source), "chunk": chunk})
    except OSError as e:
        raise _disk_error(parts, e) from None
    computed = reused = 0
    done: list[Path] = []
    for k, rows in enumerate(iter_prompt_chunks(source, chunk)):
        part = parts / f"chunk-{k:06d}-{_chunk_key(key, k * chunk, rows)}.parquet"
        if part.exists():
            reused += 1
        else:
            if not isinstance(lm, LoadedModel):
                lm = lm()
                det.check_model(lm)
            scores = det.score(lm, rows, batch_size=batch_size, chunk=chunk, start=k * chunk)
            df = pd.DataFrame({"row": np.arange(k * chunk, k * chunk + len(rows)),
                               "id": [str(r.get("id", k * chunk + i)) for i, r in enumerate(rows)],
                               "score": scores,
                               "flag": det.flag(scores) if det.threshold is not None else np.zeros(len(rows), bool),
                               "label": [int(r.get("label", -1)) for r in rows]})
            try:
                atomic_write(part, lambda p, df=df: df.to_parquet(p, index=False))
            except OSError as e:
                raise _disk_error(parts, e) from None
            computed += 1
            for stale in parts.glob(f"chunk-{k:06d}-*.parquet"):  # this chunk of an earlier input
                if stale != part:
                    stale.unlink()
        done.append(part)
        if progress is not None:
            progress(len(rows))
    if not done:
        raise ValueError(f"{'standard input' if str(source) == '-' else source}: no prompts; give one prompt per line or row")
    df = pd.concat([pd.read_parquet(f) for f in done], ignore_index=True)
    labelled = bool(df["label"].isin([0, 1]).all())
    if not labelled:
        df = df.drop(columns="label")
    try:
        if out.suffix.lower() == ".csv":
            atomic_write(out, df.to_csv(index=False))
        else:
            atomic_write(out, lambda p: df.to_parquet(p, index=False))
    except OSError as e:
        raise _disk_error(out.parent, e) from None
    _tidy(parts, chunks=True)
    summary: dict[str, Any] = {"rows": int(len(df)), "chunks_computed": computed, "chunks_reused": reused,
                               "threshold": det.threshold, "out": str(out)}
    if labelled and df["label"].nunique() == 2:
        y, s = df["label"].to_numpy(), df["score"].to_numpy()
        summary["auroc"] = metrics(y, s)["auroc"]
        if det.threshold is not None:
            summary["tpr_at_threshold"] = float((s[y == 1] > det.threshold).mean())
            summary["fpr_at_threshold"] = float((s[y == 0] > det.threshold).mean())
    return summary
