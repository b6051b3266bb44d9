"""Store: the resumable, content-addressed store of per-item representations (``core``), the
layout of a study's output folder (``layout``) and what one captured chunk of items is (``chunks``)."""

from .chunks import capture_chunk, item_record
from .core import FORMAT, SHARD_FORMAT, Store, StoreCorruptError, StoreMismatchError, item_key, settings_hash
from .layout import STORE_VERSION, StudyLayout, item_content, safe_name, store_settings, suite_label

__all__ = ["FORMAT", "SHARD_FORMAT", "STORE_VERSION", "Store", "StoreCorruptError", "StoreMismatchError", "StudyLayout", "capture_chunk",
           "item_content", "item_record", "item_key", "safe_name", "settings_hash", "store_settings", "suite_label"]
