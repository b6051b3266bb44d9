"""kvstate: the linear-attention state of a softmax LLM's keys and values, as a representation.

S = sum_i phi(k_i)^T v_i and z = sum_i phi(k_i), per layer and KV head, computed from the real
K, V of an ordinary transformer, for anomaly detection (jailbreaks, hallucination, deception)
and live monitoring.
"""

from ._version import __version__
from .capture import AttentionCall, KVCapture, UnsupportedModelError
from .deploy import Detector
from .models import MODELS, LoadedModel, from_hf, list_models, load_model
from .monitor import Monitor, MonitorSpec, load_monitor, save_monitor
from .representations import RepresentationSettings, capture_representations
from .state import KVState, RecurrentState, extract, get_phi, linear_attention, parallel_state, readout

__all__ = [
    "__version__", "AttentionCall", "Detector", "KVCapture", "KVState", "LoadedModel", "MODELS", "Monitor", "MonitorSpec", "RecurrentState",
    "RepresentationSettings", "UnsupportedModelError", "capture_representations", "extract", "from_hf", "get_phi",
    "linear_attention", "list_models", "load_model", "load_monitor", "parallel_state", "readout", "save_monitor",
]
