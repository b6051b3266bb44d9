"""`kvstate fit` and `kvstate score`: detector folders, fitted on a study or a suite, scoring files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, console
from .checks import check_model, check_spec_layers, err, fail, writable_path, write_error
from .checks import first_line as _first_line


@app.command("fit")
def fit_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="detector folder to write"),
    study_dir: Optional[Path] = typer.Option(None, "--study", help="a finished study: fit on its stored states"),
    suite: Optional[str] = typer.Option(None, help="training suite (a name, or a labelled .jsonl/.csv/.parquet without --study)"),
    task: Optional[str] = typer.Option(None, "--task", help="instead of --suite: a benchmark task (harmful-request, truth): "
                                       "its training sources, LOSO choice, threshold on its calibration sources"),
    max_per_source: Optional[int] = typer.Option(None, help="with --task: cap every source per label"),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    representation: Optional[str] = typer.Option(None, help="stored representation, e.g. kv-elu-S/n-hn@end [the study's best]"),
    detector: Optional[str] = typer.Option(None, help="detector name, e.g. logistic [the study's best]"),
    family: str = typer.Option("kv-state", help="with --study and no --representation: kv-state, activation or control"),
    unsupervised: bool = typer.Option(False, "--unsupervised", help="with --study: the family's best unsupervised row"),
    fpr: float = typer.Option(0.01, help="false-positive rate on the calibration prompts for the threshold"),
    calibration: Optional[str] = typer.Option("benign-chat", help="benign suite that sets the threshold ('' for none)"),
    calibration_items: int = typer.Option(300, help="calibration prompts"),
    layers: str = typer.Option("upper3", help="without --study: layers to capture"),
) -> None:
    """Fit a detector folder (safetensors + JSON) with a threshold calibrated on benign chat.

    Examples:

      kvstate fit --study runs/main --suite jailbreak -o detectors/jailbreak-kv

      kvstate fit --suite my_train.jsonl --representation act-resid-last@end --detector logistic -o detectors/mine

      kvstate fit --task harmful-request -m qwen2.5-0.5b -o detectors/harmful
    """
    import kvstate

    from ..deploy import Detector, calibration_features, fit_from_study, fit_from_suite

    if not 0 < fpr < 1:
        fail(f"--fpr must be between 0 and 1; got {fpr}")
    if (suite is None) == (task is None):
        fail("pass either --suite (a suite or file to train on) or --task (a benchmark task, e.g. harmful-request)")
    if task is not None:
        if study_dir is not None or representation is not None or detector is not None:
            fail("--task chooses the representation and detector by leave-one-source-out itself; drop --study, "
                 "--representation and --detector")
        return _fit_task(task, model, out, family=family, fpr=fpr, layers=layers, max_per_source=max_per_source)
    if calibration_items < 2:
        fail(f"--calibration-items must be >= 2, got {calibration_items}")
    if study_dir is None and (representation is None or detector is None):
        fail("without --study, pass --representation and --detector (e.g. kv-elu-S/n-hn@end and logistic)")
    writable_path(out, folder=True)
    try:
        Detector.check_target(out)  # an existing detector folder is replaced whole; anything else is refused
    except ValueError as e:
        fail(_first_line(e))
    if study_dir is None:
        check_model(model)
    try:
        lm = None
        if study_dir is not None:
            det = fit_from_study(study_dir, model, suite, representation=representation, detector=detector,
                                 family=family, supervised=not unsupervised)
        else:
            lm = kvstate.load_model(model)
            det = fit_from_suite(lm, suite, representation, detector, layers=layers)
        if calibration:
            try:
                X, prov = calibration_features(det, None, calibration, study_dir=study_dir, limit=calibration_items)
            except ValueError:
                lm = lm or kvstate.load_model(model, dtype=det.dtype)
                X, prov = calibration_features(det, lm, calibration, limit=calibration_items)
            det.calibrate(det.decision_function(X), fpr=fpr, source=prov["suite"], provenance=prov)
    except (ValueError, KeyError) as e:
        fail(_first_line(e))
    try:
        det.save(out)
    except ValueError as e:
        fail(_first_line(e))
    except Exception as e:  # noqa: BLE001 - a full disk is an OSError, or safetensors' own error type
        fail(f"cannot write the detector folder {out} ({write_error(e)}); free space or choose another --out")
    thr = f"threshold {det.threshold:.4g} at FPR {fpr} on {det.calibration['n']} {det.calibration['source']} prompts" \
        if det.threshold is not None else "no threshold"
    console.print(f"[green]wrote[/] {out}: {det.representation} | {det.training['detector']} on {det.model}, {thr}")


def _fit_task(task: str, model: str, out: Path, *, family: str, fpr: float, layers: str, max_per_source: Optional[int]) -> None:
    from ..benchmark import TASKS, BenchmarkConfig, fit_task
    from ..deploy import Detector

    if task not in TASKS:
        fail(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if family not in ("kv-state", "activation", "control"):
        fail(f"--family must be kv-state, activation or control; got {family!r}")
    writable_path(out, folder=True)
    try:
        Detector.check_target(out)
        cfg = BenchmarkConfig(task=task, models=[model], fpr=fpr, layers=layers, max_per_source=max_per_source)
    except ValueError as e:
        fail(_first_line(e))
    check_model(model)
    try:
        det = fit_task(TASKS[task], model, cfg, out.parent / f".{out.name}.store", family=family)
        det.save(out)
    except (ValueError, KeyError) as e:
        fail(_first_line(e))
    t = det.training
    console.print(f"[green]wrote[/] {out}: {det.representation} | {t['detector']} on {det.model} (task {task}; LOSO AUROC "
                  f"{t['loso_auroc']:.3f}, worst source {t['loso_worst']:.3f}), threshold {det.threshold:.4g} at FPR {fpr} on "
                  f"{det.calibration['n']} calibration prompts")


@app.command("score")
def score_cmd(
    source: str = typer.Argument(..., help="prompts: .jsonl/.csv/.parquet (text|messages, label?), a text file, or - for stdin"),
    detector: Path = typer.Option(..., "--detector", "-d", help="detector folder from kvstate fit"),
    out: Path = typer.Option(Path("scores.parquet"), "--out", "-o", help="scores (.parquet or .csv); resumable"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="[the detector's model]"),
    batch_size: int = typer.Option(8, help="prompts per forward pass"),
    chunk: int = typer.Option(32, help="prompts per resumable chunk"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out that is not a kvstate scores file"),
) -> None:
    """Score a file with a detector folder: a score and a flag per row; AUROC and TPR when it has labels.

    An existing --out is replaced only when kvstate wrote it (or with --force), never when it is the
    input. Killed or failed, a re-run resumes from OUT.parts/ when the detector and the rows are the same.

    Examples:

      kvstate score -d detectors/jailbreak-kv requests.jsonl -o scores.parquet

      cat prompts.txt | kvstate score -d detectors/jailbreak-kv - -o scores.csv
    """
    from rich.progress import Progress

    import kvstate

    from ..deploy import Detector, score_file

    if batch_size < 1 or chunk < 1:
        fail(f"--batch-size and --chunk must be >= 1 (got {batch_size} and {chunk})")
    if out.suffix.lower() not in (".parquet", ".csv") or out.is_dir():
        fail(f"--out {out}: give a .parquet or .csv file name")
    if source != "-" and not Path(source).is_file():
        fail(f"{source}: no such file; give a .jsonl, .csv, .parquet or text file of prompts, or - for stdin")
    try:
        det = Detector.load(detector)
    except ValueError as e:
        fail(_first_line(e))
    check_spec_layers(list(det.settings.get("layers", [])), check_model(model or det.model), detector, model or det.model)
    writable_path(out)
    try:  # score_file checks the output, the lock and every row first; the model loads only when a chunk needs it
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("scoring", total=None)
            summary = score_file(detector, lambda: kvstate.load_model(model or det.model, dtype=det.dtype), source, out,
                                 chunk=chunk, batch_size=batch_size, progress=lambda n: bar.advance(task, n), force=force)
    except (ValueError, KeyError) as e:
        fail(_first_line(e))
    line = f"[green]scored[/] {summary['rows']} rows -> {out}"
    if summary["chunks_reused"]:
        line += f" ({summary['chunks_reused']} chunks reused)"
    if "auroc" in summary:
        line += f"; AUROC {summary['auroc']:.3f}"
        if "tpr_at_threshold" in summary:
            line += (f", TPR {summary['tpr_at_threshold']:.3f} at FPR {summary['fpr_at_threshold']:.3f}"
                     f" (threshold {summary['threshold']:.4g})")
    console.print(line)
