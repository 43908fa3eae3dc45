"""keras.applications reference models for the ImageNet backbones (Keras 3, JAX backend, no
TensorFlow), with seeded random weights, written out as the weight files users bring.

One implementation for the parity report (``python -m benchmarks.backbones --parity``)
and the backbone tests (tests/models/keras_reference.py re-exports it). keras is only in
the ``dev`` extra: :func:`keras` raises :class:`KerasMissingError` without it, which the
benchmark prints as one ``error:`` line.

What makes these cheap on a CPU: the Keras models draw their random weights with numpy
(Keras' own initializers compile a jax.random program per weight shape), one build gives
the model with its top and its headless view (``keras_headless``), and both sides run as
one compiled program each (``run_compiled``) instead of op by op.
"""

from __future__ import annotations

import contextlib
import os
import re

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


@contextlib.contextmanager
def _numpy_initializers(seed: int):
    """Keras' random initializers draw from numpy's seeded generator (the same
    distributions) while a model is built.

    Keras draws each weight with jax.random, which compiles a program per weight shape:
    most of the time a reference model's build took. Which random values the weights get
    does not matter, only that they are seeded and shaped as Keras' initializers shape them.
    """
    from keras.src.backend import random as backend_random  # what keras.initializers call

    rng = np.random.default_rng(seed)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return rng.uniform(minval, maxval, shape).astype(dtype or "float32")

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return rng.normal(mean, stddev, shape).astype(dtype or "float32")

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        z = rng.normal(0.0, 1.0, shape)  # jax.random.truncated_normal's [-2, 2], redrawn
        while (outside := np.abs(z) > 2.0).any():
            z[outside] = rng.normal(0.0, 1.0, int(outside.sum()))
        return (z * stddev + mean).astype(dtype or "float32")

    replaced = {"uniform": uniform, "normal": normal, "truncated_normal": truncated_normal}
    saved = {name: getattr(backend_random, name) for name in replaced}
    for name, fn in replaced.items():
        setattr(backend_random, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(backend_random, name, fn)


def keras_model(app: str, size: int, *, include_top: bool, pooling=None, seed: int = 0, **kwargs):
    """``keras.applications.<app>`` with seeded random weights, logits top, and random
    BatchNorm statistics / scales (so a wrongly mapped statistic shows in the outputs)."""
    k = keras()
    k.utils.set_random_seed(seed)
    top = {"classifier_activation": None} if include_top else {}
    with _numpy_initializers(seed):
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


def keras_headless(model, pooling=None):
    """The headless (``include_top=False``) model of ``model``, a keras.applications model
    built with its top: the same layers and weights up to where the top begins (its last
    GlobalAveragePooling2D or Flatten), then ``pooling`` ("avg", "max" or None) as
    keras.applications pools a headless model."""
    k = keras()
    pools = (k.layers.GlobalAveragePooling2D, k.layers.Flatten)
    top = [layer for layer in model.layers if isinstance(layer, pools)][-1]
    x = top.input
    if pooling == "avg":
        x = k.layers.GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = k.layers.GlobalMaxPooling2D()(x)
    return k.Model(model.input, x)


def run_compiled(fn, *args):
    """``fn(*args)`` as one jitted program, compiled with XLA's backend optimisations off.

    A reference comparison runs each model once: op by op, every distinct operation
    compiles on its own; optimised, the compile costs more than the run. The arithmetic
    (and so what is compared) is the same.
    """
    import jax

    compiled = jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    return jax.tree_util.tree_map(np.asarray, compiled(*args))


def keras_apply(model, x: np.ndarray):
    """The inference output of a Keras model (a list for several outputs), compiled."""
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return run_compiled(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0], trainable, non_trainable, x)


def write_keras_h5(model, path, *, keras2_names: bool = False) -> str:
    """The legacy HDF5 weight layout of the published files: root attribute ``layer_names``,
    a group per layer with attribute ``weight_names``. Keras 3's own legacy writer names
    weights ``layer/var``; ``keras2_names`` writes them as Keras 2 did (``layer/var:0``),
    automatically named layers numbered as a later model of the session would be."""
    if not keras2_names:
        from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

        with h5py.File(path, "w") as f:
            save_weights_to_hdf5_group(f, model)
        return str(path)
    names = _keras2_layer_names(model)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [names[layer.name].encode("utf8") for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            name = names[layer.name]
            g = f.create_group(name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names_ = [f"{name}/{w.path.rsplit('/', 1)[-1]}:0".encode("utf8") for w in weights]
            g.attrs["weight_names"] = names_
            for n, w in zip(names_, weights):
                g.create_dataset(n.decode("utf8"), data=np.asarray(w.numpy()))
    return str(path)


def _keras2_layer_names(model) -> dict[str, str]:
    """Layer name -> its name in the Keras 2 file: layers named after their class
    (``conv2d``, ``conv2d_7``: numbered in creation order, per session) numbered from 1, as
    Keras 2 numbered them in a fresh session (the published InceptionV3 file: ``conv2d_1``
    is the model's ``conv2d``), so most names collide with another layer's (the importer
    pairs such layers by creation order); the others kept."""
    from keras.src.utils.naming import to_snake_case

    auto = {}
    for layer in model.layers:
        base = to_snake_case(type(layer).__name__)
        m = re.fullmatch(re.escape(base) + r"(?:_(\d+))?", layer.name)
        if m:
            auto[layer.name] = (base, int(m.group(1) or 0))
    names = {layer.name: layer.name for layer in model.layers}
    names.update({name: f"{base}_{k + 1}" for name, (base, k) in auto.items()})
    return names


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
