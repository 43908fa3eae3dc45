"""Where the wall time of one training session goes: ``results.json["timings"]``.

A run of an experiment grid is short, so its fixed costs (opening the dataset, building
and compiling the steps, checkpoints, the test evaluation, plots) weigh as much as its
training epochs. :class:`PhaseTimings` adds up the seconds spent in named phases of one
session; the trainer writes them with the session's total, so a grid's runs can be
compared before and after a change (measured on a quiet machine; see docs/).

Phases (seconds of this session; a resumed run writes only its last session's):

* ``dataset_open``: ``cxrjax.data.load`` (0 when the caller passed an open dataset);
* ``setup``: model, optimiser, steps (a memo hit reuses them), the seed's initial state
  and its transfer to the devices;
* ``compile_first_epoch``: the train steps of the first epoch trained in this session
  (with the step's compilation when the memo had none);
* ``train``: the train steps of the later epochs;
* ``validation``: every epoch's validation pass and early-stopping bookkeeping;
* ``checkpoints``: time the run was blocked by checkpoints (device-to-host copies,
  starting the asynchronous saves, waiting for them, restores);
* ``test``: the final evaluation of the validation and test splits;
* ``plots``: the per-run PNGs (0 with ``plots=False``);
* ``results``: building results.json (its own write excluded);
* ``other``: the rest of the session (metrics.jsonl, TensorBoard, locks...);
* ``total``: the session, from the start of training to just before results.json is written.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

PHASES = (
    "dataset_open",
    "setup",
    "compile_first_epoch",
    "train",
    "validation",
    "checkpoints",
    "test",
    "plots",
    "results",
)


class PhaseTimings:
    """Seconds per named phase, accumulated (a phase may be entered many times; a phase
    entered again inside itself is counted once, so timed helpers nest safely)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._active: set[str] = set()

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + float(seconds)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block into ``name`` (also when it raises)."""
        if name in self._active:
            yield
            return
        self._active.add(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._active.discard(name)
            self.add(name, time.perf_counter() - start)

    def report(self, total: float) -> dict[str, float]:
        """Every phase of :data:`PHASES` (0 when not entered), ``other`` = ``total`` minus
        their sum (clipped at 0), and ``total``."""
        out = {name: self.seconds.get(name, 0.0) for name in PHASES}
        for name, value in self.seconds.items():  # phases outside PHASES are kept, too
            out.setdefault(name, value)
        out["other"] = max(0.0, total - sum(out.values()))
        out["total"] = float(total)
        return out
