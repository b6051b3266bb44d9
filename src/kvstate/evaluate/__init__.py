"""Evaluation: ``metrics`` (AUROC, TPR at a fixed FPR, seeded bootstrap CIs) and ``cv`` (grouped
cross-validation, length matching, shuffled labels, the held-out choice, transfer, tables).

Every score is "higher = more anomalous/positive" (:mod:`kvstate.detect`), and no test statistic
reaches training: each fold clones the detector and fits it on that fold's training items only.
"""

from .cv import (
                 EvalResult,
                 comparison_table,
                 confound_warnings,
                 evaluate_detector,
                 evaluate_length_matched,
                 fit_clone,
                 length_matched_indices,
                 selection_corrected,
                 shuffled_label_control,
                 transfer_matrix,
)
from .metrics import METRICS, auroc_ci, bootstrap_ci, metrics

__all__ = ["METRICS", "EvalResult", "auroc_ci", "bootstrap_ci", "comparison_table", "confound_warnings", "evaluate_detector",
           "evaluate_length_matched", "fit_clone", "length_matched_indices", "metrics", "selection_corrected",
           "shuffled_label_control", "transfer_matrix"]
