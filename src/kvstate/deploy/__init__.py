"""Deploy: a fitted detector as a folder (``folder``), fitted from a study or a suite (``fit``), and
scoring files with it (``files``)."""

from .files import check_output, iter_prompt_chunks, score_file
from .fit import calibration_features, calibration_representation, choose, fit_from_study, fit_from_suite, has_replies
from .folder import FORMAT, Detector, fit_detector

__all__ = ["FORMAT", "Detector", "calibration_features", "calibration_representation", "check_output", "choose", "fit_detector",
           "fit_from_study", "fit_from_suite", "has_replies", "iter_prompt_chunks", "score_file"]
