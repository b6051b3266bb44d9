"""Shallow baselines that show up front how much of a suite's label the text alone gives away.

:func:`bow_auroc` is the one bag-of-words baseline of the data package: hashed word 1-2-grams
(sklearn ``HashingVectorizer``), a logistic regression, grouped and seeded K-fold cross-
validation (whole groups per fold, so a question's paired items never sit on both sides), and
the AUROC of the pooled out-of-fold scores. It is **not** folded to >= 0.5: a score below 0.5
means the features carry nothing the model could learn.

Views of an item (``view=``):

* ``"prompt"``: the text of all messages (system, user, earlier assistant turns).
* ``"prompt+reply"``: the prompt plus ``response`` (the judged or teacher-forced reply).
* ``"reply"``: the response alone.
* ``"form"``: the prompt with every content word masked: a token is kept only if it is in
  sklearn's English stop-word list (function words such as "how", "to", "for", "the"), else it
  becomes ``_``. This is the *phrasing* control: it sees the sentence skeleton ("_ _ how to _ a
  _ ?") and any template words, not what is being asked for.

:func:`confounds` bundles n, balance, length AUROC and these AUROCs, and marks a suite
*confounded* when the prompt-only BoW AUROC exceeds ``CONFOUNDED_BOW``.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from .schema import Item, Suite, stable_key

CONFOUNDED_BOW = 0.8
FOLDS = 5
VIEWS = ("prompt", "prompt+reply", "reply", "form")
_TOKEN = re.compile(r"(?u)\b\w+\b|[?!.:,]")


def item_text(it: Item, view: str = "prompt") -> str:
    """The text of one item that a baseline of ``view`` sees."""
    prompt = "\n".join(m["content"] for m in it.messages)
    if view == "prompt":
        return prompt
    if view == "prompt+reply":
        return prompt + "\n" + (it.response or "")
    if view == "reply":
        return it.response or ""
    if view == "form":
        return form_skeleton(prompt)
    raise ValueError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")


def form_skeleton(text: str) -> str:
    """Function words and punctuation kept, every other word replaced by ``_``."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return " ".join(t if t in ENGLISH_STOP_WORDS or not t[0].isalnum() else "_"
                    for t in _TOKEN.findall(text.lower()))


def bow_auroc(suite: Suite, view: str = "prompt", *, seed: int = 0, folds: int = FOLDS,
              n_features: int = 2 ** 18) -> float:
    """Grouped-CV AUROC of a hashed bag-of-words logistic regression on one view of the items.

    Parameters
    ----------
    suite
        Items labelled 0/1 (items labelled -1 are ignored).
    view
        ``"prompt"``, ``"prompt+reply"``, ``"reply"`` or ``"form"`` (see the module docstring).
    seed
        Seeds the assignment of groups to folds (a hash order, as in the splits).
    folds
        Number of folds (fewer if the suite has fewer groups).
    n_features
        Width of the hashing space.

    Returns
    -------
    float
        AUROC of the out-of-fold scores, ``nan`` if there are not two labels and two groups.
    """
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    items = [it for it in suite.items if it.label in (0, 1)]
    y = np.array([it.label for it in items])
    groups = sorted({it.group for it in items}, key=lambda g: stable_key(seed, "bow", g))
    k = min(folds, len(groups))
    if len(set(y.tolist())) < 2 or k < 2:
        return math.nan
    fold_of = {g: i % k for i, g in enumerate(groups)}
    fold = np.array([fold_of[it.group] for it in items])
    vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                            token_pattern=r"(?u)\b\w+\b|[?!.:,]")
    x = vec.transform([item_text(it, view) for it in items])
    score = np.zeros(len(items))
    for f in range(k):
        test = fold == f
        train = ~test
        if len(set(y[train].tolist())) < 2:
            score[test] = 0.5
            continue
        clf = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(x[train], y[train])
        score[test] = clf.decision_function(x[test])
    return float(roc_auc_score(y, score))


def confounds(suite: Suite, *, seed: int = 0, views: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
    """n, label counts, balance, length AUROC and BoW AUROCs of a suite, and its confound flag.

    ``balance`` is the share of label 1 among items labelled 0/1. ``bow_prompt_reply`` and
    ``bow_reply`` are reported only where items have responses. ``confounded`` is True when
    ``bow_prompt`` > ``CONFOUNDED_BOW``; it is None when the suite has no labels yet
    (generation suites before ``label_with``).
    """
    known = [it for it in suite.items if it.label in (0, 1)]
    n1 = sum(it.label for it in known)
    out: dict[str, Any] = {"n": len(suite), "labels": suite.label_counts(),
                           "balance": n1 / len(known) if known else math.nan,
                           "length_auroc": math.nan, "bow_prompt": math.nan,
                           "bow_prompt_reply": math.nan, "bow_form": math.nan,
                           "confounded": None}
    if not known or len({it.label for it in known}) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["length_auroc"] = suite.length_auroc()
    has_reply = any(it.response for it in known)
    if views is None:
        views = ("prompt", "form") + (("prompt+reply",) if has_reply else ())
    for view in views:
        out["bow_" + view.replace("+", "_")] = bow_auroc(suite, view, seed=seed)
    if not math.isnan(out["bow_prompt"]):
        out["confounded"] = out["bow_prompt"] > CONFOUNDED_BOW
    return out
