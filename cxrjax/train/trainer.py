"""``train_and_evaluate(config, workdir)``: one complete, resumable training run.

What happens, in order:

1. If ``results.json`` exists the run is finished: its config.json is compared with
   ``config`` and its results are returned without training (nothing is written).
   Otherwise the workdir is locked for the whole run (``train.lock``: a second training
   in the same folder is refused, see workdir.py), then its ``config.json`` is written,
   or compared with ``config`` (a different configuration is refused).
2. The dataset is opened (``cxrjax.data.load``), the model built with the dataset's
   number of classes and ``axis_name="batch"``, the optimiser from the config, and the
   per-replica steps compiled for ``num_devices`` devices (shard_map or pmap).
3. If the workdir holds a checkpoint, the newest one is restored: train state, epoch,
   position inside the epoch and grain iterator state, trackers, history. The run then
   continues at the exact next batch; on CPU it ends bit-identical to an uninterrupted
   run (tests/train/test_train_loop_runs.py).
4. Each epoch: train steps dispatched asynchronously; every ``log_every_steps`` the
   metrics of the steps since the last fetch are fetched together (progress bar, NaN
   check); optional mid-epoch checkpoints; then the full validation split is evaluated,
   early stopping / reduce-on-plateau decide, one line goes to metrics.jsonl and an
   end-of-epoch checkpoint is saved asynchronously.
5. The best checkpoint (or the last, with ``restore_best=False``) is restored and the
   validation and test splits evaluated. A temperature and per-class operating thresholds
   (``target_sensitivity``) are fitted on the validation predictions and written to
   ``calibration.json``; every split's report gets its calibration before/after, bootstrap
   intervals (``bootstrap_resamples``, seeded by ``seed``) and operating points
   (``cxrjax.reporting.calibration.split_calibration_report``); plots and
   ``results.json`` are written. With ``tta`` other than "none" each split's report also
   gets ``tta`` (cxrjax/train/tta.py), beside the plain numbers. With ``ema_decay > 0``
   every evaluation (validation per epoch, early stopping, best checkpoint, test) uses
   the moving average of the weights (cxrjax/train/ema.py; ``evaluated_weights``).

Non-finite loss or gradients, or an update that would make the state non-finite, never
corrupt the state (steps.py). With ``on_nonfinite="stop"`` the first such step raises
:class:`NonFiniteError` when its metrics are fetched, before any later checkpoint is
written; with ``"skip"`` the update is skipped and counted (``skipped_nonfinite`` per
epoch, ``skipped_nonfinite_steps`` in the results: every session of the run), and a run
that skipped more than ``max_skipped_fraction`` of its steps ends with
:class:`TooManySkippedStepsError` instead of results (its model is barely trained).

A run that finishes but diverged (train loss or gradient norm of the last epoch
non-finite or above :data:`EXPLODED`) gets a ``warning:`` line on stderr and an entry in
``results.json["warnings"]``, as do skipped steps.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from tqdm.auto import tqdm

from cxrjax.data.errors import DataError
from cxrjax.reporting import calibration as calib
from cxrjax.reporting import plots
from cxrjax.train import distributed
from cxrjax.train import workdir as files
from cxrjax.train.checkpointing import CheckpointStore
from cxrjax.train.compile_cache import enable_compilation_cache
from cxrjax.train.config import TrainConfig, mode_for
from cxrjax.train.data_api import data_api
from cxrjax.train.early_stopping import EarlyStopping, ImprovementTracker, PlateauScaler
from cxrjax.train.evaluation import evaluate_split
from cxrjax.train.run_setup import (
    RunSetup,
    RunSetupError,
    data_differences,
    dataset_info,
    describe_weights,
    setup_run,
)
from cxrjax.train.state import from_tree, parameter_count, to_tree
from cxrjax.train.timings import PhaseTimings
from cxrjax.train.tta import tta_report

META_FORMAT = 1


class NonFiniteError(FloatingPointError):
    """A step's loss or gradients were NaN/inf, or its update would have made the
    params / optimizer state / BatchNorm statistics so (``on_nonfinite="stop"``).

    ``metrics``: the step's host metrics, which say what was not finite (``loss``,
    ``grad_norm`` and ``finite_loss_and_grads``)."""

    def __init__(
        self, *, step: int, epoch: int, batch: int, steps_per_epoch: int, workdir: Path, metrics: Mapping[str, Any]
    ):
        self.step, self.epoch, self.batch = step, epoch, batch
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if bool(metrics.get("finite_loss_and_grads", False)):
            what = (
                f"non-finite update: the loss ({loss}) and every gradient were finite (global norm "
                f"{grad_norm}), but the new params, optimizer state or BatchNorm statistics would not have been"
            )
        else:
            what = f"non-finite loss or gradients (loss={loss}, gradient norm {grad_norm})"
        super().__init__(
            f"{what} at global step {step}, epoch {epoch} (1-based, as in the progress bar), batch {batch} of "
            f"that epoch (0-based, of {steps_per_epoch}). That update was not applied (every step checks its "
            f"new state, so the state stayed finite) and no checkpoint after it was written ({workdir}). "
            "Lower the learning rate, set grad_clip_norm, check the data, or set on_nonfinite='skip' to skip "
            "such batches and count them."
        )


class TooManySkippedStepsError(NonFiniteError):
    """``on_nonfinite="skip"`` skipped more than ``max_skipped_fraction`` of a run's steps."""

    def __init__(self, *, skipped: int, steps: int, max_fraction: float, first_step: int, workdir: Path):
        FloatingPointError.__init__(
            self,
            f"{skipped} of the run's {steps} steps ({skipped / steps:.0%}) were skipped as non-finite "
            f"(first at global step {first_step}), more than max_skipped_fraction={max_fraction:g}: the model "
            f"is barely trained, so no results.json was written ({workdir}; its checkpoints are kept). Lower "
            "the learning rate, set grad_clip_norm or check the data, and train in a new --workdir.",
        )
        self.skipped, self.steps = skipped, steps
        self.step, self.epoch, self.batch = first_step, None, None


