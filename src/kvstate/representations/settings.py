"""What a representation recording computes: the settings a store hashes, and the feature maps
they name (built in one place, so the recorder and the live monitor use the same maps)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .._options import Projection, check_option
from ..state import FeatureMap, get_phi, key_name

__all__ = ["POSITIVE_PHI", "RepresentationSettings"]

POSITIVE_PHI = ("elu", "relu", "random", "taylor")  #: maps with phi >= 0, for which S/|z| is defined


@dataclass(frozen=True)
class RepresentationSettings:
    """Everything that changes the stored numbers (the store hashes it).

    Parameters
    ----------
    layers : tuple of int, default=()
        Layers whose states are read out (empty: all).
    phis : tuple of str, default=("identity", "elu", "random", "taylor")
        Feature-map specs (:func:`kvstate.state.get_phi`), e.g. ``"random:256"`` or ``"learned:<path>"``.
    ablation_phis : tuple of str, default=("identity", "elu")
        Maps that also get the token-selection, RoPE and head-norm ablations.
    sweep : bool, default=True
        Record the per-layer sweep (kv state and residual at every layer).
    svd_k, prune_k, segments, hier_dim : int
        Top singular values kept, heavy hitters kept, segments of the hierarchical state and their sketch size.
    max_dim : int, default=2048
        Stored vectors wider than this are randomly projected (:class:`~kvstate.representations.Reducer`).
    seed : int, default=0
        Seed of the sketches and projections.
    projection : {"gaussian", "sparse"}, default="gaussian"
    """

    layers: tuple[int, ...] = ()
    phis: tuple[str, ...] = ("identity", "elu", "random", "taylor")
    ablation_phis: tuple[str, ...] = ("identity", "elu")
    sweep: bool = True
    svd_k: int = 8
    prune_k: int = 16
    segments: int = 4
    hier_dim: int = 64  # per head and segment, after a seeded sketch
    max_dim: int = 2048
    seed: int = 0
    projection: Projection = "gaussian"

    def __post_init__(self):
        check_option("projection", self.projection, Projection)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["projection"] == "gaussian":  # added later: left out at its default so older stores stay valid
            del d["projection"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RepresentationSettings":
        """Inverse of :meth:`to_dict`, also after a JSON round trip (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def feature_maps(self) -> dict[str, FeatureMap]:
        """The feature maps of ``phis``, keyed as the stored names key them (``random64``, ...).

        The single place they are built: the recorder's stored states and a monitor's running
        states use the same maps (random features included: their seed is part of the spec,
        ``{"name": "random", "seed": s}``, not the study's seed).
        """
        maps = [get_phi(p) for p in self.phis]
        return {key_name(m): m for m in maps}

    def feature_map(self, key: str) -> FeatureMap:
        """One map by its key; a one-line error naming the recorded keys."""
        maps = self.feature_maps()
        if key not in maps:
            raise ValueError(f"feature map {key!r} is not among the recorded ones ({', '.join(maps)})")
        return maps[key]
