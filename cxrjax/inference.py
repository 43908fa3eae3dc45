"""The inference layer: a trained run folder, loaded, meeting a dataset.

What ``cxrjax.evaluate``, ``cxrjax.predict`` and ``cxrjax.explain`` share, so all three see
exactly the same model, preprocessing (the run's own eval pipeline) and label alignment:

- :func:`load_run` reads a run folder written by ``train_and_evaluate``: the TrainConfig,
  the Flax module (built for one device, ``axis_name=None``), the variables of one
  checkpoint, the class names in label order and the input settings (size, channels,
  normalisation) the model was trained with, and its ``calibration.json`` (temperature,
  operating thresholds) when fitted for that checkpoint. A :class:`LoadedRun` is a
  ``cxrjax.train.evaluation.Predictor``, so ``predict_split(run, ds, split, batch)`` is
  the same prediction function the trainer evaluates with.
- :func:`dataset_request` / :func:`open_dataset`: the run's own dataset (or another);
  :func:`label_mapping` checks its classes against the model's.
- :func:`eval_view`: the dataset's splits with the normalisation statistics the run was
  trained with, plus any extra "splits" (masked views, files handed to predict).
- The three command lines' shared options (:func:`run_parser`,
  :func:`add_checkpoint_arguments`, :func:`add_dataset_arguments`) and their handling
  of user errors (:data:`USER_ERRORS`, :func:`user_error`): one ``error:`` line and
  exit status 2 instead of a traceback.

Which weights (:data:`WEIGHTS`): a run trained with ``ema_decay > 0`` stores the moving
average of its weights next to the live ones (cxrjax/train/ema.py) and evaluated with the
average; ``load_run`` loads the average by default, ``weights="live"`` the optimiser's
(:func:`checkpoint_variables`).

Which checkpoint (:data:`CHECKPOINTS`): ``"evaluated"`` (the default everywhere) is the
one the run's own test evaluation used (results.json's ``evaluated.step``): the best by
the monitored validation metric, or the last epoch when the run was configured with
``restore_best=False``; before the run has finished it is the best so far. ``"best"``
and ``"latest"`` pick those.

A run may be read while it trains (no lock is taken): its retention deletes older
checkpoints as newer ones are written, possibly while one is being read. ``load_run``
then reads the newest checkpoint of the same kind instead, and if they keep vanishing
raises :class:`RunInProgressError` (a ``FileNotFoundError``) saying so. Every loaded run
says whether it is finished (:attr:`LoadedRun.run_status`: ``"finished"``,
``"in_progress"`` or ``"unfinished"``, with a note for the two others).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cxrjax import data
from cxrjax.data.errors import DataError
from cxrjax.reporting.calibration import apply_temperature
from cxrjax.reporting.jsonio import read_json
from cxrjax.train import workdir as files
from cxrjax.train.checkpointing import CheckpointStore
from cxrjax.train.config import TTA_MODES, TrainConfig
from cxrjax.train.evaluation import SplitNotFoundError
from cxrjax.train.run_setup import build_model

CHECKPOINTS = ("evaluated", "best", "latest")
DEFAULT_CHECKPOINT = "evaluated"
DEFAULT_BATCH_SIZE = 64


class EvaluationInputError(ValueError):
    """Bad input to evaluate / predict / explain (dataset, split, classes); the message
    says what to change. The command-line tools print it without a traceback."""


class ClassListMismatchError(EvaluationInputError):
    """The dataset's classes are not the classes the model was trained on."""


class MissingSplitError(EvaluationInputError, SplitNotFoundError):
    """The dataset has no such split."""


class RunInProgressError(FileNotFoundError):
    """The checkpoints of a run that is training vanished (retention) while being read."""


RUN_STATUSES = ("finished", "in_progress", "unfinished")


# ----------------------------------------------------------------------------- the run


_PROBABILITY_FNS: dict[str, Any] = {}


