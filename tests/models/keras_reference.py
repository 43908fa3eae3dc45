"""Reference models for the ImageNet backbones: keras.applications (Keras 3, JAX backend,
no TensorFlow; benchmarks/keras_reference.py, shared with the parity report) and
torchvision, with seeded random weights, written out as the weight files users bring
(Keras legacy HDF5 in Keras 3's and Keras 2's naming; torchvision state dicts).
Test-only: keras and torchvision are ``dev`` dependencies.
"""

from __future__ import annotations

import numpy as np

from benchmarks.keras_reference import (  # noqa: F401 - re-exported for the backbone tests
    KERAS_CASES,
    keras,
    keras_apply,
    keras_headless,
    keras_model,
    random_input,
    relative_difference,
    run_compiled,
    write_keras_h5,
)


def assert_close(actual, expected, rel: float = 1e-4, what: str = ""):
    assert np.shape(actual) == np.shape(expected), (what, np.shape(actual), np.shape(expected))
    err, scale = relative_difference(actual, expected)
    assert err <= rel * scale, f"{what}: max abs difference {err:.3g} > {rel} x output scale {scale:.3g}"


def import_torchvision():
    """``import torchvision``; where its compiled detection ops do not match the installed
    torch (torchvision 0.28 with torch 2.13 here: "operator torchvision::nms does not
    exist"), without registering those ops: the classification models are pure Python."""
    import sys
    import types

    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        import torchvision
    return torchvision


def torchvision_model(name: str, seed: int = 0, **kwargs):
    """torchvision ``name`` (eval mode) with seeded random weights and random BatchNorm
    running statistics; ``kwargs`` go to its constructor (e.g. ``init_weights``)."""
    import torch

    torchvision = import_torchvision()

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return model.eval()


def torch_apply(module, x_nhwc: np.ndarray) -> np.ndarray:
    """``module`` on NHWC numpy input; 4-D outputs come back NHWC."""
    import torch

    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y
