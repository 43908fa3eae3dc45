"""Everything derived once per run from a TrainConfig and its dataset: input shape and
InputConfig, the model, optimizer, compiled data-parallel steps and initialiser.

:func:`build_engine` memoises the compiled pieces per process, keyed by every setting
that changes the compiled program, so an experiment grid whose runs differ only in the
seed (or early stopping) compiles once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cxrjax import models
from cxrjax.data.input_options import InputOptions
from cxrjax.models import transfer
from cxrjax.train import ema
from cxrjax.train.config import TrainConfig, parse_freeze
from cxrjax.train.data_api import data_api
from cxrjax.train.evaluation import EnginePredictor
from cxrjax.train.optim import make_optimizer
from cxrjax.train.parallel import Engine, make_engine
from cxrjax.train.state import TrainState, make_init_fn
from cxrjax.train.steps import AXIS, LossConfig, bind_steps
from cxrjax.train.timings import PhaseTimings


@dataclass
class RunSetup:
    config: TrainConfig
    dataset: Any
    input_config: Any
    model: Any
    engine: Engine
    tx: Any
    init_fn: Callable[[int], TrainState]
    num_devices: int
    global_batch_size: int
    eval_global_batch_size: int
    steps_per_epoch: int
    image_shape: tuple[int, int, int]
    class_weights: tuple[float, ...] | None
    input_fields: dict[str, Any]  # input_config_fields(config), stored in every checkpoint and results.json
    timings: PhaseTimings = field(default_factory=PhaseTimings)  # this session's phases (results.json)
    # data_placement resolved ("host" | "device") and, for "device", the device copy of the
    # splits with its compiled steps (cxrjax.train.resident.ResidentInput); set by the trainer.
    placement: str = "host"
    resident: Any = None
    # results.json["weights"]: the backbone's ImageNet weights (path, sha256...) or random init
    weights: dict[str, Any] | None = None

    def predictor(self, device_state: Any) -> EnginePredictor:
        """The engine's eval step on ``device_state``, for ``cxrjax.train.evaluation.predict_split``
        (evaluating from the device copy when the run's data is on the devices)."""
        if self.resident is not None:
            return self.resident.predictor(device_state)
        return EnginePredictor(self.engine, device_state, self.input_config, self.dataset.num_classes)


class RunSetupError(ValueError):
    """A configuration that cannot run with this model, dataset or machine (unknown model,
    input too small, batch larger than the split, missing split...); the message names
    the fix. Command-line tools print it as one ``error:`` line."""


def resolve_input_shape(config: TrainConfig) -> tuple[int, int]:
    """(image_size, channels): the config's, or the model's defaults."""
    if config.model not in models.MODELS:
        raise RunSetupError(
            f"unknown model {config.model!r}; registered models (cxrjax/models/registry.py): {sorted(models.MODELS)}"
        )
    spec = models.MODELS[config.model]
    return config.image_size or spec.image_size, config.channels or spec.channels


def input_config_fields(config: TrainConfig) -> dict[str, Any]:
    """The cxrjax.data.InputConfig of this run, as plain fields (stored in checkpoints):
    the input shape and every ``cxrjax.data.input_options.InputOptions`` field."""
    image_size, channels = resolve_input_shape(config)
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(InputOptions)}
    return {"image_size": image_size, "channels": channels, **options}


def build_model(config: TrainConfig, num_classes: int, channels: int, axis_name: str | None):
    """The run's Flax module: the registered model, or with ``config.head`` a
    ``cxrjax.models.transfer.TransferModel`` (the backbone ``config.model`` + the head,
    ``freeze`` and ``preprocessing``; ``model_options`` go to the backbone and head)."""
    if config.head != "none":
        return transfer.create_transfer(
            config.model,
            head=config.head,
            num_classes=num_classes,
            channels=channels,
            dtype=jnp.dtype(config.dtype),
            axis_name=axis_name,
            preprocessing=config.preprocessing,
            freeze=parse_freeze(config.freeze),
            **config.model_options,
        )
    return models.create(
        config.model,
        num_classes=num_classes,
        channels=channels,
        dtype=jnp.dtype(config.dtype),
        axis_name=axis_name,
        **config.model_options,
    )


