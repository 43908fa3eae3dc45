"""The test environment itself: what every other test relies on."""

import sys


def test_four_forced_cpu_devices():
    import jax

    assert jax.device_count() == 4, "tests/conftest.py must force 4 CPU devices"
    assert {d.platform for d in jax.devices()} == {"cpu"}


def test_tensorflow_is_not_a_dependency():
    import cxrjax  # noqa: F401

    assert "tensorflow" not in sys.modules
