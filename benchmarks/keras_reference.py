"""keras.applications reference models for the ImageNet backbones (Keras 3, JAX backend, no
TensorFlow), with seeded random weights, written out as the weight files users bring.

One implementation for the parity report (``python -m benchmarks.backbones --parity``)
and the backbone tests (tests/models/keras_reference.py re-exports it). keras is only in
the ``dev`` extra: :func:`keras` raises :class:`KerasMissingError` without it, which the
benchmark prints as one ``error:`` line.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

# cxrjax backbone -> (keras.applications function, the smallest input the Keras model
# accepts: InceptionV3 75, Xception 71, else 32): the comparison size.
KERAS_CASES = {
    "mobilenet": ("MobileNet", 32),
    "mobilenet_v2": ("MobileNetV2", 32),
    "resnet50": ("ResNet50", 32),
    "vgg16_imagenet": ("VGG16", 32),
    "densenet121": ("DenseNet121", 32),
    "densenet201": ("DenseNet201", 32),
    "inception_v3": ("InceptionV3", 75),
    "xception": ("Xception", 71),
    "efficientnet_b0": ("EfficientNetB0", 32),
    "efficientnet_b7": ("EfficientNetB7", 32),
}


class KerasMissingError(ImportError):
    """keras (the ``dev`` extra) is not installed."""


def keras():
    """The keras module on the JAX backend; :class:`KerasMissingError` without keras."""
    try:
        import keras as _keras
    except ImportError as err:
        raise KerasMissingError(
            "keras is not installed: the Keras reference needs the dev extra (pip install -e '.[dev]')"
        ) from err
    if _keras.backend.backend() != "jax":
        raise KerasMissingError(
            f"keras runs on the {_keras.backend.backend()!r} backend; set KERAS_BACKEND=jax before keras is imported"
        )
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


def pixel_input(size: int, seed: int = 1, batch: int = 2) -> np.ndarray:
    """Pixel-like values (N(120, 60)): EfficientNet normalises inside the model."""
    return random_input(size, seed, batch) * 60.0 + 120.0


def relative_difference(actual, expected) -> tuple[float, float]:
    """(max abs difference, output scale = max abs of ``expected``, at least 1e-6)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"output shapes differ: {actual.shape} vs Keras' {expected.shape}")
    return float(np.max(np.abs(actual - expected))), max(float(np.max(np.abs(expected))), 1e-6)
