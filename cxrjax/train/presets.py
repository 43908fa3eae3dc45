"""Named presets: the studies' from-scratch runs, on their datasets and on the phantoms.

``PRESETS[name]`` is a :class:`TrainConfig`; derive variants with ``.replace(...)``, or
on the command line ``python -m cxrjax.train --preset NAME [options]`` (explicit options
override the preset). Each preset is built by the function of the same name below,
whose docstring gives the command and the expected time.

Choices where the studies are silent or ambiguous (see ../../docs and SPEC.md):

- Batch sizes are the studies' batch PER DEVICE (``per_device_batch_size``, TrainConfig
  docstring): exact on one device; on n devices the global batch is n times larger.
- Model selection: with early stopping, the test evaluation uses the best checkpoint by
  the early-stopping monitor (the epoch early stopping considered best, min_delta
  included). Without early stopping, the studies trained a fixed number of epochs and
  evaluated the final model, so those presets set ``restore_best=False``.
- S3 stopped on validation loss but kept the checkpoint of the best validation
  *accuracy*; here one monitor (validation loss) drives both, so stopping and selection
  agree.
- S4 does not name its optimizer; Adam at lr 0.01 is used (the SPEC notes that the
  no-BatchNorm runs sitting at the majority class is what Adam or SGD at 0.01 gives).
  Its early-stopping patience is not stated: 3, as S3.
- S0 is Keras: Adam with Keras' epsilon 1e-7; its 80/20 split has no test set, so the
  S0 presets report validation metrics (``results["test"]`` is None).
- S0-E is COVID vs Normal only: its presets set ``classes=("COVID", "Normal")`` (the
  data layer's class subset: the other two classes are dropped from every split, COVID
  is label 0 and Normal label 1, and the model gets 2 outputs). The phantoms use D4's
  class names, so ``s0_e_phantoms`` is the same binary task.

Expected times: measured on this project's 2-core CPU development machine (shared, so
noisy) for the phantom presets; for the real datasets they are extrapolated from the
measured CPU throughput of the same network and are rough.
"""

from __future__ import annotations

import inspect
from typing import Callable

from cxrjax.train.config import TrainConfig

D4 = "covid19_radiography"
DP = "covid19_image_dataset"
PHANTOMS = "cxr_phantoms"


# ------------------------------------------------------------------------------------
# S3 (PyTorch Lightning) on DP: LeNet-5 and VGG16 from scratch.
# ------------------------------------------------------------------------------------
def _s3(model: str, **changes) -> TrainConfig:
    return TrainConfig(
        model=model,
        dataset=DP,
        dataset_options={"validation_fraction": 0.2},
        channels=1,
        normalization="half",  # mean 0.5 / std 0.5
        hflip=True,
        rotate_degrees=10.0,
        optimizer="adam",
        lr=1e-3,
        epochs=10,
        per_device_batch_size=25,
        monitor="val_loss",
        early_stopping_patience=3,
        early_stopping_min_delta=0.001,
        restore_best=True,
    ).replace(**changes)


def s3_lenet5() -> TrainConfig:
    """S3 LeNet-5 (32x32 grayscale) on DP: Adam 1e-3, batch 25, <= 10 epochs, early stopping
    on val loss (patience 3, min_delta 0.001), flips + 10 degree rotations, mean/std 0.5.

    python -m cxrjax.train --preset s3_lenet5 --manual-dir ~/Covid19-dataset --workdir runs/s3_lenet5
    Expected: under a minute on CPU (251 training images at 32x32). S3 reported 84.8% test.
    """
    return _s3("lenet5", image_size=32)


def s3_vgg16() -> TrainConfig:
    """S3 VGG16 (224x224 grayscale, N(0, 0.05) init, ~134 M params) on DP, S3's protocol.

    python -m cxrjax.train --preset s3_vgg16 --manual-dir ~/Covid19-dataset --workdir runs/s3_vgg16
    Expected: ~1-2 h on a 2-core CPU (~200 training images/epoch, ~30 GFLOPs each per
    step); a few minutes on one GPU. S3 reported 72.7% test.
    """
    return _s3("vgg16", image_size=224, model_options={"init_style": "normal_0.05"})


def s3_vgg16_bn() -> TrainConfig:
    """VGG16 with BatchNorm (He init) on DP with S3's protocol: the variant that trains.

    python -m cxrjax.train --preset s3_vgg16_bn --manual-dir ~/Covid19-dataset --workdir runs/s3_vgg16_bn
    Expected: as s3_vgg16.
    """
    return _s3("vgg16_bn", image_size=224)


