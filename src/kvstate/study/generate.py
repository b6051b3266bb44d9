"""Stage 1, generate: the model's own replies where a suite's labels depend on them (cached by id),
and the items that fit the context budget."""

from __future__ import annotations

from .._io import read_json, write_json
from ..capture.generate import generate_replies
from ..data import Suite, own_replies
from ..models import LoadedModel
from ..store import StudyLayout
from .config import StudyConfig
from .progress import Stage

__all__ = ["replies"]


def replies(lm: LoadedModel, suite: Suite, layout: StudyLayout, cfg: StudyConfig) -> dict[str, str]:
    """Model replies for a suite that needs them, cached as JSON (atomic) and resumed by id.

    Suites whose replies depend on earlier replies (multi-turn histories, an unpressured probe
    question asked first) are generated in that order by :func:`kvstate.data.own_replies`; they
    resume per suite, the others per chunk of items.
    """
    path = layout.replies(lm.name, suite.name)
    cache = read_json(path, "replies cache") if path.exists() else {}

    def generate(prompts) -> list[str]:
        return generate_replies(lm, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False)

    ordered = suite.generation.get("multiturn") or any("probe_id" in it.meta for it in suite.items)
    todo = [it for it in suite.items if it.id not in cache]
    with Stage(f"generate {suite.name}", len(todo), "replies") as stage:
        if ordered and todo:
            cache.update(own_replies(suite, generate))
            write_json(path, cache, sort_keys=True)
            stage.advance(len(todo))
        for s in ([] if ordered else range(0, len(todo), cfg.chunk)):
            part = todo[s : s + cfg.chunk]
            cache.update({it.id: r for it, r in zip(part, generate(part))})
            write_json(path, cache, sort_keys=True)
            stage.advance(len(part))
    return cache if ordered else {it.id: cache[it.id] for it in suite.items}
