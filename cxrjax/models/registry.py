"""The explicit model registry: every network of the studies, by name.

A plain dict literal (no import-time registration): reading this file tells you every
model there is, its default input and what it reproduces. Small helpers (`_s0`, `_vgg`,
`_s4`, `_s4_es`) hold what a family's rows share; `_S0_HEADS` the options of S0's three
networks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cxrjax.models.densenet import DENSENET_BLOCKS, DenseNet
from cxrjax.models.efficientnet import EFFICIENTNETS, EfficientNet
from cxrjax.models.inception import InceptionV3
from cxrjax.models.lenet import LeNet5
from cxrjax.models.mobilenet import MobileNet, MobileNetV2
from cxrjax.models.resnet import ResNet50
from cxrjax.models.s0 import SimpleCNN
from cxrjax.models.s4 import S4CNN
from cxrjax.models.vgg import VGG, ImageNetVGG16
from cxrjax.models.xception import Xception


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one named model, and the input it was designed for.

    ``build(num_classes=..., channels=..., dtype=..., axis_name=..., **overrides)``
    returns the Flax module; ``image_size`` x ``image_size`` x ``channels`` is the
    study's input and ``num_classes`` its number of classes (informative: ``create``
    always takes the dataset's). ``study`` names the experiment (e.g. "S4-Exp5");
    ``notes`` says what the name implies outside the network (e.g. early stopping, a
    training option).
    """

    build: Callable[..., nn.Module]
    image_size: int
    channels: int
    description: str
    family: str
    study: str
    num_classes: int
    notes: str = ""


_S4_SIZE = 128  # S4 does not state its input size; see cxrjax/models/s4.py


# S0's networks by letter: (dense width, dropout after each block, dropout before the output)
_S0_HEADS = {"A": (128, 0.0, 0.5), "B": (64, 0.2, 0.3), "C": (128, 0.0, 0.5)}


def _s0(letter: str, description: str, notes: str) -> ModelSpec:
    """S0-<letter>: SimpleCNN with filters 32/64/128 and the letter's head (``_S0_HEADS``),
    150x150x3, 4 classes (D4)."""
    dense, block_dropout, head_dropout = _S0_HEADS[letter]
    return ModelSpec(
        build=functools.partial(
            SimpleCNN, filters=(32, 64, 128), dense=dense, block_dropout=block_dropout, head_dropout=head_dropout
        ),
        image_size=150,
        channels=3,
        family="s0",
        study=f"S0-{letter}",
        num_classes=4,
        description=description,
        notes=notes,
    )


def _vgg(batchnorm: bool, *, description: str, notes: str) -> ModelSpec:
    """S3's VGG16 (torchvision layout and init), 224x224x1, 3 classes (DP)."""
    return ModelSpec(
        build=functools.partial(VGG, batchnorm=batchnorm, head="classifier", init_style="torchvision"),
        image_size=224,
        channels=1,
        family="vgg",
        study="S3-VGG16",
        num_classes=3,
        description=description,
        notes=notes,
    )


def _s4(exp: int, layout: str, batchnorm: str, dropout: float, description: str, notes: str = "") -> ModelSpec:
    """S4 Exp<exp>: S4CNN, 128x128x3, 4 classes (D4); description prefixed with "S4 Exp<exp>: "."""
    return ModelSpec(
        build=functools.partial(S4CNN, layout=layout, batchnorm=batchnorm, dropout=dropout),
        image_size=_S4_SIZE,
        channels=3,
        family="s4",
        study=f"S4-Exp{exp}",
        num_classes=4,
        description=f"S4 Exp{exp}: {description}",
        notes=notes,
    )


def _s4_es(exp: int, layout: str, batchnorm: str, dropout: float, notes: str) -> ModelSpec:
    """S4 Exp<exp>: the network of Exp<exp - 1>, which the study trained with early stopping
    (a training option here, as ``notes`` say)."""
    return _s4(exp, layout, batchnorm, dropout, f"Exp{exp - 1}'s network (+ early stopping)", notes)


MODELS: dict[str, ModelSpec] = {
    # letter, description, notes
    "s0_a": _s0(
        "A",
        "S0-A simple CNN: 3x[conv3x3 32/64/128, ReLU, maxpool], dense 128, dropout 0.5",
        "filters not stated by S0-A; S0-C's 32/64/128 used, so identical to s0_c",
    ),
    "s0_b": _s0(
        "B",
        "S0-B: S0-A + dropout 0.2 after each block, dense 64, dropout 0.3",
        "early stopping on validation loss (patience 3) is a training option",
    ),
    "s0_c": _s0(
        "C",
        "S0-C: conv 32/64/128, dense 128, dropout 0.5",
        "S0-E = create('s0_c', num_classes=2, head_dropout=0.0) + early stopping on val accuracy",
    ),
    "lenet5": ModelSpec(
        build=LeNet5,
        image_size=32,
        channels=1,
        family="lenet",
        study="S3-LeNet5",
        num_classes=3,
        description="S3 LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, dense 120, 84, K",
    ),
    "vgg16": _vgg(
        False,
        description="S3 VGG16 from scratch: 13 conv, adaptive avgpool 7x7, 4096-4096 dropout 0.5",
        notes="S3's N(0, 0.05) initialisation: init_style='normal_0.05'",
    ),
    "vgg16_bn": _vgg(
        True,
        description="VGG16 with BatchNorm after every conv, He init (torchvision vgg16_bn)",
        notes="head='gap' for a global-average-pool head (small data)",
    ),
    # exp, layout, batchnorm, dropout, description (or, for the early-stopping rows, notes)
    "s4_exp1": _s4(1, "exp1", "none", 0.0, "128-64-32-32, k8/4/3/3 p2, ReLU+maxpool each, MLP head"),
    "s4_exp2": _s4(2, "exp2", "none", 0.0, "16-32-64-128, k10p0/k6p2/k3p2/k3p2, maxpool except first, MLP head"),
    "s4_exp3": _s4(3, "exp2", "first", 0.0, "Exp2 + BatchNorm on the first layer"),
    "s4_exp4": _s4(4, "exp2", "all", 0.0, "Exp2 + BatchNorm on every layer"),
    "s4_exp5": _s4_es(5, "exp2", "all", 0.0, "early stopping on validation accuracy is a training option"),
    "s4_exp6": _s4(6, "exp2", "none", 0.25, "Exp2 + Dropout 0.25 on every layer"),
    "s4_exp7": _s4_es(7, "exp2", "none", 0.25, "early stopping is a training option"),
    "s4_exp8": _s4(8, "exp2", "all", 0.25, "Exp6 + BatchNorm on every layer"),
    "s4_exp9": _s4_es(9, "exp2", "all", 0.25, "early stopping is a training option (the study's text is ambiguous)"),
}


