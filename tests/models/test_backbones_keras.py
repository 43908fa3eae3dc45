"""The ImageNet backbones compute what keras.applications computes, with the same weights.

For every architecture: the Keras 3 reference model (JAX backend, ``weights=None``, seeded
random weights and random BatchNorm statistics), built once with its top; its headless
model is the same layers up to the top (tests/models/keras_reference.py: keras_headless).
Each is written as a legacy HDF5 weight file, as the published files are laid out (Keras
3's writer for the model with its top, Keras 2's ``:0`` weight names for the headless
one), imported with ``load_pretrained``, and both run on the same random input: outputs
equal to 1e-4 of the output scale; parameter counts equal Keras' ``count_params()``.
Small inputs (each model's smallest, or 32 px) and one compiled program per side keep
these to seconds per model.
"""

import jax
import numpy as np
import pytest
from keras_reference import (
    KERAS_CASES,
    assert_close,
    keras,
    keras_apply,
    keras_headless,
    keras_model,
    random_input,
    run_compiled,
    write_keras_h5,
)

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
def test_matches_keras_with_and_without_top(name, tmp_path):
    app, size = KERAS_CASES[name]
    top = keras_model(app, size, include_top=True)
    headless = keras_headless(top, pooling="avg")
    top_file = write_keras_h5(top, tmp_path / f"{name}.h5")
    headless_file = write_keras_h5(headless, tmp_path / f"{name}_notop.h5", keras2_names=True)
    ours_top, top_vars = models.load_pretrained(name, top_file, include_top=True, image_size=size)
    ours, variables = models.load_pretrained(name, headless_file, include_top=False, pooling="avg", image_size=size)
    assert count_parameters(top_vars) == top.count_params()
    assert count_parameters(variables) == headless.count_params()

    x = random_input(size) * 60.0 + 120.0  # pixel-like values: EfficientNet normalises inside
    both = keras().Model(top.input, [top.output, headless.output])
    expected_logits, expected = keras_apply(both, x)
    if name in COUNT_ONLY_TOP:
        actual = run_compiled(lambda v, x: ours.apply(v, x, train=False), variables, x)
    else:
        logits, actual = run_compiled(
            lambda t, v, x: (ours_top.apply(t, x, train=False), ours.apply(v, x, train=False)), top_vars, variables, x
        )
        assert logits.shape == expected_logits.shape == (2, 1000)
        assert_close(logits, expected_logits, what=f"{name} include_top=True")
    assert actual.shape == expected.shape == (2, expected.shape[-1])
    assert_close(actual, expected, what=f"{name} include_top=False")


@pytest.fixture(scope="module")
def mobilenet_v2(tmp_path_factory):
    """(Keras MobileNetV2 at 32 px with its top, its headless feature-map model, that
    model's weight file)."""
    top = keras_model("MobileNetV2", 32, include_top=True)
    headless = keras_headless(top)
    return top, headless, write_keras_h5(headless, tmp_path_factory.mktemp("mobilenet_v2") / "m.h5")


def test_headless_feature_map_and_grad_cam_stage(mobilenet_v2):
    """Without pooling the output is the last feature map, which is the last ``feature_names``
    perturbation (Grad-CAM's default layer)."""
    _, reference, path = mobilenet_v2
    module, variables = models.load_pretrained("mobilenet_v2", path, include_top=False)
    x = random_input(32)
    out, state = run_compiled(lambda v, x: module.apply(v, x, train=False, mutable=["perturbations"]), variables, x)
    assert_close(out, keras_apply(reference, x), what="feature map")
    assert out.shape == (2, 1, 1, 1280)
    assert tuple(state["perturbations"]) == module.feature_names
    assert state["perturbations"][module.feature_names[-1]].shape == out.shape


def test_frozen_batchnorm_uses_inference_statistics(mobilenet_v2):
    """``freeze_batchnorm``: train=True gives the inference output and no statistic changes."""
    top, _, path = mobilenet_v2
    reference = keras_headless(top, pooling="avg")
    x = random_input(32)
    frozen, variables = models.load_pretrained(
        "mobilenet_v2", path, include_top=False, pooling="avg", freeze_batchnorm=True
    )
    out, updates = run_compiled(lambda v, x: frozen.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    assert_close(out, keras_apply(reference, x), what="frozen train-mode output")
    same = jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(a, b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(same))
    unfrozen = models.create("mobilenet_v2", num_classes=1000, include_top=False, pooling="avg")
    _, moved = run_compiled(lambda v, x: unfrozen.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
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
