"""bench.json -> summary.md + PNG plots (called by run.py; `python benchmarks/report.py` re-renders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MB = 1024 * 1024
LABEL = {
    "plain": "plain forward (sdpa) — floor",
    "kvstate_capture": "kvstate: KVCapture + StateRecorder on ids",
    "kvstate_run": "kvstate: extract.run on pre-tokenised items",
    "kvstate_extract": "kvstate.extract (text, tokenises)",
    "hidden_states": "output_hidden_states=True",
    "tl_run_with_cache": "TransformerLens run_with_cache (k/v hooks)",
    "plain_eager": "plain forward of TL's eager copy",
    "nnsight_trace": "nnsight trace, save k_proj/v_proj",
}


def fmt_s(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def capture_section(cap: dict, lines: list, goals: list, out: Path) -> None:
    lines += ["## 1. Capture time", "",
              "Median wall time of interleaved rounds after a warm-up; ratio = median over rounds of "
              "(method / plain forward in the same round). CPU-time ratios in bench.json (`ratio_cpu`). "
              "Synthetic token ids of exact length; fp32; 2 threads. kvstate: all layers, phi identity. "
              "TransformerLens: `names_filter` = the same layers' `attn.hook_rot_k` + `attn.hook_v` "
              "(post-RoPE keys, as kvstate uses); nnsight: `k_proj`/`v_proj` outputs (pre-RoPE).", ""]
    cfgs = cap.get("configs", [])
    if not cfgs:
        lines += [f"_not run: {cap.get('error', 'no configs')}_", ""]
        return
    methods = list(cfgs[0]["methods"])
    head = "| method | " + " | ".join(f"{c['model']} B={c['batch']} T={c['tokens']}" for c in cfgs) + " |"
    lines += [head, "|---|" + "---|" * len(cfgs)]
    for m in methods:
        cells = []
        for c in cfgs:
            r = c["methods"].get(m)
            cells.append("—" if r is None else f"**{r['ratio_wall']:.2f}×** ({fmt_s(r['wall_median_s'])})")
        lines.append(f"| {LABEL.get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "Same runs, ratio of the fastest run of each method to the fastest plain forward (min is the "
              "estimator least sensitive to other processes; `hidden_states` does no extra work and shows the noise floor):", "",
              head, "|---|" + "---|" * len(cfgs)]
    for m in methods:
        cells = []
        for c in cfgs:
            r, p = c["methods"].get(m), c["methods"]["plain"]
            cells.append("—" if r is None else f"{min(r['wall_s']) / min(p['wall_s']):.2f}× ({fmt_s(min(r['wall_s']))})")
        lines.append(f"| {LABEL.get(m, m)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Rounds per config: " + ", ".join(f"{c['model']} B={c['batch']} T={c['tokens']}: {c['rounds']}" for c in cfgs)
                 + ". kvstate.extract token counts after its own tokenisation: "
                 + ", ".join(f"T={c['tokens']}: {sorted(set(c.get('extract_tokens') or []))}" for c in cfgs) + ".")
    for s in cap.get("skipped", []):
        lines.append(f"- skipped {s['model']} B={s['batch']} T={s['tokens']}: {s['why']}")
    lines.append("")
    # goals
    worst = max(cfgs, key=lambda c: c["methods"]["kvstate_capture"]["ratio_wall"])
    wr = worst["methods"]["kvstate_capture"]["ratio_wall"]
    def mr(c, m):
        return min(c["methods"][m]["wall_s"]) / min(c["methods"]["plain"]["wall_s"])
    per = ", ".join(f"{c['model'].split('-')[0]} {c['batch']}×{c['tokens']}: median {c['methods']['kvstate_capture']['ratio_wall']:.3f}"
                    f" / min {mr(c, 'kvstate_capture'):.3f} / cpu {c['methods']['kvstate_capture']['ratio_cpu']:.3f}"
                    f" (noise control hidden_states: {c['methods']['hidden_states']['ratio_wall']:.3f})" for c in cfgs)
    goals.append(("kvstate capture ≤ 1.05× plain forward (low-level path)", verdict(wr <= 1.05),
                  f"worst {wr:.3f}× ({worst['model']} B={worst['batch']} T={worst['tokens']}); {per}"))
    ex = max(c["methods"]["kvstate_extract"]["ratio_wall"] for c in cfgs)
    goals.append(("kvstate.extract (incl. tokenisation) ≤ 1.05× plain (informative)", verdict(ex <= 1.05), f"worst {ex:.3f}×"))
    sp = [(c, c["methods"]["tl_run_with_cache"]["wall_median_s"] / c["methods"]["kvstate_capture"]["wall_median_s"]) for c in cfgs
          if "tl_run_with_cache" in c["methods"]]
    if sp:
        lo = min(sp, key=lambda x: x[1])
        goals.append(("≥ 2× faster than TransformerLens run_with_cache", verdict(lo[1] >= 2.0),
                      f"min speed-up {lo[1]:.2f}× ({lo[0]['model']} B={lo[0]['batch']} T={lo[0]['tokens']}); "
                      + ", ".join(f"{c['batch']}×{c['tokens']} {c['model'].split('-')[0]}: {x:.2f}×" for c, x in sp)))
    # plot
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ys = [c["methods"][m]["ratio_wall"] for c in cfgs]
        ax.bar([j + i * width for j in range(len(cfgs))], ys, width, label=LABEL.get(m, m))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.05, color="r", lw=0.8, ls="--", label="goal 1.05×")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cfgs))])
    ax.set_xticklabels([f"{c['model']}\nB={c['batch']} T={c['tokens']}" for c in cfgs], fontsize=8)
    ax.set_ylabel("time / plain forward (median of rounds)")
    ax.set_title("Capture time relative to a plain forward")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "capture_time.png", dpi=110)
    plt.close(fig)
    lines += ["![capture time](capture_time.png)", ""]


def memory_section(mem: dict, lines: list, goals: list, out: Path) -> None:
    lines += ["## 2. Peak extra memory vs length (smollm2-135m, batch 1)", "",
              "Fresh subprocess per cell: load model (+ peer wrapper), warm up on 16 tokens, reset the kernel's "
              "peak-RSS counter (`/proc/self/clear_refs` ← 5), run once, read `VmHWM` − RSS before the run. "
              "Every child runs with `MALLOC_MMAP_THRESHOLD_=1048576`, so freed large blocks return to the OS and RSS "
              "tracks live tensors rather than glibc's heap retention. "
              "Includes the forward's own activations and logits (B×T×vocab floats: 1.6 GB at 8192 tokens), "
              "so the capture's own cost is the difference to the plain forward. `output` = bytes of what the "
              "method returns/keeps (states, cache, hidden states, saved tensors).", ""]
    runs = [r for r in mem.get("runs", []) if "peak_extra" in r]
    if not runs:
        lines += [f"_not run: {mem.get('error', '')}_", ""]
        return
    lengths = mem["lengths"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    cell = {(r["method"], r["tokens"]): r for r in runs}
    lines += ["| method | " + " | ".join(f"{T} tok: peak extra / output" for T in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for m in methods:
        cs = []
        for T in lengths:
            r = cell.get((m, T))
            cs.append("—" if r is None else f"{r['peak_extra'] / MB:.0f} MB / {r['output_bytes'] / MB:.2f} MB")
        lines.append(f"| {LABEL.get(m, m)} | " + " | ".join(cs) + " |")
    lines.append("")
    # capture overhead over the plain forward
    lines += ["Capture overhead = peak extra − plain forward's peak extra at the same length:", "",
              "| method | " + " | ".join(f"{T}" for T in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for m in methods:
        if m == "plain":
            continue
        cs = []
        for T in lengths:
            r, p = cell.get((m, T)), cell.get(("plain", T))
            cs.append("—" if r is None or p is None else f"{(r['peak_extra'] - p['peak_extra']) / MB:+.0f} MB")
        lines.append(f"| {LABEL.get(m, m)} | " + " | ".join(cs) + " |")
    for s in mem.get("skipped", []):
        lines.append(f"\n- skipped at {s['tokens']} tokens: {', '.join(s.get('methods', []))} — {s['why']}")
    for r in mem.get("runs", []):
        if "error" in r:
            lines.append(f"- {r['method']} at {r['tokens']} tokens failed: {r['error']}")
    lines.append("")
    # goals
    k = {T: cell[("kvstate_capture", T)] for T in lengths if ("kvstate_capture", T) in cell}
    p = {T: cell[("plain", T)] for T in lengths if ("plain", T) in cell}
    Ts = sorted(set(k) & set(p))
    if len(Ts) >= 2:
        o_lo = (k[Ts[0]]["peak_extra"] - p[Ts[0]]["peak_extra"]) / MB
        o_hi = (k[Ts[-1]]["peak_extra"] - p[Ts[-1]]["peak_extra"]) / MB
        outs = {k[T]["output_bytes"] for T in Ts}
        flat = (o_hi - o_lo) <= 64 and len(outs) == 1
        goals.append((f"capture memory flat {Ts[0]}→{Ts[-1]} tokens", verdict(flat),
                      f"kvstate overhead over plain forward {o_lo:+.0f} MB → {o_hi:+.0f} MB (criterion: grows ≤ 64 MB); "
                      f"kept state {sorted(outs)[0] / MB:.2f} MB at every length; absolute peak extra "
                      f"{k[Ts[0]]['peak_extra'] / MB:.0f} → {k[Ts[-1]]['peak_extra'] / MB:.0f} MB, of which the plain "
                      f"forward itself {p[Ts[0]]['peak_extra'] / MB:.0f} → {p[Ts[-1]]['peak_extra'] / MB:.0f} MB"))
    tl = {T: cell[("tl_run_with_cache", T)] for T in lengths if ("tl_run_with_cache", T) in cell}
    both = sorted(set(tl) & set(k))
    if both:
        ratios = {T: tl[T]["peak_extra"] / max(k[T]["peak_extra"], 1) for T in both}
        ok = all(r >= 5 for r in ratios.values())
        goals.append(("≥ 5× less peak extra memory than TransformerLens run_with_cache", verdict(ok),
                      ", ".join(f"{T} tok: TL {tl[T]['peak_extra'] / MB:.0f} MB vs kvstate {k[T]['peak_extra'] / MB:.0f} MB "
                                f"= {ratios[T]:.1f}×" for T in both)))
    # plot
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in methods:
        xs = [T for T in lengths if (m, T) in cell]
        axes[0].plot(xs, [cell[(m, T)]["peak_extra"] / MB for T in xs], "o-", label=LABEL.get(m, m))
        axes[1].plot(xs, [max(cell[(m, T)]["output_bytes"], 1) / MB for T in xs], "o-", label=LABEL.get(m, m))
    for ax, t in zip(axes, ("peak extra RSS during the call (MB)", "kept output (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens (batch 1, smollm2-135m)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    lines += ["![memory vs length](memory.png)", ""]


def monitor_section(mon: dict, lines: list, goals: list, out: Path) -> None:
    lines += ["## 3. Monitor overhead (smollm2-135m, greedy, 64 new tokens, MonitorSpec kv-elu-S/n)", ""]
    if "methods" not in mon:
        lines += [f"_not run: {mon.get('error', '')}_", ""]
        return
    lines += [f"Prompt {mon['prompt_tokens']} tokens; `min_new_tokens=64` so every run generates 64 tokens. "
              "Per-token = whole generate call / 64 (includes prefill and the monitor's final extra forward). "
              "Detector: mahalanobis fitted on 300 random vectors of the spec's feature dimension; "
              "study default `max_dim=2048`: wider features are projected by kvstate's seeded JL matrix, dense Gaussian "
              "(`projection=\"gaussian\"`, the study default) or very sparse (`projection=\"sparse\"`).", "",
              "| variant | layers | projection | feature dim | per token | ratio to plain generate | one-off setup |",
              "|---|---|---|---|---|---|---|"]
    for k, r in mon["methods"].items():
        lines.append(f"| {k} | {r.get('layers', '—')} | {r.get('projection', '—') if r.get('feature_dim') else '—'} | "
                     f"{r.get('feature_dim') or '—'} | {r['per_token_ms']:.1f} ms | "
                     f"**{r['ratio_wall']:.2f}×** | {fmt_s(r['setup_s']) if 'setup_s' in r else '—'} |")
    lines.append("")
    for k, b in mon.get("breakdown", {}).items():
        lines.append(f"- {k}: one 64-token generate {b['total_s']:.2f} s, of which state update (`Monitor._listen`) "
                     f"{b['listen_s']:.2f} s ({b['listen_s'] / b['total_s']:.0%}), `Monitor.features` {b['features_s']:.2f} s "
                     f"({b['features_s'] / b['total_s']:.0%}), detector `decision_function` {b['detector_only_s']:.2f} s "
                     f"({b['detector_only_s'] / b['total_s']:.0%})")
    lines.append("")
    s = mon["methods"].get("monitor_state_only_all", {})
    for key, proj in (("monitor_mahalanobis_all", "gaussian"), ("monitor_mahalanobis_all_sparse", "sparse")):
        r = mon["methods"].get(key)
        if not r:
            continue
        v = verdict(r["ratio_wall"] <= 1.03) if r["ratio_wall"] >= 0.97 else "INVALID (monitor faster than plain: noise; see notes)"
        goals.append((f"monitor ≤ 1.03× plain generation per token (all layers, elu, mahalanobis, {proj} projection)", v,
                      f"{r['ratio_wall']:.2f}× ({r['per_token_ms']:.1f} vs {mon['methods']['plain_generate']['per_token_ms']:.1f} ms/token); "
                      f"state update alone {s.get('ratio_wall', float('nan')):.2f}×"))


def size_section(sz: dict, lines: list, out: Path) -> None:
    lines += ["## 4. Representation size and detector cost", ""]
    if "sizes" not in sz:
        lines += [f"_not run: {sz.get('error', '')}_", ""]
        return
    models = sz["sizes"]
    lines += ["Bytes per prompt, float32.", "",
              "| representation | " + " | ".join(f"{m['model']} (L={m['layers']}, Hkv={m['kv_heads']}, d={m['head_dim']}, "
                                                 f"d_model={m['d_model']})" for m in models) + " |",
              "|---|" + "---|" * len(models)]
    for i, row in enumerate(models[0]["rows"]):
        cells = []
        for m in models:
            b = m["rows"][i]["bytes"]
            cells.append(f"{b / 1024:,.1f} KiB" if b < MB else f"{b / MB:,.1f} MiB")
        name = row["representation"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Check: kvstate.extract(layers='upper3') on smollm2 kept {sz['kv_upper3_measured_bytes']:,} bytes of S+z per prompt "
              f"(formula: {[r['bytes'] for r in models[0]['rows'] if r['representation'] == 'kv-state S+z (upper3)'][0]:,}).", ""]
    dets = sz["detectors"]
    dims = sorted({d["dim"] for d in dets})
    names = list(dict.fromkeys(d["detector"] for d in dets))
    cell = {(d["detector"], d["dim"]): d for d in dets}
    lines += [f"Detector fit / score time vs dimensionality (n_train = n_score = {sz['n_train']}, synthetic Gaussian):", "",
              "| detector | " + " | ".join(str(d) for d in dims) + " |", "|---|" + "---|" * len(dims)]
    for n in names:
        cs = []
        for d in dims:
            c = cell.get((n, d))
            cs.append("—" if c is None else ("skipped" if "skipped" in c else f"{fmt_s(c['fit_s'])} / {c['score_ms_per_item']:.2f} ms"))
        lines.append(f"| {n} (fit / score per item) | " + " | ".join(cs) + " |")
    for c in dets:
        if "skipped" in c:
            lines.append(f"- {c['detector']} at {c['dim']}: skipped — {c['skipped']}")
    lines.append("")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for n in names:
        xs = [d for d in dims if (n, d) in cell and "fit_s" in cell[(n, d)]]
        axes[0].plot(xs, [cell[(n, d)]["fit_s"] for d in xs], "o-", label=n)
        axes[1].plot(xs, [cell[(n, d)]["score_ms_per_item"] for d in xs], "o-", label=n)
    for ax, t in zip(axes, ("fit time (s), n=300", "score time per item (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("feature dimension")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "detectors.png", dpi=110)
    plt.close(fig)
    lines += ["![detector cost](detectors.png)", ""]


def profile_section(prof: dict, lines: list) -> None:
    lines += ["## 5. Where kvstate's capture time goes (smollm2-135m, torch.profiler + timing the recorder)", ""]
    if not prof or "error" in prof:
        lines += [f"_not run: {prof.get('error', '') if prof else ''}_", ""]
        return
    ab = prof.get("_ab_1x128")
    if ab:
        lines += ["Dedicated A/B at 1×128 tokens (many short interleaved rounds; `hidden_states` does no extra work, "
                  "so its distance from 1.00 is the noise floor):", "",
                  "| method | median ratio (wall) | median ratio (CPU) | min ratio | median |", "|---|---|---|---|---|"]
        for n, r in ab.items():
            lines.append(f"| {LABEL.get(n, n)} | {r['ratio_wall']:.3f}× | {r['ratio_cpu']:.3f}× | "
                         f"{min(r['wall_s']) / min(ab['plain']['wall_s']):.3f}× | {fmt_s(r['wall_median_s'])} |")
        lines.append("")
    for key, p in prof.items():
        if key.startswith("_"):
            continue
        lines += [f"**{key}**: capture {fmt_s(p['capture_wall_median_s'])} vs plain {fmt_s(p['plain_wall_median_s'])}; "
                  f"time inside `StateRecorder.__call__` (parallel_state einsums + `.cpu()`) "
                  f"{fmt_s(p['recorder_median_s'])} = **{p['recorder_share']:.1%}** of the capture forward"
                  + (f"; the same `parallel_state` on random K,V of this shape outside the model takes "
                     f"{p['parallel_state_isolated_min_s'] * 1e3:.2f} ms (min) / {p['parallel_state_isolated_median_s'] * 1e3:.2f} ms "
                     f"(median) per layer, i.e. ≈{p['isolated_share_estimate']:.1%} of a plain forward for all layers"
                     if "parallel_state_isolated_min_s" in p else "") + ".", "",
                  "| op (self CPU) | share | ms | calls |", "|---|---|---|---|"]
        for o in p["top_ops"][:8]:
            lines.append(f"| `{o['op']}` | {o['share']:.1%} | {o['self_cpu_ms']:.1f} | {o['calls']} |")
        lines.append("")


def write_report(state: dict, out: Path) -> None:
    out = Path(out)
    lines = ["# kvstate benchmarks", ""]
    run = state.get("last_run", {})
    m = run.get("machine", {})
    lines += [f"Command: `{run.get('command', '?')}` (started {run.get('started', '?')}, {run.get('seconds', 0) / 60:.0f} min). "
              f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs, torch {m.get('torch')} with "
              f"{m.get('threads')} threads, transformers {m.get('transformers')}, TransformerLens {m.get('transformer_lens')}, "
              f"nnsight {m.get('nnsight')}, {m.get('dtype')}. Load average at start / end: "
              f"{', '.join(f'{x:.1f}' for x in run.get('loadavg_start', []))} / {', '.join(f'{x:.1f}' for x in run.get('loadavg_end', []))}.",
              ""]
    if len(state.get("runs", {})) > 1:
        lines += ["Runs merged into bench.json: " + "; ".join(f"`{r['command']}` ({', '.join(r.get('sections', []))}, started {k}, "
                                                          f"{r.get('seconds', 0) / 60:.0f} min)" for k, r in state["runs"].items()), ""]
    goals: list = []
    body: list = []
    if "capture" in state:
        capture_section(state["capture"], body, goals, out)
    if "memory" in state:
        memory_section(state["memory"], body, goals, out)
    if "monitor" in state:
        monitor_section(state["monitor"], body, goals, out)
    if "size" in state:
        size_section(state["size"], body, out)
    if "profile" in state:
        profile_section(state["profile"], body)
    lines += ["## Goals", "", "| goal | verdict | measured |", "|---|---|---|"]
    lines += [f"| {g} | **{v}** | {d} |" for g, v, d in goals]
    notes = out / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    lines += [""] + body
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    write_report(json.loads((out / "bench.json").read_text()), out)
