"""What every experiment module does after it has built its cells and configs: open the
dataset once, run the grid through the training engine, write the report, name the files.

Why open the dataset here: every run of a grid uses the same prepared split, so it is
prepared (or found) once and the opened ``PreparedDataset`` is handed to every
``train_and_evaluate`` call, instead of each run reopening it. It is opened lazily, at
the first run that actually trains: re-running a finished grid only rewrites the report.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from experiments import grid, report
from experiments.grid import Cell, RunFn, RunSpec


def add_common_arguments(
    p: argparse.ArgumentParser, *, default_dataset: str | None, experiment: str, global_batch: int
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
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell")
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


class EngineRun:
    """The default run function: ``cxrjax.train.train_and_evaluate`` on one shared dataset."""

    def __init__(self) -> None:
        self._datasets: dict[str, Any] = {}

    def dataset_for(self, config: Any) -> Any:
        import json

        from cxrjax import data

        key = json.dumps(
            [config.dataset, config.data_dir, config.manual_dir, config.dataset_options], sort_keys=True, default=str
        )
        if key not in self._datasets:
            self._datasets[key] = data.load(
                config.dataset,
                data_dir=config.data_dir or "data",
                manual_dir=config.manual_dir,
                options=config.dataset_options,
            )
        return self._datasets[key]

    def prepare(self, configs: Sequence[Any]) -> None:
        """Prepare (or find) every dataset the configs use, once, in this process, before
        parallel workers start, so that they never prepare the same files concurrently."""
        for config in configs:
            self.dataset_for(config)
        self._datasets.clear()  # workers open their own copies; keep this object picklable

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
) -> tuple[report.ReportFiles, str]:
    """Run (or resume) the grid, write every report file, print the summary and a final
    line naming the results files. Returns the files and the summary text."""
    workdir = Path(workdir)
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
    )
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
        f"Results: {files.csv}, {files.markdown}, {files.summary}, {files.bars}, {files.curves}",
        flush=True,
    )
    return files, summary


def run_from_args(
    args: argparse.Namespace,
    experiment: str,
    cells: Sequence[Cell],
    make_specs: Callable[[argparse.Namespace, Sequence[Cell], int, dict[str, Any]], list[RunSpec]],
    report_spec: Callable[[Sequence[RunSpec]], ReportSpec],
    run_fn: RunFn | None = None,
) -> int:
    """An experiment's ``main`` after parsing: build the runs for the local devices (or
    ``--num-devices``), run them in ``--workdir`` and report (see :func:`run_experiment`).

    ``make_specs(args, cells, num_devices, changes)`` gets the user's training options
    (``train_options.train_changes``), read once here, so a deprecated spelling is
    reported once.

    A training option TrainConfig refuses, or a run folder that holds a different
    configuration, ends in one ``error: ...`` line and exit status 2 (as
    ``python -m cxrjax.train``), before any run trains.
    """
    from cxrjax.train.trainer import USER_ERRORS
    from experiments import train_options

    try:
        changes = train_options.train_changes(args)
        num_devices = changes.get("num_devices") or local_device_count()
        specs = make_specs(args, cells, num_devices, changes)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_experiment(
            cells,
            specs,
            default_workdir(args, experiment),
            report_spec(specs),
            run_fn=run_fn,
            progress=args.grid_progress,
            jobs=jobs_of(args),
        )
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