# The errors a user fixes (a refused configuration or data, a locked or broken run folder,
# a run that diverged): command-line tools print them as one ``error:`` line, exit 2.
USER_ERRORS = (
    files.ConfigMismatchError,
    files.WorkdirError,
    NonFiniteError,
    RunSetupError,
    DataError,
    distributed.DistributedSetupError,
)


# A last-epoch train loss or gradient norm above this is a diverged run (cross-entropy of
# a sane model is a few units; gradient norms are rarely above thousands).
EXPLODED = 1e6


# ----------------------------------------------------------------------------------------
# Host-side progress of a run: everything besides the TrainState that a resume needs.
# ----------------------------------------------------------------------------------------
@dataclass
class EpochSums:
    """Running sums of one epoch's fetched step metrics (stored in checkpoints, so a
    resumed epoch continues its averages)."""

    loss: float = 0.0
    accuracy: float = 0.0
    grad_norm: float = 0.0
    finite_steps: int = 0
    steps: int = 0
    skipped: int = 0
    param_norm: float = float("nan")  # of the last finite step
    lr: float = float("nan")  # of the last finite step
    seconds: float = 0.0  # training time of the epoch, all sessions

    def add(self, m: dict[str, Any]) -> bool:
        """Add one step's fetched metrics; return whether the step was finite."""
        self.steps += 1
        if not bool(m["finite"]):
            self.skipped += 1
            return False
        self.finite_steps += 1
        self.loss += float(m["loss"])
        self.accuracy += float(m["accuracy"])
        self.grad_norm += float(m["grad_norm"])
        self.param_norm, self.lr = float(m["param_norm"]), float(m["lr"])
        return True

    def mean(self, name: str) -> float:
        """Mean of ``name`` over the finite steps (NaN when there were none)."""
        return getattr(self, name) / self.finite_steps if self.finite_steps else float("nan")


@dataclass
class Progress:
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of epoch ``epoch + 1`` already trained on
    iterator_state: dict[str, Any] | None = None
    sums: EpochSums = dataclasses.field(default_factory=EpochSums)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0  # all epochs, this and earlier sessions
    early_stopping: dict[str, Any] | None = None
    plateau: dict[str, Any] | None = None


def _meta(progress: Progress, setup: RunSetup) -> dict[str, Any]:
    return {
        "format": META_FORMAT,
        **dataclasses.asdict(progress),
        "class_names": list(setup.dataset.class_names),
        "dataset": dataset_info(setup),
        "input_config": setup.input_fields,
        "steps_per_epoch": setup.steps_per_epoch,
        "global_batch_size": setup.global_batch_size,
        "num_devices": setup.num_devices,
        "data_placement": setup.placement,
    }


def _trackers(config: TrainConfig, progress: Progress) -> tuple[EarlyStopping, PlateauScaler | None]:
    if progress.early_stopping is not None:
        stopper = EarlyStopping.from_dict(progress.early_stopping)
    else:
        stopper = EarlyStopping(
            ImprovementTracker(config.monitor_mode, config.early_stopping_min_delta), config.early_stopping_patience
        )
    plateau = None
    if config.schedule == "plateau":
        if progress.plateau is not None:
            plateau = PlateauScaler.from_dict(progress.plateau)
        else:
            plateau = PlateauScaler(
                ImprovementTracker(mode_for(config.plateau_monitor), config.plateau_min_delta),
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                base_lr=config.lr,
                min_lr=config.plateau_min_lr,
            )
    return stopper, plateau


