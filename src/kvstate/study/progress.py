"""Progress of a study's stages: a rich bar with ETA on a terminal, throttled log lines otherwise."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["Stage", "log"]


def log(msg: str) -> None:
    Console(stderr=True, soft_wrap=True).print(msg, highlight=False, markup=False)


class Stage:
    """Progress of one stage: a rich bar with ETA on a terminal, a log line per step otherwise (log
    files stay readable: at most one line per ``every`` seconds), and a one-line summary at the end."""

    def __init__(self, desc: str, total: int, unit: str = "items", every: float = 30.0):
        self.desc, self.total, self.unit, self.every, self.done = desc, total, unit, every, 0

    def __enter__(self) -> "Stage":
        self.t0 = self.last = time.perf_counter()
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            transient=True) if console.is_terminal and self.total else None
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.desc, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
        elif time.perf_counter() - self.last >= self.every and self.done < self.total:
            self.last = time.perf_counter()
            rate = (self.last - self.t0) / self.done
            log(f"  {self.desc}: {self.done}/{self.total} {self.unit}, {rate:.2f} s each, ETA {rate * (self.total - self.done):.0f} s")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
        if exc[0] is None and self.total:
            dt = time.perf_counter() - self.t0
            log(f"  {self.desc}: {self.done} {self.unit} in {dt:.0f} s ({dt / max(self.done, 1):.2f} s each)")
