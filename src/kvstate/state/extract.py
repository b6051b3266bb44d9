"""Prompts -> :class:`KVState`: one forward pass, every selected layer's K, V reduced to (S, z, n)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .._options import Read, Rope, Span, Window, check_option
from ..capture.engine import Batch, Recorder, check_layers, encode_all, has_rope, run
from ..capture.hook import AttentionCall, UnsupportedModelError, check_supported
from ..models import LoadedModel
from .core import parallel_state
from .phi import FeatureMap, for_layer, get_phi
from .result import KVState


def key_name(phi: FeatureMap) -> str:
    """A short unique name for a feature map and its parameters, e.g. ``random64``."""
    cfg = phi.config()
    if cfg["name"] == "random":
        return f"random{cfg['n_features']}" + (f"s{cfg['seed']}" if cfg["seed"] else "")
    if cfg["name"] == "learned":
        return "learned"
    return cfg["name"]


class StateRecorder(Recorder):
    """Reduce each selected layer's new K, V to (S, z, n) per read point, for several phi at once."""

    def __init__(self, layers: Sequence[int], phis: Sequence[FeatureMap], rope: str = "post", window: str = "full",
                 gamma: float | None = None):
        self.layers, self.phis, self.rope, self.window, self.gamma = list(layers), list(phis), rope, window, gamma
        self.out: dict[str, list] = {key_name(p): [] for p in self.phis}

    def begin(self, batch: Batch) -> None:
        super().begin(batch)
        self._cur = {key_name(p): {} for p in self.phis}

    def __call__(self, call: AttentionCall) -> None:
        if call.layer not in self.layers:
            return
        k, v = call.new_keys(self.rope), call.new_values()
        w = self.batch.weights.to(k.device)
        if self.window == "layer" and call.sliding_window:
            pos = torch.arange(w.shape[-1], device=w.device)
            w = w * (pos[None, None, :] > self.batch.ends.to(w.device)[..., None] - call.sliding_window)
        for phi in self.phis:
            phi_l = for_layer(phi, call.layer)  # learned maps are per layer
            S, z, n = parallel_state(k, v, phi_l, w, self.gamma)
            self._cur[key_name(phi)][call.layer] = (S, z, n)  # stays on the layer's device until end()

    def end(self, outputs: Any) -> None:
        for key, per_layer in self._cur.items():
            missing = [l for l in self.layers if l not in per_layer]
            if missing:
                raise UnsupportedModelError(f"layers {missing} never called the attention interface; cannot capture them")
            dev = per_layer[self.layers[0]][0].device  # under a device_map the layers sit on several devices
            S, z, n = (torch.stack([per_layer[l][i].to(dev) for l in self.layers], dim=2) for i in range(3))
            self.out[key].append((S.cpu(), z.cpu(), n.cpu()))  # the batch's one device-to-host copy per phi


def _check_selection(encoded, prompts, span: str, skip_first: int) -> None:
    """``skip_first`` must leave every prompt at least one of its span's tokens (else its state is
    silently all zeros, with n = 0). A span a prompt does not have (``"response"`` on a prompt without
    a reply) is a legitimately empty state, with n = 0 recorded."""
    listed = prompts if isinstance(prompts, Sequence) and not isinstance(prompts, (str, dict)) else [prompts]
    for i, e in enumerate(encoded):
        if any(e.select(span, skip_first)) or not any(e.select(span, 0)):
            continue
        p = listed[i] if i < len(listed) else None
        name = getattr(p, "id", None) or (p.get("id") if isinstance(p, dict) else None)
        text = p if isinstance(p, str) else ""
        label = f"prompt {i + 1}" + (f" ({name})" if name else f" ({text[:40]!r})" if text else "")
        in_span = sum(e.select(span, 0))
        raise ValueError(f"{label} has {len(e)} tokens, {in_span} of them in span {span!r}: skip_first={skip_first} "
                         "leaves none for its state; lower skip_first or choose another span")


