"""Wall-clock timing of a step function: warm-up, then N individually timed steps.

Both frameworks are timed by the same loop, so JAX and PyTorch numbers are comparable:
each timed call ends with the framework's own synchronisation (`jax.block_until_ready`
or `torch.cuda.synchronize`), passed in as `sync`. Per-step synchronisation costs a
little on accelerators (it stops the host running ahead), equally for both sides; it is
what makes the per-step spread meaningful.

On a shared machine the speed of either framework drifts by tens of percent over
minutes, so the throughput suite can time a configuration in several rounds that
alternate JAX and PyTorch (:class:`Retimer`, ``--rounds``); :func:`pooled` merges them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class StepTimes:
    """Summary of N timed steps, in seconds."""

    median_s: float
    min_s: float
    max_s: float
    p10_s: float
    p90_s: float
    steps: int
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)  # the raw step times

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: relative spread, 0 for perfectly steady steps."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "p10_s": self.p10_s,
            "p90_s": self.p90_s,
            "steps": self.steps,
            "spread": self.spread,
        }


def summarize(times: list[float]) -> StepTimes:
    """Median, extremes and 10th/90th percentiles (nearest-rank) of step times."""
    if not times:
        raise ValueError("summarize() needs at least one step time; pass steps >= 1")
    ordered = sorted(times)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, round(q * (n - 1))))]

    return StepTimes(
        median_s=statistics.median(ordered),
        min_s=ordered[0],
        max_s=ordered[-1],
        p10_s=rank(0.1),
        p90_s=rank(0.9),
        steps=n,
        samples=tuple(times),
    )


def pooled(rounds: list[StepTimes]) -> StepTimes:
    """One summary of the steps of several rounds of the same configuration."""
    return summarize([t for r in rounds for t in r.samples])


def time_steps(
    step: Callable[[Any], Any],
    state: Any,
    *,
    warmup: int,
    steps: int,
    sync: Callable[[Any], Any],
) -> tuple[StepTimes, Any]:
    """Run `state = step(state)` `warmup` times untimed, then `steps` times timed.

    `step` carries its state through (so donated JAX buffers stay valid); `sync(out)`
    must block until the step's device work is done. Returns the summary and final state.
    """
    for _ in range(warmup):
        state = step(state)
    sync(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state = step(state)
        sync(state)
        times.append(time.perf_counter() - t0)
    return summarize(times), state


@dataclass
class Retimer:
    """More timed train steps of a configuration that is already built and warmed up.

    Holds the step, its carried state and its sync; each call runs one untimed step first
    (so a framework that switched to eval mode in between recompiles outside the timing),
    then `steps` timed ones, and appends their summary to ``rounds`` (which starts with
    the first timing, made before the retimer existed).
    """

    step: Callable[[Any], Any]
    state: Any
    sync: Callable[[Any], Any]
    rounds: list[StepTimes] = field(default_factory=list)
    before: Callable[[], None] | None = None  # e.g. put a torch module back in train mode

    def __call__(self, steps: int) -> StepTimes:
        if self.before is not None:
            self.before()
        times, self.state = time_steps(self.step, self.state, warmup=1, steps=steps, sync=self.sync)
        self.rounds.append(times)
        return times
