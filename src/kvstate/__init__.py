"""kvstate: the linear-attention state of a softmax LLM's keys and values, as a representation.

S = sum_i phi(k_i)^T v_i and z = sum_i phi(k_i), per layer and KV head, computed from the real
K, V of an ordinary transformer, for anomaly detection (jailbreaks, hallucination, deception)
and live monitoring.
"""

__version__ = "0.1.0"

from .capture import AttentionCall, KVCapture, UnsupportedModelError
from .extract import extract
from .models import MODELS, LoadedModel, from_hf, list_models, load_model
from .phi import get_phi
from .result import KVState
from .state import RecurrentState, linear_attention, parallel_state, readout

__all__ = [
    "AttentionCall", "KVCapture", "KVState", "LoadedModel", "MODELS", "RecurrentState", "UnsupportedModelError",
    "extract", "from_hf", "get_phi", "linear_attention", "list_models", "load_model", "parallel_state", "readout",
]
