"""`kvstate serve`: the monitor behind an OpenAI-compatible streaming endpoint on Ray Serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, console
from .checks import check_model, check_spec_layers, fail
from .checks import first_line as _first_line


@app.command()
def serve(
    detector: Path = typer.Option(..., "--detector", "-d", help="detector folder (kvstate fit) or monitor folder (train-monitor)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model name or HF folder (default: the monitor's)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, help="HTTP port"),
    replicas: int = typer.Option(1, help="model replicas (Ray Serve num_replicas)"),
    stop: bool = typer.Option(True, "--stop/--no-stop", help="end a reply at its first flagged token "
                              "(finish_reason content_filter); needs a calibrated threshold"),
    max_batch_size: int = typer.Option(8, help="most concurrent requests generated together per replica"),
    batch_wait_ms: float = typer.Option(20.0, help="how long a batch waits for more requests"),
    max_tokens: int = typer.Option(64, help="completion length when a request sets none"),
    every: int = typer.Option(1, help="score every n tokens (the others carry score null; cheaper)"),
    cpus_per_replica: float = typer.Option(1.0, help="Ray CPUs each model replica reserves"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)"),
) -> None:
    """Serve a model with its monitor: POST /v1/chat/completions (streamed or not), GET /v1/models, GET /health.

    Every streamed chunk carries the token's monitor score in a top-level "kvstate" field; see docs/serving.md.

    Example:

      kvstate serve -d monitors/sysprompt --port 8000 --replicas 2
    """
    try:
        import ray
        from ray import serve as ray_serve

        from ..serve.app import build_app, run_server
    except ImportError as e:
        fail(f"serving needs Ray Serve ({e.name} is missing): pip install 'kvstate[serve]'")
    for name, value in (("--replicas", replicas), ("--max-batch-size", max_batch_size), ("--max-tokens", max_tokens),
                        ("--every", every)):
        if value < 1:
            fail(f"{name} must be at least 1, got {value}")
    if not 0 < port < 65536:
        fail(f"--port must be between 1 and 65535, got {port}")
    if batch_wait_ms < 0 or cpus_per_replica <= 0:
        fail(f"--batch-wait-ms must be >= 0 and --cpus-per-replica > 0 (got {batch_wait_ms} and {cpus_per_replica})")
    n_layers = check_model(model) if model is not None else None  # before Ray starts: replicas would fail later
    try:
        application = build_app(detector, model, replicas=replicas, stop=stop, max_batch_size=max_batch_size,
                                batch_wait_s=batch_wait_ms / 1000, default_max_tokens=max_tokens, every=every,
                                cpus_per_replica=cpus_per_replica)
    except ValueError as e:
        fail(_first_line(e))
    from ..monitor import load_monitor

    spec = load_monitor(detector)[0]
    if model is not None:
        check_spec_layers(spec.layers, n_layers, detector, model)
    if stop and spec.threshold is None:
        console.print("[yellow]note:[/] the monitor has no threshold: replies are scored but never flagged or stopped "
                      "(calibrate one with `kvstate train-monitor --fpr`)")
    import signal

    def stop_on_sigterm(signum, frame):  # systemd, Kubernetes, supervisors stop a service with SIGTERM
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False)
        # after ray.init, which installs its own SIGTERM handler (it logs and dies, leaving its agents running):
        # SIGTERM now takes the Ctrl-C path, so Ray shuts down whole
        signal.signal(signal.SIGTERM, stop_on_sigterm)
        run_server(application, host=host, port=port)
        console.print(f"[green]serving[/] http://{host}:{port}/v1 (chat/completions, models) and /health; Ctrl-C stops")
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        try:
            if ray.is_initialized():
                ray_serve.shutdown()
                ray.shutdown()
        finally:
            signal.signal(signal.SIGTERM, previous)
