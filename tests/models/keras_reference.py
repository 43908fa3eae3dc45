"""Reference models for the ImageNet backbones: keras.applications (Keras 3, JAX backend,
no TensorFlow) and torchvision, with seeded random weights, written out as the weight
files users bring (Keras legacy HDF5 in Keras 3's and Keras 2's naming; torchvision
state dicts). Test-only: keras and torchvision are ``dev`` dependencies.

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


def keras():
    import keras as _keras

    assert _keras.backend.backend() == "jax", "set KERAS_BACKEND=jax before keras is imported"
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
