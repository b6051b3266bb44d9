"""Representations: every view of a prompt the study compares, recorded in one forward pass.

``names`` (typed names), ``settings`` (what a store hashes; the feature maps it names),
``projection`` (seeded sketches and random projections), ``centering`` (states centred by benign
reference states, per head), ``recorder`` (the one-pass recorder) and
``readout`` (the same kv read-outs rebuilt from a running state, for the monitor).
"""

from .centering import StateCentering
from .names import FAMILIES, KV_KINDS, RepName, decay_of, family, kv_option, parse_kv_name
from .projection import PROJECTIONS, Reducer, sketch
from .readout import headnorm, kv_features
from .recorder import Captured, RepresentationRecorder, capture_representations
from .settings import COMPRESSED, POSITIVE_PHI, QUERY_STATE, RepresentationSettings

__all__ = ["COMPRESSED", "FAMILIES", "KV_KINDS", "POSITIVE_PHI", "PROJECTIONS", "QUERY_STATE", "Captured", "Reducer", "RepName",
           "RepresentationRecorder", "RepresentationSettings", "StateCentering", "capture_representations", "decay_of",
           "family", "headnorm", "kv_features", "kv_option", "parse_kv_name", "sketch"]
