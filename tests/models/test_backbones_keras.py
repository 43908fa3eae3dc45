"""The ImageNet backbones compute what keras.applications computes, with the same weights.

For every architecture: the Keras 3 reference model (JAX backend, ``weights=None``, seeded
random weights and random BatchNorm statistics) is written as a legacy HDF5 weight file,
as the published files are laid out (Keras 3's writer for the model with its top, Keras
2's ``:0`` weight names for the headless one), imported with ``load_pretrained``, and both
run on the same random input: outputs equal to 1e-4 of the output scale; parameter counts
equal Keras' ``count_params()``. Small inputs (each model's smallest, or 32 px) keep these
to seconds per model.
"""

import jax
import numpy as np
import pytest
from keras_reference import KERAS_CASES, assert_close, keras_apply, keras_model, random_input, write_keras_h5

from cxrjax import models
from cxrjax.models.weights import count_parameters

# name -> (keras.applications function, input size): benchmarks/keras_reference.py.
BACKBONES = sorted(n for n, s in models.MODELS.items() if s.study == "ImageNet")
# The largest two: with their top only the parameter counts are compared (the top is the
# same global pool + Dense as their family's smaller member, compared in full); headless
# outputs are compared in full.
COUNT_ONLY_TOP = {"efficientnet_b7", "densenet201"}


def test_every_backbone_has_a_keras_case():
    assert sorted(KERAS_CASES) == BACKBONES


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("include_top", [True, False], ids=["top", "headless"])
def test_matches_keras(name, include_top, tmp_path):
    app, size = KERAS_CASES[name]
    pooling = None if include_top else "avg"
    reference = keras_model(app, size, include_top=include_top, pooling=pooling)
    path = write_keras_h5(reference, tmp_path / f"{name}.h5", keras2_names=not include_top)
    module, variables = models.load_pretrained(name, path, include_top=include_top, pooling=pooling, image_size=size)
    assert count_parameters(variables) == reference.count_params()
    if include_top and name in COUNT_ONLY_TOP:
        return
    x = random_input(size) * 60.0 + 120.0  # pixel-like values: EfficientNet normalises inside
    expected = keras_apply(reference, x)
    actual = module.apply(variables, x, train=False)
    assert actual.shape == expected.shape == ((2, 1000) if include_top else (2, expected.shape[-1]))
    assert_close(actual, expected, what=f"{name} include_top={include_top}")


def test_headless_feature_map_and_grad_cam_stage(tmp_path):
    """Without pooling the output is the last feature map, which is the last ``feature_names``
    perturbation (Grad-CAM's default layer)."""
    reference = keras_model("MobileNetV2", 32, include_top=False)
    path = write_keras_h5(reference, tmp_path / "m.h5")
    module, variables = models.load_pretrained("mobilenet_v2", path, include_top=False)
    x = random_input(32)
    out, state = module.apply(variables, x, train=False, mutable=["perturbations"])
    assert_close(out, keras_apply(reference, x), what="feature map")
    assert out.shape == (2, 1, 1, 1280)
    assert tuple(state["perturbations"]) == module.feature_names
    assert state["perturbations"][module.feature_names[-1]].shape == out.shape


def test_frozen_batchnorm_uses_inference_statistics(tmp_path):
    """``freeze_batchnorm``: train=True gives the inference output and no statistic changes."""
    reference = keras_model("MobileNetV2", 32, include_top=False, pooling="avg")
    path = write_keras_h5(reference, tmp_path / "m.h5")
    x = random_input(32)
    frozen, variables = models.load_pretrained(
        "mobilenet_v2", path, include_top=False, pooling="avg", freeze_batchnorm=True
    )
    out, updates = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    assert_close(out, keras_apply(reference, x), what="frozen train-mode output")
    same = jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(a, b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(same))
    unfrozen = models.create("mobilenet_v2", num_classes=1000, include_top=False, pooling="avg")
    _, moved = unfrozen.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(moved["batch_stats"]["bn_Conv1"]["mean"], variables["batch_stats"]["bn_Conv1"]["mean"])


@pytest.mark.parametrize("name", BACKBONES)
def test_bfloat16_compute_and_grayscale_input(name):
    """``dtype`` as the other models (float32 logits from bfloat16 compute); random init
    with any channel count (a grayscale input for training from scratch). Abstract only."""
    size = KERAS_CASES[name][1]
    model = models.create(name, num_classes=3, channels=1, dtype=jax.numpy.bfloat16)
    x = jax.ShapeDtypeStruct((2, size, size, 1), jax.numpy.float32)

    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        return model.apply(variables, x, train=False), variables

    logits, variables = jax.eval_shape(run, x)
    assert logits.shape == (2, 3) and logits.dtype == jax.numpy.float32
    assert all(leaf.dtype == jax.numpy.float32 for leaf in jax.tree_util.tree_leaves(variables))
