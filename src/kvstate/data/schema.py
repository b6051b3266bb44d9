"""The two data types of every suite: :class:`Item` (one labelled prompt) and :class:`Suite`.

Conventions
-----------
* ``messages`` is the prompt only (system/user/assistant turns), never the reply being judged.
* ``response`` is assistant text to teacher-force after the prompt. ``None`` means either the
  model's own reply is needed (the suite has ``generation`` settings) or, when the suite has no
  ``generation``, that the prompt alone is the input (e.g. a moral scenario).
* ``label`` is 1 for the anomalous class, 0 for normal, -1 while a checker still has to decide it
  from the model's reply (see :meth:`Suite.label_with`).
* ``group`` ties items that must land in the same split (same question, same request...).
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write

ROLES = ("system", "user", "assistant")
TEST_FRACTION = 0.3
LENGTH_AUROC_WARN = 0.7

Lengths = Mapping[str, int] | Callable[["Item"], int]


@dataclass
class Item:
    """One labelled prompt (plus optional teacher-forced reply)."""

    id: str
    group: str
    messages: list[dict[str, str]]
    response: str | None
    label: int
    source: str
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """Prompt and response as one plain string (for length statistics and display)."""
        parts = [f"{m['role']}: {m['content']}" for m in self.messages]
        if self.response is not None:
            parts.append(f"assistant: {self.response}")
        return "\n".join(parts)


@dataclass
class Suite:
    """A named list of items with where they came from and how to label model replies."""

    name: str
    items: list[Item]
    provenance: list[dict[str, Any]]
    description: str = ""
    generation: dict[str, Any] | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # undecidable replies, by reason

    def __len__(self) -> int:
        return len(self.items)

    def to_frame(self) -> pd.DataFrame:
        """One row per item; ``messages`` and ``meta`` stay Python objects."""
        cols = ["id", "group", "messages", "response", "label", "source", "split", "meta"]
        return pd.DataFrame([{c: getattr(it, c) for c in cols} for it in self.items], columns=cols)

    def label_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(it.label for it in self.items).items()))

    def split(self, name: str) -> Suite:
        """The items of one split (``"train"`` or ``"test"``)."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {name!r}")
        return replace(self, items=[it for it in self.items if it.split == name])

    def label_with(self, replies: Mapping[str, str], *, strict: bool = True) -> Suite:
        """Apply this suite's checker to model replies and return a teacher-forceable suite.

        Items labelled -1 get label = checker verdict (1 = anomalous, e.g. complied / wrong /
        violated). Items that already have a label keep it and get ``meta["check"]`` (e.g. for
        ``deception``: whether the reply is actually false). Replies become ``response``.

        Items whose verdict is undecidable (an abstention where ``generation["abstain"]`` is
        ``"drop"``, a TruthfulQA reply matching neither list, a fact the model did not know) are
        dropped; :attr:`dropped` counts them by reason. Multi-turn suites
        (``generation["multiturn"]``) get their history filled from the replies to earlier
        turns, and ``pressure`` suites read their unpressured probe replies from ``replies``
        (key ``meta["probe_id"]``): produce both with :func:`kvstate.data.own_replies`.
        """
        from .checkers import judge  # local: checkers import nothing from here

        if not self.generation or "checker" not in self.generation:
            raise ValueError(f"suite {self.name!r} has no checker; it needs no model replies")
        missing = [it.id for it in self.items if it.id not in replies]
        if missing and strict:
            raise ValueError(f"{len(missing)} items have no reply (e.g. {missing[0]!r}); "
                             "pass replies for every id or strict=False to drop them")
        checker = self.generation["checker"]
        abstain = self.generation.get("abstain") == "drop"
        multiturn = bool(self.generation.get("multiturn"))
        items, dropped = [], Counter()
        for it in self.items:
            if it.id not in replies:
                continue
            meta = dict(it.meta)
            if "probe_id" in meta:
                if meta["probe_id"] not in replies:
                    raise ValueError(f"no probe reply {meta['probe_id']!r}; generate replies "
                                     "with kvstate.data.own_replies(suite, generate)")
                meta["probe_reply"] = replies[meta["probe_id"]]
            messages = fill_history(it, replies) if multiturn else it.messages
            flag, reason = judge(checker, replies[it.id], meta, abstain=abstain)
            if flag is None and it.label == -1:
                dropped[reason] += 1
                continue
            meta.update(check=flag, checker=checker, reason=reason)
            label = int(flag) if it.label == -1 else it.label
            items.append(replace(it, messages=messages, response=replies[it.id], label=label,
                                 meta=meta))
        out = Suite(self.name, items, self.provenance, self.description, generation=None,
                    dropped=dict(sorted(dropped.items())))
        if dropped:
            warnings.warn(f"{self.name}: dropped {sum(dropped.values())} undecidable replies "
                          f"{out.dropped}", stacklevel=2)
        if len(set(out.label_counts()) - {-1}) < 2:
            warnings.warn(f"{self.name}: after labelling only one class is left "
                          f"{out.label_counts()}", stacklevel=2)
        return out

    def length_auroc(self, lengths: Lengths | None = None) -> float:
        """How well length alone separates the labels: AUROC folded to >= 0.5; warns above 0.7."""
        from sklearn.metrics import roc_auc_score

        known = [it for it in self.items if it.label in (0, 1)]
        if len({it.label for it in known}) < 2:
            raise ValueError(f"{self.name}: length AUROC needs both labels 0 and 1")
        get = _length_getter(lengths)
        auc = float(roc_auc_score([it.label for it in known], [get(it) for it in known]))
        auc = max(auc, 1.0 - auc)
        if auc > LENGTH_AUROC_WARN:
            warnings.warn(f"{self.name}: length alone separates the labels (AUROC {auc:.2f} > "
                          f"{LENGTH_AUROC_WARN}); use length_matched() or report the baseline",
                          stacklevel=2)
        return auc

    def length_matched(self, lengths: Lengths | None = None, seed: int = 0,
                       bins: int = 10) -> Suite:
        """Subsample so that both labels have the same count in every length bin.

        Bins are quantiles of the pooled lengths; within a bin the larger class is subsampled
        (seeded). Items labelled -1 are dropped. Splits are kept as assigned.
        """
        known = [it for it in self.items if it.label in (0, 1)]
        get = _length_getter(lengths)
        values = sorted(get(it) for it in known)
        if not values:
            return replace(self, items=[])
        edges = sorted({values[min(len(values) - 1, (len(values) * k) // bins)]
                        for k in range(1, bins)})
        by_bin: dict[tuple[int, int], list[Item]] = {}
        for it in known:
            b = sum(get(it) >= e for e in edges)
            by_bin.setdefault((b, it.label), []).append(it)
        rng = random.Random(seed)
        keep: set[str] = set()
        for b in range(len(edges) + 1):
            zero, one = by_bin.get((b, 0), []), by_bin.get((b, 1), [])
            n = min(len(zero), len(one))
            for pool in (zero, one):
                keep.update(it.id for it in rng.sample(pool, n))
        return replace(self, items=[it for it in self.items if it.id in keep])


PENDING = "<model reply pending>"  # assistant turn of a multi-turn item before generation


def fill_history(item: Item, replies: Mapping[str, str]) -> list[dict[str, str]]:
    """``item.messages`` with each pending assistant turn replaced by the model's own reply.

    Multi-turn items list the ids of their conversation's turns in ``meta["turn_ids"]``; the
    j-th pending assistant message is the reply to turn j.
    """
    ids, out, j = item.meta.get("turn_ids", []), [], 0
    for m in item.messages:
        if m["role"] == "assistant" and m["content"] == PENDING:
            if j >= len(ids) or ids[j] not in replies:
                raise ValueError(f"{item.id}: no reply for earlier turn {j}; generate turn by "
                                 "turn with kvstate.data.own_replies(suite, generate)")
            m = {"role": "assistant", "content": replies[ids[j]]}
            j += 1
        out.append(m)
    return out


def _length_getter(lengths: Lengths | None) -> Callable[[Item], int]:
    if lengths is None:
        return lambda it: len(it.text())
    if callable(lengths):
        return lengths
    return lambda it: lengths[it.id]


def assign_splits(items: list[Item], seed: int, test_fraction: float = TEST_FRACTION) -> list[Item]:
    """Whole groups to train/test: a seeded hash order of the groups, the first 30 % to test.

    Ordering by hash (rather than thresholding each hash) makes the test share exact even for
    suites with few groups, such as ``sysprompt``.
    """
    groups = sorted({it.group for it in items}, key=lambda g: stable_key(seed, "split", g))
    test = set(groups[: round(len(groups) * test_fraction)])
    return [replace(it, split="test" if it.group in test else "train") for it in items]


def stable_key(seed: int, *parts: object) -> str:
    """A seeded sort key, used instead of ``random`` wherever order must not drift with edits."""
    return hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()


def cap(items: list[Item], limit: int, seed: int) -> list[Item]:
    """At most ``limit`` items made of whole groups, interleaving groups by label mix.

    Groups are bucketed by the set of labels they contain (e.g. {0}, {1}, {0, 1}) and taken
    round-robin from seeded shuffles of the buckets, so a cap keeps both classes.
    """
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.group, []).append(it)
    buckets: dict[tuple[int, ...], list[str]] = {}
    for g, members in groups.items():
        buckets.setdefault(tuple(sorted({m.label for m in members})), []).append(g)
    queues = [sorted(gs, key=lambda g: stable_key(seed, g)) for _, gs in sorted(buckets.items())]
    chosen: set[str] = set()
    total, i = 0, 0
    while any(queues):
        queue = queues[i % len(queues)]
        i += 1
        if not queue:
            continue
        g = queue.pop(0)
        if total + len(groups[g]) <= limit:
            chosen.add(g)
            total += len(groups[g])
    if not chosen:
        smallest = min(len(m) for m in groups.values())
        raise ValueError(f"limit={limit} is smaller than the smallest group ({smallest} items)")
    labels = {it.label for it in items} - {-1}
    kept = [it for it in items if it.group in chosen]
    if len(labels) == 2 and len({it.label for it in kept} - {-1}) < 2:
        raise ValueError(f"limit={limit} is too small to keep both classes; raise it")
    return kept


# --- parquet/JSON storage (no pickle) -------------------------------------------------------

def write_suite(suite: Suite, path: Path) -> None:
    """Parquet of items (messages/meta as JSON) + ``.json`` sidecar, both written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {
        "id": [it.id for it in suite.items],
        "group": [it.group for it in suite.items],
        "messages": [json.dumps(it.messages, ensure_ascii=False) for it in suite.items],
        "response": [it.response for it in suite.items],
        "label": [int(it.label) for it in suite.items],
        "source": [it.source for it in suite.items],
        "split": [it.split for it in suite.items],
        "meta": [json.dumps(it.meta, ensure_ascii=False, sort_keys=True) for it in suite.items],
    }
    schema = pa.schema([("id", pa.string()), ("group", pa.string()), ("messages", pa.string()),
                        ("response", pa.string()), ("label", pa.int64()), ("source", pa.string()),
                        ("split", pa.string()), ("meta", pa.string())])
    atomic_write(path, lambda tmp: pq.write_table(pa.table(rows, schema=schema), tmp))
    side = {"name": suite.name, "description": suite.description, "generation": suite.generation,
            "provenance": suite.provenance, "dropped": suite.dropped}
    sidecar = path.with_suffix(".json")
    atomic_write(sidecar, json.dumps(side, indent=1, ensure_ascii=False))


def read_suite(path: Path) -> Suite:
    import pyarrow.parquet as pq

    side = json.loads(path.with_suffix(".json").read_text())
    items = [Item(id=r["id"], group=r["group"], messages=json.loads(r["messages"]),
                  response=r["response"], label=int(r["label"]), source=r["source"],
                  split=r["split"], meta=json.loads(r["meta"]))
             for r in pq.read_table(path).to_pylist()]
    return Suite(side["name"], items, side["provenance"], side["description"], side["generation"],
                 side.get("dropped", {}))
