"""See every attention call's q, k, v through transformers' own extension point.

One generic path for all architectures: we register a wrapper in ``AttentionInterface`` around the
implementation the model already uses (sdpa, eager, ...), and register the matching mask function
under the same name (without it the wrapper would receive ``mask=None`` and padded batches would
silently attend to padding). Inside :class:`KVCapture` the model runs through the wrapper, which
hands an :class:`AttentionCall` to a listener and then delegates, so outputs are unchanged.

k and v arrive post-RoPE, after the cache update and before GQA repetition: (B, H_kv, T_kv, d).
"""

from __future__ import annotations

import contextvars
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .._options import Rope, check_option
from .masks import allowed_keys

PREFIX = "kvstate_"
_ACTIVE: contextvars.ContextVar["KVCapture | None"] = contextvars.ContextVar("kvstate_capture", default=None)


class UnsupportedModelError(ValueError):
    """The model does not route attention through transformers' AttentionInterface."""


@dataclass
class AttentionCall:
    """One layer's attention inputs and output, as the model computed them."""

    layer: int
    module: torch.nn.Module
    query: torch.Tensor  # (B, H_q, q_len, d)
    key: torch.Tensor  # (B, H_kv, T_kv, d), post-RoPE, whole cache while decoding
    value: torch.Tensor  # (B, H_kv, T_kv, d_v)
    output: torch.Tensor  # (B, q_len, H_q, d_v), before o_proj
    kwargs: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None  # what the attention function got: None (causal), bool or additive
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def q_len(self) -> int:
        return self.query.shape[2]

    @property
    def sliding_window(self) -> int | None:
        """Window of this layer if it is a sliding-window layer, else None."""
        w = self.kwargs.get("sliding_window", getattr(self.module, "sliding_window", None))
        return int(w) if w else None

    def probs(self) -> torch.Tensor:
        """Softmax attention weights (B, H_q, q_len, T_kv) recomputed from q, k and the mask.

        sdpa does not return its weights; this costs O(T^2) per head and is only for recorders
        that need attention mass (attention-weighted states, LLM-Check scores).
        """
        rep = self.query.shape[1] // self.key.shape[1]
        k = self.key.repeat_interleave(rep, dim=1).float()
        scale = self.kwargs.get("scaling") or getattr(self.module, "scaling", None) or self.query.shape[-1] ** -0.5
        scores = (self.query.float() @ k.transpose(-1, -2)) * scale
        softcap = getattr(self.module, "attn_logit_softcapping", None) or self.kwargs.get("softcap")
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = allowed_keys(self.mask, self.q_len, k.shape[2], scores.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, dim=-1).nan_to_num(0.0)

    def new_values(self) -> torch.Tensor:
        """Values of the tokens of this forward call (the last q_len cache positions)."""
        return self.value[:, :, -self.q_len :]

    def new_keys(self, rope: str = "post") -> torch.Tensor:
        """Keys of this call's tokens; ``rope="pre"`` undoes the rotary embedding."""
        k = self.key[:, :, -self.q_len :]
        if check_option("rope", rope, Rope) == "post":
            return k
        if self.position_embeddings is None:
            raise UnsupportedModelError(
                f"{type(self.module).__name__} gets no rotary position embeddings, so its keys carry no RoPE: use rope='post'"
            )
        cos, sin = self.position_embeddings
        return unrotate(k, cos, sin)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Standard (rotate-half) RoPE as transformers applies it; partial rotary on the first dims."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat([x_rot * cos + _rotate_half(x_rot) * sin, x_pass], dim=-1)


def unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotate`; divides by cos^2+sin^2 so scaled RoPE (YaRN, llama3) inverts too."""
    cos, sin = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r].float(), x[..., r:]
    out = (x_rot * cos - _rotate_half(x_rot) * sin) / (cos * cos + sin * sin)
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


def _inner_function(inner: str, module: torch.nn.Module) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if inner == "eager":  # each architecture has its own eager function beside its attention class
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise UnsupportedModelError(f"{type(module).__name__} has no eager_attention_forward; load it with sdpa")
        return fn
    return ALL_ATTENTION_FUNCTIONS[inner]


def _make_wrapper(inner: str) -> Callable:
    def kvstate_attention(module, query, key, value, attention_mask, **kwargs):
        out = _inner_function(inner, module)(module, query, key, value, attention_mask, **kwargs)
        capture = _ACTIVE.get()
        if capture is not None and getattr(module, "layer_idx", None) is not None:
            capture._record(module, query, key, value, out[0], attention_mask, kwargs)
        return out

    kvstate_attention.__name__ = f"{PREFIX}{inner}"
    return kvstate_attention


def register(inner: str) -> str:
    """Register the wrapper (and the mask function) for an inner implementation; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = f"{PREFIX}{inner}"
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_wrapper(inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def check_supported(model: torch.nn.Module) -> None:
    """Raise a one-line error for models that do not use the AttentionInterface."""
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
            "so kvstate cannot capture its keys and values; use an architecture that does (llama, qwen2, gemma3, mistral, phi3, gpt2, ...)"
        )


class KVCapture:
    """Context manager: while active, ``listener(call)`` sees every attention call of ``model``.

    The model's attention implementation is switched to the kvstate wrapper on entry and restored
    on exit (the model is otherwise untouched). Listeners must not keep per-token tensors if
    memory matters: reduce them (see :mod:`kvstate.state`).

    Parameters
    ----------
    model : torch.nn.Module
    listener : callable
        ``listener(call)`` for each attention call.
    layers : sequence of int or None, default=None
        Only these layers' calls reach the listener (None: all); the others pass straight through,
        which keeps Python work per decoding step to the layers a monitor reads.
    positions : bool, default=True
        Remember each layer's rotary embeddings (a forward pre-hook per attention module) so that
        ``call.new_keys("pre")`` can un-rotate; False skips the hooks when only post-RoPE keys are read.
    """

    def __init__(self, model: torch.nn.Module, listener: Callable[[AttentionCall], None],
                 layers: Sequence[int] | None = None, positions: bool = True):
        self.model = model
        self.listener = listener
        self.layers = layers
        self.positions = positions

    def __enter__(self) -> "KVCapture":
        check_supported(self.model)
        self._previous = self.model.config._attn_implementation
        inner = self._previous.removeprefix(PREFIX) if self._previous else "sdpa"
        self.model.set_attn_implementation(register(inner))
        self._positions: dict[int, tuple] = {}
        wanted = None if self.layers is None else {int(x) for x in self.layers}
        attention = [m for m in self.model.modules() if getattr(m, "layer_idx", None) is not None
                     and (wanted is None or int(m.layer_idx) in wanted)]
        # the modules whose calls are recorded: this model's (not another model's run inside the context)
        self._module_ids = {id(m) for m in attention} if wanted is not None else {id(m) for m in self.model.modules()}
        self._hooks = [m.register_forward_pre_hook(self._remember_positions, with_kwargs=True)
                       for m in attention] if self.positions else []
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)
        for h in self._hooks:
            h.remove()
        self.model.set_attn_implementation(self._previous)

    def _remember_positions(self, module, args, kwargs):
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            self._positions[id(module)] = pe

    def _record(self, module, query, key, value, output, mask, kwargs) -> None:
        if id(module) not in self._module_ids:  # another model running inside this context
            return
        call = AttentionCall(
            int(module.layer_idx), module, query, key, value, output, kwargs, mask, self._positions.get(id(module))
        )
        self.listener(call)
