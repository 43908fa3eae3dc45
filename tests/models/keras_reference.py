"""Reference models for the ImageNet backbones: keras.applications (Keras 3, JAX backend,
no TensorFlow) and torchvision, with seeded random weights, written out as the weight
files users bring (Keras legacy HDF5 in Keras 3's and Keras 2's naming; torchvision
state dicts). Test-only: keras and torchvision are ``dev`` dependencies.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import numpy as np  # noqa: E402


def keras():
    import keras as _keras

    assert _keras.backend.backend() == "jax", "set KERAS_BACKEND=jax before keras is imported"
    return _keras


def keras_model(app: str, size: int, *, include_top: bool, pooling=None, seed: int = 0, **kwargs):
    """``keras.applications.<app>`` with seeded random weights, logits top, and random
    BatchNorm statistics / scales (so a wrongly mapped statistic shows in the outputs)."""
    k = keras()
    k.utils.set_random_seed(seed)
    top = {"classifier_activation": None} if include_top else {}
    model = getattr(k.applications, app)(
        weights=None, include_top=include_top, input_shape=(size, size, 3), pooling=pooling, **top, **kwargs
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, k.layers.Normalization):  # EfficientNet's: ImageNet-like statistics
            mean, var, count = (np.asarray(w.numpy()) for w in layer.weights)
            layer.set_weights([mean + [0.485, 0.456, 0.406], var * [0.05, 0.05, 0.05], count])
            layer.finalize_state()  # what call() uses is set here (as after adapt / loading)
        if isinstance(layer, k.layers.BatchNormalization):
            new = []
            for w in layer.weights:
                n = w.path.rsplit("/", 1)[-1]
                shape = tuple(w.shape)
                if n == "moving_variance":
                    new.append(rng.uniform(0.5, 1.5, shape))
                elif n == "gamma":
                    new.append(rng.uniform(0.5, 1.5, shape))
                else:
                    new.append(rng.normal(0.0, 0.1, shape))
            layer.set_weights([np.asarray(v, np.float32) for v in new])
    return model


def keras_apply(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


def write_keras_h5(model, path, *, keras2_names: bool = False) -> str:
    """The legacy HDF5 weight layout of the published files: root attribute ``layer_names``,
    a group per layer with attribute ``weight_names``. Keras 3's own legacy writer names
    weights ``layer/var``; ``keras2_names`` writes them as Keras 2 did (``layer/var:0``)."""
    if not keras2_names:
        from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

        with h5py.File(path, "w") as f:
            save_weights_to_hdf5_group(f, model)
        return str(path)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            g = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{w.path.rsplit('/', 1)[-1]}:0".encode("utf8") for w in weights]
            g.attrs["weight_names"] = names
            for n, w in zip(names, weights):
                g.create_dataset(n.decode("utf8"), data=np.asarray(w.numpy()))
    return str(path)


def random_input(size: int, seed: int = 1, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (batch, size, size, 3)).astype(np.float32)


def assert_close(actual, expected, rel: float = 1e-4, what: str = ""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    err = float(np.max(np.abs(actual - expected)))
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
