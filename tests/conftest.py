"""Test-wide setup: every test sees 4 CPU devices so multi-device code is exercised.

XLA reads XLA_FLAGS once, when JAX initialises its backend, so this must run before
any test module imports jax.
"""

import os

_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never touch the network or a user's ~/tensorflow_datasets.
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-cxrjax-test-data-dir")
os.environ.setdefault("MPLBACKEND", "Agg")
