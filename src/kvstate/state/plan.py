"""Back-of-the-envelope plan for a capture run on a big model: state sizes, memory, FLOPs, time.

Before renting GPUs for a 70B model one wants to know how large the states are for each layer
scheme and feature map, whether weights + activations fit, and roughly how long n items take.
Everything here is arithmetic on the model's config (no weights are read); the formulas and
their assumptions are written out in ``docs/scale.md`` and repeated in the plan's ``assumptions``.

>>> p = plan("SmolLM2-135M", n_items=1000, mean_tokens=256)
>>> p["model"]["params"]
134515008
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..capture.layers import select_layers
from .phi import get_phi

BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "8bit": 1.0, "4bit": 0.5}
STATE_BYTES = 4  # states are reduced and stored in float32 whatever the model's dtype
DEFAULT_FLOPS = 100e12  # sustained FLOP/s: an A100 in bf16 (312 TFLOP/s peak) at ~32% MFU
_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
            "n_positions": "max_position_embeddings", "n_inner": "intermediate_size"}


def known_configs() -> dict[str, dict]:
    """The shipped table of well-known model configs (published config.json values)."""
    text = resources.files("kvstate.state").joinpath("known_configs.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def load_config(config: Mapping[str, Any] | str | Path) -> tuple[str, dict]:
    """(name, config dict) from a dict, a known name, a config.json or a model folder."""
    if isinstance(config, Mapping):
        return str(config.get("_name_or_path") or config.get("model_type") or "model"), dict(config)
    known = known_configs()
    lower = {k.lower(): k for k in known}
    if str(config).lower() in lower:
        name = lower[str(config).lower()]
        return name, dict(known[name])
    path = Path(config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"no config {str(config)!r}: give a config.json, a model folder or one of {', '.join(known)}")
    from .._io import read_json

    doc = read_json(path, "model config")
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a model config (a JSON object)")
    return path.parent.name, doc


def _shape(cfg: Mapping[str, Any]) -> dict:
    """The numbers the formulas need, with HF defaults filled in (head_dim, kv heads, window)."""
    c = {_ALIASES.get(k, k): v for k, v in cfg.items()}
    c = {**cfg, **c}  # aliases win only where the HF name is missing
    try:
        hidden, L, H = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["num_attention_heads"])
        vocab = int(c["vocab_size"])
    except KeyError as e:
        raise ValueError(f"config lacks {e.args[0]!r}; plan needs hidden_size, num_hidden_layers, "
                         "num_attention_heads and vocab_size") from None
    window = c.get("sliding_window") if c.get("use_sliding_window", True) else None
    return {
        "model_type": c.get("model_type", "?"), "hidden": hidden, "layers": L, "heads": H,
        "kv_heads": int(c.get("num_key_value_heads") or H), "head_dim": int(c.get("head_dim") or hidden // H),
        "vocab": vocab, "intermediate": int(c.get("intermediate_size") or 4 * hidden),
        "max_positions": c.get("max_position_embeddings"), "sliding_window": int(window) if window else None,
        "tied": bool(c.get("tie_word_embeddings", False)),
        "gated_mlp": c.get("model_type") != "gpt2",
        "qkv_bias": bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
    }


def count_params(s: Mapping[str, Any]) -> dict[str, int]:
    """Parameters of a Llama-style decoder: embeddings, attention, (gated) MLP, RMSNorms, LM head."""
    h, d, H, Hkv = s["hidden"], s["head_dim"], s["heads"], s["kv_heads"]
    attn = h * H * d + 2 * h * Hkv * d + H * d * h + ((H + 2 * Hkv) * d if s["qkv_bias"] else 0)
    mlp = (3 if s["gated_mlp"] else 2) * h * s["intermediate"]
    per_layer = attn + mlp + 2 * h
    embed = s["vocab"] * h
    head = 0 if s["tied"] else embed
    total = embed + s["layers"] * per_layer + h + head
    return {"total": total, "per_layer": per_layer, "embedding": embed, "lm_head": head,
            "matmul": total - embed + (embed if s["tied"] else 0)}


def _forward_flops(s: Mapping[str, Any], params: Mapping[str, int], tokens: float) -> dict[str, float]:
    """2 x matmul params x tokens, plus 4 x layers x tokens x attended tokens x (heads x head_dim)."""
    attended = min(tokens, s["sliding_window"]) if s["sliding_window"] else tokens
    linear = 2.0 * params["matmul"] * tokens
    attention = 4.0 * s["layers"] * tokens * attended * s["heads"] * s["head_dim"]
    return {"linear": linear, "attention": attention, "total": linear + attention}


def _state_rows(s: Mapping[str, Any], schemes: Sequence[str], phis: Sequence[str], tokens: float, reads: int,
                n_items: int) -> list[dict]:
    """Bytes and reduction FLOPs of the state per (layer scheme, phi)."""
    rows = []
    for scheme in schemes:
        n_layers = len(select_layers(scheme, s["layers"]))
        for name in phis:
            d_phi = get_phi(name).dim(s["head_dim"])
            per_head = d_phi * s["head_dim"] + d_phi  # S and z
            nbytes = reads * (n_layers * s["kv_heads"] * per_head + n_layers) * STATE_BYTES  # + n per layer
            flops = reads * 2.0 * n_layers * s["kv_heads"] * tokens * d_phi * s["head_dim"]
            rows.append({"scheme": scheme, "layers": n_layers, "phi": name, "d_phi": d_phi,
                         "bytes_per_prompt": nbytes, "store_bytes": nbytes * n_items, "state_flops_per_item": flops})
    return rows


def _memory(s: Mapping[str, Any], params: Mapping[str, int], dtype: str, tokens: float, batch: int) -> dict[str, float]:
    """Weights, and the per-batch peak of one layer's activations, KV, scores, logits, hidden states."""
    act = 4 if dtype == "float32" else 2  # quantized weights still compute in bf16
    bt = batch * tokens
    per_layer_act = bt * (2 * s["hidden"] + (s["heads"] + 2 * s["kv_heads"]) * s["head_dim"] + 3 * s["intermediate"]) * act
    attended = min(tokens, s["sliding_window"]) if s["sliding_window"] else tokens
    out = {
        "weights": params["total"] * BYTES_PER_PARAM[dtype],
        "kv_cache": 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * bt * act,
        "activations_one_layer": per_layer_act,
        "attention_scores_eager": batch * s["heads"] * tokens * attended * act,
        "logits_fp32": bt * s["vocab"] * 4,
        "hidden_states_all_layers": (s["layers"] + 1) * bt * s["hidden"] * act,
    }
    out["peak_extract"] = out["weights"] + out["activations_one_layer"] + out["attention_scores_eager"] + out["logits_fp32"]
    out["peak_capture_representations"] = out["peak_extract"] + out["hidden_states_all_layers"]
    return out


