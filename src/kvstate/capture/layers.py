"""Layer-selection schemes, so studies name layers by role rather than by index.

``middle``  all heads of the middle layer (L // 2);
``upper``   all heads of an upper layer (3/4 depth);
``upper3``  k = 3 upper-middle layers (1/2, 5/8 and 3/4 depth);
``all``     every layer;
or explicit indices: ``"0,5,-1"`` (negative counts from the end).
"""

from __future__ import annotations

SCHEMES = ("middle", "upper", "upper3", "all")


def select_layers(spec: str | list[int] | None, num_layers: int) -> list[int]:
    """Layer indices for a scheme name, a comma list or a list of ints."""
    L = num_layers
    if spec is None or spec == "all":
        return list(range(L))
    if isinstance(spec, str):
        if spec == "middle":
            return [L // 2]
        if spec == "upper":
            return [round(0.75 * (L - 1))]
        if spec == "upper3":
            return sorted({round(f * (L - 1)) for f in (0.5, 0.625, 0.75)})
        try:
            spec = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"bad layer selection {spec!r}: use {', '.join(SCHEMES)} or indices like '0,5,-1'") from None
        if not spec:
            raise ValueError(f"empty layer selection: use {', '.join(SCHEMES)} or indices like '0,5,-1'")
    out = []
    if not len(spec):
        raise ValueError(f"empty layer selection: use {', '.join(SCHEMES)} or indices like '0,5,-1'")
    for l in spec:
        if not -L <= int(l) < L:
            raise ValueError(f"bad layer index {l!r}: the model has {L} layers (0..{L - 1}, or negative from the end)")
        out.append(int(l) % L)
    return sorted(set(out))
