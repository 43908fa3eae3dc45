"""Run a grid of cells x seeds as independent training runs, resumably.

Layout of an experiment workdir::

    WORKDIR/runs/<cell>/seed_<k>/      one training run (the engine's workdir)
        config.json                    the config this grid asked for (the engine's file)
        results.json                   written by the engine when the run finished
        grid_run.json                  wall time measured here
        grid_error.txt                 why the run failed, if it did
        tensorboard/hparams/           its varied config fields + test metrics (HParams view)

A run folder follows the engine's contract (``cxrjax.train.workdir``): the same file
names, the same configuration check, the same :class:`ConfigMismatchError`.

Why it is built this way:

* **Never redo or overwrite finished work.** A run whose ``results.json`` exists is
  skipped (its results are read back). An unfinished run is handed to the run function
  again, and the training engine resumes it from its last checkpoint.
* **Never mix configurations silently.** Before any run starts, every run's config is
  checked against (or written to) its folder's ``config.json`` with the engine's
  ``check_or_write_config``: a later invocation that would give a folder holding trained
  state (a checkpoint or results) a config that differs in a result-relevant field stops
  with ConfigMismatchError naming the folder and the differing fields, instead of reusing
  stale numbers. Adding seeds or cells to an existing workdir is fine: they get new
  folders.
* **One failed run does not kill the grid.** An exception in a run (e.g. a diverged loss)
  is recorded in ``grid_error.txt`` and the grid moves on; the report lists failed runs
  and excludes them from the statistics. A re-run retries them. Ctrl-C is not caught
  (with parallel workers, they are terminated; their runs resume next time).
* **The run function is injectable** (default: ``cxrjax.train.train_and_evaluate``), so
  aggregation, reporting and resume are testable without training.
* **Optionally parallel** (``jobs``): worker processes, each running whole groups of runs
  (one network) so that compiled steps are reused; one progress bar in the parent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from cxrjax.train import workdir as files
from cxrjax.train.config import RESULT_IRRELEVANT_FIELDS
from cxrjax.train.workdir import ConfigMismatchError  # noqa: F401 - the grid's error too

RunFn = Callable[[Any, str], Mapping[str, Any]]

RUN_FILE = "grid_run.json"
ERROR_FILE = "grid_error.txt"


@dataclass(frozen=True)
class Cell:
    """One experimental condition of a grid.

    ``factors`` name the condition (e.g. {"batch_norm": "all", "dropout": "0.25",
    "early_stopping": "on"}); two cells with the same factor names that differ in exactly
    one factor are compared in the report. ``network`` identifies the trained network's
    initial weights: cells with the same network (differing only in a training option or
    in something without weights, such as the dropout rate) are compared with the paired
    tests, because seed k gives both the same initial weights and batches.
    ``overrides`` is what the experiment applies to its base config for this cell.
    ``reference`` is a published single-run test accuracy (fraction) shown beside ours.
    """

    name: str
    label: str
    factors: Mapping[str, str]
    network: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    reference: float | None = None
    reference_name: str | None = None
    group: str = ""  # cells of one group share a table in results.md


@dataclass(frozen=True)
class RunSpec:
    """One training run: a cell, a seed and the config handed to the run function.

    ``group``: runs of one group (e.g. the same network) run one after the other in one
    process when the grid runs in parallel.
    ``continues``: the cell whose run of the same seed this run's trajectory continues
    (``cxrjax.train.continuation``); :func:`run_grid` sets it, and runs it after that run
    in the same process.
    """

    cell: str
    seed: int
    config: Any
    group: str = ""
    continues: str | None = None


@dataclass
class RunRecord:
    """What one run produced (``results`` empty and ``error`` set when it failed)."""

    cell: str
    seed: int
    run_dir: Path
    results: dict
    wall_time_s: float | None
    trained: bool  # False when the run was already finished and was skipped
    error: str | None = None
    # grid_run.json's ``continued``: the epochs taken from the run it continues (None:
    # trained from its first epoch)
    continued: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_dir_for(workdir: str | Path, cell: str, seed: int) -> Path:
    return Path(workdir) / "runs" / cell / f"seed_{seed}"


def config_to_dict(config: Any) -> dict:
    """A JSON-normalised dict of a config: a TrainConfig's ``to_dict()`` (what the engine
    writes to config.json), or any other dataclass or mapping (fakes in tests)."""
    if hasattr(config, "to_dict"):
        raw = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        raw = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raise TypeError(f"cannot serialise config of type {type(config).__name__}")
    return json.loads(json.dumps(raw, sort_keys=True, default=str))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_config(run_dir: Path, config: Any) -> None:
    """The engine's check of a run folder (``cxrjax.train.workdir.check_or_write_config``):
    write config.json, or raise ConfigMismatchError when the folder holds trained state
    made with a config that differs in a field that can change the results."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files.check_or_write_config(run_dir, config_to_dict(config))


