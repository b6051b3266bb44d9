"""Monitor: the KV state kept live during generation and scored as the model writes.

``spec`` (a monitor on disk), ``live`` (:class:`Monitor` over ``model.generate``) and ``fit``
(fitting a monitor's detector on a study's stored states).
"""

from .aggregate import Aggregator
from .fit import PrefixStates, fit_monitor, fit_prefix_detector, prefix_states
from .live import Monitor, MonitorResult
from .spec import MonitorSpec, load_monitor, save_monitor, spec_from_detector, spec_from_parts

__all__ = ["Aggregator", "Monitor", "MonitorResult", "MonitorSpec", "PrefixStates", "fit_monitor", "fit_prefix_detector",
           "load_monitor", "prefix_states", "save_monitor", "spec_from_detector",
           "spec_from_parts"]
