"""The model's own replies for every kind of generation suite, in the order they need.

Most generation suites need one reply per item. Two need more than a single batch of prompts:

* multi-turn suites (``generation["multiturn"]``, e.g. ``sysprompt-multiturn``): the prompt of
  turn k holds the model's own replies to turns 0..k-1, so replies are generated **turn by
  turn**: all conversations' turn 0, then every turn 1 with the turn-0 replies filled in, ...
* probe suites (items with ``meta["probe_id"]``, e.g. ``deception-pressure``): the same question
  without pressure is asked first (``meta["probe_messages"]``), so the checker can tell whether
  the model knows the answer it then misstates. Probe replies are returned under the probe id.

:func:`own_replies` returns one flat ``{id: reply}`` mapping that :meth:`Suite.label_with`
accepts, so a JSON cache of replies works for every suite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .schema import Suite, fill_history

Messages = list[dict[str, str]]
Generate = Callable[[Sequence[Messages]], list[str]]


def own_replies(suite: Suite, generate: Generate) -> dict[str, str]:
    """Replies to every item of ``suite`` (plus probe replies), generated in the right order.

    Parameters
    ----------
    suite
        A suite with ``generation`` settings.
    generate
        Maps a list of message lists to one reply each (e.g. a closure over
        :func:`kvstate.capture.generate.generate_replies`).

    Returns
    -------
    dict
        ``{item id or probe id: reply}``, ready for ``suite.label_with``.
    """
    if not suite.generation:
        raise ValueError(f"suite {suite.name!r} has no generation settings; it needs no replies")
    replies: dict[str, str] = {}
    probes: dict[str, Messages] = {}
    for it in suite.items:
        if "probe_id" in it.meta:
            probes.setdefault(it.meta["probe_id"], it.meta["probe_messages"])
    if probes:
        keys = list(probes)
        replies.update(zip(keys, _call(generate, [probes[k] for k in keys]), strict=True))
    if suite.generation.get("multiturn"):
        turns = sorted({it.meta["turn"] for it in suite.items})
        for k in turns:
            todo = [it for it in suite.items if it.meta["turn"] == k]
            prompts = [fill_history(it, replies) for it in todo]
            replies.update(zip((it.id for it in todo), _call(generate, prompts), strict=True))
    else:
        replies.update(zip((it.id for it in suite.items),
                           _call(generate, [it.messages for it in suite.items]), strict=True))
    return replies


def _call(generate: Generate, prompts: list[Messages]) -> list[str]:
    out = list(generate(prompts)) if prompts else []
    if len(out) != len(prompts):
        raise ValueError(f"generate returned {len(out)} replies for {len(prompts)} prompts; "
                         "it must return one reply per prompt")
    return out
