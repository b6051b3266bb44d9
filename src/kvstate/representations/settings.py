"""What a representation recording computes: the settings a store hashes, and the feature maps
they name (built in one place, so the recorder and the live monitor use the same maps)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .._options import Projection, check_option
from ..state import FeatureMap, get_phi, key_name
from .projection import Reducer

__all__ = ["COMPRESSED", "POSITIVE_PHI", "QUERY_STATE", "RepresentationSettings"]

POSITIVE_PHI = ("elu", "relu", "random", "taylor")  #: maps with phi >= 0, for which S/|z| is defined
COMPRESSED = "ASB/n"  #: the read-out of the structured compression A (S/n) B^T, itself the reduction
QUERY_STATE = "Sz/n"  #: the whole S/n, then z/n, of every head: what a virtual-query probe reads (never projected)
WHOLE = (COMPRESSED, QUERY_STATE)  #: read-outs stored whole, because probes read their per-head matrices


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
    decays : tuple of float, default=()
        Also record decayed states ``kv-<phi>-S/n-decay<gamma>`` (gamma in (0, 1], counted in
        selected tokens, see :func:`kvstate.state.parallel_state`) for the ``ablation_phis``.
    compress : tuple of int (a, b) or (), default=()
        Also record ``kv-<phi>-ASB/n``: A (S/n) B^T with seeded per-head A (a x d_phi), B (b x d_v)
        (:func:`kvstate.state.compression_matrices`, seed ``seed``) for the ``ablation_phis``.
    deltas : bool, default=False
        Also record ``kv-<phi>-dS/n@end``: the mean outer product of the reply tokens alone,
        (S(end) - S(prompt_end)) / (n(end) - n(prompt_end)), when both read points are recorded.
    query_states : bool, default=False
        Also record ``kv-<phi>-Sz/n`` at the last read point, for the positive ``ablation_phis`` whose
        feature width equals the value width (elu, relu): every head's S/n, then every head's z/n,
        whole (:func:`kvstate.detect.pack_states` layout, never projected), so that a virtual-query
        probe (``QueryProbe(kind="query", with_z=True)``) can read phi(q) S / phi(q).z per head. Its
        width, with the width of ``z/n``, fixes the (heads, d, d) shape.
    ref_queries : str, default=""
        A file of benign reference prompts' queries (:func:`kvstate.state.learned.save_reference_queries`);
        when set, also record ``kv-<phi>-refq`` for the ``ablation_phis``: each layer's state read by
        the mean reference feature per query head, m S / m.z with m = mean_k phi(q_k), one d_v-vector
        per query head (as the own-query read-out ``attn``, with benign queries instead of the item's).

    The last five were added later and are left out of :meth:`to_dict` at their defaults (off), so
    the settings hash of existing stores does not change.
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
    decays: tuple[float, ...] = ()
    compress: tuple[int, ...] = ()
    deltas: bool = False
    query_states: bool = False
    ref_queries: str = ""

    def __post_init__(self):
        check_option("projection", self.projection, Projection)
        for g in self.decays:
            if not 0.0 < float(g) <= 1.0:
                raise ValueError(f"decays must be in (0, 1] (1 = no decay); got {g}")
        if self.compress and (len(self.compress) != 2 or min(self.compress) < 1):
            raise ValueError(f"compress must be (a, b) with positive sizes, or () for off; got {self.compress}")

    #: fields added later, left out of to_dict at these defaults so older stores keep their hash
    _LATER = {"projection": "gaussian", "decays": (), "compress": (), "deltas": False, "query_states": False, "ref_queries": ""}

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, default in self._LATER.items():
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RepresentationSettings":
        """Inverse of :meth:`to_dict`, also after a JSON round trip (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def reducer(self, readout: str | None = None) -> Reducer:
        """The whole-vector reduction a stored read-out goes through: the seeded projection above
        ``max_dim``, except for the compressed state (``ASB/n``, itself the reduction) and the query
        state (``Sz/n``), which are stored whole so that probes can read their per-head matrices."""
        return Reducer(2**62 if readout in WHOLE else self.max_dim, self.seed, self.projection)

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
