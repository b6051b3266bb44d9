"""The benchmark protocol: tasks as sets of public sources with roles, near-duplicates dropped,
leave-one-source-out choices, thresholds on calibration traffic, paired KV-vs-activation verdicts
per test benchmark (:func:`run_benchmark`, ``kvstate benchmark``)."""

from .config import DEFAULT_REPRESENTATIONS, BenchmarkConfig
from .fit import fit_task
from .run import Features, capture, choices, evaluate_choices, run_benchmark, select, task_data
from .table import markdown, write_tables
from .tasks import ROLES, TASKS, SourceSpec, TaskData, TaskSpec, TestSpec, prepare_task, task_from_dict

__all__ = ["DEFAULT_REPRESENTATIONS", "ROLES", "TASKS", "BenchmarkConfig", "Features", "SourceSpec", "TaskData", "TaskSpec",
           "TestSpec", "capture", "choices", "evaluate_choices", "fit_task", "markdown", "prepare_task", "run_benchmark", "select",
           "task_data", "task_from_dict", "write_tables"]
