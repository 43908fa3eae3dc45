"""The one typed configuration of a training run, and its JSON form (``config.json``).

Everything that can change a run's numbers lives in :class:`TrainConfig`; a workdir's
``config.json`` is ``TrainConfig.to_dict()``. Re-running on an existing workdir compares
the two and refuses a different configuration, ignoring only the fields listed in
:data:`RESULT_IRRELEVANT_FIELDS` (where data lives on disk, progress bars, logging
cadence...), which cannot change the trained parameters.

Batch sizes are PER DEVICE: the global batch of one optimisation step is
``batch_size x number of devices`` (``num_devices``, default every local device), the
``pmap`` convention. A study's "batch 32" on 4 devices is therefore ``batch_size=8``;
the presets state the study's batch and use it per device, so on one device they are
exact and on n devices the global batch is n times larger (say so when comparing).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrjax.data.input_options import NORMALIZATIONS, InputOptions

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "warmup_cosine", "plateau")
MONITORS = ("val_loss", "val_accuracy", "val_macro_f1")
NONFINITE_MODES = ("stop", "skip")
PARALLEL_MODES = ("shard_map", "pmap")
DTYPES = ("float32", "bfloat16")

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
    }
)

# Fields stored as tuples in Python and as lists in JSON.
_TUPLE_FIELDS = ("zoom", "brightness", "classes")
# The key of dataset_options that carries ``classes`` to cxrjax.data.load (it is
# cxrjax.data.subset.CLASSES_OPTION; not imported, to keep this module free of TFDS).
CLASSES_OPTION = "classes"


@dataclass(frozen=True)
class TrainConfig(InputOptions):
    """A training run. Defaults: LeNet-5 on the synthetic phantoms, Adam 1e-3, 10 epochs.

    Frozen so presets cannot be mutated by accident: derive variants with
    ``config.replace(epochs=3)`` (or ``dataclasses.replace``; but change ``classes`` with
    ``config.replace``, which keeps ``dataset_options["classes"]`` in step).

    The input-pipeline fields (keyword-only) come from
    :class:`cxrjax.data.input_options.InputOptions`, shared with ``cxrjax.data.InputConfig``:
    ``normalization`` ("unit" [0,1] | "half" (x-0.5)/0.5 | "dataset" mean/std), ``hflip``,
    ``rotate_degrees``, ``zoom``, ``brightness``, ``balanced_sampling``, ``num_workers``.
    """

    # --- what to train, on what ------------------------------------------------------
    model: str = "lenet5"  # a name in cxrjax.models.MODELS
    dataset: str = "cxr_phantoms"  # a name cxrjax.data.load knows
    data_dir: str = "data"  # where prepared datasets live (cxrjax.data.load(data_dir=))
    manual_dir: str | None = None  # where the user's downloaded files are (real datasets)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # passed to data.load(options=)
    # Keep only these classes, labelled 0..k-1 in this order (None: all). Mirrored into
    # dataset_options["classes"], so everything that opens the run's dataset from its
    # options (trainer, evaluate, predict, explain) sees the same subset.
    classes: tuple[str, ...] | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # models.create(**overrides)
    image_size: int | None = None  # None: the model's default input size
    channels: int | None = None  # None: the model's default channels
    # --- input pipeline (cxrjax.data.InputConfig): the InputOptions fields, inherited ---
    # --- length and batch ------------------------------------------------------------
    epochs: int = 10
    batch_size: int = 32  # PER DEVICE; global batch = batch_size x num_devices
    eval_batch_size: int | None = None  # per device; None: batch_size
    num_devices: int | None = None  # None: every local device
    # --- optimisation ----------------------------------------------------------------
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    schedule: str = "constant"  # constant | step | warmup_cosine | plateau
    momentum: float = 0.9  # sgd only; 0 disables momentum
    nesterov: bool = False  # sgd only
    decay: float = 0.0  # Keras-style time decay: lr_t = schedule(t) / (1 + decay * t) (S2)
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8  # PyTorch's default; Keras uses 1e-7
    weight_decay: float = 0.0  # adamw: decoupled; adam/sgd: L2 added to the gradient
    step_every_epochs: int = 10  # schedule="step": multiply lr by step_gamma every N epochs
    step_gamma: float = 0.1
    warmup_epochs: float = 0.0  # schedule="warmup_cosine"
    min_lr: float = 0.0  # schedule="warmup_cosine": final lr
    plateau_monitor: str = "val_loss"  # schedule="plateau" (Keras ReduceLROnPlateau)
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_min_delta: float = 1e-4
    plateau_min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    class_weights: str | tuple[float, ...] | None = None  # None | "balanced" | one per class
    # --- early stopping and model selection -------------------------------------------
    monitor: str = "val_loss"  # early stopping and "best" checkpoint: val_loss | val_accuracy | val_macro_f1
    early_stopping_patience: int | None = None  # None: no early stopping
    early_stopping_min_delta: float = 0.0
    restore_best: bool = True  # test evaluation on the best checkpoint (else: the last epoch)
    # --- robustness, parallelism, numerics ---------------------------------------------
    on_nonfinite: str = "stop"  # stop: raise at once; skip: skip the update and count it
    # skip: a run that skipped more than this fraction of its steps (all sessions) ends
    # with TooManySkippedStepsError instead of results.json; in [0, 1] (1: never)
    max_skipped_fraction: float = 0.5
    parallel: str = "shard_map"  # shard_map (jit over a device mesh) | pmap
    dtype: str = "float32"  # computation dtype; params stay float32
    seed: int = 0
    # --- checkpoints and logging (result-irrelevant) -----------------------------------
    checkpoint_every_steps: int | None = None  # also checkpoint mid-epoch every N steps
    log_every_steps: int = 20  # fetch metrics to the host (progress bar, NaN check) every N steps
    tensorboard: bool = False  # also write TensorBoard event files (no TensorFlow needed)
    progress: bool = True  # tqdm progress bars
    compilation_cache_dir: str | None = None  # JAX persistent compilation cache

    # ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.classes, str):  # "COVID,Normal"
            object.__setattr__(self, "classes", [c.strip() for c in self.classes.split(",") if c.strip()])
        # Lists (from JSON or a caller) become tuples, so configs compare and hash alike.
        for name in (*_TUPLE_FIELDS, "class_weights"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._sync_classes()
        self.validated()

    def _sync_classes(self) -> None:
        """``classes`` and ``dataset_options["classes"]`` say the same (either may be given)."""
        options = dict(self.dataset_options or {})
        given = options.get(CLASSES_OPTION)
        if isinstance(given, str):
            given = [c.strip() for c in given.split(",") if c.strip()]
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
        """Return self after checking every choice field; raise ValueError naming the fix."""
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "monitor": MONITORS,
            "plateau_monitor": MONITORS,
            "on_nonfinite": NONFINITE_MODES,
            "parallel": PARALLEL_MODES,
            "dtype": DTYPES,
            "normalization": NORMALIZATIONS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name}={value!r} is not one of {allowed}")
        positive = ["epochs", "batch_size", "log_every_steps", "step_every_epochs"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_batch_size", "num_devices", "checkpoint_every_steps", "image_size", "channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {value}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 0:
            raise ValueError("TrainConfig.early_stopping_patience must be >= 0 or None")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(f"TrainConfig.max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}")
        if self.classes is not None:
            if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
                raise ValueError(f"TrainConfig.classes must be None or class names, got {self.classes!r}")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"TrainConfig.classes={list(self.classes)} names a class more than once")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise ValueError(
                f"TrainConfig.class_weights={self.class_weights!r}: use None, 'balanced' or a list of weights"
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
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(known)}"
            )
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
        """"min" for losses, "max" for accuracies and F1."""
        return mode_for(self.monitor)


def mode_for(metric: str) -> str:
    """Whether lower ("min") or higher ("max") values of ``metric`` are better."""
    return "min" if metric.endswith("loss") else "max"


def result_relevant_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, current)} for every field that differs and can change results.

    Fields absent from ``saved`` (written by an older cxrjax) compare as their default.
    """
    defaults = TrainConfig().to_dict()
    diffs = {}
    for name in sorted(set(saved) | set(current)):
        if name in RESULT_IRRELEVANT_FIELDS:
            continue
        old = saved.get(name, defaults.get(name))
        new = current.get(name, defaults.get(name))
        if old != new:
            diffs[name] = (old, new)
    return diffs
