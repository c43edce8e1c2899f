"""Test harness: JAX on CPU with 8 simulated devices, so sharded code runs in every test session.

The flags must be set before JAX initialises its backend, hence at import time of this conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The tests run tiny programs for a few steps: compiling is most of their time. With XLA:CPU's unoptimised code
# generation Ola's tiny 3b train step compiled in 9.7 s instead of 16.6 and ran in 1.36 s instead of 0.78, and the
# Capybara recipe's smoke test took 54 s instead of 72 (side by side, 2 cores busy with other work).
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 simulated CPU devices, got {len(devs)}: set XLA_FLAGS before importing jax"
    return devs


# The files whose tests train whole recipes, run notebooks, compile for TPUs or start processes, longest first (their
# durations on a fresh clone, 2026-12-07): scheduled first, so that `pytest -n 2 --dist loadfile` does not end with one
# worker running a long file while the other waits.
LONG_FILES = ("test_notebooks.py", "test_recipes.py", "test_compile.py", "test_experiment.py", "test_training_procs.py",
              "test_dual_audio.py", "test_training.py", "test_demo.py", "test_self_kd.py", "test_native_resolution.py",
              "test_omni.py", "test_training_grain.py", "test_llm.py", "test_hf_convert.py", "test_pipeline.py",
              "test_beats.py", "test_mixing.py", "test_tiny_beats.py", "test_connector_bow.py", "test_connector_ctc.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: each file's tests keep their order
