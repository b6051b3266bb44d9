"""Fit a detector folder from a finished study's store, or straight from a suite file, and set its
threshold on benign chat.

The threshold is set on calibration items read at the same point as the items the detector scores
(:func:`calibration_representation`): a detector fitted on prompts alone (its ``@end`` is the
prompt's end) is calibrated on the calibration prompts without a reply, even when the calibration
suite generates replies (``benign-chat`` does); a detector fitted on items with replies, on
calibration items with the model's own replies.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .._io import read_json
from ..capture import check_layers
from ..capture.generate import generate_replies
from ..data import Suite, load_suite, own_replies
from ..detect import detector_name
from ..models import LoadedModel, model_name
from ..representations import RepName, RepresentationSettings, capture_representations
from ..store import Store, StudyLayout, suite_label
from .folder import READS, Detector, fit_detector

__all__ = ["calibration_features", "calibration_representation", "choose", "fit_from_study", "fit_from_suite", "has_replies"]


def has_replies(items) -> bool:
    """Whether any item carries a reply, so that its ``@end`` state is read after the reply."""
    return any(getattr(it, "response", None) for it in items)


def calibration_representation(representation: str, reply: bool) -> str:
    """The stored name to calibrate a detector of ``representation`` with: its ``@prompt_end`` read
    when the items it scores have no reply (their ``@end`` is the prompt's end, so a calibration
    item's state after a generated reply is another distribution), else ``representation`` itself.

    >>> calibration_representation("kv-elu-S/n-hn@end", reply=False)
    'kv-elu-S/n-hn@prompt_end'
    >>> calibration_representation("kv-elu-S/n-hn@end", reply=True)
    'kv-elu-S/n-hn@end'
    """
    n = RepName.parse(representation)
    return str(n.with_read("prompt_end")) if not reply and n.read == "end" else representation


def _stored_replies(arrays: dict[str, np.ndarray]) -> bool:
    """Whether a store's items had replies: their ``@prompt_end`` and ``@end`` reads differ (the two
    reads are the same position, so the same numbers up to rounding, for an item without a reply)."""
    for name, X in arrays.items():
        n = RepName.parse(name)
        if n.read == "end" and str(n.with_read("prompt_end")) in arrays:
            return not np.allclose(X, arrays[str(n.with_read("prompt_end"))], rtol=1e-5, atol=1e-6)
    return False


def _detector_reads_reply(det: Detector) -> bool:
    """A detector scores items with a reply when it was fitted on them; folders written before
    ``training["reply"]`` existed keep the old rule (replies where the calibration suite wants them)."""
    return bool(det.training.get("reply", True)) and RepName.parse(det.representation).read != "prompt_end"


def choose(table: list[dict], family: str, supervised: bool) -> dict | None:
    """The row a family would deploy: the best grouped-CV AUROC on the *training* suite.

    Only the training suite's out-of-fold numbers enter the choice, so no test label can move it."""
    rows = [r for r in table if r["family"] == family and r["supervised"] == supervised]
    return max(rows, key=lambda r: (r["auroc"], r["representation"], r["detector"])) if rows else None


def _study(study_dir: Path) -> tuple[StudyLayout, dict]:
    layout = StudyLayout(study_dir)
    if not layout.results.exists():
        raise ValueError(f"{layout.results} does not exist; run `kvstate study -o {study_dir}` first")
    return layout, read_json(layout.results, "study results file")


def fit_from_study(study_dir: str | Path, model: str, suite: str, *, representation: str | None = None,
                   detector: str | None = None, family: str = "kv-state", supervised: bool = True) -> Detector:
    """Fit on every stored item of (model, suite); without ``representation``/``detector``, take the
    family's best grouped-CV row of the study's table for that suite (:func:`choose`)."""
    layout, results = _study(Path(study_dir))
    name, label = model_name(model), suite_label(suite)
    if not layout.has_store(name, label):
        raise ValueError(f"no stored states for {name}/{label} in {study_dir}; run `kvstate study` with that model and suite")
    cfg = results.get("meta", {}).get("config", {})
    if representation is None or detector is None:
        task = results.get("tasks", {}).get(f"{name}/{label}")
        if task is None:
            raise ValueError(f"{study_dir} has no evaluated task {name}/{label}; pass --representation and --detector")
        row = choose(task["table"], family, supervised)
        if row is None:
            raise ValueError(f"{name}/{label} has no {'supervised' if supervised else 'unsupervised'} {family} row")
        representation = representation or row["representation"]
        detector = detector or detector_name(row["detector"])
    store = Store(layout.store(name, label))
    index, arrays = store.load()
    if representation not in arrays:
        raise ValueError(f"{representation!r} is not stored for {name}/{label}. Stored: {', '.join(sorted(arrays)[:12])}, ...")
    y = index["label"].to_numpy().astype(int)
    return fit_detector(arrays[representation], y, representation, detector, model=name,
                        dtype=store.settings.get("dtype", "float32"), settings=store.settings["representations"],
                        seed=int(cfg.get("seed", 0)), reduce_above=int(cfg.get("reduce_above", 512)),
                        training={"source": f"study {study_dir}: {name}/{label}", "suite": label,
                                  "reply": _stored_replies(arrays)})


