"""TensorBoard logging through tensorboardX (event files without TensorFlow).

* ``ScalarWriter``: the trainer's per-epoch scalars (``config.tensorboard``), in
  ``<workdir>/tensorboard/events.out.tfevents.*``.
* ``write_hparams``: one run's hyper-parameters and final metrics for TensorBoard's
  HParams view, in ``<logdir>/hparams/``; experiments/grid.py calls it after each
  finished run with the fields that ``varied_hparams`` finds differing between the
  grid's cells.

Open with ``tensorboard --logdir <workdir>/tensorboard`` (or ``--logdir`` an
experiment's workdir to compare its runs).

tensorboardX is imported inside the functions, not here, so a run without TensorBoard
(and ``import cxrjax.train``) does not pay for it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from cxrjax.train.workdir import TENSORBOARD_DIR

HPARAMS_DIR = "hparams"  # write_hparams' subfolder of the logdir (one HParams session)


class ScalarWriter:
    """Scalars of a run, in one new ``events.out.tfevents.*`` file per session in
    ``logdir``. tensorboardX writes from a background thread: what ``scalars`` logs is on
    disk within ``FLUSH_SECONDS`` (each call also flushes what that thread has written),
    and all of it after ``close`` (the trainer closes the writer however the run ends)."""

    FLUSH_SECONDS = 5

    def __init__(self, logdir: str | Path):
        from tensorboardX import SummaryWriter  # lazy: only runs with tensorboard on import it

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        # tensorboardX names the file by the second and host and opens it with "wb": the
        # suffix keeps a session resumed within the same second from truncating the last
        # one's file, and sorts after it (TensorBoard reads a folder's files by name).
        self._writer = SummaryWriter(
            str(self.logdir), filename_suffix=f".{time.time_ns()}.cxrjax", flush_secs=self.FLUSH_SECONDS
        )

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_hparams(logdir: str | Path, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Log one HParams session: ``hparams`` (values: str, bool, int or float; anything
    else is written as JSON text, None is left out) with its final ``metrics`` (scalars),
    into ``<logdir>/hparams/`` with tensorboardX's ``add_hparams``. Writing again replaces
    the session (its old event files are removed), so a run has one. Returns the folder."""
    from tensorboardX import SummaryWriter  # lazy: see the module docstring

    logdir = Path(logdir)
    session = logdir / HPARAMS_DIR
    for old in session.glob("events.out.tfevents.*"):
        old.unlink()
    values = {k: _hparam_value(v) for k, v in hparams.items() if v is not None}
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    # write_to_disk=False: add_hparams writes its own writer's files into <logdir>/<name>;
    # the outer writer would otherwise leave an empty event file in logdir itself.
    with SummaryWriter(str(logdir), write_to_disk=False) as writer:
        writer.add_hparams(values, finite, name=HPARAMS_DIR)
    return session


TEST_METRICS = ("accuracy", "macro_f1", "loss")  # of results["test"], logged as test_<name>


def write_run_hparams(workdir: str | Path, hparams: Mapping[str, Any], results: Mapping[str, Any]) -> Path | None:
    """``write_hparams`` for a finished run: ``hparams`` with the run's final test
    metrics (``results["test"]``, as in results.json) as ``test_accuracy``,
    ``test_macro_f1`` and ``test_loss``, into ``<workdir>/tensorboard/hparams/``.
    Nothing is written (None) when the results have none of those metrics."""
    test = results.get("test") or {}
    metrics = {f"test_{name}": test[name] for name in TEST_METRICS if isinstance(test.get(name), (int, float))}
    if not metrics:
        return None
    return write_hparams(Path(workdir) / TENSORBOARD_DIR, hparams, metrics)


def _hparam_value(value: Any) -> str | bool | int | float:
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def varied_hparams(configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ()) -> list[dict[str, Any]]:
    """For each config (a JSON-like dict, nested dicts allowed), the fields whose value
    is not the same in all ``configs``; nested fields are flattened to dotted names
    (``model_options.features``). Top-level fields in ``ignore`` are left out.

    Every config gets every varied field, with values of one type: a field that is a
    number in some configs and None or missing in others, or a list, is given as text
    (JSON, e.g. ``"3"`` and ``"null"``) in all of them: TensorBoard takes the HParams
    columns and their types from one run's experiment summary, so runs must agree."""
    skip = set(ignore)
    flat = [_flatten({k: v for k, v in c.items() if k not in skip}) for c in configs]
    out: list[dict[str, Any]] = [{} for _ in flat]
    for key in sorted(set().union(*flat)) if flat else []:
        values = [f.get(key) for f in flat]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) == 1:
            continue
        kinds = {bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else type(v) for v in values}
        if len(kinds) > 1 or not kinds <= {bool, float, str}:
            values = [v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for v in values]
        for row, value in zip(out, values):
            row[key] = value
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):  # an empty one adds no field
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