# ------------------------------------------------------------------------------------
# S0 (Keras) on D4, 80/20 train/validation.
# ------------------------------------------------------------------------------------
def _s0(model: str, **changes) -> TrainConfig:
    return TrainConfig(
        model=model,
        dataset=D4,
        dataset_options={"validation_fraction": 0.2, "test_fraction": 0.0},
        image_size=150,
        channels=3,
        normalization="unit",
        optimizer="adam",
        lr=1e-3,
        adam_eps=1e-7,
        epochs=10,
        per_device_batch_size=32,
        restore_best=False,
    ).replace(**changes)


def s0_a() -> TrainConfig:
    """S0-A simple CNN (150x150x3, [0,1]) on D4 80/20: Adam, batch 32, 10 epochs, no early stopping.

    python -m cxrjax.train --preset s0_a --manual-dir ~/COVID-19_Radiography_Dataset --workdir runs/s0_a
    Expected: ~2-3 h on a 2-core CPU (16.9 k training images/epoch at 150 px); minutes on a GPU.
    """
    return _s0("s0_a")


def s0_b() -> TrainConfig:
    """S0-B: dropout 0.2 per block, dense 64, dropout 0.3; early stopping on val loss, patience 3.

    python -m cxrjax.train --preset s0_b --manual-dir ~/COVID-19_Radiography_Dataset --workdir runs/s0_b
    Expected: as s0_a, less if it stops early.
    """
    return _s0("s0_b", monitor="val_loss", early_stopping_patience=3, restore_best=True)


def s0_c() -> TrainConfig:
    """S0-C: filters 32/64/128 stated explicitly, dense 128 + dropout 0.5; 10 epochs.

    python -m cxrjax.train --preset s0_c --manual-dir ~/COVID-19_Radiography_Dataset --workdir runs/s0_c
    Expected: as s0_a.
    """
    return _s0("s0_c")


def s0_e() -> TrainConfig:
    """S0-E: COVID vs Normal only (2 classes), S0-C without dropout, early stopping on val
    accuracy (patience 3).

    classes=("COVID", "Normal"): Lung_Opacity and Viral Pneumonia are dropped from every
    split of the prepared 4-class data (the 80/20 split is stratified per class, so the
    kept classes keep their 80/20 split and share the prepared files with s0_a..s0_c);
    labels COVID=0, Normal=1; 2-way softmax.
    python -m cxrjax.train --preset s0_e --manual-dir ~/COVID-19_Radiography_Dataset --workdir runs/s0_e
    Expected: ~1.5-2 h on a 2-core CPU (~11 k training images/epoch at 150 px), less if it
    stops early. S0 reported accuracy 0.63 (COVID recall 0.23).
    """
    return _s0(
        "s0_c",
        classes=("COVID", "Normal"),
        model_options={"head_dropout": 0.0},
        monitor="val_accuracy",
        early_stopping_patience=3,
        restore_best=True,
    )


# ------------------------------------------------------------------------------------
# S4 (PyTorch) on D4, 70/20/10: the BatchNorm / Dropout / early-stopping ablation.
# ------------------------------------------------------------------------------------
_S4_EARLY_STOPPING = {"s4_exp5", "s4_exp7", "s4_exp9"}


def _s4(model: str, **changes) -> TrainConfig:
    early = model in _S4_EARLY_STOPPING
    return TrainConfig(
        model=model,
        dataset=D4,
        dataset_options={"validation_fraction": 0.2, "test_fraction": 0.1},
        channels=3,
        normalization="unit",
        optimizer="adam",
        lr=0.01,
        epochs=20,
        per_device_batch_size=32,
        monitor="val_accuracy",
        early_stopping_patience=3 if early else None,
        restore_best=early,
    ).replace(**changes)


def _s4_doc(exp: int, what: str) -> str:
    return (
        f"S4 Exp{exp}: {what}. D4 70/20/10, 128x128x3, Adam lr 0.01, batch 32, 20 epochs.\n\n"
        f"    python -m cxrjax.train --preset s4_exp{exp} --manual-dir ~/COVID-19_Radiography_Dataset "
        f"--workdir runs/s4_exp{exp}\n"
        "    Expected: ~3-5 h on a 2-core CPU (14.8 k training images/epoch at 128 px, 20 epochs);\n"
        "    minutes on a GPU.\n"
    )


def _make_s4(exp: int, what: str) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        return _s4(f"s4_exp{exp}")

    preset.__name__ = preset.__qualname__ = f"s4_exp{exp}"
    preset.__doc__ = _s4_doc(exp, what)
    return preset


