"""State: feature maps and the linear-attention state S = sum phi(k)^T v, z = sum phi(k).

``phi`` (feature maps and their registry), ``core`` (parallel and recurrent states, read-outs),
``learned`` (the Hedgehog map, registered as ``"learned"`` on import), ``extract``
(prompts -> :class:`KVState`), ``result`` (:class:`KVState`), ``fidelity`` (linear vs softmax
attention) and ``plan`` (state sizes on paper).
"""

from . import learned  # noqa: F401  (registers the "learned" feature map with get_phi)
from .core import (
    READOUTS,
    RecurrentState,
    causal_linear_attention,
    compress_state,
    compression_matrices,
    decay_weights,
    linear_attention,
    parallel_state,
    readout,
    recurrent_state,
)
from .extract import StateRecorder, extract, key_name
from .phi import PHI_NAMES, FeatureMap, for_layer, get_phi, register_phi
from .result import KVState

__all__ = ["PHI_NAMES", "READOUTS", "FeatureMap", "KVState", "RecurrentState", "StateRecorder", "causal_linear_attention",
           "compress_state", "compression_matrices", "decay_weights", "extract", "for_layer", "get_phi", "key_name",
           "linear_attention", "parallel_state", "readout", "recurrent_state", "register_phi"]
