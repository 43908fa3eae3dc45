"""Output shapes of every registered model, at several input sizes and both channel counts.

Shapes are checked abstractly (``jax.eval_shape``: tracing, no compute), so even VGG16 at
224x224 costs milliseconds. ``SHAPE_CASES`` must name every registered model: a model
added to the registry without a shape case fails ``test_every_registered_model_has_shape_cases``.
"""

import jax
import jax.numpy as jnp
import pytest

from cxrjax import models
from cxrjax.models import testing

# name -> input sizes to check besides the default; the first entry is the smallest valid
# size (hand-computed from the model's convolutions and poolings).
SHAPE_CASES = {
    "s0_a": [22, 64],  # 22 -c3-> 20 -p-> 10 -c3-> 8 -p-> 4 -c3-> 2 -p-> 1
    "s0_b": [22, 97],
    "s0_c": [22, 150],
    "lenet5": [16, 48],  # 16 -c5-> 12 -p-> 6 -c5-> 2 -p-> 1
    "vgg16": [32, 100],  # five poolings
    "vgg16_bn": [32, 64],
    "s4_exp1": [5, 64],  # 5 -k8p2-> 2 -p-> 1 -k4p2-> 2 -p-> 1 -k3p2-> 3 -p-> 1 -k3p2-> 3 -p-> 1
    "s4_exp2": [12, 224],  # 12 -k10-> 3 -k6p2-> 2 -p-> 1 -k3p2-> 3 -p-> 1 -k3p2-> 3 -p-> 1
    "s4_exp3": [12, 96],
    "s4_exp4": [12, 224],
    "s4_exp5": [12, 150],
    "s4_exp6": [12, 100],
    "s4_exp7": [12, 64],
    "s4_exp8": [12, 224],
    "s4_exp9": [12, 33],
    # ImageNet backbones: the smallest input keras.applications accepts
    "mobilenet": [32, 65],
    "mobilenet_v2": [32, 97],
    "resnet50": [32, 64],
    "vgg16_imagenet": [32, 48],
    "densenet121": [32, 40],
    "densenet201": [32, 33],
    "inception_v3": [75, 80],
    "xception": [71, 76],
    "efficientnet_b0": [32, 45],
    "efficientnet_b7": [32, 33],
}
# The first conv of each backbone (Keras' layer name), whose kernel sees the input channels.
FIRST_CONV = {
    "mobilenet": "conv1",
    "mobilenet_v2": "Conv1",
    "resnet50": "conv1_conv",
    "vgg16_imagenet": "block1_conv1",
    "densenet121": "conv1_conv",
    "densenet201": "conv1_conv",
    "inception_v3": "conv2d",
    "xception": "block1_conv1",
    "efficientnet_b0": "stem_conv",
    "efficientnet_b7": "stem_conv",
}


def test_every_registered_model_has_shape_cases():
    assert set(SHAPE_CASES) == set(models.MODELS), (
        "add the new model(s) to SHAPE_CASES in tests/models/test_models_shapes.py: "
        f"{sorted(set(models.MODELS) ^ set(SHAPE_CASES))}"
    )


def _abstract_forward(model, shape, train=True):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

    def run(x):
        variables = model.init(rngs, x, train=False)
        logits, perturbations = model.apply(variables, x, train=False, mutable=["perturbations"])
        train_logits = logits
        if train:
            train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
        return variables, logits, train_logits, perturbations

    return jax.eval_shape(run, x)


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_output_shapes(name):
    """Default size and channels in train and eval mode; the other channel count at the
    smallest valid size and at another size (eval)."""
    spec = models.MODELS[name]
    other = 4 - spec.channels  # 1 <-> 3
    smallest, another = SHAPE_CASES[name]
    assert models.create(name, num_classes=5).min_image_size() == smallest
    default = spec.image_size if spec.study != "ImageNet" else smallest  # B7's 600 px: slow to trace
    for size, channels, train in [
        (default, spec.channels, True),
        (smallest, other, False),
        (another, other, False),
    ]:
        model = models.create(name, num_classes=5, channels=channels)
        variables, logits, train_logits, perturbations = _abstract_forward(
            model, (2, size, size, channels), train=train
        )
        assert set(variables) <= {"params", "batch_stats"}, "init must not return perturbations"
        assert logits.shape == (2, 5) and logits.dtype == jnp.float32
        assert train_logits.shape == (2, 5) and train_logits.dtype == jnp.float32
        first_kernel = variables["params"][FIRST_CONV.get(name, "conv1")]["kernel"]
        assert first_kernel.shape[2] == channels
        feats = perturbations["perturbations"]
        assert set(feats) == set(model.feature_names)
        for f in feats.values():
            assert f.ndim == 4 and f.shape[0] == 2


@pytest.mark.parametrize("name", ["s0_a", "lenet5", "vgg16", "s4_exp1", "s4_exp4"])
def test_too_small_input_names_the_smallest_size(name):
    model = models.create(name, num_classes=3)
    smallest = SHAPE_CASES[name][0]
    with pytest.raises(ValueError, match=f"smallest valid input size is {smallest}x{smallest}"):
        _abstract_forward(model, (1, smallest - 1, smallest - 1, model.channels))


def test_wrong_channels_and_dtype_are_clear_errors():
    model = models.create("lenet5", num_classes=3)
    with pytest.raises(ValueError, match="channels=3"):
        _abstract_forward(model, (1, 32, 32, 3))
    with pytest.raises(TypeError, match="float"):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, train=False), jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.uint8)
        )
    with pytest.raises(KeyError, match="registered models"):
        models.create("resnet18", num_classes=3)
    with pytest.raises(TypeError, match="no option"):
        models.create("s4_exp4", num_classes=3, dropuot=0.1)


def test_default_channels_and_feature_names():
    assert models.create("lenet5", num_classes=3).channels == 1
    assert models.create("s4_exp4", num_classes=3).channels == 3
    assert models.create("vgg16", num_classes=3).feature_names[-1] == "feat13"
    assert models.create("s4_exp1", num_classes=3).feature_names == ("feat1", "feat2", "feat3", "feat4")


def test_concrete_init_and_apply():
    """One real (compiled) init + apply: values, not just shapes (tiny LeNet-5)."""
    model = testing.create_tiny("lenet5", num_classes=4)
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 1))
    key = jax.random.key(1, impl="rbg")  # RngBitGenerator: far cheaper to compile on CPU

    @jax.jit
    def run(x):
        variables = model.init({"params": key}, x, train=False)
        return variables, model.apply(variables, x, train=False)

    variables, logits = run(x)
    assert set(variables) == {"params"}
    assert logits.shape == (3, 4) and bool(jnp.all(jnp.isfinite(logits)))
    assert float(jnp.std(logits)) > 0