_S4_WHAT = {
    1: "128-64-32-32 channels (reversed order), no BatchNorm; S4: 47.9% (majority class)",
    2: "16-32-64-128 channels, no BatchNorm; S4: 48.5%",
    3: "Exp2 + BatchNorm on the first layer; S4: 59.6%",
    4: "Exp2 + BatchNorm on every layer; S4: 83.75% (its best)",
    5: "Exp4 + early stopping on val accuracy (patience 3), best checkpoint restored; S4: 82.8%",
    6: "Exp2 + Dropout 0.25 on every layer; S4: 48.1%",
    7: "Exp6 + early stopping on val accuracy; S4: 48.1%",
    8: "Exp6 + BatchNorm on every layer; S4: 68.3%",
    9: "Exp8 + early stopping on val accuracy; S4: 78.2%",
}
S4_PRESETS = {f"s4_exp{k}": _make_s4(k, what) for k, what in _S4_WHAT.items()}


# ------------------------------------------------------------------------------------
# Transfer learning (cxrjax.models.transfer): S0-D, S1 and S2's ImageNet backbones.
# Every preset runs without weights (random init, said at the start and in results.json
# "weights"); add ``--pretrained FILE`` with the Keras / torchvision file you have.
# The studies fed their backbones [0,1] (S0, S1) or feature-wise normalised (S2) images,
# not Keras' preprocess_input: the presets do the same (preprocessing="none"); use
# ``--preprocessing auto --normalization unit`` for the mode the ImageNet weights expect.
# ------------------------------------------------------------------------------------
def s0_d() -> TrainConfig:
    """S0-D: MobileNetV2 (ImageNet weights), all but the last 50 Keras layers frozen, GAP,
    Dense 128 ReLU, Dropout 0.5, softmax; S0's protocol (150x150x3 in [0,1], D4 80/20, Adam,
    batch 32, 10 epochs).

    ``all_but_last:34``: Keras' last 50 MobileNetV2 layers hold its last 34 layers with
    weights (block_11_project onwards; cxrjax/models/transfer.py); frozen BatchNorm runs on
    its ImageNet statistics. The Dense width is not stated: 128, S0's. S0-D reported 74.1%
    validation accuracy after epoch 1.

        python -m cxrjax.train --preset s0_d --manual-dir ~/COVID-19_Radiography_Dataset \\
            --pretrained mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 --workdir runs/s0_d

    Expected time: not measured; MobileNetV2 at 150 px is ~0.3 GFLOPs per image, so an
    epoch of D4's ~17k training images is minutes on one GPU and an hour or more on CPU.
    """
    return _s0("mobilenet_v2", head="s0_d", freeze="all_but_last:34", preprocessing="none")


DC = "image_folder"  # S1's DC: class folders (see cxrjax.data, image_folder)
# S1's backbones: preset suffix -> model
S1_BACKBONES = {"densenet201": "densenet201", "efficientnetb7": "efficientnet_b7", "mobilenet": "mobilenet"}


def _s1(model: str, **changes) -> TrainConfig:
    return TrainConfig(
        model=model,
        dataset=DC,
        dataset_options={"validation_fraction": 0.2},
        image_size=224,
        channels=3,
        normalization="unit",
        preprocessing="none",  # S1: 224x224 RGB in [0,1]
        head="s1",
        freeze="backbone",
        rotate_degrees=10.0,
        zoom=(0.9, 1.1),
        optimizer="adam",
        lr=1e-4,
        adam_eps=1e-7,
        schedule="plateau",
        plateau_factor=0.5,
        plateau_min_lr=5e-5,
        epochs=16,
        per_device_batch_size=16,
        early_stopping_patience=3,
        monitor="val_loss",
    ).replace(**changes)


def _s1_doc(suffix: str, model: str) -> str:
    return f"""S1 {model} (ImageNet weights, frozen) + S1's head (AveragePooling2D 4x4, Flatten, Dense 64
    ReLU, Dropout 0.5, softmax) on DC (3 classes, class folders; 20% of train as validation):
    224x224 RGB in [0,1], light zoom (0.9-1.1) and rotation (10 degrees), Adam 1e-4 reduced on
    plateau to 5e-5 (factor 0.5), batch 16, up to 16 epochs, early stopping on validation loss
    (patience 3). S1 does not say whether its backbones were frozen; frozen, as the Keras
    transfer-learning code it follows. S1 tried MSE and label-smoothed cross-entropy: add
    ``--label-smoothing 0.1`` for the latter.

        python -m cxrjax.train --preset s1_{suffix} --manual-dir ~/DC --pretrained {model}_notop.h5 \\
            --workdir runs/s1_{suffix}

    Expected time: not measured; DC has a few hundred images, so minutes per epoch on CPU
    for mobilenet, much longer for densenet201 and efficientnet_b7 (~5 and ~2.5 GFLOPs
    per 224 px image forward)."""