# ----------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------
def train_and_evaluate(
    config: TrainConfig,
    workdir: str | Path,
    *,
    dataset: Any | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming whatever is there) and return results.json's dict.

    ``dataset``: an already opened ``cxrjax.data.PreparedDataset`` (experiments pass one
    to avoid reopening it); by default ``cxrjax.data.load`` opens ``config.dataset``.
    ``on_checkpoint(step)`` is called after each checkpoint is completely written (with
    a hook, saves are therefore synchronous); tests use it to kill a run at a known point.

    The run holds the folder's lock (workdir.WorkdirLock) from before config.json is
    compared until it returns: a second training on the same folder raises
    ``WorkdirLockedError``. A finished run is only read (no lock, nothing written).
    Storage failures (disk full, read-only folder) raise ``WorkdirStorageError``s.
    """
    config = _with_absolute_paths(config.validated())
    workdir = Path(workdir)
    distributed.initialize(config)  # several processes (distributed.py); before any backend starts
    if not distributed.is_primary():
        # Process 0 alone writes the run's files and shows progress; the others log one
        # line per epoch (_train_epochs). All three fields are result-irrelevant.
        config = config.replace(progress=False, plots=False, tensorboard=False)
    files.prepare_workdir(workdir)
    if config.compilation_cache_dir:
        enable_compilation_cache(config.compilation_cache_dir)
    # A lost peer process ends this one with an error: line (distributed.py).
    with distributed.reporting_lost_processes(config, workdir):
        return _locked_train_and_evaluate(config, workdir, dataset, on_checkpoint)


def _locked_train_and_evaluate(
    config: TrainConfig, workdir: Path, dataset: Any | None, on_checkpoint: Callable[[int], None] | None
) -> dict[str, Any]:
    """train_and_evaluate after the runtime started: the config check, the lock, the run."""
    try:
        finished = _finished_results(config, workdir)
        if finished is not None:
            return finished
        if not distributed.is_primary():
            # Process 0 holds the lock and has compared (or written) config.json: the
            # same command's config, up to the result-irrelevant process fields.
            distributed.barrier("cxrjax_config_checked")
            return _train_and_evaluate(config, workdir, dataset, on_checkpoint)
        with files.WorkdirLock(workdir):
            files.check_or_write_config(workdir, config)
            distributed.barrier("cxrjax_config_checked")
            finished = _finished_results(config, workdir)  # finished by its holder just before we locked
            if finished is not None:
                return finished
            return _train_and_evaluate(config, workdir, dataset, on_checkpoint)
    except OSError as err:
        storage = files.storage_error(err, workdir, "write the run's files")
        if storage is None:
            raise
        raise storage from err


def _finished_results(config: TrainConfig, workdir: Path) -> dict[str, Any] | None:
    """results.json's dict when the run is finished (after the config check), else None."""
    results_path = workdir / files.RESULTS_FILE
    if not results_path.exists():
        return None
    files.check_or_write_config(workdir, config)  # compares only: a finished run is never rewritten
    _say(config, f"{workdir}: run already finished; returning {results_path}")
    results = files.read_json(results_path)
    for warning in results.get("warnings") or []:
        _warn(warning)
    return results


def _train_and_evaluate(
    config: TrainConfig, workdir: Path, dataset: Any | None, on_checkpoint: Callable[[int], None] | None
) -> dict[str, Any]:
    """The run itself, with the workdir locked and its config.json in place."""
    session_start = time.perf_counter()
    timings = PhaseTimings()  # results.json["timings"] (cxrjax/train/timings.py)
    setup = setup_run(config, dataset, timings)
    if describe_weights(setup.weights):
        _say(config, describe_weights(setup.weights))
    with timings.phase("setup"):
        if distributed.is_primary():
            _write_normalization_statistics(workdir, setup)
        engine = setup.engine
        target = setup.init_fn(config.seed)
    progress = Progress()
    store = CheckpointStore(workdir / files.CHECKPOINT_DIR, timings=timings)
    writer = None
    try:
        latest = store.latest_step()
        resumed_placement = None
        if latest is not None:
            tree, meta = store.restore(latest, to_tree(target))
            resumed_placement = meta.get("data_placement", "host")  # runs from before placements: host
            state = from_tree(target, tree)
            progress = _progress_from_meta(meta, setup, workdir)
            if distributed.is_primary():
                files.write_history(workdir, progress.history)
            _say(
                config,
                f"{workdir}: resuming from checkpoint step {latest} (epoch {progress.epoch + 1}, "
                f"batch {progress.batch_in_epoch} of {setup.steps_per_epoch})",
            )
        else:
            state = target
            if distributed.is_primary():
                files.write_history(workdir, [])
        with timings.phase("setup"):
            _place_data(setup, resumed_placement, workdir)
        if config.tensorboard:
            from cxrjax.train.tensorboard import ScalarWriter

            writer = ScalarWriter(workdir / files.TENSORBOARD_DIR)
        with timings.phase("setup"):
            device_state = engine.put_state(state)
        history_start = len(progress.history)
        device_state = _train_epochs(setup, device_state, progress, store, workdir, writer, on_checkpoint)
        _add_epoch_timings(timings, progress.history[history_start:])
        _check_skipped_fraction(setup, device_state, progress, workdir)
        results = _final_evaluation(setup, device_state, progress, store, workdir, session_start)
    finally:
        store.close()  # waits for asynchronous saves
        if writer is not None:
            writer.close()
    return results


def _add_epoch_timings(timings: PhaseTimings, records: list[dict[str, Any]]) -> None:
    """The epochs of this session (their metrics.jsonl lines) into ``timings``: the first
    epoch's train time (compilation included), the others', and every validation."""
    for i, record in enumerate(records):
        timings.add("compile_first_epoch" if i == 0 else "train", float(record.get("train_seconds") or 0.0))
        timings.add("validation", float(record.get("eval_seconds") or 0.0))


def _place_data(setup: RunSetup, resumed: str | None, workdir: Path) -> None:
    """Resolve ``data_placement`` (``"auto"`` keeps a resumed run's) and, for "device", put
    the splits on the devices (cxrjax/train/resident.py)."""
    from cxrjax.train import resident

    config = setup.config
    try:
        placement = resident.choose_placement(
            config, setup.dataset, setup.image_shape[0], setup.engine.devices, resumed=resumed
        )
    except resident.PlacementError as err:
        raise RunSetupError(str(err)) from err
    if resumed is not None and placement != resumed:
        raise files.ConfigMismatchError(
            f"{workdir}: the checkpoint was trained with data_placement={resumed!r} but this session asks for "
            f"{placement!r}; with augmentation or balanced sampling the batches differ. Resume with "
            f"--data-placement {resumed} (or auto), or use a new --workdir"
        )
    setup.placement = placement
    setup.resident = None
    if placement == "device":
        setup.resident = resident.ResidentInput(
            setup.engine,
            setup.dataset,
            setup.input_config,
            global_batch=setup.global_batch_size,
            eval_global_batch=setup.eval_global_batch_size,
            steps_per_epoch=setup.steps_per_epoch,
        )
        nbytes = resident.resident_bytes(setup.dataset, setup.image_shape[0])
        _say(
            config, f"data on the devices: {nbytes / 2**20:.1f} MiB of uint8 images over {setup.num_devices} device(s)"
        )


