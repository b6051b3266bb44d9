"""Every name in __all__ exists (sklearn's test_import_all_consistency)."""

import kvstate
import kvstate.data
import kvstate.detect


def test_all_names_exist():
    for mod in (kvstate, kvstate.data, kvstate.detect):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"