def _imagenet(
    build: Callable[..., nn.Module], family: str, description: str, notes: str = "", image_size: int | None = None
) -> ModelSpec:
    """An ImageNet backbone as ``keras.applications`` builds it (3 channels, its Keras
    default size, the 1000-class top; ``include_top=False`` / ``pooling`` for features).
    Weights: ``cxrjax.models.load_pretrained`` (cxrjax/models/weights.py)."""
    cls = getattr(build, "func", build)
    return ModelSpec(
        build=build,
        image_size=image_size or cls.default_size,
        channels=3,
        family=family,
        study="ImageNet",
        num_classes=1000,
        description=description,
        notes=notes or f"Keras preprocess_input mode {cls.preprocessing!r}",
    )


# The ImageNet backbones (keras.applications layer by layer; cxrjax/models/keras_layers.py).
MODELS.update(
    {
        "mobilenet": _imagenet(MobileNet, "mobilenet", "MobileNet v1 (alpha 1.0), keras.applications.MobileNet"),
        "mobilenet_v2": _imagenet(
            MobileNetV2,
            "mobilenet",
            "MobileNetV2 (alpha 1.0), keras.applications.MobileNetV2",
            "Keras preprocess_input mode 'tf'; variant='torchvision' for torchvision's mobilenet_v2",
        ),
        "resnet50": _imagenet(
            ResNet50,
            "resnet",
            "ResNet50 (v1), keras.applications.ResNet50",
            "Keras preprocess_input mode 'caffe'; variant='torchvision' for torchvision's resnet50 (v1.5)",
        ),
        "vgg16_imagenet": _imagenet(
            ImageNetVGG16,
            "vgg_imagenet",
            "VGG16 for ImageNet weights (3 channels, 224), keras.applications.VGG16",
            "Keras preprocess_input mode 'caffe'; variant='torchvision' for torchvision's vgg16",
        ),
        **{
            name: _imagenet(
                functools.partial(DenseNet, blocks=blocks),
                "densenet",
                f"{name[:8].capitalize()}{name[8:]}, keras.applications.DenseNet{name[8:]}",
                f"Keras preprocess_input mode 'torch'; variant='torchvision' for torchvision's {name}",
            )
            for name, blocks in DENSENET_BLOCKS.items()
        },
        **{
            name: _imagenet(
                functools.partial(EfficientNet, width=width, depth=depth, dropout=dropout),
                "efficientnet",
                f"EfficientNet{name[-2:].upper()}, keras.applications.EfficientNet{name[-2:].upper()}",
                "preprocessing inside the model (pixels in [0, 255]); imagenet_rescaling: see efficientnet.py",
                image_size=size,
            )
            for name, (width, depth, size, dropout) in EFFICIENTNETS.items()
        },
        "inception_v3": _imagenet(
            InceptionV3,
            "inception",
            "InceptionV3, keras.applications.InceptionV3",
            "Keras preprocess_input mode 'tf'; variant='torchvision' for torchvision's inception_v3 (also 'tf')",
        ),
        "xception": _imagenet(Xception, "xception", "Xception, keras.applications.Xception"),
    }
)


def same_network_as(name: str) -> str:
    """The first registered name that builds the same network as ``name`` (the same module
    class with the same constructor options): ``s0_c`` -> ``s0_a``, ``s4_exp5`` ->
    ``s4_exp4`` (its early stopping is a training option); a name with no twin is itself.
    Two runs whose configs differ only in such names train the same network on the same
    settings, so experiments train them once (``experiments.cross_validate``)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models (cxrjax/models/registry.py): {sorted(MODELS)}")
    key = _network_key(MODELS[name])
    return next(other for other, spec in MODELS.items() if _network_key(spec) == key)


def _network_key(spec: ModelSpec) -> tuple:
    build = spec.build
    if isinstance(build, functools.partial):
        return (build.func, tuple(build.args), tuple(sorted(build.keywords.items())))
    return (build, (), ())


def create(
    name: str,
    *,
    num_classes: int,
    channels: int | None = None,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model ``name``; ``channels=None`` means the preset's default.

    ``overrides`` replace constructor options of the preset (e.g. ``dropout=0.0``,
    ``head="gap"``, ``init_style="normal_0.05"``). ``dtype`` is the computation dtype;
    parameters stay float32 and logits are float32.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models (cxrjax/models/registry.py): {sorted(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    spec = MODELS[name]
    channels = spec.channels if channels is None else channels
    builder = spec.build
    cls = builder.func if isinstance(builder, functools.partial) else builder
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"model {name!r} ({cls.__name__}) has no option(s) {unknown}; valid options: {sorted(fields)}")
    return builder(num_classes=num_classes, channels=channels, dtype=dtype, axis_name=axis_name, **overrides)