def _with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """``data_dir`` / ``manual_dir`` / ``pretrained`` resolved against the current directory,
    so config.json says where the data and the ImageNet weights are and evaluate/predict/
    explain started elsewhere read the same prepared files (data_dir and manual_dir are
    result-irrelevant: a moved folder still resumes; ``pretrained`` is result-relevant and
    compared by the weights it names, ``config.same_pretrained``: a resume from another
    directory whose same relative path names a copy of the file is not refused)."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().absolute())

    return config.replace(
        data_dir=absolute(config.data_dir),
        manual_dir=absolute(config.manual_dir),
        pretrained=absolute(config.pretrained),
    )


def _write_normalization_statistics(workdir: Path, setup: RunSetup) -> None:
    """normalization="dataset": store the train-split mean/std the run normalises with,
    so evaluate / predict / explain need not reopen the training data (issue 7)."""
    if setup.config.normalization != "dataset":
        return
    stats = data_api().dataset_statistics(setup.dataset)  # cached per dataset object; the pipeline uses the same
    files.write_json(
        workdir / files.NORMALIZATION_FILE,
        {
            "normalization": "dataset",
            "mean": float(stats.mean),
            "std": float(stats.std),
            "scale": "[0, 1] pixel values",
            "source": f"train split of {setup.config.dataset}",
            "dataset_options": dict(setup.config.dataset_options or {}),
        },
    )


def _progress_from_meta(meta: dict[str, Any], setup: RunSetup, workdir: Path) -> Progress:
    if meta.get("format") != META_FORMAT:
        raise files.ConfigMismatchError(
            f"{workdir}: checkpoint metadata format {meta.get('format')} is not {META_FORMAT}; "
            "it was written by another cxrjax version; use a new --workdir"
        )
    changed = data_differences((meta.get("dataset") or {}).get("fingerprint"), dataset_info(setup)["fingerprint"])
    if changed:
        raise files.ConfigMismatchError(
            f"{workdir}: the checkpoint was trained on other data than this session's "
            f"({setup.config.dataset!r} from --data-dir {setup.config.data_dir}"
            f"{', --manual-dir ' + str(setup.config.manual_dir) if setup.config.manual_dir else ''}):\n  "
            + "\n  ".join(changed)
            + "\nResume with the data the run was trained on, or use a new --workdir for this data."
        )
    if meta.get("class_names") != list(setup.dataset.class_names):
        raise files.ConfigMismatchError(
            f"{workdir}: the checkpoint was trained on classes {meta.get('class_names')} but the dataset now "
            f"has {list(setup.dataset.class_names)}; use a new --workdir"
        )
    if (meta.get("steps_per_epoch"), meta.get("global_batch_size")) != (setup.steps_per_epoch, setup.global_batch_size):
        raise files.ConfigMismatchError(
            f"{workdir}: the checkpoint had {meta.get('steps_per_epoch')} steps per epoch but this session has "
            f"{setup.steps_per_epoch} (global batch {setup.global_batch_size} on {setup.num_devices} devices; the "
            f"checkpoint used {meta.get('global_batch_size')} on {meta.get('num_devices')}); resume with the same "
            "number of devices (--num-devices) or use a new --workdir"
        )
    names = {f.name for f in dataclasses.fields(Progress)}
    progress = Progress(**{k: v for k, v in meta.items() if k in names})
    progress.sums = EpochSums(**progress.sums)
    states = meta.get("process_iterator_states")  # one per process (several processes)
    if states is not None and any(state is not None for state in states):  # None: at an epoch's end
        if len(states) != distributed.process_count():
            raise files.ConfigMismatchError(
                f"{workdir}: the checkpoint was written by {len(states)} process(es), this session runs "
                f"{distributed.process_count()}; each process's input position is in the checkpoint, so resume "
                f"with {len(states)} process(es) or use a new --workdir"
            )
        import jax

        progress.iterator_state = states[jax.process_index()]
    return progress


def _close(iterator: Any) -> None:
    """Stop an iterator's worker processes now (num_workers > 0) rather than at GC."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _say(config: TrainConfig, message: str) -> None:
    if config.progress:
        tqdm.write(message)