def _with_replies(lm: LoadedModel, suite: Suite, *, max_new_tokens: int, batch_size: int) -> Suite:
    if not suite.generation:
        return suite
    def generate(prompts):
        return generate_replies(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)

    # own_replies also orders multi-turn histories and probe questions, as the study does
    return suite.label_with(own_replies(suite, generate), strict=True)


def fit_from_suite(lm: LoadedModel, suite: str, representation: str, detector: str, *, layers: str = "upper3",
                   phis: tuple[str, ...] = ("identity", "elu", "random", "taylor"), seed: int = 0, limit: int | None = None,
                   batch_size: int = 8, max_new_tokens: int = 40) -> Detector:
    """Fit on a suite (a registered name or a labelled file) captured now, without a study."""
    s = _with_replies(lm, load_suite(suite, limit=limit, seed=seed), max_new_tokens=max_new_tokens, batch_size=batch_size)
    settings = RepresentationSettings(layers=tuple(check_layers(lm, layers)), phis=tuple(phis), seed=seed)
    cap = capture_representations(lm, s.items, settings, reads=list(READS), batch_size=batch_size, progress=False)
    if representation not in cap.rows[0]:
        raise ValueError(f"{representation!r} is not a recorded representation. Recorded: {', '.join(sorted(cap.rows[0])[:12])}, ...")
    X = np.stack([r[representation] for r in cap.rows])
    y = np.array([it.label for it in s.items])
    return fit_detector(X, y, representation, detector, model=lm.name, dtype=lm.dtype, settings=settings.to_dict(), seed=seed,
                        training={"source": f"suite {suite}", "suite": suite_label(suite), "reply": has_replies(s.items)})


def calibration_features(det: Detector, lm: LoadedModel | None, calibration: str, *, study_dir: str | Path | None = None,
                         limit: int = 300, seed: int = 0, batch_size: int = 8, max_new_tokens: int = 40) -> tuple[np.ndarray, Any]:
    """Features of the benign calibration prompts, read where the detector reads its items: after the
    model's own reply (where the suite wants one) for a detector fitted on replies, at the prompt's end
    for a detector fitted on prompts alone (:func:`calibration_representation`). The study's stored
    ones when it captured them with the detector's settings, else captured now."""
    label = suite_label(calibration)
    reply = _detector_reads_reply(det)
    read = "reply" if reply else "prompt"
    if study_dir is not None:
        layout = StudyLayout(Path(study_dir))
        if layout.has_store(det.model, label):
            store = Store(layout.store(det.model, label))
            if store.settings.get("representations") == det.settings:
                index, arrays = store.load()
                rep = calibration_representation(det.representation, reply)
                if rep in arrays:
                    return arrays[rep], {"suite": label, "from": f"study store {layout.store(det.model, label)}",
                                         "n": int(len(index)), "read": read, "representation": rep}
    if lm is None:
        raise ValueError(f"no stored {label} states to calibrate on; pass a model to capture them")
    suite = load_suite(calibration, limit=limit, seed=seed)
    if reply:
        suite = _with_replies(lm, suite, max_new_tokens=max_new_tokens, batch_size=batch_size)
        items = suite.items
    else:  # no reply generated, and a reply the file carries is not read
        items = [replace(it, response=None) for it in suite.items]
    return det.features(lm, items, batch_size=batch_size), {"suite": label, "from": "captured", "n": len(items),
                                                           "read": read, "provenance": suite.provenance}