def probability_fn(model: Any):
    """Jitted softmax(model(x)) in eval mode, one per module configuration.

    Keyed by the module's repr (its class and every field; fields loaded from JSON may
    be lists, so the module itself is not always hashable): loading the same run again,
    or another run of the same architecture, reuses the compiled function instead of
    compiling anew for every ``load_run``.
    """
    key = repr(model)
    if key not in _PROBABILITY_FNS:
        if len(_PROBABILITY_FNS) >= 16:
            _PROBABILITY_FNS.clear()
        _PROBABILITY_FNS[key] = jax.jit(
            lambda variables, x: jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)
        )
    return _PROBABILITY_FNS[key]


@dataclass
class LoadedRun:
    """One checkpoint of a run folder, ready to predict (a ``Predictor``)."""

    workdir: Path
    config: TrainConfig
    model: Any  # flax.linen.Module, axis_name=None
    variables: dict[str, Any]  # {"params": ..., ["batch_stats": ...]}, numpy arrays
    class_names: list[str]
    dataset_info: dict[str, Any]  # name, options, class_names, split sizes, image_size, channels
    input_config_fields: dict[str, Any]  # cxrjax.data.InputConfig fields used in training
    step: int
    epoch: int  # completed epochs at that checkpoint
    checkpoint: str  # "best" | "latest" | "evaluated"
    weights: str  # WEIGHTS: "ema" (the checkpoint's moving average, cxrjax/train/ema.py) | "live"
    results: dict[str, Any] | None  # results.json, None while the run is unfinished
    run_status: str = "finished"  # RUN_STATUSES: results.json exists | a training holds the folder | neither
    run_status_note: str | None = None  # what the status means for these numbers (None when finished)
    # calibration.json (temperature, operating thresholds) when it was fitted for THIS
    # checkpoint; None otherwise, and calibration_note says why.
    calibration: dict[str, Any] | None = None
    calibration_note: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_config(self) -> data.InputConfig:
        """The ``cxrjax.data.InputConfig`` for evaluation (augmentation is ignored there)."""
        names = {f.name for f in dataclasses.fields(data.InputConfig)}
        return data.InputConfig(**{k: v for k, v in self.input_config_fields.items() if k in names})

    def probabilities(self, images: np.ndarray) -> Any:
        """softmax(model(images)) on one device, dispatched (fetched by :meth:`to_host`)."""
        return probability_fn(self.model)(self.variables, np.asarray(images, np.float32))

    def to_host(self, outputs: Any) -> np.ndarray:
        return np.asarray(outputs, np.float32)

    @property
    def temperature(self) -> float | None:
        """The stored temperature of this checkpoint (None: no calibration.json for it)."""
        return None if self.calibration is None else self.calibration.get("temperature")

    def calibrated(self, probs: np.ndarray) -> np.ndarray | None:
        """``probs`` after the stored temperature scaling (None without a temperature)."""
        t = self.temperature
        return None if t is None else apply_temperature(probs, t).astype(np.float32)


WEIGHTS = ("ema", "live")


def checkpoint_variables(
    tree: Mapping[str, Any], config: TrainConfig, weights: str | None, workdir: Path
) -> tuple[str, dict[str, Any]]:
    """(which, variables) of a restored checkpoint tree: ``"ema"`` (the moving average of
    the weights a run with ``ema_decay > 0`` keeps, and evaluated with during training)
    or ``"live"`` (the optimiser's current weights). ``weights=None`` picks what the run's
    own evaluation used; asking for ``"ema"`` of a run without an average is an error."""
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {WEIGHTS}")
    ema = tree.get("ema") or {}
    if weights is None:
        weights = "ema" if config.ema_decay else "live"
    if weights == "ema":
        if not ema.get("params"):
            raise EvaluationInputError(
                f"{workdir}: its checkpoints hold no moving average of the weights (trained with ema_decay="
                f"{config.ema_decay:g}); load its live weights instead (weights='live')"
            )
        source = ema
    else:
        source = tree
    variables = {"params": source["params"]}
    if source.get("batch_stats"):
        variables["batch_stats"] = source["batch_stats"]
    return weights, variables