def _make_s1(suffix: str, model: str) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        return _s1(model)

    preset.__name__ = preset.__qualname__ = f"s1_{suffix}"
    preset.__doc__ = _s1_doc(suffix, model)
    return preset


S1_PRESETS = {f"s1_{suffix}": _make_s1(suffix, model) for suffix, model in S1_BACKBONES.items()}

# S2's backbones: preset part -> (model, S2's test accuracy EC, FT)
S2_BACKBONES = {
    "densenet121": ("densenet121", 0.9597, 0.9736),
    "resnet50": ("resnet50", 0.8805, 0.8736),
    "vgg16": ("vgg16_imagenet", 0.9375, 0.3388),
    "inceptionv3": ("inception_v3", 0.8903, 0.9792),
    "xception": ("xception", 0.9153, 0.9875),
}


def _s2(model: str, mode: str, **changes) -> TrainConfig:
    return TrainConfig(
        model=model,
        dataset=D4,  # covid19_radiography reads D3's flat layout too
        dataset_options={"test_fraction": 0.2, "validation_fraction": 0.08},  # 80/20, 10% of train for validation
        image_size=224,
        channels=3,
        normalization="dataset",  # feature-wise centring and std normalisation
        preprocessing="none",
        head="s2",
        freeze="backbone" if mode == "ec" else "none",
        hflip=True,
        brightness=(0.8, 1.25),
        zoom=(1.0, 1.2),
        optimizer="sgd",
        lr=0.01,
        decay=1e-6,
        momentum=0.9,
        nesterov=True,
        epochs=20,
        per_device_batch_size=32,
        restore_best=False,
    ).replace(**changes)


def _s2_doc(part: str, model: str, mode: str, reported: float) -> str:
    what = "frozen backbone as feature extractor (EC)" if mode == "ec" else "whole network fine-tuned (FT)"
    return f"""S2 {model}, {what}: GAP, Dense 500 ReLU, Dense 200 ReLU, softmax (``--head
    s2_dropout`` adds S2's optional Dropout 0.5) on D3 (3 classes; 80/20 random split, 10%
    of train as validation), 224x224, feature-wise mean/std normalisation, horizontal flips,
    brightness 0.8-1.25, zoom 1-1.2; SGD lr 0.01, Keras decay 1e-6, Nesterov momentum 0.9,
    batch 32, 20 epochs, last epoch tested. S2 reported {reported:.2%} test accuracy.

        python -m cxrjax.train --preset s2_{part}_{mode} --manual-dir "~/COVID-19 Radiography Database" \\
            --pretrained {model}_notop.h5 --workdir runs/s2_{part}_{mode}

    Expected time: not measured; 2592 training images x 20 epochs at 224 px: minutes to an
    hour on one GPU, many hours on CPU (FT trains the backbone too)."""


def _make_s2(part: str, model: str, mode: str, reported: float) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        return _s2(model, mode)

    preset.__name__ = preset.__qualname__ = f"s2_{part}_{mode}"
    preset.__doc__ = _s2_doc(part, model, mode, reported)
    return preset


S2_PRESETS = {
    f"s2_{part}_{mode}": _make_s2(part, model, mode, reported)
    for part, (model, ec, ft) in S2_BACKBONES.items()
    for mode, reported in (("ec", ec), ("ft", ft))
}


# ------------------------------------------------------------------------------------
# The same models on the synthetic phantoms (no download; the defaults of the project).
# ------------------------------------------------------------------------------------
def _phantoms(base: TrainConfig, *, image_size: int, num_train: int, epochs: int, **changes) -> TrainConfig:
    """Same network, protocol and options as ``base``, on phantoms stored at ``image_size``."""
    return base.replace(
        dataset=PHANTOMS,
        manual_dir=None,
        dataset_options={
            "num_train": num_train,
            "num_validation": num_train // 5,
            "num_test": num_train // 5,
            "image_size": max(image_size, 32),
        },
        image_size=image_size,
        epochs=epochs,
        **changes,
    )


