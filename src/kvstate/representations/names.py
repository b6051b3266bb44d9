"""Typed representation names: parse and format, instead of slicing strings.

A stored representation is named ``<prefix>-<body>[@<read>]``:

- ``kv-<phi>-<read-out>``, e.g. ``kv-elu-S/n-hn@end`` (phi ``elu``, read-out ``S/n-hn``); the
  KV-cache variants use ``attnw``, ``h2o`` or ``hier`` in the phi slot;
- ``act-<what>``, e.g. ``act-resid-last@prompt_end``;
- ``ctl-<what>``, e.g. ``ctl-length``;
- ``sweep-kv/<layer>`` and ``sweep-resid/<layer>`` (the layer sweep; read at the end only).

The read suffix is present when a study records more than one read point.

>>> n = RepName.parse("kv-elu-S/n-hn@end")
>>> n.prefix, n.phi, n.readout, n.read, n.family
('kv', 'elu', 'S/n-hn', 'end', 'kv-state')
>>> str(n.with_read("prompt_end"))
'kv-elu-S/n-hn@prompt_end'
>>> RepName.parse("sweep-kv/12").layer
12
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["FAMILIES", "KV_KINDS", "RepName", "decay_of", "family", "kv_option", "parse_kv_name"]

#: name prefix -> family, the unit the study compares (KV state vs activations vs controls)
FAMILIES = {"kv": "kv-state", "sweep-kv": "kv-state", "act": "activation", "sweep-resid": "activation", "ctl": "control"}
#: kv read-outs a running state can rebuild (what a live monitor may score), besides the decayed
#: ``S/n-decay<gamma>`` (a running state with that decay)
KV_KINDS = ("S/n", "S/n-hn", "S/n-pre", "z/n", "S|z|", "S", "ASB/n")
DECAY = "S/n-decay"


@dataclass(frozen=True)
class RepName:
    """One representation's name: ``prefix`` (kv, act, ctl, sweep-kv, sweep-resid), ``body`` and ``read``."""

    prefix: str
    body: str
    read: str | None = None

    @classmethod
    def parse(cls, name: str) -> "RepName":
        """Split a stored name; a one-line ``ValueError`` for names kvstate never writes."""
        base, at, read = str(name).rpartition("@") if "@" in str(name) else (str(name), "", "")
        if base.startswith("sweep-"):
            prefix, sep, body = base.partition("/")
        else:
            prefix, sep, body = base.partition("-")
        if not sep or not body or prefix not in FAMILIES:
            raise ValueError(f"{name!r} is not a representation name; expected kv-<phi>-<read-out>, act-<what>, "
                             "ctl-<what> or sweep-kv/<layer>, optionally with @prompt_end or @end")
        return cls(prefix, body, read if at else None)

    def __str__(self) -> str:
        sep = "/" if self.prefix.startswith("sweep") else "-"
        return f"{self.prefix}{sep}{self.body}" + (f"@{self.read}" if self.read else "")

    @property
    def base(self) -> str:
        """The name without its read point."""
        return str(replace(self, read=None))

    @property
    def family(self) -> str:
        """``kv-state``, ``activation`` or ``control``."""
        return FAMILIES[self.prefix]

    @property
    def is_sweep(self) -> bool:
        return self.prefix.startswith("sweep")

    @property
    def phi(self) -> str | None:
        """The feature-map key of a kv name (``elu``, ``random64``, ...), else None."""
        return self.body.partition("-")[0] if self.prefix == "kv" else None

    @property
    def readout(self) -> str | None:
        """The read-out of a kv name (``S/n``, ``S/n-hn``, ``z/n``, ...), else None."""
        return self.body.partition("-")[2] if self.prefix == "kv" else None

    @property
    def layer(self) -> int | None:
        """The layer of a sweep name, else None."""
        return int(self.body) if self.is_sweep else None

    def with_read(self, read: str | None) -> "RepName":
        return replace(self, read=read)


def family(name: str) -> str:
    """kv-state, activation or control, from a representation name ("other" for unknown names)."""
    try:
        return RepName.parse(name).family
    except ValueError:
        return "other"


def parse_kv_name(name: str) -> tuple[str, str]:
    """("elu", "S/n-hn") from "kv-elu-S/n-hn@end"; raises for names the state alone cannot rebuild."""
    try:
        n = RepName.parse(name)
    except ValueError:
        n = None
    if n is not None and n.prefix == "kv" and (n.readout in KV_KINDS or _is_decay(n.readout)):
        return n.phi, n.readout
    raise ValueError(f"{name!r} is not a state read-out a monitor can rebuild; use kv-<phi>-<kind> with kind in "
                     f"{', '.join(KV_KINDS)} or {DECAY}<gamma>")


def _is_decay(readout: str | None) -> bool:
    try:
        return bool(readout) and readout.startswith(DECAY) and 0.0 < float(readout.removeprefix(DECAY)) <= 1.0
    except ValueError:
        return False


def decay_of(kind: str) -> float | None:
    """The gamma of a decayed read-out (``"S/n-decay0.9"`` -> 0.9), else None.

    >>> decay_of("S/n-decay0.99"), decay_of("S/n-hn")
    (0.99, None)
    """
    return float(kind.removeprefix(DECAY)) if _is_decay(kind) else None


#: kv read-out -> the state option it tests (the ablation groups of the transfer stage)
KV_OPTIONS = {"S/n": "plain S/n", "S/n-hn": "head-normalised", "S/n-content": "content tokens only",
              "S/n-pre": "pre-RoPE keys", "S/n-pre-content": "pre-RoPE, content tokens", "ASB/n": "compressed A S B^T",
              "dS/n": "span delta (reply only)", "attn": "own-query read-out", "refq": "benign reference queries' read-out",
              "S|z|": "S/|z|", "svals": "top singular values"}


def kv_option(name: str) -> str | None:
    """The state option a kv name tests (``"decay 0.9"`` for ``kv-elu-S/n-decay0.9@end``), else None.

    >>> kv_option("kv-elu-S/n-decay0.99@end"), kv_option("kv-identity-ASB/n"), kv_option("act-resid-last")
    ('decay 0.99', 'compressed A S B^T', None)
    >>> kv_option("kv-learned-S/n@end"), kv_option("kv-learned-z/n@end")
    ('learned phi (Hedgehog)', 'z/n')
    """
    n = RepName.parse(name)
    if n.prefix != "kv":
        return None
    if n.phi in ("attnw", "h2o", "hier"):
        return f"KV-cache {n.phi}"
    if n.phi == "learned" and n.readout == "S/n":
        return "learned phi (Hedgehog)"
    if n.readout.startswith(DECAY):
        return "decay " + n.readout.removeprefix(DECAY)
    return KV_OPTIONS.get(n.readout, n.readout)