def _warn(message: str) -> None:
    """A ``warning:`` line on stderr, with or without progress output."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _skipped_total(setup: RunSetup, device_state: Any) -> tuple[int, int]:
    """(skipped steps, first skipped step) of the whole run: the device counters, which
    checkpoints carry over from session to session."""
    host = setup.engine.host_state((device_state.skipped_steps, device_state.first_nonfinite_step))
    return int(host[0]), int(host[1])


def _check_skipped_fraction(setup: RunSetup, device_state: Any, progress: Progress, workdir: Path) -> None:
    """Raise TooManySkippedStepsError when the run skipped more than max_skipped_fraction of its steps."""
    steps = progress.epoch * setup.steps_per_epoch
    skipped, first = _skipped_total(setup, device_state)
    if steps and skipped / steps > setup.config.max_skipped_fraction:
        raise TooManySkippedStepsError(
            skipped=skipped,
            steps=steps,
            max_fraction=setup.config.max_skipped_fraction,
            first_step=first,
            workdir=workdir,
        )


def _run_warnings(setup: RunSetup, progress: Progress, skipped: int) -> list[str]:
    """What a finished run should be loud about: divergence in its last epoch, skipped steps."""
    warnings = []
    last = progress.history[-1] if progress.history else None
    if last is not None and last.get("skipped_nonfinite") == setup.steps_per_epoch:
        warnings.append(
            f"no update of the last epoch ({last['epoch']}) was applied: all its "
            f"{setup.steps_per_epoch} steps were skipped as non-finite"
        )
    elif last is not None:
        bad = []
        for key, name in (("train_loss", "train loss"), ("grad_norm", "mean gradient norm")):
            value = float("nan") if last.get(key) is None else float(last[key])
            if not math.isfinite(value) or value > EXPLODED:
                bad.append(f"{name} {value:.3g}")
        if bad:
            warnings.append(
                f"the run diverged: in its last epoch ({last['epoch']}) {' and '.join(bad)} (non-finite or above "
                f"{EXPLODED:g}); its model and metrics are not trustworthy. Lower the learning rate or set "
                "grad_clip_norm, and train in a new --workdir."
            )
    if skipped:
        steps = progress.epoch * setup.steps_per_epoch
        warnings.append(
            f"{skipped} of {steps} steps were skipped as non-finite (on_nonfinite='skip', "
            f"max_skipped_fraction={setup.config.max_skipped_fraction:g})"
        )
    return warnings


class Saver:
    """Writes a checkpoint of the device state with the run's progress and trackers."""

    def __init__(
        self,
        setup: RunSetup,
        progress: Progress,
        store: CheckpointStore,
        trackers: tuple[EarlyStopping, PlateauScaler | None],
        on_checkpoint: Callable[[int], None] | None,
    ):
        self.setup, self.progress, self.store, self.on_checkpoint = setup, progress, store, on_checkpoint
        self.stopper, self.plateau = trackers

    def __call__(self, step: int, device_state: Any, best_rank: int | None) -> None:
        self.progress.early_stopping = self.stopper.to_dict()
        self.progress.plateau = self.plateau.to_dict() if self.plateau else None
        with self.setup.timings.phase("checkpoints"):
            host = self.setup.engine.host_state(device_state)
            meta = _meta(self.progress, self.setup)
            if distributed.process_count() > 1:  # every process reads its own rows: keep each one's position
                meta["process_iterator_states"] = distributed.allgather_json(self.progress.iterator_state)
            self.store.save(step, to_tree(host), meta, best_rank)
            if self.on_checkpoint is not None:
                self.store.wait()
        if self.on_checkpoint is not None:
            self.on_checkpoint(step)


def _train_epochs(
    setup: RunSetup,
    device_state: Any,
    progress: Progress,
    store: CheckpointStore,
    workdir: Path,
    writer: Any,
    on_checkpoint: Callable[[int], None] | None,
) -> Any:
    """Train the remaining epochs; each ends with validation, a metrics line and a checkpoint."""
    config = setup.config
    trackers = _trackers(config, progress)
    stopper, plateau = trackers
    save = Saver(setup, progress, store, trackers, on_checkpoint)
    while progress.epoch < config.epochs and not progress.stopped_early:
        epoch = progress.epoch + 1  # 1-based, as displayed
        device_state = _train_one_epoch(setup, device_state, progress, save, workdir)
        # The previous checkpoint is complete by now (it was written while this epoch
        # trained); a failed save is reported here, at the next epoch, not epochs later.
        store.wait()

        eval_t0 = time.perf_counter()
        val, _ = evaluate_split(
            setup.predictor(device_state),
            setup.dataset,
            "validation",
            setup.eval_global_batch_size,
            progress=config.progress,
        )
        monitored = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]}
        improved = stopper.update(monitored[config.monitor], epoch)
        if stopper.should_stop and epoch < config.epochs:
            progress.stopped_early = True
        lr_scale = None
        if plateau is not None:
            old = plateau.scale
            lr_scale = plateau.update(monitored[config.plateau_monitor], epoch)
            if lr_scale != old:
                host = setup.engine.host_state(device_state)
                device_state = setup.engine.put_state(host.replace(lr_scale=np.float32(lr_scale)))
        record = _epoch_record(
            setup, progress, epoch, monitored, lr_scale, improved, stopper, eval_seconds=time.perf_counter() - eval_t0
        )
        progress.history.append(record)
        if distributed.is_primary():
            files.append_history(workdir, record)
        else:
            import jax

            print(
                f"process {jax.process_index()}: epoch {epoch}/{config.epochs} train loss {record['train_loss']:.4f} "
                f"| val loss {val['loss']:.4f} acc {val['accuracy']:.4f}",
                flush=True,
            )
        if writer is not None:
            writer.scalars(record["step"], {k: record[k] for k in TENSORBOARD_SCALARS})
        _say(
            config,
            f"epoch {epoch}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f}"
            f"{' *' if improved else ''} | {record['images_per_second']:.0f} img/s",
        )
        progress.epoch += 1
        progress.batch_in_epoch = 0
        progress.iterator_state = None
        progress.sums = EpochSums()
        save(progress.epoch * setup.steps_per_epoch, device_state, epoch if improved else -1)
        if progress.stopped_early:
            _say(
                config,
                f"early stopping after epoch {epoch}: {config.monitor} did not improve for "
                f"{config.early_stopping_patience} epoch(s); best epoch {stopper.tracker.best_epoch}",
            )
    return device_state


