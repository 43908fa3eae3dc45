"""What every experiment module does after it has built its cells and configs: open the
dataset once, run the grid through the training engine, write the report, name the files;
and what they build those from: the common options (:func:`parser`), an engine preset
with the command line's settings (:func:`preset_config`), the default phantoms
(:class:`PhantomSplit`), cells that train a preset (:func:`preset_cell`).

Why open the dataset here: every run of a grid uses the same prepared split, so it is
prepared (or found) once and the opened ``PreparedDataset`` is handed to every
``train_and_evaluate`` call, instead of each run reopening it. It is opened lazily, at
the first run that actually trains: re-running a finished grid only rewrites the report.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiments import grid, report
from experiments.grid import Cell, RunFn, RunSpec


def parser(
    experiment: str, description: str, *, default_dataset: str | None, global_batch: int, default_seeds: int = 3
) -> argparse.ArgumentParser:
    """The parser of ``python -m experiments.<experiment>`` with the options every experiment
    has (:func:`add_common_arguments`); the experiment adds its own, then the training options."""
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.{experiment}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    add_common_arguments(
        p,
        default_dataset=default_dataset,
        experiment=experiment,
        global_batch=global_batch,
        default_seeds=default_seeds,
    )
    return p


def add_common_arguments(
    p: argparse.ArgumentParser,
    *,
    default_dataset: str | None,
    experiment: str,
    global_batch: int,
    default_seeds: int = 3,
) -> None:
    """The options every experiment has: data, workdir, seeds, cells, batch, cache, progress."""
    p.add_argument("--dataset", default=default_dataset, help="cxrjax dataset name")
    p.add_argument("--manual-dir", default=None, help="folder of the downloaded dataset (real datasets)")
    p.add_argument("--data-dir", default="data", help="where prepared datasets live (shared by every run)")
    p.add_argument(
        "--workdir",
        default=None,
        help=f"experiment folder (default: runs/{experiment}/<dataset>); an existing one is resumed",
    )
    p.add_argument("--seeds", type=int, default=default_seeds, help="seeds per cell")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--cells", default=None, help="comma-separated cell names to run (default: all; see --list-cells)")
    p.add_argument("--list-cells", action="store_true", help="print the cells and exit")
    p.add_argument(
        "--compilation-cache", default="runs/jax_cache", help="JAX persistent compilation cache folder ('' to disable)"
    )
    p.add_argument("--no-progress", dest="grid_progress", action="store_false", help="no overall progress bar")
    p.add_argument(
        "--jobs",
        default="auto",
        help="runs trained at the same time, each in its own process ('auto': one per CPU core "
        "on a CPU backend, 1 on an accelerator)",
    )
    p.add_argument(
        "--global-batch-size",
        type=int,
        default=global_batch,
        help="the study's batch, split over the devices (per device = this // devices); "
        "--per-device-batch-size overrides",
    )


def per_device_batch(args: argparse.Namespace, num_devices: int) -> int:
    return max(1, args.global_batch_size // num_devices)


def preset_config(args: argparse.Namespace, preset: str, num_devices: int) -> Any:
    """The engine preset ``preset`` with what every experiment sets from its command line:
    the data folders, no per-run progress bar (the grid has one), no per-run plots (the
    report draws its own from metrics.jsonl; ``--plots`` turns them back on), the
    compilation cache and the per-device share of ``--global-batch-size``."""
    from cxrjax.train import PRESETS

    return PRESETS[preset].replace(
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        progress=False,
        plots=False,
        compilation_cache_dir=args.compilation_cache or None,
        per_device_batch_size=per_device_batch(args, num_devices),
    )


@dataclass(frozen=True)
class PhantomSplit:
    """The ``cxr_phantoms`` an experiment runs on without real data: split sizes, the side
    the images are stored at, and the findings' severity range (by default at least
    half-developed: with the generator's 0-1 many images are nearly finding-free).
    Experiments subclass it to add their own defaults (epochs, input sizes)."""

    num_train: int
    num_validation: int
    num_test: int
    image_size: int  # stored side
    severity_range: tuple[float, float] = (0.5, 1.0)

    def dataset_options(self) -> dict[str, Any]:
        """The ``dataset_options`` of the TrainConfig (cxr_phantoms' preparation options)."""
        options = {f.name: getattr(self, f.name) for f in fields(PhantomSplit)}
        return {**options, "severity_range": list(self.severity_range)}


def dataset_phrase(config: Any) -> str:
    """How every report's description begins: ``Dataset `name` (its options)``."""
    opts = ", ".join(f"{k}={v}" for k, v in config.dataset_options.items())
    return f"Dataset `{config.dataset}`" + (f" ({opts})" if opts else "")


def default_workdir(args: argparse.Namespace, experiment: str) -> Path:
    return Path(args.workdir or Path("runs") / experiment / args.dataset)


def seeds_of(args: argparse.Namespace) -> range:
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    return range(args.first_seed, args.first_seed + args.seeds)


def pick_cells(args: argparse.Namespace, default: Sequence[Cell], known: Sequence[Cell]) -> list[Cell]:
    """``default``, or the cells named by ``--cells`` (in the order given)."""
    if not args.cells:
        return list(default)
    by_name = {c.name: c for c in known}
    wanted = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; cells: {sorted(by_name)}")
    return [by_name[w] for w in wanted]


def preset_cell(name: str, label: str, preset: str, factors: Mapping[str, str], **extra: Any) -> Cell:
    """A cell that trains the engine preset ``preset``, its network named after the cell;
    ``extra``: the other :class:`~experiments.grid.Cell` fields (reference, group)."""
    return Cell(name=name, label=label, factors=factors, network=name, overrides={"preset": preset}, **extra)


def list_cells(cells: Sequence[Cell]) -> None:
    for cell in cells:
        print(f"{cell.name:32s} {cell.label}")


def jobs_of(args: argparse.Namespace) -> int:
    """``--jobs`` as a number: 'auto' is one process per core on CPU, 1 on GPU/TPU (one run
    already fills an accelerator, and several would compete for its memory)."""
    if str(args.jobs) != "auto":
        try:
            jobs = int(args.jobs)
        except ValueError:
            raise SystemExit(f"--jobs must be a number or 'auto', got {args.jobs!r}") from None
        return max(1, jobs)
    import os

    import jax

    return max(1, os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1


# Each worker of a parallel grid gets one core: XLA:CPU's intra-op threads would otherwise
# oversubscribe the machine (n workers x n threads) for small convolutions that gain little.
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def worker_env() -> dict[str, str]:
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    return {"XLA_FLAGS": f"{flags} {SINGLE_THREAD_XLA}".strip()}


def local_device_count() -> int:
    import jax

    return jax.local_device_count()


def user_changes(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """(the user's training options as TrainConfig changes, the devices a run uses:
    ``--num-devices`` or every local device)."""
    from experiments import train_options

    changes = train_options.train_changes(args)
    return changes, changes.get("num_devices") or local_device_count()


# Datasets opened in this process, by what identifies them: one per process, shared by
# every EngineRun, because a parallel grid sends a fresh (unpickled) copy of its run
# function with every task, and each worker should still open its dataset only once.
_OPENED: dict[str, Any] = {}


class EngineRun:
    """The default run function: ``cxrjax.train.train_and_evaluate`` on one shared dataset
    (opened once per process, :func:`dataset_for`)."""

    @staticmethod
    def dataset_for(config: Any) -> Any:
        import json

        from cxrjax import data

        key = json.dumps(
            [config.dataset, config.data_dir, config.manual_dir, config.dataset_options], sort_keys=True, default=str
        )
        if key not in _OPENED:
            _OPENED[key] = data.load(
                config.dataset,
                data_dir=config.data_dir or "data",
                manual_dir=config.manual_dir,
                options=config.dataset_options,
            )
        return _OPENED[key]

    def prepare(self, configs: Sequence[Any]) -> None:
        """Prepare (or find) every dataset the configs use, once, in this process, before
        parallel workers start, so that they never prepare the same files concurrently
        (the workers then only open them, each once)."""
        for config in configs:
            self.dataset_for(config)

    def __call__(self, config: Any, workdir: str) -> dict:
        from cxrjax.train import train_and_evaluate

        return train_and_evaluate(config, workdir, dataset=self.dataset_for(config))


@dataclass
class ReportSpec:
    """What the report says about the experiment."""

    title: str
    description: Sequence[str] = ()
    claims: Sequence[report.Claim] = ()
    reference_source: str = "published"
    references_comparable: bool = False


def run_experiment(
    cells: Sequence[Cell],
    specs: Sequence[RunSpec],
    workdir: str | Path,
    spec: ReportSpec,
    *,
    run_fn: RunFn | None = None,
    progress: bool = True,
    jobs: int = 1,
    derived: Callable[[Sequence[grid.RunRecord]], list[grid.RunRecord]] | None = None,
) -> tuple[report.ReportFiles, str]:
    """Run (or resume) the grid, write every report file, print the summary and a final
    line naming the results files. Returns the files and the summary text.

    ``derived(records)``: records of cells computed from the trained runs rather than
    trained (e.g. reproduce_s1's ensembles of its members), reported with them."""
    workdir = Path(workdir)
    engine = run_fn is None  # the engine's runs: a run continuing another is trained once (grid.run_grid)
    if run_fn is None:
        run_fn = EngineRun()
        todo = [s.config for s in specs if not grid.is_finished(grid.run_dir_for(workdir, s.cell, s.seed))]
        if todo and jobs > 1:
            run_fn.prepare(todo)
    records = grid.run_grid(
        specs,
        workdir,
        run_fn,
        progress=progress,
        desc=workdir.name,
        jobs=jobs,
        worker_env=worker_env() if jobs > 1 else None,
        continue_runs=engine,
    )
    if derived is not None:
        records = [*records, *derived(records)]
    files, summary = report.write_report(
        workdir,
        cells,
        records,
        title=spec.title,
        description=spec.description,
        claims=spec.claims,
        reference_source=spec.reference_source,
        references_comparable=spec.references_comparable,
    )
    trained = grid.trained_count(records)
    print(f"\n{summary}\n", file=sys.stdout)
    print(
        f"{len(records)} runs ({trained} trained now, {len(records) - trained} already finished). "
        f"Results: {files.csv}, {files.markdown}, {files.summary}, {files.summary_json}, {files.bars}, {files.curves}",
        flush=True,
    )
    return files, summary


ConfigsFn = Callable[[argparse.Namespace, int, dict[str, Any]], Callable[[Cell, int], Any]]


def run_from_args(
    args: argparse.Namespace,
    experiment: str,
    cells: Sequence[Cell],
    known: Sequence[Cell],
    run_configs: ConfigsFn,
    report: ReportSpec,
    describe: Callable[[Sequence[RunSpec]], list[str]],
    run_fn: RunFn | None = None,
    *,
    note: str | None = None,
    derived: Callable[[Sequence[grid.RunRecord]], list[grid.RunRecord]] | None = None,
    report_cells: Sequence[Cell] | None = None,
) -> int:
    """An experiment's ``main`` after parsing and picking ``cells``: ``--list-cells`` prints
    the ``known`` cells; otherwise ``note`` (if any) is printed, one run is built per cell
    and seed for the local devices (or ``--num-devices``), and they are run in
    ``--workdir`` and reported (see :func:`run_experiment`; ``describe(specs)`` is the
    report's description).

    ``run_configs(args, num_devices, changes)`` returns the TrainConfig of a (cell, seed);
    it gets the user's training options (:func:`user_changes`), read once here,
    so a deprecated spelling is reported once.

    ``derived`` and ``report_cells``: cells computed from the trained ones (see
    :func:`run_experiment`), and every cell of the report, derived ones included.

    A training option TrainConfig refuses, or a run folder that holds a different
    configuration, ends in one ``error: ...`` line and exit status 2 (as
    ``python -m cxrjax.train``), before any run trains.
    """
    from cxrjax.train.trainer import USER_ERRORS

    if args.list_cells:
        list_cells(known)
        return 0
    if note:
        print(note)
    try:
        changes, num_devices = user_changes(args)
        config_of = run_configs(args, num_devices, changes)
        seeds = seeds_of(args)
        specs = [RunSpec(cell.name, seed, config_of(cell, seed)) for cell in cells for seed in seeds]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_experiment(
            report_cells or cells,
            specs,
            default_workdir(args, experiment),
            replace(report, description=describe(specs)),
            run_fn=run_fn,
            progress=args.grid_progress,
            jobs=jobs_of(args),
            derived=derived,
        )
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