def plan(config: Mapping[str, Any] | str | Path, *, n_items: int, mean_tokens: float,
         layer_schemes: Sequence[str] = ("middle", "upper3", "all"),
         phis: Sequence[str] = ("identity", "elu", "random", "taylor"), dtype: str = "bfloat16",
         gpu_flops: float = DEFAULT_FLOPS, batch_size: int = 8, reads: int = 1) -> dict:
    """Sizes, memory, FLOPs and time of capturing ``n_items`` prompts of ``mean_tokens`` tokens.

    ``config``: a config dict, a config.json / model folder, or a name from :func:`known_configs`.
    ``gpu_flops`` is the *sustained* FLOP/s assumed for one device; ``reads`` the read points per item.
    """
    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"unknown dtype {dtype!r}. Available: {', '.join(BYTES_PER_PARAM)}")
    if n_items < 0 or mean_tokens <= 0 or gpu_flops <= 0 or batch_size < 1 or reads < 1:
        raise ValueError("n_items >= 0, mean_tokens > 0, gpu_flops > 0, batch_size >= 1 and reads >= 1 are required")
    name, cfg = load_config(config)
    s = _shape(cfg)
    params = count_params(s)
    fwd = _forward_flops(s, params, mean_tokens)
    states = _state_rows(s, layer_schemes, phis, mean_tokens, reads, n_items)
    for row in states:
        row["seconds_state"] = n_items * row["state_flops_per_item"] / gpu_flops
    compute = {"forward_flops_per_item": fwd, "forward_flops_total": fwd["total"] * n_items,
               "seconds_forward": fwd["total"] * n_items / gpu_flops}
    for scheme in layer_schemes:  # one forward pass feeds every phi of a scheme
        extra = sum(r["state_flops_per_item"] for r in states if r["scheme"] == scheme)
        compute[f"seconds_total[{scheme}]"] = (fwd["total"] + extra) * n_items / gpu_flops
    return {
        "model": {"name": name, **s, "params": params["total"], "params_matmul": params["matmul"]},
        "assumptions": {"n_items": n_items, "mean_tokens": mean_tokens, "dtype": dtype,
                        "bytes_per_param": BYTES_PER_PARAM[dtype], "state_bytes_per_float": STATE_BYTES,
                        "gpu_flops": gpu_flops, "batch_size": batch_size, "reads": reads,
                        "notes": ["FLOPs: 2 x matmul params x tokens + 4 x layers x tokens x attended x heads x head_dim "
                                  "(full T^2, no causal discount; uses mean_tokens^2, so E[T^2] > mean^2 is ignored)",
                                  "time = FLOPs / gpu_flops (sustained, not peak); loading and tokenisation excluded",
                                  "states stored in float32; S and z per KV head, plus the token count n per layer"]},
        "states": states, "memory": _memory(s, params, dtype, mean_tokens, batch_size), "compute": compute,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def _flops(n: float) -> str:
    for unit, f in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} FLOP"