TENSORBOARD_SCALARS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "grad_norm",
    "param_norm",
    "images_per_second",
)


class _HostFeed:
    """Training batches of one epoch from the grain pipeline (``data_placement="host"``)."""

    def __init__(self, setup: RunSetup, progress: Progress):
        data, config = data_api(), setup.config
        self.engine = setup.engine
        batches = data.train_batches(
            setup.dataset,
            "train",
            setup.input_config,
            seed=config.seed,
            epoch=progress.epoch,
            global_batch_size=setup.global_batch_size,
        )
        self.iterator = data.make_iterator(batches, num_workers=config.num_workers)
        if progress.iterator_state is not None:
            self.iterator.set_state(progress.iterator_state)

    def run(self, device_state: Any, count: int) -> tuple[Any, Any, bool]:
        """(state, metrics, stacked): the next ``count`` steps; K > 1 in one call."""
        batches = [next(self.iterator) for _ in range(count)]
        if count == 1:
            (b,) = batches
            batch = self.engine.put_batch({"image": np.asarray(b["image"]), "label": np.asarray(b["label"])})
            return (*self.engine.train_step(device_state, batch), False)
        stacked = {k: np.stack([np.asarray(b[k]) for b in batches]) for k in ("image", "label")}
        return (*self.engine.train_steps(device_state, self.engine.put_batches(stacked)), True)

    def get_state(self, batch_in_epoch: int) -> dict[str, Any]:
        return self.iterator.get_state()

    def close(self) -> None:
        _close(self.iterator)


class _DeviceFeed:
    """Training batches made inside the compiled step from the device copy (``"device"``)."""

    def __init__(self, setup: RunSetup, progress: Progress):
        self.resident = setup.resident
        state = progress.iterator_state
        if state is not None and state.get("placement") != "device":
            raise files.ConfigMismatchError(
                "the checkpoint's iterator state is the host pipeline's, but this session trains from the "
                "device copy; resume with --data-placement host or use a new --workdir"
            )
        self.resident.start_epoch(setup.config.seed, progress.epoch)

    def run(self, device_state: Any, count: int) -> tuple[Any, Any, bool]:
        return (*self.resident.train_steps(device_state, count), True)

    def get_state(self, batch_in_epoch: int) -> dict[str, Any]:
        return self.resident.iterator_state(batch_in_epoch)

    def close(self) -> None:
        pass


def _dispatch_size(batch_index: int, step: int, setup: RunSetup) -> int:
    """Steps of the next call: ``steps_per_dispatch``, or 1 where K would run past the
    epoch's end or a mid-epoch checkpoint (so checkpoints fall between calls and at most
    two programs are compiled: K steps and one)."""
    config = setup.config
    k = config.steps_per_dispatch
    if k == 1 or batch_index + k > setup.steps_per_epoch:
        return 1
    every = config.checkpoint_every_steps
    if every is not None and every - step % every < k:
        return 1
    return k


def _train_one_epoch(setup: RunSetup, device_state: Any, progress: Progress, save: Saver, workdir: Path) -> Any:
    """The train steps of epoch ``progress.epoch + 1`` from ``progress.batch_in_epoch`` on.

    Calls are dispatched asynchronously, ``steps_per_dispatch`` steps each (see
    :func:`_dispatch_size`); every ``log_every_steps`` (and before each checkpoint) the
    metrics of the steps since the last fetch are fetched together into
    ``progress.sums`` (progress bar, non-finite check: a non-finite step inside a
    multi-step call is reported with its own global step and batch).
    """
    config, engine, spe = setup.config, setup.engine, setup.steps_per_epoch
    epoch = progress.epoch + 1
    feed = _DeviceFeed(setup, progress) if setup.resident is not None else _HostFeed(setup, progress)
    sums = progress.sums
    # (first global step, first batch index, steps, stacked, device metrics) per call
    pending: list[tuple[int, int, int, bool, Any]] = []
    session_images, t0 = 0, time.perf_counter()
    bar = tqdm(
        total=spe,
        initial=progress.batch_in_epoch,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=not config.progress,
        leave=True,
        dynamic_ncols=True,
    )

    def flush() -> None:
        fetched = engine.host_metrics([p[-1] for p in pending]) if pending else []
        for (step, batch_index, count, stacked, _), metrics in zip(pending, fetched):
            per_step = [{k: v[i] for k, v in metrics.items()} for i in range(count)] if stacked else [metrics]
            for i, m in enumerate(per_step):
                if not sums.add(m) and config.on_nonfinite == "stop":
                    bar.close()
                    raise NonFiniteError(
                        step=step + i,
                        epoch=epoch,
                        batch=batch_index + i,
                        steps_per_epoch=spe,
                        workdir=workdir,
                        metrics=m,
                    )
        pending.clear()
        bar.set_postfix(
            loss=f"{sums.mean('loss'):.4f}",
            acc=f"{sums.mean('accuracy'):.3f}",
            img_s=f"{session_images / max(time.perf_counter() - t0, 1e-9):.0f}",
            refresh=False,
        )

    try:
        batch_index = progress.batch_in_epoch
        while batch_index < spe:
            step = progress.epoch * spe + batch_index
            count = _dispatch_size(batch_index, step, setup)
            device_state, metrics, stacked = feed.run(device_state, count)
            distributed.note_step(step + count)
            pending.append((step, batch_index, count, stacked, metrics))
            batch_index += count
            session_images += count * setup.global_batch_size
            bar.update(count)
            last = batch_index == spe
            mid_checkpoint = (
                config.checkpoint_every_steps is not None
                and not last
                and (step + count) % config.checkpoint_every_steps == 0
            )
            if last or mid_checkpoint or sum(p[2] for p in pending) >= config.log_every_steps:
                flush()
            if mid_checkpoint:
                progress.batch_in_epoch = batch_index
                progress.iterator_state = feed.get_state(batch_index)
                elapsed = time.perf_counter() - t0
                sums.seconds += elapsed
                progress.train_seconds += elapsed
                t0, session_images = time.perf_counter(), 0
                save(step + count, device_state, None)
        flush()
    finally:
        feed.close()
        bar.close()
    elapsed = time.perf_counter() - t0
    sums.seconds += elapsed
    progress.train_seconds += elapsed
    return device_state