def stored_calibration(workdir: Path, step: int) -> tuple[dict[str, Any] | None, str | None]:
    """(calibration.json, None) when it was fitted for checkpoint ``step``, else (None, why)."""
    path = workdir / files.CALIBRATION_FILE
    if not path.exists():
        return None, (
            f"{path} does not exist (a run trained before calibration was stored, or still training): "
            "no stored temperature or operating thresholds"
        )
    stored = read_json(path)
    fitted = (stored.get("checkpoint") or {}).get("step")
    if fitted is not None and int(fitted) != int(step):
        return None, (
            f"{path} was fitted for the checkpoint of step {fitted} (the evaluated one), not the loaded step {step}"
        )
    return stored, None


def load_run(workdir: str | Path, checkpoint: str = DEFAULT_CHECKPOINT, *, weights: str | None = None) -> LoadedRun:
    """Load a run folder written by ``train_and_evaluate`` / ``python -m cxrjax.train``.

    ``weights`` (:data:`WEIGHTS`): None loads the weights the run evaluated with (its EMA
    when trained with ``ema_decay > 0``, see :func:`checkpoint_variables`)."""
    workdir = Path(workdir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint={checkpoint!r}: choose one of {CHECKPOINTS}")
    config_path = workdir / files.CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: {workdir} is not a cxrjax run folder "
            "(create one with python -m cxrjax.train --workdir ...)"
        )
    config = TrainConfig.from_json_file(config_path)
    results_path = workdir / files.RESULTS_FILE
    results = read_json(results_path) if results_path.exists() else None
    step, tree, meta = _restore(workdir, checkpoint, results)
    weights, variables = checkpoint_variables(tree, config, weights, workdir)
    class_names = list(meta["class_names"])
    fields = dict(meta["input_config"])
    model = build_model(config, len(class_names), fields["channels"], axis_name=None)
    status, note = run_status(workdir)
    calibration, calibration_note = stored_calibration(workdir, int(step))
    return LoadedRun(
        workdir=workdir,
        config=config,
        model=model,
        variables=variables,
        class_names=class_names,
        dataset_info=dict(meta["dataset"]),
        input_config_fields=fields,
        step=int(step),
        epoch=int(meta["epoch"]),
        checkpoint=checkpoint,
        weights=weights,
        results=results,
        run_status=status,
        run_status_note=note,
        calibration=calibration,
        calibration_note=calibration_note,
    )


def run_status(workdir: str | Path) -> tuple[str, str | None]:
    """(status, note) of a run folder: ``"finished"`` (results.json exists; note None),
    ``"in_progress"`` (a live training holds its lock) or ``"unfinished"`` (neither: it
    stopped on an error such as non-finite values, was killed, or was interrupted)."""
    workdir = Path(workdir)
    if (workdir / files.RESULTS_FILE).exists():
        return "finished", None
    holder = files.lock_holder(workdir)
    if holder is not None:
        return "in_progress", (
            f"the run is still training (pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')}): no results.json yet, this is a snapshot of an unfinished run"
        )
    return "unfinished", (
        "the run is unfinished: no results.json and no training holds the folder (it stopped on an error, "
        "e.g. non-finite values, or was killed or interrupted); these numbers are of a checkpoint of an "
        "unfinished run. Re-run the same train command to resume it"
    )


_READ_ATTEMPTS = 5  # checkpoints chosen and read, before giving up on a run whose checkpoints keep vanishing
_VANISH_SECONDS = 5.0  # how long a live run's checkpoints are watched for a deletion, after a failed read


def _choose_step(store: CheckpointStore, checkpoint: str, results: dict[str, Any] | None) -> int | None:
    if checkpoint == "latest":
        return store.latest_step()
    if checkpoint == "evaluated" and results is not None:
        return int(results["evaluated"]["step"])
    step = store.best_step()
    return store.latest_step() if step is None else step


def _step_dirs(directory: Path) -> set[str]:
    try:
        return {p.name for p in directory.iterdir() if p.name.isdigit()}
    except OSError:
        return set()