# The TrainConfig fields the compiled train/eval steps depend on besides the loss (the
# whole LossConfig: classes, label smoothing, class weights, mixup), the input shape,
# steps per epoch and devices: two runs that agree on them share one compiled engine.
_STEP_FIELDS = (
    "model",
    "model_options",
    "dtype",
    "parallel",
    "optimizer",
    "lr",
    "schedule",
    "momentum",
    "nesterov",
    "decay",
    "adam_b1",
    "adam_b2",
    "adam_eps",
    "weight_decay",
    "step_every_epochs",
    "step_gamma",
    "warmup_epochs",
    "min_lr",
    "grad_clip_norm",
    "head",
    "freeze",
    "preprocessing",
)


# Compiled steps of recent runs in this process: a grid of runs that differ only in the
# seed (or early stopping) reuses the compiled step instead of tracing and compiling again.
_ENGINES: "collections.OrderedDict[str, tuple[Any, Any, Engine, Any]]" = collections.OrderedDict()
_ENGINE_CACHE_SIZE = 8  # S4's ablation grid: 7 networks per worker


def build_engine(
    config: TrainConfig,
    num_classes: int,
    image_shape: tuple[int, int, int],
    steps_per_epoch: int,
    class_weights: tuple[float, ...] | None,
    devices: list,
) -> tuple[Any, Any, Engine, Any]:
    """(model, optimizer, engine, init_fn: seed -> TrainState), memoised per process."""
    # warmup_cosine is the only schedule whose shape depends on the run length.
    fields = _STEP_FIELDS + (("epochs",) if config.schedule == "warmup_cosine" else ())
    d = config.to_dict()
    # The step's loss as it is built (every LossConfig field, so a new one cannot be missed).
    loss = LossConfig(
        num_classes=num_classes,
        label_smoothing=config.label_smoothing,
        class_weights=class_weights,
        mixup=config.mixup,
    )
    key = json.dumps(
        {
            **{f: d[f] for f in fields},
            "loss": dataclasses.asdict(loss),
            "image_shape": list(image_shape),
            "steps_per_epoch": steps_per_epoch,
            "devices": [str(x) for x in devices],
        },
        sort_keys=True,
    )
    if key in _ENGINES:
        _ENGINES.move_to_end(key)
        return _ENGINES[key]
    model = build_model(config, num_classes, image_shape[2], AXIS)
    tx, schedule = make_optimizer(config, steps_per_epoch, getattr(model, "frozen_layers", ()))
    engine = make_engine(config.parallel, *bind_steps(model, tx, schedule, loss), devices)
    entry = (model, tx, engine, make_init_fn(model, tx, image_shape))
    _ENGINES[key] = entry
    while len(_ENGINES) > _ENGINE_CACHE_SIZE:
        _ENGINES.popitem(last=False)
    return entry


def check_model(config: TrainConfig) -> tuple[dict[str, Any], Any]:
    """(input fields, InputConfig) after checking the model name, its options and the input
    size, before any data is opened or prepared (a D4 preparation takes minutes; a typo
    in the model name should not wait for it)."""
    fields = input_config_fields(config)
    try:
        input_config = data_api().InputConfig(**fields)
        model = build_model(config, 2, fields["channels"], axis_name=None)
    except (TypeError, ValueError, KeyError) as err:
        raise RunSetupError(f"model {config.model!r} with this configuration: {err}") from err
    if config.pretrained is not None and config.head == "none":
        raise RunSetupError(
            f"pretrained={config.pretrained!r} loads an ImageNet backbone under a head; add --head "
            "s2|s2_dropout|s1|s0_d (the studies' heads, cxrjax/models/transfer.py)"
        )
    if config.head != "none" and model.preprocessing != "none" and config.normalization != "unit":
        raise RunSetupError(
            f"--preprocessing {config.preprocessing} applies the backbone's {model.preprocessing!r} preprocessing to "
            f"[0,1] images, but normalization is {config.normalization!r}; use --normalization unit, or "
            "--preprocessing none to feed the normalised images as they are"
        )
    smallest = model.min_image_size() if hasattr(model, "min_image_size") else 1
    if fields["image_size"] < smallest:
        raise RunSetupError(
            f"image_size {fields['image_size']} is too small for {config.model!r}: its convolutions and poolings "
            f"need at least {smallest}x{smallest}; use --image-size {smallest} or larger"
        )
    return fields, input_config


