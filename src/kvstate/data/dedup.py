"""Near-duplicate prompts across sources: exact n-gram Jaccard on normalised text.

J(a, b) = |A ∩ B| / (|A| + |B| − |A ∩ B|), with A, B the sets of character n-grams of the
normalised texts (lowercase, NFKC, punctuation → space, whitespace collapsed).

Why character 5-grams: harmful-request and instruction benchmarks are short (AdvBench prompts
average about 12 words). With word n-grams one edited word removes n of only ~10 shingles
(word 3-grams: J ≈ 0.54 after a single substitution), so the ≥ 0.8 rule would find only verbatim
copies, and word 1-grams ignore order. Character 5-grams (across word boundaries, so order counts)
give a prompt ~60-100 shingles: case, punctuation and spacing changes keep J = 1, one substituted
word keeps J ≈ 0.85-0.9 in a 25-word sentence but ≈ 0.75 in an 11-word prompt ("make a bomb" /
"make a cake" using household items: 0.74; 3-grams would give 0.83 and call that minimal pair a
duplicate), and prompts that merely share a template stay far below (≤ 0.2 measured). So at 0.8
the rule flags copies and near-verbatim copies, and only rarely a short contrast pair (on the real
sources one: "What is the process for butchering a human?" / "... a pig?", J = 0.80).

The intersections are one sparse product per pair of sources (binary CountVectorizer rows,
``X_a @ X_b.T``), in row blocks so that memory stays bounded; only pairs at or above the
threshold are kept, and only pairs from different sources.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

N_CHARS = 5
BLOCK = 2048
COLUMNS = ["source_a", "index_a", "source_b", "index_b", "jaccard"]


def normalise(text: str) -> str:
    """Lowercase, NFKC, punctuation (anything not a letter, digit or space) → space, one space."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


def _shingles(texts: list[str], n: int):
    """Binary CSR matrix (texts × distinct n-grams) over every text, and each row's set size."""
    from sklearn.feature_extraction.text import CountVectorizer

    norm = [normalise(t) for t in texts]
    # Texts shorter than n become one shingle (the whole text) so that they can still match.
    padded = [t if len(t) >= n else t.ljust(n, "\0") for t in norm]
    vec = CountVectorizer(analyzer="char", ngram_range=(n, n), lowercase=False, binary=True,
                          dtype=np.int32)
    x = vec.fit_transform(padded).tocsr()
    return x, np.asarray(x.sum(axis=1)).ravel()


def near_duplicates(sources: Mapping[str, Sequence[str]], threshold: float = 0.8,
                    n: int = N_CHARS) -> pd.DataFrame:
    """Pairs of texts from different sources whose character n-gram Jaccard is ≥ ``threshold``.

    Parameters
    ----------
    sources : mapping of str to sequence of str
        Source name → its texts (e.g. the user prompts of a suite, in item order).
    threshold : float, default 0.8
        Smallest Jaccard similarity reported, in (0, 1].
    n : int, default 5
        Length of the character shingles (see the module docstring for why characters).

    Returns
    -------
    pandas.DataFrame
        Columns ``source_a, index_a, source_b, index_b, jaccard``: one row per pair, ``source_a``
        before ``source_b`` in the order of ``sources``, indices into each source's sequence,
        sorted by source pair, then by descending Jaccard.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    names = list(sources)
    texts = [str(t) for name in names for t in sources[name]]
    if not texts or len(names) < 2:
        return pd.DataFrame(columns=COLUMNS)
    x, size = _shingles(texts, n)
    bounds = np.cumsum([0] + [len(sources[name]) for name in names])
    rows = []
    for a, b in combinations(range(len(names)), 2):
        xb = x[bounds[b]:bounds[b + 1]].T.tocsc()
        sb = size[bounds[b]:bounds[b + 1]]
        for start in range(bounds[a], bounds[a + 1], BLOCK):
            stop = min(start + BLOCK, bounds[a + 1])
            inter = (x[start:stop] @ xb).tocoo()
            sa = size[start:stop][inter.row]
            jac = inter.data / (sa + sb[inter.col] - inter.data)
            keep = jac >= threshold - 1e-12
            for i, j, v in zip(inter.row[keep], inter.col[keep], jac[keep]):
                rows.append((names[a], int(start + i - bounds[a]), names[b], int(j), float(v)))
    out = pd.DataFrame(rows, columns=COLUMNS)
    order = {name: k for k, name in enumerate(names)}
    out = out.assign(_a=out.source_a.map(order), _b=out.source_b.map(order))
    out = out.sort_values(["_a", "_b", "jaccard", "index_a", "index_b"], ascending=[True, True, False, True, True])
    return out.drop(columns=["_a", "_b"]).reset_index(drop=True)


def overlap_report(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per pair of sources: the number of near-duplicate pairs and of items involved on each side.

    Returns
    -------
    pandas.DataFrame
        Columns ``source_a, source_b, pairs, items_a, items_b, max_jaccard``, most pairs first.
    """
    cols = ["source_a", "source_b", "pairs", "items_a", "items_b", "max_jaccard"]
    if len(pairs) == 0:
        return pd.DataFrame(columns=cols)
    out = pairs.groupby(["source_a", "source_b"], sort=False).agg(
        pairs=("jaccard", "size"), items_a=("index_a", "nunique"), items_b=("index_b", "nunique"),
        max_jaccard=("jaccard", "max")).reset_index()
    return out.sort_values("pairs", ascending=False, kind="stable").reset_index(drop=True)[cols]


def duplicated_items(pairs: pd.DataFrame, of: str, against: Iterable[str]) -> list[int]:
    """Indices (sorted) of source ``of`` that near-duplicate any item of the sources ``against``.

    ``pairs`` is :func:`near_duplicates`' output; ``of`` may sit on either side of a pair. Use it to
    drop test items that duplicate a training item (``of`` = the test source, ``against`` = the
    training sources).
    """
    others = set(against) - {of}
    left = pairs.index_a[(pairs.source_a == of) & pairs.source_b.isin(others)]
    right = pairs.index_b[(pairs.source_b == of) & pairs.source_a.isin(others)]
    return sorted({int(i) for i in left} | {int(i) for i in right})