def s3_lenet5_phantoms() -> TrainConfig:
    """S3 LeNet-5 protocol on 2000 phantoms at 32x32 (4 classes), up to 10 epochs.

    python -m cxrjax.train --preset s3_lenet5_phantoms --workdir runs/s3_lenet5_phantoms
    Expected: under a minute on a 2-core CPU, including preparing the phantoms once
    (measured 42 s on a quiet machine, ~1,100 train images/s). Test accuracy about 0.75
    (4 balanced classes, chance 0.25).
    """
    return _phantoms(s3_lenet5(), image_size=32, num_train=2000, epochs=10)


def s3_vgg16_phantoms() -> TrainConfig:
    """S3 VGG16 protocol on 400 phantoms at 64x64 (the smallest size that keeps VGG16's shape
    meaningful on a CPU), 3 epochs.

    python -m cxrjax.train --preset s3_vgg16_phantoms --workdir runs/s3_vgg16_phantoms
    Expected: ~10-20 min on a 2-core CPU.
    """
    return _phantoms(s3_vgg16(), image_size=64, num_train=400, epochs=3)


def s3_vgg16_bn_phantoms() -> TrainConfig:
    """VGG16-BN with S3's protocol on 400 phantoms at 64x64, 3 epochs.

    python -m cxrjax.train --preset s3_vgg16_bn_phantoms --workdir runs/s3_vgg16_bn_phantoms
    Expected: ~10-20 min on a 2-core CPU.
    """
    return _phantoms(s3_vgg16_bn(), image_size=64, num_train=400, epochs=3)


def _make_phantom(
    name: str, base: Callable[[], TrainConfig], image_size: int, num_train: int, epochs: int, expected: str
) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        return _phantoms(base(), image_size=image_size, num_train=num_train, epochs=epochs)

    classes = base().classes
    kept = (
        (
            f" of which only the {' and '.join(classes)} phantoms are kept (classes={classes!r}, "
            f"about {num_train * len(classes) // 4} images),"
        )
        if classes
        else ""
    )
    preset.__name__ = preset.__qualname__ = f"{name}_phantoms"
    preset.__doc__ = (
        f"{name}'s network and protocol on {num_train} training phantoms{kept} at {image_size}x{image_size}, "
        f"{epochs} epochs.\n\n    python -m cxrjax.train --preset {name}_phantoms --workdir runs/{name}_phantoms\n"
        f"    Expected: {expected} on a 2-core CPU, including preparing the phantoms once.\n"
    )
    return preset


_S0_PHANTOMS = {
    name: _make_phantom(name, fn, 64, 1000, 10, "~10-15 min (estimated from s4_exp4_phantoms)")
    for name, fn in {"s0_a": s0_a, "s0_b": s0_b, "s0_c": s0_c, "s0_e": s0_e}.items()
}
_S4_PHANTOMS = {
    name: _make_phantom(
        name,
        fn,
        64,
        1000,
        10,
        "~3 min (s4_exp4 measured 167 s incl. preparing the "
        "phantoms, 70 train images/s, test accuracy 0.69, on a quiet 2-core CPU)",
    )
    for name, fn in S4_PRESETS.items()
}


PRESET_FUNCTIONS: dict[str, Callable[[], TrainConfig]] = {
    "s3_lenet5": s3_lenet5,
    "s3_vgg16": s3_vgg16,
    "s3_vgg16_bn": s3_vgg16_bn,
    "s0_a": s0_a,
    "s0_b": s0_b,
    "s0_c": s0_c,
    "s0_e": s0_e,
    "s0_d": s0_d,
    **S1_PRESETS,
    **S2_PRESETS,
    **S4_PRESETS,
    "s3_lenet5_phantoms": s3_lenet5_phantoms,
    "s3_vgg16_phantoms": s3_vgg16_phantoms,
    "s3_vgg16_bn_phantoms": s3_vgg16_bn_phantoms,
    **{f"{name}_phantoms": fn for name, fn in _S0_PHANTOMS.items()},
    **{f"{name}_phantoms": fn for name, fn in _S4_PHANTOMS.items()},
}

# name -> TrainConfig (frozen); the docstring of PRESET_FUNCTIONS[name] documents it.
PRESETS: dict[str, TrainConfig] = {name: fn() for name, fn in PRESET_FUNCTIONS.items()}


def describe(name: str) -> str:
    """The preset's docstring (command and expected time)."""
    if name not in PRESET_FUNCTIONS:
        raise KeyError(f"unknown preset {name!r}; presets: {sorted(PRESET_FUNCTIONS)}")
    return inspect.cleandoc(PRESET_FUNCTIONS[name].__doc__ or "")