def _epoch_record(
    setup: RunSetup,
    progress: Progress,
    epoch: int,
    monitored: dict[str, float],
    lr_scale: float | None,
    improved: bool,
    stopper: EarlyStopping,
    eval_seconds: float,
) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl."""
    sums = progress.sums
    images = sums.steps * setup.global_batch_size
    return {
        "epoch": epoch,
        "step": epoch * setup.steps_per_epoch,
        "train_loss": sums.mean("loss"),
        "train_accuracy": sums.mean("accuracy"),
        **monitored,
        "lr": sums.lr,
        "next_lr_scale": lr_scale,
        "grad_norm": sums.mean("grad_norm"),
        "param_norm": sums.param_norm,
        "skipped_nonfinite": int(sums.skipped),
        "train_seconds": sums.seconds,
        "images_per_second": images / sums.seconds if sums.seconds > 0 else float("nan"),
        "eval_seconds": eval_seconds,
        "cumulative_train_seconds": progress.train_seconds,
        "time": time.time(),
        "improved": improved,
        "best_epoch": stopper.tracker.best_epoch,
    }


def _calibrate(
    config: TrainConfig, workdir: Path, names: list[str], val_preds: Any, evaluated: dict[str, Any]
) -> dict[str, Any]:
    """Fit the temperature and the operating thresholds on the validation predictions of
    the evaluated checkpoint; write them to calibration.json (evaluate and predict read
    it) and return them."""
    calibration = {
        **calib.fit_calibration(val_preds.labels, val_preds.probs, names, config.target_sensitivity),
        "checkpoint": evaluated,
    }
    if distributed.is_primary():
        files.write_json(workdir / files.CALIBRATION_FILE, calibration)
    return calibration


def _add_calibration(config: TrainConfig, report: dict[str, Any], preds: Any, calibration: dict[str, Any]) -> None:
    """The split's calibration before/after, bootstrap intervals and operating points."""
    report.update(
        calib.split_calibration_report(
            preds.labels,
            preds.probs,
            report["class_names"],
            temperature=calibration["temperature"],
            thresholds=calibration["operating_thresholds"],
            target_sensitivity=config.target_sensitivity,
            resamples=config.bootstrap_resamples,
            seed=config.seed,
        )
    )


