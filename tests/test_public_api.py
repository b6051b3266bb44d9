"""Every name in every package's __all__ exists (sklearn's test_import_all_consistency)."""

import importlib
import pkgutil

import pytest

import kvstate

PACKAGES = ["kvstate"] + sorted(m.name for m in pkgutil.iter_modules(kvstate.__path__, "kvstate.") if m.ispkg)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist(name):
    mod = importlib.import_module(name)
    assert hasattr(mod, "__all__") or name in ("kvstate.cli",), f"{name} has no __all__"
    for attr in getattr(mod, "__all__", []):
        assert hasattr(mod, attr), f"{name}.{attr}"