def is_finished(run_dir: Path) -> bool:
    return _read_json(run_dir / files.RESULTS_FILE) is not None


def _load_finished(spec: RunSpec, run_dir: Path) -> RunRecord:
    results = _read_json(run_dir / files.RESULTS_FILE) or {}
    meta = _read_json(run_dir / RUN_FILE) or {}
    wall = meta.get("wall_time_s")
    continued = meta.get("continued") if isinstance(meta.get("continued"), dict) else None
    return RunRecord(spec.cell, spec.seed, run_dir, results, wall, trained=False, continued=continued)


def run_one(spec: RunSpec, workdir: str | Path, run_fn: RunFn) -> RunRecord:
    """Run (or skip, or resume) one run; exceptions other than interrupts are recorded.

    With ``spec.continues`` and that run finished, an untrained run starts from its last
    epoch (``cxrjax.train.continuation.start_from_prefix``) rather than from scratch;
    grid_run.json says so (``continued``)."""
    run_dir = run_dir_for(workdir, spec.cell, spec.seed)
    check_config(run_dir, spec.config)
    if is_finished(run_dir):
        return _load_finished(spec, run_dir)
    resumed = files.has_progress(run_dir)  # a checkpoint to resume from
    start = time.perf_counter()
    continued = None
    try:
        if spec.continues is not None and not resumed:
            from cxrjax.train.continuation import start_from_prefix

            taken = start_from_prefix(spec.config, run_dir, run_dir_for(workdir, spec.continues, spec.seed))
            continued = None if taken is None else taken.to_dict()
        results = run_fn(spec.config, str(run_dir))
    except Exception as exc:  # noqa: BLE001 - one bad run must not end the grid
        message = f"{type(exc).__name__}: {exc}"
        (run_dir / ERROR_FILE).write_text(message + "\n\n" + traceback.format_exc())
        return RunRecord(spec.cell, spec.seed, run_dir, {}, None, trained=True, error=message)
    wall = time.perf_counter() - start
    results = json.loads(json.dumps(dict(results), default=str))
    if not (run_dir / files.RESULTS_FILE).exists():  # the engine writes it; fakes may not
        (run_dir / files.RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    (run_dir / RUN_FILE).write_text(
        json.dumps({"wall_time_s": wall, "resumed": resumed, "continued": continued, "finished_at": time.time()}) + "\n"
    )
    return RunRecord(spec.cell, spec.seed, run_dir, results, wall, trained=True, continued=continued)


def run_grid(
    specs: Sequence[RunSpec],
    workdir: str | Path,
    run_fn: RunFn | None = None,
    *,
    progress: bool = True,
    desc: str = "runs",
    jobs: int = 1,
    worker_env: Mapping[str, str] | None = None,
    continue_runs: bool | None = None,
) -> list[RunRecord]:
    """Run every spec, skipping finished runs (the bar starts at their count, so its ETA
    is the rate of new runs only); returns one record per spec in the order given.

    Every run folder's config is checked first (:func:`check_config`), so a changed
    configuration is refused before anything trains. ``jobs`` > 1 runs that many worker
    processes (spawned; ``run_fn`` must be picklable, ``worker_env`` is set in each
    before it imports anything). Runs with the same ``RunSpec.group`` go to one worker,
    one after the other; the groups are handed out round-robin over cells (:func:`_groups`),
    so that a network is compiled once per grid and loaded from the persistent
    compilation cache by the other workers (the engine also keeps recent compiled steps
    in memory).

    ``continue_runs`` (default: on with the engine's own run function): a run whose
    trajectory continues another run of the grid -- the same config but for a larger
    early-stopping patience or none (``cxrjax.train.continuation.prefix_of``) -- runs
    after it, in the same worker, and starts from its last epoch instead of training
    those epochs again. Its results are those of training it alone.
    """
    if continue_runs is None:
        continue_runs = run_fn is None
    if run_fn is None:
        from cxrjax.train import train_and_evaluate as run_fn  # noqa: N813 - lazy: heavy import
    names = [(s.cell, s.seed) for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("run_grid: duplicate (cell, seed) pairs in the grid")
    if continue_runs:
        specs = _with_prefixes(specs)
    for spec in specs:  # refuse a changed configuration before any training starts
        check_config(run_dir_for(workdir, spec.cell, spec.seed), spec.config)
    hparams = _hparams_by_run(specs, RESULT_IRRELEVANT_FIELDS)
    done = [s for s in specs if is_finished(run_dir_for(workdir, s.cell, s.seed))]
    todo = [s for s in specs if not is_finished(run_dir_for(workdir, s.cell, s.seed))]
    records: dict[tuple[str, int], RunRecord] = {}
    for spec in done:
        records[(spec.cell, spec.seed)] = _load_finished(spec, run_dir_for(workdir, spec.cell, spec.seed))
    bar = tqdm(
        total=len(specs),
        initial=len(done),
        desc=desc,
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
        position=0,
        leave=True,
    )
    failed = 0

    def finished(record: RunRecord) -> None:
        nonlocal failed
        records[(record.cell, record.seed)] = record
        failed += 0 if record.ok else 1
        if record.ok and record.trained:
            _write_hparams(record, hparams[(record.cell, record.seed)])
        if progress:
            bar.write(_one_line(record))
        bar.update(1)
        if failed:
            bar.set_postfix_str(f"{failed} failed")

    todo = sorted(todo, key=_continuation_depth(specs))  # a continued run after the run it continues
    try:
        if jobs <= 1 or len(todo) <= 1:
            for spec in todo:
                bar.set_postfix_str(f"{spec.cell} seed {spec.seed}" + (f", {failed} failed" if failed else ""))
                finished(run_one(spec, workdir, run_fn))
        else:
            _run_parallel(todo, workdir, run_fn, jobs, dict(worker_env or {}), finished)
    finally:
        bar.close()
    return [records[n] for n in names]


def _hparams_by_run(specs: Sequence[RunSpec], ignore: Iterable[str]) -> dict[tuple[str, int], dict]:
    """Per run, for TensorBoard's HParams view: its cell, the config fields that differ
    between the runs of this call (nested ones dotted, ``ignore`` left out) and its seed."""
    from cxrjax.train.tensorboard import varied_hparams

    varied = varied_hparams([config_to_dict(s.config) for s in specs], ignore=tuple(ignore))
    return {(s.cell, s.seed): {"cell": s.cell, **v, "seed": s.seed} for s, v in zip(specs, varied)}


def _write_hparams(record: RunRecord, hparams: dict) -> None:
    """After a run finished here: its hyper-parameters and test metrics into
    ``<run>/tensorboard/hparams/`` (``tensorboard --logdir WORKDIR`` compares the runs).
    A failure to log is a warning: it must not end the grid."""
    from cxrjax.train.tensorboard import write_run_hparams

    try:
        write_run_hparams(record.run_dir, hparams, record.results)
    except Exception as exc:  # noqa: BLE001
        import warnings

        warnings.warn(f"{record.run_dir}: TensorBoard hparams not written ({type(exc).__name__}: {exc})")


def _with_prefixes(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """``specs`` with ``continues`` set where one run continues another of the same seed."""
    from cxrjax.train.continuation import prefix_of

    out = list(specs)
    for i, before in enumerate(prefix_of([s.config for s in specs])):
        if before is not None and specs[before].seed == specs[i].seed and specs[i].continues is None:
            out[i] = dataclasses.replace(specs[i], continues=specs[before].cell)
    return out


def _chain_root(spec: RunSpec, by_name: Mapping[tuple[str, int], RunSpec]) -> tuple[RunSpec, int]:
    """(the first run of ``spec``'s chain of continuations, how many runs precede ``spec``
    in it); a continued run missing from ``by_name`` ends the chain, and so does a cycle."""
    depth = 0
    while spec.continues is not None and (spec.continues, spec.seed) in by_name and depth < len(by_name):
        spec, depth = by_name[(spec.continues, spec.seed)], depth + 1
    return spec, depth


def _continuation_depth(specs: Sequence[RunSpec]) -> Callable[[RunSpec], int]:
    """Sort key: how many runs precede a run in its chain of continuations."""
    by_name = {(s.cell, s.seed): s for s in specs}
    return lambda spec: _chain_root(spec, by_name)[1]


def _groups(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Specs grouped by ``group`` (order kept; a run that continues another joins that
    run's group, after it), in the order the parallel workers take them: round-robin over
    the cells the groups start with (the first group of every cell, then the second...).

    So the workers start on different cells, each compiling its own network while the
    other's lands in the persistent compilation cache for when it gets there, instead of
    both compiling the first cell's network at once; and a costly cell (S4's Exp1) is
    spread over the grid rather than left to its end.
    """
    by_name = {(s.cell, s.seed): s for s in specs}

    def key(spec: RunSpec) -> str:
        root, _ = _chain_root(spec, by_name)
        return root.group or f"{root.cell}/{root.seed}"

    groups: dict[str, list[RunSpec]] = {}
    for spec in sorted(specs, key=_continuation_depth(specs)):
        groups.setdefault(key(spec), []).append(spec)
    by_cell: dict[str, list[list[RunSpec]]] = {}
    for group in groups.values():
        by_cell.setdefault(group[0].cell, []).append(group)
    rounds = itertools.zip_longest(*by_cell.values())
    return [group for round_ in rounds for group in round_ if group is not None]


def _init_worker(env: Mapping[str, str]) -> None:
    os.environ.update(env)


def _run_group(specs: list[RunSpec], workdir: str, run_fn: RunFn, queue: Any) -> None:
    for spec in specs:
        queue.put(run_one(spec, workdir, run_fn))


def _run_parallel(
    todo: Sequence[RunSpec],
    workdir: str | Path,
    run_fn: RunFn,
    jobs: int,
    env: dict[str, str],
    finished: Callable[[RunRecord], None],
) -> None:
    """Run ``todo`` in up to ``jobs`` spawned worker processes (one group of specs per
    task, ``env`` set in each worker), calling ``finished`` here as each run ends."""
    import multiprocessing
    import queue as queue_lib
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold JAX threads
    groups = _groups(todo)
    with _sigterm_interrupts(), ctx.Manager() as manager:
        results = manager.Queue()
        pool = ProcessPoolExecutor(
            max_workers=min(jobs, len(groups)), mp_context=ctx, initializer=_init_worker, initargs=(env,)
        )
        try:
            futures = [pool.submit(_run_group, g, str(workdir), run_fn, results) for g in groups]
            remaining = len(todo)
            while remaining:
                try:
                    record = results.get(timeout=1.0)
                except queue_lib.Empty:
                    broken = [f for f in futures if f.done() and f.exception() is not None]
                    if broken:
                        raise broken[0].exception()
                    continue
                finished(record)
                remaining -= 1
        except BaseException:
            # Ctrl-C (or a broken worker): stop the other workers now. A run killed mid-way
            # resumes from its last complete checkpoint next time (the engine ignores a
            # half-written one).
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while workers run, so they are stopped too (a background
    job ignores SIGINT); the previous handler is restored on leaving. Off the main thread
    (where no handler can be set) it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(signal.SIGTERM, previous)


def _one_line(record: RunRecord) -> str:
    if not record.ok:
        return f"{record.cell} seed {record.seed}: FAILED ({record.error})"
    test = record.results.get("test") or {}
    acc = test.get("accuracy")
    acc_text = f"test accuracy {100 * acc:.1f}%" if isinstance(acc, (int, float)) else "no test metrics"
    wall = f", {record.wall_time_s:.0f} s" if record.wall_time_s is not None else ""
    return f"{record.cell} seed {record.seed}: {acc_text}, {record.results.get('epochs_run', '?')} epochs{wall}"


def trained_count(records: Iterable[RunRecord]) -> int:
    return sum(1 for r in records if r.trained)
