"""An exponential moving average (EMA) of the weights, kept in the train state.

With ``ema_decay = d > 0`` the train state carries ``ema = {"decay", "params",
"batch_stats"}``, initialised to a copy of the initial weights (:func:`attach`) and
updated by the train step after the optimiser update (:func:`update`, one call in
steps.py), every step::

    d_t  = min(d, (1 + t) / (10 + t))          # t = steps taken before this one (0, 1, ...)
    ema <- d_t * ema + (1 - d_t) * weights      # weights: the step's new params / BatchNorm statistics

The warm-up ``(1 + t) / (10 + t)`` is TensorFlow's ``ExponentialMovingAverage(num_updates)``
rule: early in training the average follows the weights closely instead of remembering
the random initialisation for ~1/(1-d) steps (a run of a few hundred steps with d=0.999
would otherwise evaluate a mostly untrained average). It is always on; there is no
separate debiasing.

BatchNorm statistics are averaged like the params (as timm's ModelEmaV2 averages every
buffer): the averaged params are evaluated with statistics from the same stretch of
training, not with the live model's latest ones. A step whose update was skipped as
non-finite (steps.py) leaves params unchanged, and the average still moves towards them
(the counter ``t`` counts every step, like ``TrainState.step``); weights are always finite,
so the average is too.

The decay is a float32 array in the state, not a compile-time constant: runs that differ
only in the decay share one compiled step (run_setup's engine cache), and the
checkpoint records the decay it was averaged with. With ``ema_decay = 0`` the state's
``ema`` is ``{}`` (no leaves): the step is the same program as without EMA, and results
are bit-identical. ``TrainState.variables`` (what evaluation applies) are the EMA weights
when an average exists, so validation, early stopping, the best checkpoint and the final
test use them; ``cxrjax.inference.load_run`` loads them from the checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from cxrjax.train.state import TrainState

WARMUP_OFFSET = 10.0  # d_t = min(d, (1 + t) / (WARMUP_OFFSET + t))


def decay_at(decay: jax.Array | float, step: jax.Array | int) -> jax.Array:
    """The decay applied by the update after ``step`` earlier steps (float32)."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.asarray(decay, jnp.float32), (1.0 + t) / (WARMUP_OFFSET + t))


def average(ema: Any, new: Any, decay: jax.Array) -> Any:
    """``decay * ema + (1 - decay) * new`` leaf by leaf, in float32, in ``ema``'s dtypes."""

    def mix(e: jax.Array, n: jax.Array) -> jax.Array:
        e32 = jnp.asarray(e, jnp.float32)
        return (e32 + (1.0 - decay) * (jnp.asarray(n, jnp.float32) - e32)).astype(jnp.asarray(e).dtype)

    return jax.tree.map(mix, ema, new)


def initial(params: Any, batch_stats: Any, decay: float) -> dict[str, Any]:
    """The EMA entry of a fresh state: a copy of the weights and the decay."""
    copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)  # noqa: E731
    return {"decay": jnp.asarray(decay, jnp.float32), "params": copy(params), "batch_stats": copy(batch_stats)}


def update(new_state: TrainState, step: jax.Array) -> TrainState:
    """``new_state`` with its average moved towards its params and BatchNorm statistics;
    ``step``: the steps taken before this update (the old state's counter). The identity
    when the state keeps no average."""
    ema = new_state.ema
    if not ema:
        return new_state
    d = decay_at(ema["decay"], step)
    return new_state.replace(
        ema={
            "decay": ema["decay"],
            "params": average(ema["params"], new_state.params, d),
            "batch_stats": average(ema["batch_stats"], new_state.batch_stats, d),
        }
    )


def attach(init_fn: Callable[[int], TrainState], decay: float) -> Callable[[int], TrainState]:
    """``seed -> TrainState`` of ``init_fn`` with an EMA entry when ``decay > 0`` (else
    ``init_fn`` itself)."""
    if not decay:
        return init_fn

    def init_state(seed: int) -> TrainState:
        state = init_fn(seed)
        return state.replace(ema=initial(state.params, state.batch_stats, decay))

    return init_state
