"""Monitor: the KV state kept live during generation and scored as the model writes.

``spec`` (a monitor on disk), ``live`` (:class:`Monitor` over ``model.generate``) and ``fit``
(fitting a monitor's detector on a study's stored states).
"""

from .fit import fit_monitor
from .live import Monitor, MonitorResult
from .spec import MonitorSpec, load_monitor, save_monitor

__all__ = ["Monitor", "MonitorResult", "MonitorSpec", "fit_monitor", "load_monitor", "save_monitor"]
