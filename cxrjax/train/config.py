"""The one typed configuration of a training run, and its JSON form (``config.json``).

Everything that can change a run's numbers lives in :class:`TrainConfig`; a workdir's
``config.json`` is ``TrainConfig.to_dict()``. Re-running on an existing workdir compares
the two and refuses a different configuration, ignoring only the fields listed in
:data:`RESULT_IRRELEVANT_FIELDS` (where data lives on disk, progress bars, logging
cadence...), which cannot change the trained parameters.

Each field is declared once, with :func:`option`: its default, its help text, its
command-line flag (if it has a named one), its choices and its range live in the field's
metadata. ``python -m cxrjax.train`` and the experiments build their flags from that
metadata (``cxrjax.train.config_args``), and :meth:`TrainConfig.validated` checks types,
finiteness, ranges and choices from the same metadata and the field annotations, so a
value is refused with the same message whichever way it came in (flag, ``--set``,
``config.json``, Python).

Batch sizes are PER DEVICE: the global batch of one optimisation step is
``per_device_batch_size x number of devices`` (``num_devices``, default every local
device), the ``pmap`` convention. A study's "batch 32" on 4 devices is therefore
``per_device_batch_size=8``; the presets state the study's batch and use it per device,
so on one device they are exact and on n devices the global batch is n times larger
(say so when comparing).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxrjax.data.input_options import (
    MAX_BORDER_ERASE,
    MAX_TRANSLATE,
    NORMALIZATIONS,
    RANGE_OPTIONS,
    InputOptions,
    box_problem,
    range_problem,
)
from cxrjax.data.subset import CLASSES_OPTION  # light: numpy only, no TFDS
from cxrjax.train.recipes import RECIPE_NAMES, check_recipe

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "warmup_cosine", "plateau")
MONITORS = ("val_loss", "val_accuracy", "val_macro_f1")
NONFINITE_MODES = ("stop", "skip")
PARALLEL_MODES = ("shard_map", "pmap")
DATA_PLACEMENTS = ("host", "device", "auto")
TTA_MODES = ("none", "flip", "shift", "flip_shift")  # cxrjax/train/tta.py
DTYPES = ("float32", "bfloat16")
# Transfer learning (cxrjax.models.transfer): the studies' heads on an ImageNet backbone,
# and the input preprocessing of the backbone ("auto": the Keras mode its weights expect).
HEADS = ("none", "s2", "s2_dropout", "s1", "s0_d")
PREPROCESSING = ("auto", "none", "caffe", "tf", "torch", "pixels")

# Fields that cannot change what is trained: where files live, how progress is shown,
# how often metrics are fetched or step checkpoints written, the compile cache.
RESULT_IRRELEVANT_FIELDS = frozenset(
    {
        "data_dir",
        "manual_dir",
        "num_workers",
        "progress",
        "tensorboard",
        "log_every_steps",
        "checkpoint_every_steps",
        "compilation_cache_dir",
        "max_skipped_fraction",  # when to give up on skipped steps, not what is trained
        "plots",  # the run's PNGs, drawn after training
        "target_sensitivity",  # reporting only: operating thresholds chosen after training
        "bootstrap_resamples",  # reporting only: confidence intervals of the results
        "tta",  # reporting only: test-time augmentation is reported beside the plain evaluation
        # where the processes of a multi-process run are (cxrjax/train/distributed.py),
        # not what they compute: the global batch and the devices decide that
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
        "distributed_timeout_seconds",
    }
)

# Old field name -> current name. ``TrainConfig.from_dict`` (config.json of older runs)
# and the saved side of a workdir's config check read the old names as the new ones;
# ``--set OLD=...`` and the old flag spelling still work, with a deprecation message.
RENAMED_FIELDS = {
    "batch_size": "per_device_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
}

# Fields stored as tuples in Python and as lists in JSON.
_TUPLE_FIELDS = (*RANGE_OPTIONS, "crop_box", "classes")

_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_BOUND_VIOLATED = {
    "gt": lambda v, b: v <= b,
    "ge": lambda v, b: v < b,
    "lt": lambda v, b: v >= b,
    "le": lambda v, b: v > b,
}


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 - argparse's name
    flag: bool | str = False,
    choices: tuple | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
    kw_only: Any = dataclasses.MISSING,
    **bounds: float,
) -> Any:
    """A TrainConfig field with its whole declaration in the field's metadata.

    ``help``: what the field means (also the flag's help). ``flag``: True gives it a
    named command-line flag spelled from the name (``early_stopping_patience`` ->
    ``--early-stopping-patience``), a string is that spelling, False: reachable with
    ``--set FIELD=VALUE`` only. ``choices``: the allowed values (validated, and the
    flag's choices). ``metavar``/``parse``: the flag's metavar and string parser (default:
    the field's annotated type). ``gt``/``ge``/``lt``/``le``: the range a number must lie
    in (None always passes for an optional field).
    """
    unknown = set(bounds) - set(_BOUND_TEXT)
    if unknown:
        raise TypeError(f"option(): unknown bound(s) {sorted(unknown)}; use gt, ge, lt, le")
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse, "bounds": bounds}
    kwargs: dict[str, Any] = {"metadata": metadata}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    else:
        kwargs["default"] = default
    if kw_only is not dataclasses.MISSING:
        kwargs["kw_only"] = kw_only
    return field(**kwargs)


def _input_option(name: str, **declaration: Any) -> Any:
    """Re-declare an inherited ``InputOptions`` field with its command-line metadata; the
    default stays the one cxrjax.data.input_options declares (keyword-only, as there)."""
    return option(InputOptions.__dataclass_fields__[name].default, kw_only=True, **declaration)


def _range_option(name: str, help: str) -> Any:
    """An input option that is a random factor's range ``(lo, hi)`` or None (off), with a
    ``--NAME LO,HI`` flag (``none``: off)."""
    return _input_option(name, flag=True, metavar="LO,HI", parse=float_tuple(2, "LO,HI"), help=help)


def class_list(text: str) -> tuple[str, ...] | None:
    """``"COVID,Normal"`` -> ("COVID", "Normal"); ``"all"`` or ``""`` -> None (every class)."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    return None if names in ([], ["all"]) else tuple(names)


def float_tuple(count: int, metavar: str) -> Callable[[str], tuple[float, ...] | None]:
    """A flag parser: ``"0.8,1.2"`` -> (0.8, 1.2) (``count`` numbers); ``none`` -> None."""

    def parse(text: str) -> tuple[float, ...] | None:
        if text.strip().lower() in ("", "none"):
            return None
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {count} comma-separated numbers {metavar}, or none")
        return values

    parse.__name__ = metavar
    return parse


def recipe_name(text: str) -> str | None:
    """``--recipe NAME``; ``none`` (or "") -> None (no recipe)."""
    return None if text.strip().lower() in ("", "none") else text.strip()


def flag_of(f: dataclasses.Field) -> str | None:
    """The named command-line flag of a TrainConfig field, or None (``--set`` only)."""
    flag = f.metadata.get("flag")
    if flag is True:
        return "--" + f.name.replace("_", "-")
    return flag or None


@dataclass(frozen=True)
class TrainConfig(InputOptions):
    """A training run. Defaults: LeNet-5 on the synthetic phantoms, Adam 1e-3, 10 epochs.

    Frozen so presets cannot be mutated by accident: derive variants with
    ``config.replace(epochs=3)`` (or ``dataclasses.replace``; but change ``classes`` with
    ``config.replace``, which keeps ``dataset_options["classes"]`` in step).

    The input-pipeline fields (keyword-only) come from
    :class:`cxrjax.data.input_options.InputOptions`, shared with ``cxrjax.data.InputConfig``
    (re-declared here only to add their help, flags and ranges; the defaults are
    InputOptions'): ``normalization``, ``hflip``, ``rotate_degrees``, ``zoom``,
    ``brightness``, ``translate``, ``contrast``, ``gamma``, ``random_erasing``,
    ``border_erase``, ``crop_box``, ``balanced_sampling``, ``num_workers``.

    Types are checked, not coerced, except that an int is accepted for a float field (and
    stored as a float) and numpy scalars become Python numbers: an int field refuses 1.5,
    2.0, "2" and True alike (write 2), a bool field refuses 0/1 (write true/false).
    """

    # --- what to train, on what ------------------------------------------------------
    model: str = option("lenet5", flag=True, help="model name (cxrjax.models.MODELS)")
    dataset: str = option(
        "cxr_phantoms", flag=True, help="dataset name cxrjax.data.load knows, e.g. cxr_phantoms, covid19_radiography"
    )
    data_dir: str = option("data", flag=True, help="where prepared datasets live (cxrjax.data.load(data_dir=))")
    manual_dir: str | None = option(None, flag=True, help="folder of the user's downloaded dataset (real datasets)")
    dataset_options: dict[str, Any] = option(
        default_factory=dict, help="dataset preparation options, passed to cxrjax.data.load(options=)"
    )
    # Mirrored into dataset_options["classes"], so everything that opens the run's dataset
    # from its options (trainer, evaluate, predict, explain) sees the same subset.
    classes: tuple[str, ...] | None = option(
        None,
        flag=True,
        metavar="A,B,...",
        parse=class_list,
        help="keep only these classes, labelled 0..k-1 in this order, e.g. COVID,Normal (other classes "
        "are dropped from every split); 'all' keeps every class",
    )
    model_options: dict[str, Any] = option(
        default_factory=dict, help="model constructor overrides, cxrjax.models.create(**overrides)"
    )
    # Which bundle of training options (cxrjax.train.recipes) was applied: the resolved
    # values are in the other fields; this records the name (see recipes.apply_recipe).
    recipe: str | None = option(
        None,
        flag=True,
        metavar="NAME",
        parse=recipe_name,
        help=f"apply a named bundle of training options (cxrjax.train.recipes: {', '.join(RECIPE_NAMES)}) on top "
        "of the preset; options given explicitly still win; 'none': no recipe; ingredients can be added or "
        "removed: cxr-label_smoothing, none+augment",
    )
    # --- transfer learning (cxrjax.models.transfer; ImageNet backbones only) ----------
    pretrained: str | None = option(
        None,
        flag=True,
        metavar="FILE|DIR",
        help="ImageNet weights of the backbone: a Keras .h5, torchvision .pth / .safetensors file, or a folder "
        "written by 'python -m cxrjax.models import-weights' (None: random init)",
    )
    freeze: str = option(
        "none",
        flag=True,
        metavar="none|backbone|all_but_last:N",
        help="frozen backbone parameters (no updates, no optimiser state, BatchNorm in inference mode): none, "
        "backbone (all of it), all_but_last:N (all but its last N layers with weights, in Keras layer order)",
    )
    head: str = option(
        "none",
        flag=True,
        choices=HEADS,
        help="a study's head on the headless backbone: s2 (Dense 500, Dense 200, Dense K), s2_dropout (with "
        "Dropout 0.5), s1 (AveragePooling2D, Flatten, Dense, Dropout), s0_d (GAP, Dense ReLU, Dropout 0.5); "
        "none: the model as registered",
    )
    preprocessing: str = option(
        "auto",
        flag=True,
        choices=PREPROCESSING,
        help="with a head: the backbone's input preprocessing on the pipeline's [0,1] images (auto: the Keras "
        "mode its ImageNet weights expect; pixels: [0,255], EfficientNet's; none: the pipeline's normalised images "
        "as they are)",
    )
    image_size: int | None = option(None, flag=True, ge=1, help="model input size in pixels (None: the model's)")
    channels: int | None = option(None, flag=True, ge=1, help="input channels, 1 or 3 (None: the model's)")
    # --- input pipeline (cxrjax.data.InputConfig): the InputOptions fields ---------------
    normalization: str = _input_option(
        "normalization",
        flag=True,
        choices=NORMALIZATIONS,
        help="unit: [0,1]; half: (x-0.5)/0.5; dataset: train split mean/std; per_image: each image by its own "
        "mean/std (every split)",
    )
    hflip: bool = _input_option("hflip", flag=True, help="random horizontal flips (training)")
    rotate_degrees: float = _input_option(
        "rotate_degrees",
        flag=True,
        ge=0,
        metavar="DEG",
        help="random rotation, uniform in [-this, this] degrees (training; 0: off)",
    )
    zoom: tuple[float, float] | None = _range_option(
        "zoom", "random zoom factor uniform in (lo, hi), 0 < lo <= hi (training; none: off)"
    )
    brightness: tuple[float, float] | None = _range_option(
        "brightness", "random brightness factor uniform in (lo, hi), 0 < lo <= hi (training; none: off)"
    )
    translate: float = _input_option(
        "translate",
        flag=True,
        ge=0,
        le=MAX_TRANSLATE,
        metavar="F",
        help="random shift of the content in x and y, each uniform in [-this, this] times the side, in the "
        "same resampling as rotation and zoom (training; 0: off)",
    )
    contrast: tuple[float, float] | None = _range_option(
        "contrast",
        "random contrast factor c uniform in (lo, hi): x -> mean + c (x - mean), clipped to [0,1], after "
        "brightness (training; none: off)",
    )
    gamma: tuple[float, float] | None = _range_option(
        "gamma",
        "random gamma g uniform in (lo, hi): x -> x ** g on [0,1], after contrast (training; none: off)",
    )
    random_erasing: float = _input_option(
        "random_erasing",
        flag=True,
        ge=0,
        le=1,
        metavar="P",
        help="probability of blanking one rectangle (2 to 20 percent of the area, aspect 0.3-3.3) of a training image "
        "with the mean of its other pixels (0: off)",
    )
    border_erase: float = _input_option(
        "border_erase",
        flag=True,
        ge=0,
        lt=MAX_BORDER_ERASE,
        metavar="F",
        help="blank each of the four border strips of a training image with a random width in [0, F] of the side "
        "(filled like --random-erasing): against collimation edges and corner markers (0: off)",
    )
    crop_box: tuple[float, float, float, float] | None = _input_option(
        "crop_box",
        flag=True,
        metavar="TOP,BOTTOM,LEFT,RIGHT",
        parse=float_tuple(4, "TOP,BOTTOM,LEFT,RIGHT"),
        help="cut every image of every split (train, evaluation, predict, explain) to this box, fractions of "
        "the stored image, before resizing, e.g. the thorax box 0.15,0.90,0.15,0.85 (none: the whole image)",
    )
    balanced_sampling: bool = _input_option(
        "balanced_sampling", help="draw each epoch with replacement so classes are equally likely"
    )
    num_workers: int = _input_option(
        "num_workers", flag=True, ge=0, help="grain worker processes (0: in the main process)"
    )
    # --- length and batch ------------------------------------------------------------
    epochs: int = option(10, flag=True, ge=1, help="maximum epochs")
    per_device_batch_size: int = option(
        32, flag=True, ge=1, metavar="N", help="training batch PER DEVICE; global batch = this x devices"
    )
    per_device_eval_batch_size: int | None = option(
        None, ge=1, help="evaluation batch per device (None: per_device_batch_size)"
    )
    num_devices: int | None = option(None, flag=True, ge=1, help="devices to train on (None: every local device)")
    # --- optimisation ----------------------------------------------------------------
    optimizer: str = option("adam", flag=True, choices=OPTIMIZERS, help="optimizer")
    lr: float = option(1e-3, flag=True, gt=0, help="learning rate")
    schedule: str = option("constant", flag=True, choices=SCHEDULES, help="learning-rate schedule")
    momentum: float = option(0.9, ge=0, lt=1, help="sgd only; 0 disables momentum")
    nesterov: bool = option(False, help="sgd only: Nesterov momentum")
    decay: float = option(0.0, ge=0, help="Keras-style time decay: lr_t = schedule(t) / (1 + decay * t) (S2)")
    adam_b1: float = option(0.9, ge=0, lt=1, help="Adam beta1")
    adam_b2: float = option(0.999, ge=0, lt=1, help="Adam beta2")
    adam_eps: float = option(1e-8, gt=0, help="Adam epsilon (PyTorch's default; Keras uses 1e-7)")
    weight_decay: float = option(
        0.0, flag=True, ge=0, help="weight decay: decoupled for adamw, L2 added to the gradient for adam/sgd"
    )
    step_every_epochs: int = option(10, ge=1, help='schedule="step": multiply lr by step_gamma every N epochs')
    step_gamma: float = option(0.1, gt=0, help='schedule="step": the factor')
    warmup_epochs: float = option(0.0, ge=0, help='schedule="warmup_cosine": linear warm-up epochs')
    min_lr: float = option(0.0, ge=0, help='schedule="warmup_cosine": final lr')
    plateau_monitor: str = option(
        "val_loss", choices=MONITORS, help='schedule="plateau" (Keras ReduceLROnPlateau): the metric'
    )
    plateau_factor: float = option(0.5, gt=0, lt=1, help='schedule="plateau": lr *= this on a plateau')
    plateau_patience: int = option(2, ge=0, help='schedule="plateau": epochs without improvement')
    plateau_min_delta: float = option(1e-4, ge=0, help='schedule="plateau": smallest improvement')
    plateau_min_lr: float = option(0.0, ge=0, help='schedule="plateau": lr floor')
    label_smoothing: float = option(0.0, flag=True, ge=0, lt=1, help="label smoothing")
    mixup: float = option(
        0.0,
        flag=True,
        ge=0,
        help="mixup (Zhang et al. 2018) with this Beta(a, a) parameter, e.g. 0.2: each training image becomes "
        "lam * itself + (1 - lam) * its neighbour in the batch (pairs 0-1, 2-3, ...; lam ~ Beta(a, a) per "
        "image) and the loss lam * loss(its label) + (1 - lam) * loss(the neighbour's); needs an even "
        "per-device batch (0: off)",
    )
    grad_clip_norm: float | None = option(
        None, flag=True, gt=0, help="clip the gradient's global norm to this (None: no clipping)"
    )
    class_weights: str | tuple[float, ...] | None = option(
        None, help='loss weight per class: None, "balanced" or one finite weight >= 0 per class'
    )
    # --- early stopping and model selection -------------------------------------------
    monitor: str = option("val_loss", flag=True, choices=MONITORS, help="early-stopping and best-checkpoint metric")
    early_stopping_patience: int | None = option(
        None, flag=True, ge=0, help="epochs without improvement before stopping (None: never)"
    )
    early_stopping_min_delta: float = option(
        0.0, flag=True, ge=0, help="smallest change of the monitor that counts as an improvement"
    )
    restore_best: bool = option(True, help="test the best checkpoint (else: the last epoch)")
    ema_decay: float = option(
        0.0,
        flag=True,
        ge=0,
        lt=1,
        help="exponential moving average of the weights (params and BatchNorm statistics), e.g. 0.999, with "
        "the warm-up min(decay, (1+step)/(10+step)); validation, early stopping, the best checkpoint, the "
        "test evaluation and evaluate/predict/explain then use the averaged weights (0: off)",
    )
    # --- robustness, parallelism, numerics ---------------------------------------------
    on_nonfinite: str = option(
        "stop",
        flag=True,
        choices=NONFINITE_MODES,
        help="non-finite loss: stop (raise at once) or skip the update and count it",
    )
    max_skipped_fraction: float = option(
        0.5,
        flag=True,
        ge=0,
        le=1,
        help="with --on-nonfinite skip: a run that skipped more than this fraction of its steps (all sessions) "
        "ends with TooManySkippedStepsError instead of results.json (1: never)",
    )
    parallel: str = option(
        "shard_map",
        flag=True,
        choices=PARALLEL_MODES,
        help="data-parallel compilation: shard_map (jit over a device mesh) or pmap",
    )
    data_placement: str = option(
        "auto",
        flag=True,
        choices=DATA_PLACEMENTS,
        help="where training batches are made: host (the grain pipeline), device (every split as uint8 on the "
        "devices once, sharded over them; shuffling, augmentation and balanced sampling inside the compiled "
        "step, the same batches as host without augmentation) or auto, the default (device when the splits "
        "fit cxrjax/train/resident.py's memory budget: a quarter of device memory on accelerators, 1 GiB on "
        "CPU; host for pmap and several processes; a resumed run keeps the placement it was trained with)",
    )
    steps_per_dispatch: int = option(
        1,
        flag=True,
        ge=1,
        help="train steps run in one compiled call (a lax.scan; metrics stacked), against per-step dispatch "
        "overhead; the last steps of an epoch and those before a mid-epoch checkpoint run one by one. "
        "1: one call per step. A scanned step is compiled apart from a single one, so K > 1 changes results "
        "at the float32 rounding level",
    )
    dtype: str = option("float32", flag=True, choices=DTYPES, help="computation dtype; params stay float32")
    seed: int = option(0, flag=True, help="seed of the initial weights, batches and augmentation (and the bootstrap)")
    # --- reporting (result-irrelevant: what results.json says about the trained model) --
    target_sensitivity: float = option(
        0.95,
        flag=True,
        gt=0,
        le=1,
        help="per class (one vs rest), the operating threshold chosen on validation reaches this sensitivity; "
        "results.json gives the sensitivity/specificity it has on test",
    )
    bootstrap_resamples: int = option(
        2000,
        flag=True,
        ge=0,
        help="stratified bootstrap resamples for the confidence intervals of accuracy, macro-F1 and ROC-AUC (0: none)",
    )
    tta: str = option(
        "none",
        flag=True,
        choices=TTA_MODES,
        help="test-time augmentation reported BESIDE the plain evaluation (results.json split['tta']): the mean "
        "softmax over the identity and flip (horizontal: moves the heart to the other side), shift (4 small "
        "translations) or flip_shift (both)",
    )
    # --- checkpoints and logging (result-irrelevant) -----------------------------------
    checkpoint_every_steps: int | None = option(None, flag=True, ge=1, help="also checkpoint mid-epoch every N steps")
    log_every_steps: int = option(20, ge=1, help="fetch metrics to the host (progress bar, NaN check) every N steps")
    tensorboard: bool = option(False, flag=True, help="also write TensorBoard event files")
    plots: bool = option(
        True,
        flag=True,
        help="draw the run's plots (learning curves, confusion matrix, ROC) at its end; experiments, which "
        "draw their own, turn them off",
    )
    progress: bool = option(True, flag=True, help="tqdm progress bars")
    compilation_cache_dir: str | None = option(
        None, flag="--compilation-cache", metavar="DIR", help="JAX persistent compilation cache folder"
    )
    # --- several processes (result-irrelevant; cxrjax/train/distributed.py) -------------
    distributed: bool = option(
        False,
        flag=True,
        help="run as one process of a multi-process job: jax.distributed.initialize with the three flags "
        "below, or with none of them where JAX detects the cluster itself (SLURM, Open MPI, cloud TPU)",
    )
    coordinator_address: str | None = option(
        None, flag=True, metavar="HOST:PORT", help="multi-process: process 0's address (implies --distributed)"
    )
    num_processes: int | None = option(None, flag=True, ge=1, help="multi-process: how many processes in all")
    process_id: int | None = option(None, flag=True, ge=0, help="multi-process: this process's index, 0-based")
    distributed_timeout_seconds: int = option(
        60,
        flag=True,
        ge=1,
        help="multi-process: JAX's heartbeat timeout (a process missing this long stops the others; a peer "
        "lost during a collective is named within min(5, this / 2) s), and how long processes wait for each "
        "other to start",
    )

    # ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.classes, str):  # "COVID,Normal"; "all": every class
            object.__setattr__(self, "classes", class_list(self.classes))
        # Lists (from JSON or a caller) become tuples, so configs compare and hash alike.
        for name in (*_TUPLE_FIELDS, "class_weights"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._normalise_numbers()
        self._sync_classes()
        self.validated()

    def _normalise_numbers(self) -> None:
        """ints given for float fields become floats, numpy scalars Python numbers (so
        config.json says 1.0 for a float, and JSON can write it); other types are left for
        :meth:`validated` to refuse."""
        for name, (kind, _optional) in scalar_kinds().items():
            value = getattr(self, name)
            if isinstance(value, bool) or value is None:
                continue
            if kind is float and isinstance(value, numbers.Real):
                object.__setattr__(self, name, float(value))
            elif kind is int and isinstance(value, numbers.Integral):
                object.__setattr__(self, name, int(value))
        for name in (*RANGE_OPTIONS, "crop_box", "class_weights"):
            value = getattr(self, name)
            if isinstance(value, tuple) and all(_is_number(v) for v in value):
                object.__setattr__(self, name, tuple(float(v) for v in value))

    def _sync_classes(self) -> None:
        """``classes`` and ``dataset_options["classes"]`` say the same (either may be given)."""
        if not isinstance(self.dataset_options, dict):
            return  # validated() names the problem
        options = dict(self.dataset_options)
        given = options.get(CLASSES_OPTION)
        if isinstance(given, str):
            given = [c.strip() for c in given.split(",") if c.strip()]
        if given is not None and not isinstance(given, (list, tuple)):
            raise ValueError(
                f"TrainConfig.dataset_options['classes'] must be class names, got {given!r}; "
                'set the subset with --classes COVID,Normal or --set \'classes=["COVID","Normal"]\''
            )
        given = tuple(given) if given is not None else None
        classes = self.classes if self.classes is not None else given
        if self.classes is not None and given is not None and given != self.classes:
            raise ValueError(
                f"TrainConfig.classes={list(self.classes)} but dataset_options['classes']={list(given)}; "
                "set the class subset once (config.replace(classes=...) updates both)"
            )
        if classes is None:
            return
        options[CLASSES_OPTION] = list(classes)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "dataset_options", options)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated).

        ``classes`` given without ``dataset_options`` replaces the subset in both (None
        removes it); ``dataset_options`` given alone keeps the current ``classes``.
        """
        if "classes" in changes and "dataset_options" not in changes:
            changes["dataset_options"] = {k: v for k, v in self.dataset_options.items() if k != CLASSES_OPTION}
        return dataclasses.replace(self, **changes)

    def validated(self) -> "TrainConfig":
        """Return self after checking every field; raise ValueError naming the field and the fix.

        From each field's annotation and :func:`option` metadata: the type (int, float,
        bool, str, optionally None), that floats are finite, the range, the choices. Then
        what an annotation cannot say: the class subset, class weights, the factor ranges
        (zoom, brightness, contrast, gamma), the crop box and the option dicts.
        """
        kinds = scalar_kinds()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in kinds:
                _check_scalar(f, value, *kinds[f.name])
        if self.recipe is not None:
            try:
                check_recipe(self.recipe)  # a recipe, or an expression of ingredients (cxr-label_smoothing)
            except ValueError as err:
                raise ValueError(f"TrainConfig.recipe: {err}") from None
        for name in ("dataset_options", "model_options"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"TrainConfig.{name} must be a dict with string keys, got {value!r}")
        if self.classes is not None:
            if (
                not isinstance(self.classes, tuple)
                or not self.classes
                or not all(isinstance(c, str) and c for c in self.classes)
            ):
                raise ValueError(f"TrainConfig.classes must be None or class names, got {self.classes!r}")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"TrainConfig.classes={list(self.classes)} names a class more than once")
        for problem in (
            *(range_problem(name, getattr(self, name)) for name in RANGE_OPTIONS),
            box_problem(self.crop_box),
        ):
            if problem:
                raise ValueError(f"TrainConfig.{problem}")
        weights = self.class_weights
        if isinstance(weights, str):
            if weights != "balanced":
                raise ValueError(f"TrainConfig.class_weights={weights!r}: use None, 'balanced' or a list of weights")
        elif weights is not None:
            if (
                not isinstance(weights, tuple)
                or not weights
                or not all(_is_finite(w) and w >= 0 for w in weights)
                or not sum(weights) > 0
            ):
                raise ValueError(
                    f"TrainConfig.class_weights must be None, 'balanced' or one finite weight >= 0 per class "
                    f"(not all 0), got {weights!r} (e.g. --set class_weights=[1,2,1,1])"
                )
        if self.mixup and self.per_device_batch_size % 2:
            raise ValueError(
                f"TrainConfig.mixup={self.mixup} pairs neighbouring images of each device's batch, so it needs an "
                f"even per_device_batch_size (got {self.per_device_batch_size}); e.g. --per-device-batch-size "
                f"{self.per_device_batch_size + 1}"
            )
        if parse_freeze(self.freeze) is None:
            raise ValueError(
                f"TrainConfig.freeze={self.freeze!r}: use none, backbone or all_but_last:N with an integer N >= 0 "
                "(e.g. --freeze all_but_last:34)"
            )
        if self.freeze != "none" and self.head == "none":
            raise ValueError(
                f"TrainConfig.freeze={self.freeze!r} needs a head on the backbone (--head s2|s2_dropout|s1|s0_d)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name, value in out.items():
            if isinstance(value, tuple):
                out[name] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones are
        refused; the old names of :data:`RENAMED_FIELDS` (config.json of older runs) are
        read as the new ones."""
        values = upgrade_field_names(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a valid cxrjax TrainConfig ({err})") from err

    # ------------------------------------------------------------------------------
    @property
    def monitor_mode(self) -> str:
        """ "min" for losses, "max" for accuracies and F1."""
        return mode_for(self.monitor)


def parse_freeze(text: str) -> tuple[str, int | None] | None:
    """``"none"`` -> ("none", None), ``"backbone"`` -> ("backbone", None),
    ``"all_but_last:34"`` -> ("all_but_last", 34); anything else -> None."""
    if text in ("none", "backbone"):
        return text, None
    kind, _, count = text.partition(":")
    if kind == "all_but_last" and count.isdigit():
        return kind, int(count)
    return None


def upgrade_field_names(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old names of :data:`RENAMED_FIELDS` replaced by the new ones.

    Raises ValueError when both names are given with different values (which one was
    meant cannot be told).
    """
    out = dict(values)
    for old, new in RENAMED_FIELDS.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ValueError(f"both {old}={value!r} (the old name) and {new}={out[new]!r} are given; keep only {new}")
        out[new] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


@functools.cache
def scalar_kinds() -> dict[str, tuple[type, bool]]:
    """{field: (int | float | bool | str, whether None is allowed)} for every TrainConfig
    field annotated with one of those types (optionally ``| None``), from the annotations."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {}
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in (int, float, bool, str):
            kinds[f.name] = (rest[0], len(rest) < len(args))
    return kinds


_KIND_TEXT = {int: 'an integer (e.g. 2; not 2.0 or "2")', float: "a number", bool: "true or false", str: "a string"}


def _check_scalar(f: dataclasses.Field, value: Any, kind: type, optional: bool) -> None:
    """Type, finiteness, range and choices of one scalar field (ValueError naming the fix)."""
    name = f.name
    flag = flag_of(f)
    how = f"{flag} VALUE or --set {name}=VALUE" if flag else f"--set {name}=VALUE"
    if value is None:
        if optional:
            return
        raise ValueError(f"TrainConfig.{name} must be {_KIND_TEXT[kind]}, got None; set it with {how}")
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, float),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        raise ValueError(
            f"TrainConfig.{name} must be {_KIND_TEXT[kind]}{' or None' if optional else ''}, "
            f"got {value!r} ({type(value).__name__}); set it with {how}"
        )
    if kind is float and not math.isfinite(value):
        raise ValueError(f"TrainConfig.{name} must be a finite number, got {value!r}; set it with {how}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"TrainConfig.{name}={value!r} is not one of {choices}")
    bounds = f.metadata.get("bounds") or {}
    if any(_BOUND_VIOLATED[b](value, limit) for b, limit in bounds.items()):
        wanted = " and ".join(f"{_BOUND_TEXT[b]} {limit}" for b, limit in bounds.items())
        raise ValueError(
            f"TrainConfig.{name} must be {wanted}{' or None' if optional else ''}, got {value!r}; "
            f"set it with {how}. {name}: {f.metadata.get('help', '')}"
        )


def mode_for(metric: str) -> str:
    """Whether lower ("min") or higher ("max") values of ``metric`` are better."""
    return "min" if metric.endswith("loss") else "max"


def result_relevant_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, current)} for every field that differs and can change results.

    Fields absent from ``saved`` (written by an older cxrjax) compare as their default;
    the old names of :data:`RENAMED_FIELDS` in ``saved`` compare as the new ones;
    ``data_placement="auto"`` on either side matches any placement (the checkpoint's decides).
    """
    saved = upgrade_field_names(saved)
    defaults = TrainConfig().to_dict()
    diffs = {}
    for name in sorted(set(saved) | set(current)):
        if name in RESULT_IRRELEVANT_FIELDS:
            continue
        old = saved.get(name, defaults.get(name))
        new = current.get(name, defaults.get(name))
        if old != new and not (name in _SAME_VALUE and _SAME_VALUE[name](old, new)):
            diffs[name] = (old, new)
    return diffs


def _same_placement(saved: str, current: str) -> bool:
    """ "auto" on either side matches any placement: it resolves to the one the run's
    checkpoint was trained with, and the trainer refuses a resume whose placement differs
    from it (trainer._place_data)."""
    return saved == current or "auto" in (saved, current)


# What of an import-weights folder's meta.json says where files are, not what the weights are.
_IMPORTED_LOCATIONS = ("weights_file", "checkpoint")


def same_pretrained(saved: str | None, current: str | None) -> bool:
    """Whether two ``pretrained`` values name the same ImageNet weights, so that only other
    weights refuse a resume, not another spelling of the path: the same text; the same
    file or folder (a relative path read against the current directory, as config.json
    of older runs stored it); or equal content -- files of equal sha256, import-weights
    folders whose meta.json agree but for paths. The trainer stores ``pretrained``
    absolute, so a run resumed from another directory with the same relative path, where
    it names a copy of the file, carries on (config.json then says where the file is);
    weights that are missing or unreadable on either side count as different."""
    if saved == current:
        return True
    if saved is None or current is None:
        return False
    a, b = Path(saved).expanduser(), Path(current).expanduser()
    try:
        if not (a.exists() and b.exists()):
            return False
        if a.samefile(b):
            return True
        digest_a = _weights_identity(a)
        return digest_a is not None and digest_a == _weights_identity(b)
    except (OSError, ValueError):
        return False


def _weights_identity(path: Path) -> Any:
    """A file's sha256; an import-weights folder's meta.json without its paths; else None."""
    if path.is_dir():
        meta = path / "meta.json"
        if not meta.is_file():
            return None
        record = json.loads(meta.read_text())
        return {k: v for k, v in record.items() if k not in _IMPORTED_LOCATIONS} if isinstance(record, dict) else None
    from cxrjax.models.weights import sha256  # the one hash of weight files (results.json's "sha256")

    return sha256(path)


# Fields whose unequal values in a workdir's config.json and a new session's config may
# still mean the same run: field -> predicate(saved, current) (result_relevant_differences).
_SAME_VALUE = {"pretrained": same_pretrained, "data_placement": _same_placement}