# The backbone weights of recent runs in this process (an experiment's seeds load one file once).
_WEIGHTS: "collections.OrderedDict[str, tuple[Any, dict]]" = collections.OrderedDict()
_WEIGHTS_CACHE_SIZE = 2


def pretrained_backbone(config: TrainConfig) -> tuple[Any | None, dict[str, Any] | None]:
    """(backbone variables or None, results.json's ``weights`` record) of ``config.pretrained``:
    ``transfer.RANDOM_INIT`` for a head without weights, None for models without a head.
    A file or folder that cannot be read or does not match is a RunSetupError."""
    if config.head == "none":
        return None, None
    if config.pretrained is None:
        return None, dict(transfer.RANDOM_INIT)
    path = Path(config.pretrained).expanduser()
    if not path.exists():
        raise RunSetupError(
            f"pretrained weights {config.pretrained!r} not found; give a Keras .h5, a torchvision .pth / "
            "safetensors file or a folder from 'python -m cxrjax.models import-weights' (cxrjax never downloads)"
        )
    stat = path.stat()
    key = json.dumps(
        [str(path.resolve()), stat.st_mtime_ns, stat.st_size, config.model, config.model_options],
        sort_keys=True,
        default=str,
    )
    if key not in _WEIGHTS:
        backbone_options = {
            k: v for k, v in config.model_options.items() if k not in ("dense_units", "dropout", "pool_size")
        }
        try:
            _WEIGHTS[key] = transfer.load_backbone_weights(config.model, str(path), backbone_options)
        except (ValueError, KeyError, OSError) as err:
            raise RunSetupError(f"pretrained weights: {err}") from err
        while len(_WEIGHTS) > _WEIGHTS_CACHE_SIZE:
            _WEIGHTS.popitem(last=False)
    _WEIGHTS.move_to_end(key)
    variables, record = _WEIGHTS[key]
    return variables, dict(record)


def describe_weights(record: dict[str, Any] | None) -> str | None:
    """One line for the start of a run: which ImageNet weights its backbone starts from, and
    the file's tensors it leaves out by design (named by their top-level module)."""
    if record is None:
        return None
    if record.get("pretrained") is None:
        return "weights: random init (no --pretrained given): the backbone starts from scratch"
    skipped = record.get("tensors_skipped") or []
    modules = list(dict.fromkeys(name.split(".")[0] + ".*" for name in skipped))  # AuxLogits.*
    return (
        f"weights: {record['pretrained']} ({record.get('kind')}, {record.get('source_format')}, "
        f"sha256 {str(record.get('sha256'))[:16]}..., {record.get('tensors')} tensors"
        + (f"; {len(skipped)} file tensor(s) skipped by design: {', '.join(modules)}" if skipped else "")
        + ")"
    )


def setup_run(config: TrainConfig, dataset: Any | None = None, timings: PhaseTimings | None = None) -> RunSetup:
    """Everything a run derives from ``config`` (opening ``config.dataset`` unless
    ``dataset`` is given); the seconds go to ``timings`` (``dataset_open``, ``setup``),
    which becomes ``RunSetup.timings``."""
    timings = timings if timings is not None else PhaseTimings()
    start = time.perf_counter()
    data = data_api()
    fields, input_config = check_model(config)
    pretrained, weights_record = pretrained_backbone(config)
    if dataset is None:
        with timings.phase("dataset_open"):
            dataset = data.load(
                config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir, options=config.dataset_options
            )
    for split in ("train", "validation"):
        if split not in dataset.splits or len(dataset.splits[split]) == 0:
            raise RunSetupError(
                f"dataset {config.dataset!r} has no {split!r} split (splits: {sorted(dataset.splits)}); "
                "training needs train and validation splits; prepare it with a validation share "
                "(dataset options, e.g. validation_fraction)"
            )
    devices = _devices(config)
    n = len(devices)
    global_batch = config.per_device_batch_size * n
    eval_global_batch = (config.per_device_eval_batch_size or config.per_device_batch_size) * n
    steps_per_epoch = len(dataset.splits["train"]) // global_batch
    if steps_per_epoch == 0:
        raise RunSetupError(
            f"the train split of {config.dataset!r} has {len(dataset.splits['train'])} examples, fewer than "
            f"one global batch of {global_batch} (= per_device_batch_size {config.per_device_batch_size} x {n} "
            "devices); lower --per-device-batch-size or --num-devices"
        )
    class_weights = None
    if config.class_weights == "balanced":
        class_weights = tuple(float(w) for w in data.class_weights(dataset, "train"))
    elif config.class_weights is not None:
        if len(config.class_weights) != dataset.num_classes:
            raise RunSetupError(
                f"class_weights has {len(config.class_weights)} entries but {config.dataset!r} has "
                f"{dataset.num_classes} classes {dataset.class_names}"
            )
        class_weights = tuple(float(w) for w in config.class_weights)
    image_shape = input_config.image_shape
    model, tx, engine, init_fn = build_engine(
        config, dataset.num_classes, image_shape, steps_per_epoch, class_weights, devices
    )
    timings.add("setup", time.perf_counter() - start - timings.seconds.get("dataset_open", 0.0))
    return RunSetup(
        config=config,
        dataset=dataset,
        input_config=input_config,
        model=model,
        engine=engine,
        tx=tx,
        init_fn=ema.attach(  # with the weights' average when ema_decay > 0
            functools.partial(init_fn, pretrained=pretrained) if pretrained is not None else init_fn,
            config.ema_decay,
        ),
        num_devices=n,
        global_batch_size=global_batch,
        eval_global_batch_size=eval_global_batch,
        steps_per_epoch=steps_per_epoch,
        image_shape=image_shape,
        class_weights=class_weights,
        input_fields=fields,
        timings=timings,
        weights=weights_record,
    )


