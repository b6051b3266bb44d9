# ruff: noqa: E402  (ray is imported, or the module skipped, before kvstate)
"""Ray extraction: same Store and numbers as the local engine, resumable, survives a dead worker."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'kvstate[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is optional: pip install 'kvstate[ray]'")

from conftest import byte_tokenizer, tiny_model

from kvstate.data.schema import Item
from kvstate.evaluate import evaluate_detector
from kvstate.models import (
    load_model,
    model_name,
)
from kvstate.representations import RepresentationSettings
from kvstate.store import (
    Store,
    StudyLayout,
    store_settings,
)
from kvstate.study import StudyConfig, capture_suite
from kvstate.study.ray import run_ray_extraction

CFG = StudyConfig(chunk=4, batch_size=2, layers="upper3")
REP = "kv-elu-S/n-hn@end"


def _items(n: int = 16) -> list[Item]:
    words = ["why", "sky", "blue", "cats", "read", "news"]
    return [Item(f"i{i}", f"g{i // 2}", [{"role": "user", "content": f"Q{i}: " + " ".join(words[: 1 + i % 6])}],
                 ("Sure. " * (1 + i % 3)) if i % 4 else None, i % 2, "test", "train" if i < 12 else "test")
            for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny llama, its settings and the local engine's store of all items."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    lm = load_model(folder)
    from kvstate.capture import check_layers

    settings = RepresentationSettings(layers=tuple(check_layers(lm, CFG.layers)), phis=("identity", "elu"))
    out = tmp_path_factory.mktemp("local")
    data = capture_suite(lm, _items(), StudyLayout(out), CFG, settings, "suite")
    index, arrays = data.index, data.arrays
    return folder, lm, settings, index, arrays


def _load(root, keys):
    return Store(root).load(keys=keys)


def _check_store(root, n: int) -> None:
    idx = Store(root).index()
    assert len(idx) == n and idx["item_key"].is_unique


def test_store_settings_match_the_local_engine(setup):
    folder, lm, settings, _, _ = setup
    assert model_name(folder) == lm.name
    assert store_settings(lm.name, lm.dtype, settings)["representations"]["layers"] == settings.layers


def test_same_arrays_and_evaluation_as_local(cluster, setup, tmp_path):
    folder, lm, settings, index, arrays = setup
    root = tmp_path / "ray"
    res = run_ray_extraction(folder, _items(), root, settings, num_workers=2, batch_size=CFG.batch_size,
                             chunk=CFG.chunk)
    assert (res.items, res.computed, res.already_stored, res.chunks) == (16, 16, 0, 4)
    keys = list(index["item_key"])
    got_index, got = _load(root, keys)
    cols = ["item_key", "id", "label", "group", "split", "n_tokens", "dims"]
    assert got_index[cols].equals(index[cols])
    assert set(got) == set(arrays)
    for name in arrays:
        np.testing.assert_array_equal(got[name], arrays[name], err_msg=name)
    from kvstate.detect import get_detector

    y, groups = index["label"].to_numpy(), index["group"].to_numpy()
    a = evaluate_detector(arrays[REP], y, groups, get_detector("logistic"), n_splits=3, seed=0, n_boot=50)
    b = evaluate_detector(got[REP], y, groups, get_detector("logistic"), n_splits=3, seed=0, n_boot=50)
    assert a.metrics == b.metrics and a.ci == b.ci
    again = run_ray_extraction(folder, _items(), root, settings)  # resume: nothing left, Ray not needed
    assert (again.computed, again.already_stored) == (0, 16)
    _check_store(root, 16)


@pytest.mark.slow
def test_resumes_a_store_the_local_engine_started(cluster, setup, tmp_path):
    folder, lm, settings, index, arrays = setup
    capture_suite(lm, _items()[:6], StudyLayout(tmp_path), CFG, settings, "suite")
    root = tmp_path / "store" / lm.name / "suite"
    res = run_ray_extraction(folder, _items(), root, settings, num_workers=2, batch_size=CFG.batch_size,
                             chunk=CFG.chunk)
    assert (res.already_stored, res.computed) == (6, 10)
    _check_store(root, 16)
    _, got = _load(root, list(index["item_key"]))
    for name in arrays:  # other chunks, other padding: equal up to float rounding
        np.testing.assert_allclose(got[name], arrays[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_worker_killed_mid_run(cluster, setup, tmp_path):
    folder, lm, settings, index, arrays = setup
    marker = tmp_path / "crashed"
    root = tmp_path / "ray"
    res = run_ray_extraction(folder, _items(), root, settings, num_workers=2, batch_size=CFG.batch_size,
                             chunk=CFG.chunk, crash_marker=str(marker))
    assert marker.exists(), "the fault was not injected"
    assert (res.computed, res.chunks) == (16, 4)
    _check_store(root, 16)
    _, got = _load(root, list(index["item_key"]))
    for name in arrays:
        np.testing.assert_array_equal(got[name], arrays[name], err_msg=name)


def test_bad_arguments(setup, tmp_path):
    folder, _, settings, _, _ = setup
    with pytest.raises(ValueError, match=">= 1"):
        run_ray_extraction(folder, _items(2), tmp_path / "s", settings, num_workers=0)
    with pytest.raises(ValueError, match="dtype"):
        run_ray_extraction(folder, _items(2), tmp_path / "s", settings, load_kwargs={"dtype": "bfloat16"})


def test_resolve_settings_from_config(setup):
    folder, lm, settings, _, _ = setup
    from kvstate.study.ray import num_layers, resolve_settings

    assert num_layers(folder) == lm.num_layers == 2
    assert resolve_settings(folder, {"phis": ["identity", "elu"]}, layers="upper3") == settings
    assert resolve_settings(folder).layers == (0, 1)