def extract(
    lm: LoadedModel,
    prompts: Sequence[Any] | Any,
    *,
    layers: Sequence[int] | int | str | None = None,
    phi: str | FeatureMap | Sequence[str | FeatureMap] = "identity",
    rope: Rope = "post",
    window: Window = "full",
    span: Span = "all",
    skip_first: int = 0,
    reads: Sequence[Read] | None = None,
    chat: bool | None = None,
    batch_size: int = 8,
    padding_side: str | None = None,
    progress: bool | None = None,
    gamma: float | None = None,
) -> KVState | dict[str, KVState]:
    """Linear-attention states of ``prompts`` for the selected layers, per KV head.

    Args:
        prompts: strings, chat message lists, dicts with ``messages``/``response`` or suite items.
            A ``response`` is teacher-forced after the generation prompt.
        layers: layer indices (default all). phi: one feature map or several (then a dict is
            returned, keyed ``identity``, ``elu``, ``random64``, ...), all from the same pass.
        rope: ``"post"`` keys as attention uses them, or ``"pre"`` with the rotary embedding undone.
        window: ``"full"`` sums every token; ``"layer"`` only the tokens a sliding-window layer
            attends to at the read point.
        span, skip_first: which tokens enter the state (see :mod:`kvstate.tokens`); e.g.
            ``span="content", skip_first=1`` drops template tokens and the attention sink.
        reads: read points, ``"prompt_end"`` and/or ``"end"``; default ``["end"]``, or both when a
            prompt has a response.
        gamma: decay in (0, 1] (default None: none): token i enters with gamma^(m_i), m_i the selected
            tokens after it up to the read point (padding and unselected tokens do not count), as in
            :func:`kvstate.state.parallel_state`; recorded in ``meta["gamma"]``.
    """
    check_supported(lm.model)
    check_option("rope", rope, Rope)
    check_option("window", window, Window)
    check_option("span", span, Span)
    if rope == "pre" and not has_rope(lm.model):
        raise UnsupportedModelError(f"{lm.name} has no rotary embedding, so its keys carry no RoPE: use rope='post'")
    if not isinstance(skip_first, int) or skip_first < 0:
        raise ValueError(f"skip_first must be an integer >= 0 (tokens dropped from the start); got {skip_first!r}")
    layer_list = check_layers(lm, layers)
    single = isinstance(phi, (str, FeatureMap, dict))
    phis = [get_phi(p) for p in ([phi] if single else phi)]
    encoded = encode_all(lm, prompts, chat)
    _check_selection(encoded, prompts, span, skip_first)
    if reads is None:
        reads = ["prompt_end", "end"] if any(e.prompt_len < len(e) for e in encoded) else ["end"]
    for r in reads:
        check_option("read point", r, Read)
    rec = StateRecorder(layer_list, phis, rope, window, gamma)
    order = run(lm, encoded, [rec], reads=reads, span=span, skip_first=skip_first, batch_size=batch_size,
                padding_side=padding_side, progress=progress)
    inverse = torch.argsort(torch.tensor(order))
    meta = {
        "model": lm.name, "dtype": lm.dtype, "rope": rope, "window": window, "span": span,
        "skip_first": skip_first, "chat": chat, "n_tokens": [len(e) for e in encoded],
        "prompt_tokens": [e.prompt_len for e in encoded],
    }
    if gamma is not None:
        meta["gamma"] = float(gamma)
    ids = [getattr(p, "id", None) or (p.get("id") if isinstance(p, dict) else None) for p in
           (prompts if isinstance(prompts, Sequence) and not isinstance(prompts, (str, dict)) else [prompts])]
    if any(i is not None for i in ids):
        meta["ids"] = [str(i) for i in ids]
    states = {}
    for p in phis:
        parts = rec.out[key_name(p)]
        S, z, n = (torch.cat([x[j] for x in parts])[inverse] for j in range(3))
        states[key_name(p)] = KVState(S, z, n, layer_list, list(reads), p.config(), meta)
    return next(iter(states.values())) if single else states