def _devices(config: TrainConfig) -> list:
    """The devices to train on: the first ``num_devices`` local ones, or, with several
    processes (cxrjax/train/distributed.py), every process's devices, ordered by process
    so that process p's devices hold rows [p * B / P, (p + 1) * B / P) of each global
    batch, the rows its pipeline reads (cxrjax.data.pipeline)."""
    if jax.process_count() > 1:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        if config.num_devices not in (None, len(devices)):
            raise RunSetupError(
                f"num_devices={config.num_devices} but a run of {jax.process_count()} processes trains on all "
                f"of their {len(devices)} devices; leave --num-devices unset"
            )
        if config.parallel != "shard_map":
            raise RunSetupError(
                f"parallel={config.parallel!r} runs on one process's devices; a run of "
                f"{jax.process_count()} processes needs --parallel shard_map"
            )
        return devices
    available = jax.local_devices()
    n = config.num_devices or len(available)
    if n > len(available):
        raise RunSetupError(f"num_devices={n} but only {len(available)} local device(s) are available: {available}")
    return available[:n]


def dataset_info(setup: RunSetup) -> dict[str, Any]:
    """What the run was trained on (checkpoint metadata and results.json), with the
    prepared data's fingerprint (``PreparedDataset.fingerprint``; None for datasets
    without one, e.g. a test's in-memory look-alike) so a resume can refuse other data."""
    ds = setup.dataset
    return {
        "name": setup.config.dataset,
        "options": setup.config.dataset_options,
        "class_names": list(ds.class_names),
        "num_classes": ds.num_classes,
        "split_sizes": {name: len(src) for name, src in ds.splits.items()},
        "image_size": setup.image_shape[0],
        "channels": setup.image_shape[2],
        "fingerprint": getattr(ds, "fingerprint", None),
        # split_by="source": {split: [source, ...]}, the sources each split holds.
        "split_sources": (getattr(ds, "report", None) or {}).get("split_sources"),
    }


def data_differences(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """How two ``dataset_info`` fingerprints differ, in words ([] when they agree, or when
    either has none: runs from before fingerprints, in-memory datasets)."""
    if not saved or not current or saved.get("sha256") == current.get("sha256"):
        return []
    out = []
    for key in ("dataset", "config", "version", "class_names", "class_subset"):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: trained on {saved.get(key)!r}, now {current.get(key)!r}")
    old, new = saved.get("splits") or {}, current.get("splits") or {}
    for split in sorted(set(old) | set(new)):
        a, b = old.get(split) or {}, new.get(split) or {}
        if a.get("examples") != b.get("examples"):
            out.append(f"{split} split: {a.get('examples')} examples when trained, now {b.get('examples')}")
        elif a.get("sha256") != b.get("sha256"):
            out.append(f"{split} split: same size ({a.get('examples')}) but other files or labels")
    return out or ["the prepared data's fingerprint differs"]
