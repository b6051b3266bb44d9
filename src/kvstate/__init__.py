"""kvstate: the linear-attention state of a softmax LLM's keys and values, as a representation.

S = sum_i phi(k_i)^T v_i and z = sum_i phi(k_i), per layer and KV head, computed from the real
K, V of an ordinary transformer, for anomaly detection (jailbreaks, hallucination, deception)
and live monitoring.
"""

__version__ = "0.1.0"

from .capture import AttentionCall, KVCapture, UnsupportedModelError
from .extract import extract
from .models import MODELS, LoadedModel, from_hf, list_models, load_model
from .monitor import Monitor, MonitorSpec, load_monitor, save_monitor
from .phi import get_phi
from .representations import RepresentationSettings, capture_representations
from .result import KVState
from .state import RecurrentState, linear_attention, parallel_state, readout

__all__ = [
    "AttentionCall", "KVCapture", "KVState", "LoadedModel", "MODELS", "Monitor", "MonitorSpec", "RecurrentState",
    "RepresentationSettings", "UnsupportedModelError", "capture_representations", "extract", "from_hf", "get_phi",
    "linear_attention", "list_models", "load_model", "load_monitor", "parallel_state", "readout", "save_monitor",
]