def _pruned_meanwhile(workdir: Path, before: set[str]) -> bool:
    """Whether a live training's retention deleted one of the step folders listed in
    ``before`` (now, or within :data:`_VANISH_SECONDS`: it deletes files before folders).
    False at once when no training holds the folder: nothing prunes it then."""
    if files.lock_holder(workdir) is None:
        return False
    directory = workdir / files.CHECKPOINT_DIR
    deadline = time.monotonic() + _VANISH_SECONDS
    while before <= _step_dirs(directory):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _no_checkpoint_yet(workdir: Path) -> FileNotFoundError:
    holder = files.lock_holder(workdir)
    if holder is not None:
        return RunInProgressError(
            f"{workdir} holds no complete checkpoint yet: its training is in progress "
            f"(pid {holder.get('pid')} on {holder.get('host')}); try again after its first epoch"
        )
    if not (workdir / files.CHECKPOINT_DIR).is_dir():
        return FileNotFoundError(
            f"no checkpoints directory {workdir / files.CHECKPOINT_DIR}: is this a cxrjax run "
            "folder (written by python -m cxrjax.train --workdir ...)?"
        )
    return FileNotFoundError(
        f"{workdir / files.CHECKPOINT_DIR} holds no complete checkpoint yet (and no training "
        "is running in it: re-run the train command to start or resume it)"
    )


def _restore(workdir: Path, checkpoint: str, results: dict[str, Any] | None) -> tuple[int, Any, dict[str, Any]]:
    """(step, state tree, meta) of the chosen checkpoint.

    A live training's retention may delete checkpoints while they are listed or read
    (orbax then fails with FileNotFoundError, tensorstore NOT_FOUND, "Event loop is
    closed", ...): when a read fails and a step folder listed before it has gone, the
    choice is made again on a freshly listed store, up to :data:`_READ_ATTEMPTS` times.
    A failure without such a deletion (a finished run, a run no training holds, a
    checkpoint that stays) is a real error and re-raised.
    """
    directory = workdir / files.CHECKPOINT_DIR
    if not directory.is_dir():
        raise _no_checkpoint_yet(workdir)
    failed: list[str] = []
    for _ in range(_READ_ATTEMPTS):
        before = _step_dirs(directory)
        store = None
        try:
            store = CheckpointStore(directory, read_only=True)
            step = _choose_step(store, checkpoint, results)
            if step is None:
                raise _no_checkpoint_yet(workdir)
            if step not in store.steps():
                raise FileNotFoundError(
                    f"{workdir}: checkpoint step {step} ({checkpoint}) is missing; available steps {store.steps()}"
                )
            tree, meta = store.restore(step)
            return step, tree, meta
        except Exception as err:
            if results is not None or not _pruned_meanwhile(workdir, before):
                raise
            failed.append(f"{type(err).__name__}: {str(err)[:200]}")
        finally:
            if store is not None:
                try:
                    store.close()
                except Exception:  # noqa: BLE001 - a read-only store has nothing to save
                    pass
    raise RunInProgressError(
        f"{workdir}: the run is in progress and its retention deleted the checkpoints being read, "
        f"{len(failed)} times in a row (last: {failed[-1]}); try again, or wait until the run has "
        "finished (results.json)"
    )


# ------------------------------------------------------------------ the run meets data


def label_mapping(
    run_classes: Sequence[str], data_classes: Sequence[str], *, run_name: str, data_name: str
) -> np.ndarray | None:
    """How dataset label ids map to the model's output ids, or a clear error.

    None when the lists are identical. When they hold the same names in another order
    (e.g. a folder dataset sorted differently), the permutation ``perm[data_id] =
    model_id`` so every metric is computed in the model's class order. Anything else
    (different names, different number) raises, naming both lists: S0 reported class
    names in a different order from its label ids, which no one noticed.
    """
    run_classes, data_classes = list(run_classes), list(data_classes)
    if run_classes == data_classes:
        return None
    if sorted(run_classes) == sorted(data_classes) and len(set(run_classes)) == len(run_classes):
        return np.asarray([run_classes.index(c) for c in data_classes], np.int64)
    raise ClassListMismatchError(
        f"class lists do not match: the model in {run_name} was trained on {run_classes} but "
        f"dataset {data_name} has {data_classes}. Evaluate on a dataset with the same classes "
        "(same names; order may differ), or train a model on this dataset."
    )


