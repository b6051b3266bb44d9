"""Recompute the study's monitor rows with the grouped hold-out (the first run used the suite split)."""
import json
from pathlib import Path

from kvstate.capture import check_layers
from kvstate.data import load_suite
from kvstate.models import load_model
from kvstate.report import write_report
from kvstate.representations import RepresentationSettings
from kvstate.store import Store, StudyLayout
from kvstate.study import StudyConfig, SuiteData, evaluate_monitor
from kvstate.study.generate import fit_context, replies

out = Path("runs/results/smollm2-135m")
res = json.loads((out / "results.json").read_text())
cfg = StudyConfig(**res["meta"]["config"])
lm = load_model("smollm2-135m")
settings = RepresentationSettings(layers=tuple(check_layers(lm, cfg.layers)), phis=tuple(cfg.phis), seed=cfg.seed)
for name in ["jailbreak", "sysprompt"]:
    suite = load_suite(name, limit=cfg.limit, seed=cfg.seed)
    if suite.generation:
        suite = suite.label_with(replies(lm, suite, StudyLayout(out), cfg), strict=True)
    items, _ = fit_context(lm, suite.items, cfg.max_tokens)
    store = Store(out / "store" / "smollm2-135m" / name)
    keys = [store.key(lm.name, it.id, {"messages": it.messages, "response": it.response}) for it in items]
    index, arrays = store.load(keys=keys)
    res["monitor"][f"smollm2-135m/{name}"] = evaluate_monitor(lm, SuiteData(name, index, arrays, items), settings, cfg)
    print(name, res["monitor"][f"smollm2-135m/{name}"], flush=True)
res["meta"]["notes"].append("monitor rows recomputed with a grouped, stratified hold-out (/tmp/remon.py logic = study.evaluate_monitor at commit b25aec7)")
write_report(res, out)
