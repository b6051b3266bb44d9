"""Capture: the model's own attention calls, seen through transformers' ``AttentionInterface``.

``hook`` (the registered wrapper and :class:`KVCapture`), ``masks`` (one mask algebra), ``tokens``
(prompts -> ids and spans), ``layers`` (layer schemes), ``engine`` (batches and one forward pass
with recorders listening) and ``generate`` (the model's own replies).
"""

from .engine import Batch, Recorder, check_layers, encode_all, input_device, make_batch, run
from .hook import AttentionCall, KVCapture, UnsupportedModelError, check_supported, rotate, unrotate
from .layers import select_layers
from .tokens import Encoded, Prompt, as_prompt, encode

__all__ = ["AttentionCall", "Batch", "Encoded", "KVCapture", "Prompt", "Recorder", "UnsupportedModelError", "as_prompt",
           "check_layers", "check_supported", "encode", "encode_all", "input_device", "make_batch", "rotate", "run",
           "select_layers", "unrotate"]
