"""Speed work on the recorder must not move a stored number: every recorded array equals a
reference captured before that work (tiny seeded models, every family and option on, projection on).

Regenerate only when a change is meant to change the numbers (and say so in the commit)::

    HF_HUB_OFFLINE=1 PYTHONPATH=src python tests/test_recorder_reference.py

The comparison is to a tight tolerance (1e-5 of each array's largest value; 1e-4 relative for the
log-det llmcheck score), not exact: another CPU model or BLAS build rounds float32 kernels
differently even under the same torch version and CPU capability, while a change to what is
recorded moves the numbers far more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROMPTS, tiny_model

from kvstate.representations import RepresentationSettings, capture_representations

REF = Path(__file__).parent / "reference" / "recorder_tiny.safetensors"
ARCHS = ("llama", "gemma3")
#: defaults (Taylor-2 among the phis, sweep on) plus every issue-16 option; max_dim small so the
#: seeded projection runs on the wide names
SETTINGS = RepresentationSettings(max_dim=48, decays=(0.9, 0.99), compress=(4, 3), deltas=True)
PROMPTS_REF = PROMPTS + [{"messages": [{"role": "user", "content": "Say hi"}], "response": "Hi! How can I help?"}]


def _platform() -> str:
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}"


def record(arch: str) -> dict[str, np.ndarray]:
    """Every recorded array of PROMPTS_REF (batches of 3, so one batch is padded), keyed ``name``."""
    torch.manual_seed(0)
    cap = capture_representations(tiny_model(arch), PROMPTS_REF, SETTINGS, reads=["prompt_end", "end"], batch_size=3,
                                  progress=False)
    return {n: np.stack([r[n] for r in cap.rows]) for n in sorted(cap.rows[0])}


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_arrays_equal_the_reference(arch):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(REF), "np") as fh:
        made_on = fh.metadata()["platform"]
    ref = {k.split("::", 1)[1]: v for k, v in load_file(str(REF)).items() if k.startswith(arch + "::")}
    got = record(arch)
    assert sorted(got) == sorted(ref)
    for name in ref:
        # not bitwise even under the same torch build and CPU capability: another CPU model (seen:
        # AMD EPYC vs Intel Xeon) moves float32 results by an ulp; a real change moves them far more
        rtol = 1e-4 if "llmcheck" in name else 1e-5  # a log-det score: ~3e-5 across BLAS builds
        atol = max(1e-6, 1e-5 * float(np.abs(ref[name]).max()))  # of the array's largest value
        np.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=atol,
                                   err_msg=f"{name} (reference made on {made_on}, here {_platform()})")


def _write() -> None:
    from safetensors.numpy import save_file

    from kvstate._io import atomic_write

    arrays = {f"{arch}::{n}": np.ascontiguousarray(a) for arch in ARCHS for n, a in record(arch).items()}
    REF.parent.mkdir(exist_ok=True)
    atomic_write(REF, lambda tmp: save_file(arrays, str(tmp), metadata={"platform": _platform()}))
    print(f"wrote {len(arrays)} arrays to {REF} ({_platform()})")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    _write()