def _time(sec: float) -> str:
    if sec < 1:
        return f"{sec * 1000:.0f} ms"
    return f"{sec:.1f} s" if sec < 120 else f"{sec / 60:.1f} min" if sec < 7200 else f"{sec / 3600:.1f} h"


def format_plan(p: Mapping[str, Any]) -> str:
    """The plan as markdown: model, state table, memory, compute, assumptions."""
    m, a, c, mem = p["model"], p["assumptions"], p["compute"], p["memory"]
    window = f", sliding window {m['sliding_window']}" if m["sliding_window"] else ""
    lines = [
        f"### {m['name']}: {m['params'] / 1e9:.2f} B params",
        "",
        f"{m['layers']} layers, hidden {m['hidden']}, {m['heads']} heads / {m['kv_heads']} KV heads x head_dim "
        f"{m['head_dim']}, vocab {m['vocab']}, MLP {m['intermediate']}, context {m['max_positions']}{window}. "
        f"Plan for {a['n_items']} items x {a['mean_tokens']} tokens, {a['dtype']} weights, batch {a['batch_size']}, "
        f"{a['reads']} read point(s), {a['gpu_flops'] / 1e12:.0f} TFLOP/s sustained.",
        "",
        "| scheme | layers | phi | d_phi | state / prompt | store (n items) | reduction FLOPs / item | reduction time |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in p["states"]:
        lines.append(f"| {r['scheme']} | {r['layers']} | {r['phi']} | {r['d_phi']} | {_size(r['bytes_per_prompt'])} | "
                     f"{_size(r['store_bytes'])} | {_flops(r['state_flops_per_item'])} | {_time(r['seconds_state'])} |")
    lines += ["", "| memory | bytes |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {_size(v)} |" for k, v in mem.items()]
    f = c["forward_flops_per_item"]
    lines += ["", "| compute | value |", "|---|---:|",
              f"| forward FLOPs / item (linear + attention) | {_flops(f['linear'])} + {_flops(f['attention'])} |",
              f"| forward FLOPs, all items | {_flops(c['forward_flops_total'])} |",
              f"| forward time, all items | {_time(c['seconds_forward'])} |"]
    lines += [f"| forward + every phi's reduction, {k[len('seconds_total['):-1]} | {_time(v)} |"
              for k, v in c.items() if k.startswith("seconds_total[")]
    lines += ["", *[f"- {n}" for n in a["notes"]]]
    return "\n".join(lines) + "\n"
