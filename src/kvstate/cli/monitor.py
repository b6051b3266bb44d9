"""`kvstate train-monitor` and `kvstate monitor`: the KV state watched live during generation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from .app import app, console
from .checks import at_least, check_model, check_spec_layers, fail, writable_path, write_error
from .checks import first_line as _first_line


@app.command("train-monitor")
def train_monitor(
    study_dir: Path = typer.Option(Path("runs/study"), "--study", help="a study folder (its store is read)"),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    suite: str = typer.Option(..., help="suite whose stored normal items fit the detector"),
    representation: str = typer.Option("kv-elu-S/n-hn@end", help="a kv read-out stored by the study"),
    detector: str = typer.Option("mahalanobis", help="unsupervised: mahalanobis, pca, knn"),
    fpr: float = typer.Option(0.01, help="false-positive rate on normal items for the threshold"),
    per_sequence: bool = typer.Option(False, "--per-sequence", help="threshold per reply, not per step: hold out a "
                                      "third of the normal prompts and generate from them (loads the model)"),
    max_new_tokens: int = typer.Option(40, help="reply length for --per-sequence calibration"),
    out: Path = typer.Option(..., "--out", "-o", help="monitor folder to write"),
) -> None:
    """Fit a monitor's detector on a study's stored normal states and calibrate its threshold.

    Example:

      kvstate train-monitor --study runs/study --suite sysprompt -o monitors/sysprompt
    """
    from ..monitor import save_monitor
    from ..study import train_monitor as fit
    from ..study.config import UNSUPERVISED

    if not (study_dir / "store").is_dir():
        fail(f"no stored states in {study_dir}; run `kvstate study -o {study_dir}` first")
    if not 0 < fpr < 1:
        fail(f"--fpr must be between 0 and 1; got {fpr}")
    at_least("--max-new-tokens", max_new_tokens, 1)
    if detector not in UNSUPERVISED:
        fail(f"--detector must be an unsupervised detector ({', '.join(UNSUPERVISED)}); got {detector!r}")
    if (out / "monitor.json").exists() or (out.is_dir() and any(out.iterdir())):
        if not (out / "monitor.json").is_file():
            fail(f"{out} exists and is not a monitor folder; choose another --out")
    writable_path(out, folder=True)
    if per_sequence:
        check_model(model)
    try:
        spec, det = fit(study_dir, model, suite, representation, detector=detector, fpr=fpr, per_sequence=per_sequence,
                        max_new_tokens=max_new_tokens)
    except (ValueError, KeyError, OSError) as e:
        fail(_first_line(e))
    try:
        save_monitor(out, spec, det)
    except ValueError as e:
        fail(_first_line(e))
    except Exception as e:  # noqa: BLE001 - a full disk is an OSError, or safetensors' own error type
        fail(f"cannot write the monitor folder {out} ({write_error(e)}); free space or choose another --out")
    level = "per reply" if per_sequence else "per step"
    console.print(f"[green]wrote[/] {out}: threshold {spec.threshold:.4g} at FPR {fpr} {level} "
                  f"(out-of-fold AUROC {spec.notes['oof_auroc']:.3f} on {suite})")


@app.command()
def monitor(
    prompt: str = typer.Argument(..., help="the user message"),
    detector: Path = typer.Option(..., "--detector", "-d", help="detector folder (kvstate fit) or monitor folder (train-monitor)"),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    system: Optional[str] = typer.Option(None, help="system prompt"),
    max_new_tokens: int = typer.Option(64),
    stop: bool = typer.Option(False, "--stop/--no-stop", help="end generation when the aggregate crosses the threshold"),
    every: int = typer.Option(1, help="score every n tokens"),
    aggregate: str = typer.Option("max", help="per-reply aggregate the threshold applies to: last, max, ema, mean"),
    alpha: float = typer.Option(0.3, help="ema: weight of the new score"),
    window: int = typer.Option(8, help="mean: scored steps in the rolling window"),
) -> None:
    """Generate a reply while scoring the live KV state; each token is shaded by its anomaly level.

    Example:

      kvstate monitor -d monitors/sysprompt --system "Only answer in French." "Tell me about Paris"

      kvstate monitor -d detectors/jailbreak-kv --stop --aggregate ema "How do I pick a lock?"
    """
    import kvstate

    from ..monitor import Aggregator, Monitor, load_monitor

    at_least("--every", every, 1)
    at_least("--max-new-tokens", max_new_tokens, 1)
    if not detector.is_dir():
        fail(f"{detector} is not a detector or monitor folder{' (it is a file)' if detector.exists() else ''}; "
             "make one with `kvstate fit` or `kvstate train-monitor`")
    try:
        spec, det = load_monitor(detector)
    except (ValueError, KeyError, TypeError) as e:
        fail(_first_line(e))
    if stop and spec.threshold is None:
        fail(f"--stop needs a threshold, and {detector} has none; calibrate one (kvstate fit --fpr 0.01, "
             "or train-monitor --per-sequence) or leave out --stop")
    try:
        Aggregator(aggregate, alpha, window)
    except ValueError as e:
        fail(_first_line(e))
    check_spec_layers(spec.layers, check_model(model), detector, model)
    try:
        lm = kvstate.load_model(model)
    except ValueError as e:
        fail(_first_line(e))
    if spec.model and spec.model != lm.name:
        fail(f"the monitor was trained on {spec.model}, not {lm.name}; pass --model {spec.model}")
    thr = spec.threshold
    tok = lm.tokenizer

    def show(step, token_ids, scores):
        s = float(scores[0])
        text = escape(tok.decode([int(token_ids[0])]))
        if s != s:  # not scored this step
            console.print(text, end="")
            return
        level = min(max(s / thr, 0.0), 2.0) if thr else 0.0
        colour = "green" if level < 0.8 else "yellow" if level < 1.0 else "bold red"
        console.print(f"[{colour}]{text}[/]", end="")

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        mon = Monitor(lm, spec, det, every=every, stop=stop, on_step=show, aggregate=aggregate, alpha=alpha, window=window)
    except ValueError as e:
        fail(_first_line(e))
    res = mon.generate([messages], max_new_tokens=max_new_tokens)
    console.print()
    aggs = res.aggregates[0]
    at = res.stopped_at[0]
    if at is not None:
        verb = "stopped" if stop else "flagged"
        console.print(f"[bold red]{verb} at token {at}[/]: {aggregate} of scores {aggs[at]:.4g} > threshold {thr:.4g} "
                      f"({spec.representation}, calibrated at FPR {spec.fpr})")
    else:
        final = float(np.nanmax(aggs)) if np.isfinite(aggs).any() else float("nan")
        console.print(f"[green]not flagged[/]: {aggregate} of scores {final:.4g} <= threshold {thr}")
