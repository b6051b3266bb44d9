"""The study: a thin pipeline of stages over models x suites (:mod:`.run`).

``config`` (:class:`StudyConfig`), ``types`` (each stage's typed input and output), the stages
``generate`` -> ``capture`` -> ``evaluate`` -> ``transfer`` -> ``monitor`` (+ ``fidelity``),
``run`` (the pipeline and ``evaluate_study``), ``ray`` (capture on a Ray cluster), ``service``
(``train_monitor``) and ``progress``.
"""

from .capture import capture_suite
from .config import EVALUATION_SETTINGS, StudyConfig
from .evaluate import TooFewGroups, evaluate_task
from .monitor import evaluate_monitor
from .run import evaluate_study, run_study, validate_study
from .service import train_monitor
from .types import SuiteData

__all__ = ["EVALUATION_SETTINGS", "StudyConfig", "SuiteData", "TooFewGroups", "capture_suite", "evaluate_monitor",
           "evaluate_study", "evaluate_task", "run_study", "train_monitor", "validate_study"]