def _final_evaluation(
    setup: RunSetup,
    device_state: Any,
    progress: Progress,
    store: CheckpointStore,
    workdir: Path,
    session_start: float,
) -> dict[str, Any]:
    config, engine, timings = setup.config, setup.engine, setup.timings
    store.wait()
    spe = setup.steps_per_epoch
    stopper, _ = _trackers(config, progress)
    best_epoch = stopper.tracker.best_epoch
    step = store.best_step() if config.restore_best else None
    with timings.phase("checkpoints"):
        skipped, _ = _skipped_total(setup, device_state)  # of the run; the restored checkpoint's may be fewer
        if step is not None:
            target = engine.host_state(device_state)
            tree, meta = store.restore(step, to_tree(target))
            device_state = engine.put_state(from_tree(target, tree))
            evaluated = {"checkpoint": "best", "step": int(step), "epoch": int(step // spe)}
        else:  # restore_best=False, or no epoch ever improved (monitored value never finite)
            evaluated = {"checkpoint": "last", "step": int(progress.epoch * spe), "epoch": int(progress.epoch)}
    with timings.phase("test"):
        predictor = setup.predictor(device_state)
        val, val_preds = evaluate_split(
            predictor, setup.dataset, "validation", setup.eval_global_batch_size, progress=config.progress
        )
        test = test_preds = None
        if "test" in setup.dataset.splits and len(setup.dataset.splits["test"]):
            test, test_preds = evaluate_split(
                predictor, setup.dataset, "test", setup.eval_global_batch_size, progress=config.progress
            )
    with timings.phase("results"):
        calibration = _calibrate(config, workdir, list(setup.dataset.class_names), val_preds, evaluated)
        for report, split_preds in ((val, val_preds), (test, test_preds)):
            if report is not None:
                _add_calibration(config, report, split_preds, calibration)
    if config.tta != "none":  # beside the plain reports, never instead of them (tta.py)
        with timings.phase("test"):
            for name, report in (("validation", val), ("test", test)):
                if report is not None:
                    report["tta"], _ = tta_report(
                        predictor,
                        setup.dataset,
                        name,
                        setup.eval_global_batch_size,
                        config.tta,
                        progress=config.progress,
                    )
    with timings.phase("results"):
        results = _results(
            setup, device_state, progress, stopper, evaluated, calibration, val, test, skipped, session_start
        )
    if config.plots:
        with timings.phase("plots"):
            _plots(
                setup,
                workdir,
                progress.history,
                best_epoch,
                evaluated,
                calibration,
                (val, val_preds),
                (test, test_preds),
            )
    results["warnings"] += [f"calibration: {w}" for w in calibration.get("warnings", [])]
    for warning in results["warnings"]:
        _warn(warning)
    results["timings"] = timings.report(time.perf_counter() - session_start)
    if distributed.is_primary():
        files.write_json(workdir / files.RESULTS_FILE, results)
    distributed.barrier("cxrjax_results_written")  # the others read what process 0 wrote
    if test is not None:
        _say(
            config,
            f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
            f"({evaluated['checkpoint']} checkpoint, epoch {evaluated['epoch']}); results in "
            f"{workdir / files.RESULTS_FILE}",
        )
        for line in calib.format_split_summary(test, "test"):
            _say(config, line)
    return files.read_json(workdir / files.RESULTS_FILE)


def _results(
    setup: RunSetup,
    device_state: Any,
    progress: Progress,
    stopper: EarlyStopping,
    evaluated: dict[str, Any],
    calibration: dict[str, Any],
    val: dict[str, Any],
    test: dict[str, Any] | None,
    skipped: int,
    session_start: float,
) -> dict[str, Any]:
    """results.json's dict (its ``timings`` are added last, just before it is written)."""
    config = setup.config
    best_epoch = stopper.tracker.best_epoch
    history = progress.history
    speeds = [
        h["images_per_second"]
        for h in (history[1:] if len(history) > 1 else history)
        if h.get("images_per_second") is not None and np.isfinite(h["images_per_second"])
    ]
    host_state = setup.engine.host_state(device_state)
    best_record = next((h for h in history if h["epoch"] == best_epoch), None)
    return {
        "class_names": list(setup.dataset.class_names),
        "model": config.model,
        "dataset": config.dataset,
        "test": test,
        "validation": val,
        "best_epoch": best_epoch,
        "epochs_run": progress.epoch,
        "stopped_early": progress.stopped_early,
        "monitor": config.monitor,
        "best_monitor_value": stopper.tracker.best,
        "evaluated": evaluated,
        "evaluated_weights": "ema" if config.ema_decay else "live",  # which weights every evaluation used (ema.py)
        "calibration": calibration,
        "best_epoch_metrics": best_record,
        "train_images_per_second": statistics.median(speeds) if speeds else None,
        "train_seconds": progress.train_seconds,
        "session_wall_seconds": time.perf_counter() - session_start,
        "num_devices": setup.num_devices,
        "parallel": config.parallel,
        "data_placement": setup.placement,  # data_placement resolved ("auto" -> host or device)
        "global_batch_size": setup.global_batch_size,
        "steps_per_epoch": setup.steps_per_epoch,
        "parameter_count": parameter_count(host_state.params),
        "skipped_nonfinite_steps": skipped,
        "warnings": _run_warnings(setup, progress, skipped),
        "dataset_info": dataset_info(setup),
        "input_config": setup.input_fields,
        # the backbone's ImageNet weights (path, sha256) or random init; None without a head
        "weights": setup.weights,
        "jax_backend": jax.default_backend(),
    }


def _plots(
    setup: RunSetup,
    workdir: Path,
    history: list[dict[str, Any]],
    best_epoch: int | None,
    evaluated: dict[str, Any],
    calibration: dict[str, Any],
    val: tuple[dict[str, Any], Any],
    test: tuple[dict[str, Any] | None, Any],
) -> None:
    """The run's PNGs: learning curves, the confusion matrix and ROC curves (operating
    points marked) of the test split (of validation when there is no test split), and a
    reliability diagram per split."""
    config, names = setup.config, list(setup.dataset.class_names)
    plots.plot_learning_curves(
        history,
        workdir / files.LEARNING_CURVES,
        best_epoch=best_epoch,
        evaluated_epoch=evaluated["epoch"],
        title=f"{config.model} on {config.dataset}",
    )
    (shown, preds), split = (test, "test") if test[0] is not None else (val, "validation")
    plots.plot_confusion_matrix(
        shown["confusion_matrix"],
        names,
        workdir / files.CONFUSION_MATRIX,
        title=f"{config.model}: {split} (accuracy {shown['accuracy']:.3f})",
    )
    plots.plot_roc_curves(
        preds.labels,
        preds.probs,
        names,
        workdir / files.ROC_CURVES,
        title=f"{config.model}: {split} ROC (one-vs-rest)",
        markers=calibration["operating_thresholds"],
        markers_note=f" ({config.target_sensitivity:.0%} sens. on validation)",
    )
    for name, (report, split_preds) in (("validation", val), ("test", test)):
        if report is not None and len(split_preds.labels):
            temperature = calibration["temperature"]
            scaled = None if temperature is None else calib.apply_temperature(split_preds.probs, temperature)
            plots.plot_reliability(
                split_preds.labels,
                split_preds.probs,
                workdir / files.RELIABILITY_PLOT.format(split=name),
                calibrated_probs=scaled,
                title=f"{config.model}: {name} reliability (n={len(split_preds.labels)})",
            )