def dataset_request(
    run: LoadedRun,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Arguments for ``cxrjax.data.load``: the run's training dataset unless overridden.

    For the run's own dataset, ``options`` are applied on top of the run's preparation
    options (so ``{"shortcut_marker": true}`` gives the same phantoms, now with the
    marker); for another dataset they are its options (None: its defaults).
    """
    config = run.config
    name = dataset or config.dataset
    if name == config.dataset:
        options = {**dict(config.dataset_options or {}), **dict(options or {})}
    return {
        "name": name,
        "data_dir": data_dir or config.data_dir,
        "manual_dir": manual_dir or (config.manual_dir if name == config.dataset else None),
        "options": options,
    }


def open_dataset(request: Mapping[str, Any]) -> Any:
    """``cxrjax.data.load`` of a :func:`dataset_request`."""
    if request["data_dir"] is None:
        raise EvaluationInputError(
            f"no data dir for dataset {request['name']!r}: the run's config.json has "
            "none; pass --data-dir DIR (where prepared datasets live)"
        )
    return data.load(
        request["name"], data_dir=request["data_dir"], manual_dir=request["manual_dir"], options=request["options"]
    )


def check_split(ds: Any, split: str) -> None:
    """Raise :class:`MissingSplitError` listing the splits when ``ds`` has no ``split``."""
    if split not in ds.splits:
        raise MissingSplitError(f"dataset {ds.name!r} has no split {split!r}; its splits are {sorted(ds.splits)}")


@dataclass
class DatasetView:
    """A duck-typed dataset for the eval pipeline: named record sources plus class names.

    Lets one object carry extra "splits" (a lung-masked view of the test split, the
    files handed to predict) next to the train split whose pixel statistics
    ``normalization="dataset"`` needs, so those statistics are computed once, from the
    data the model was trained on.
    """

    name: str
    class_names: list[str]
    splits: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stored_statistics(run: LoadedRun) -> tuple[float, float] | None:
    """(mean, std) a normalization="dataset" run stored at training time, or None (other
    normalisations, or runs trained before the statistics were stored)."""
    path = Path(run.workdir) / files.NORMALIZATION_FILE
    if run.input_config.normalization != "dataset" or not path.exists():
        return None
    stored = read_json(path)
    return float(stored["mean"]), float(stored["std"])


def needs_training_statistics(run: LoadedRun, request: Mapping[str, Any]) -> bool:
    """normalization="dataset" on data other than the run's own needs the run's train
    split, unless the run stored its statistics (:func:`stored_statistics`)."""
    config = run.config
    same = request["name"] == config.dataset and dict(request["options"] or {}) == dict(config.dataset_options or {})
    return run.input_config.normalization == "dataset" and not same and stored_statistics(run) is None


def statistics_source(
    run: LoadedRun, request: Mapping[str, Any] | None = None, *, data_dir: str | None = None
) -> Any | None:
    """The run's own training dataset when normalization="dataset" statistics must be read
    from its train split, else None.

    Only older runs that did not store their statistics need it, and only on data other
    than their own (``request``; None: files handed to predict, which have no train split).
    """
    if request is None:
        needed = run.input_config.normalization == "dataset" and stored_statistics(run) is None
    else:
        needed = needs_training_statistics(run, request)
    return open_dataset(dataset_request(run, data_dir=data_dir)) if needed else None


def eval_view(run: LoadedRun, ds: Any, stats_ds: Any | None = None, **extra_splits: Any) -> DatasetView:
    """``ds``'s splits, normalised as ``run`` was trained, plus ``extra_splits``.

    With ``normalization="dataset"`` the view uses the statistics the run stored, or else
    the train split of ``stats_ds`` (:func:`statistics_source`; default ``ds`` itself), so
    the statistics come from the data the model was trained on, never from the data
    evaluated.
    """
    splits = dict(ds.splits)
    stats_ds = ds if stats_ds is None else stats_ds
    if "train" in stats_ds.splits:
        splits["train"] = stats_ds.splits["train"]
    splits.update(extra_splits)
    view = DatasetView(name=getattr(ds, "name", "dataset"), class_names=list(ds.class_names), splits=splits)
    statistics = stored_statistics(run)
    if statistics is not None:
        data.set_dataset_statistics(view, *statistics)
    return view


def evaluation_view(
    run: LoadedRun, ds: Any, request: Mapping[str, Any], split: str, stats_ds: Any | None = None
) -> tuple[DatasetView, np.ndarray | None]:
    """(:func:`eval_view`, :func:`label_mapping`) for evaluating ``run`` on ``split`` of ``ds``,
    after checking the split exists and the classes match."""
    check_split(ds, split)
    mapping = label_mapping(run.class_names, ds.class_names, run_name=str(run.workdir), data_name=repr(request["name"]))
    return eval_view(run, ds, stats_ds), mapping


def split_field(ds: Any, split: str, key: str) -> list[Any]:
    """One field of every record of a split, in order (file names, masks)."""
    source = ds.splits[split]
    return [source[i][key] for i in range(len(source))]


def has_field(ds: Any, split: str, key: str) -> bool:
    source = ds.splits.get(split)
    return source is not None and len(source) > 0 and key in source[0]


# ---------------------------------------------------------------- the command lines

# What evaluate / explain / predict report as one ``error: ...`` line (exit status 2):
# bad input (split, classes, data dir), a missing run folder or checkpoint, and every
# error of the user's data (``DataError``: layout, changed source, unknown dataset or class).
USER_ERRORS = (EvaluationInputError, FileNotFoundError, DataError)

CHECKPOINT_HELP = (
    "which checkpoint (default: the one the run's own test evaluation used, i.e. the best by its "
    "monitored validation metric unless it was trained with restore_best=False)"
)


def run_parser(
    prog: str, description: str, *, ensemble: bool = False, required: bool = True
) -> argparse.ArgumentParser:
    """The parser of a command line that reads run folders, with its ``--workdir``: one run,
    or with ``ensemble`` one or more (a list); ``required=False`` when another option
    (evaluate's ``--compare``) can name the runs instead."""
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    runs = "run folder written by python -m cxrjax.train"
    if ensemble:
        p.add_argument(
            "--workdir", action="append", required=required, metavar="RUN", help=f"{runs} (repeat for an ensemble)"
        )
    else:
        p.add_argument("--workdir", required=required, help=runs)
    return p


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (:data:`CHECKPOINTS`) and ``--batch-size``: how a run is loaded and
    fed, the same in every command line that loads one."""
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, choices=CHECKPOINTS, help=CHECKPOINT_HELP)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)


def add_weights_and_tta_arguments(p: argparse.ArgumentParser, *, tta: bool = True) -> None:
    """``--weights`` (:data:`WEIGHTS`) and ``--tta`` (test-time augmentation reported beside
    the plain predictions, ``cxrjax/train/tta.py``)."""
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="ema: the checkpoint's moving average of the weights; live: the optimiser's (default: those the run "
        "evaluated with: ema when trained with ema_decay > 0)",
    )
    if tta:
        p.add_argument(
            "--tta",
            choices=TTA_MODES,
            help="test-time augmentation reported beside the plain numbers: mean softmax over the identity and "
            "flip / 4 small shifts / both (default: the run's tta setting; flips put the heart on the other side)",
        )


def add_dataset_arguments(p: argparse.ArgumentParser, *, options_help: str = "preparation options as JSON") -> None:
    """The data a run is evaluated on (:func:`dataset_request`; default: its own) and the
    split; :func:`common_kwargs` reads them back."""
    p.add_argument("--dataset", help="dataset name (default: the run's training dataset)")
    p.add_argument("--data-dir", help="where prepared datasets live (default: the run's)")
    p.add_argument("--manual-dir", help="your download of a real dataset, if not yet prepared")
    p.add_argument("--dataset-options", type=json.loads, metavar="JSON", help=options_help)
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_dataset_arguments` and :func:`add_checkpoint_arguments`,
    by the keyword names ``explain`` and ``EvalOptions`` take them."""
    names = ("dataset", "data_dir", "manual_dir", "dataset_options", "split", "checkpoint", "batch_size")
    return {name: getattr(args, name) for name in names}


def user_error(error: BaseException) -> int:
    """Print a user error (:data:`USER_ERRORS`) as one ``error:`` line on stderr; returns
    the exit status, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2
