"""Where a study keeps what it computes, and what a (model, suite) store's key covers.

One definition, used by the local engine, the Ray engine, ``kvstate evaluate`` and the monitor
service::

    out/results.json, out/report.html
    out/store/<model>/<suite>/          a :class:`~kvstate.store.Store`
    out/replies/<model>/<suite>.json    the model's own replies, cached by item id
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STORE_VERSION", "StudyLayout", "item_content", "safe_name", "store_settings", "suite_label"]

STORE_VERSION = 1
SUITE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


def safe_name(name: str) -> str:
    """A file-system-safe folder name: characters other than letters, digits, - _ . become _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def suite_label(name: str) -> str:
    """A file suite is named by its file stem in keys, folders and the report."""
    p = Path(name)
    return p.stem if p.suffix in SUITE_SUFFIXES else str(name)


@dataclass(frozen=True)
class StudyLayout:
    """The files of one study output folder."""

    out: Path

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))

    @property
    def results(self) -> Path:
        return self.out / "results.json"

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    def store(self, model: str, suite: str) -> Path:
        """Root of the (model, suite) store."""
        return self.out / "store" / safe_name(model) / safe_name(suite)

    def replies(self, model: str, suite: str) -> Path:
        """The cached replies of a model to a suite."""
        return self.out / "replies" / model / f"{safe_name(suite)}.json"

    def learned_phi(self, model: str) -> Path:
        """The Hedgehog feature map the study trained for a model (safetensors)."""
        return self.out / "phi" / f"{safe_name(model)}.learned.safetensors"

    def reference_queries(self, model: str) -> Path:
        """The benign reference prompts' queries a study recorded for a model (safetensors)."""
        return self.out / "phi" / f"{safe_name(model)}.refq.safetensors"

    def has_store(self, model: str, suite: str) -> bool:
        return (self.store(model, suite) / "store.json").exists()


def store_settings(model: str, dtype: str, settings: Any) -> dict:
    """Settings of a (model, suite) store: what changes the stored numbers (the store hashes it)."""
    return {"model": model, "dtype": dtype, "representations": settings.to_dict(), "version": STORE_VERSION}


def item_content(it: Any) -> dict:
    """What an item's store key covers besides its id: the prompt and the teacher-forced reply."""
    return {"messages": it.messages, "response": it.response}
