"""kvstate: the linear-attention state of a softmax LLM's keys and values, as a representation.

S = sum_i phi(k_i)^T v_i and z = sum_i phi(k_i), per layer and KV head, computed from the real
K, V of an ordinary transformer, for anomaly detection (jailbreaks, hallucination, deception)
and live monitoring.
"""

__version__ = "0.1.0"
