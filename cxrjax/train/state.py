"""The per-run train state: everything the step reads and writes, as one pytree.

Plain data only (no functions), so it can be donated, replicated over devices and
checkpointed as a nested dict (:func:`to_tree` / :func:`from_tree`).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cxrjax.models.transfer import merge_pretrained


@struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimisation steps taken (= batches consumed), skipped ones included
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: Any
    rng: jax.Array  # uint32[2] base key; each step folds in (step, replica index)
    lr_scale: jax.Array  # float32 multiplier of the schedule's lr (reduce-on-plateau)
    skipped_steps: jax.Array  # int32: updates skipped because loss/grads were non-finite
    first_nonfinite_step: jax.Array  # int32: first such step, -1 if none
    # The exponential moving average of the weights (cxrjax/train/ema.py): {} when
    # ema_decay is 0, else {"decay", "params", "batch_stats"}; checkpointed with the rest.
    ema: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """What ``model.apply`` takes to evaluate: the EMA weights when the run keeps an
        average (``ema_decay > 0``), else the live ones. Training's forward pass uses
        ``params`` and ``batch_stats`` directly (steps.py), never these."""
        params, batch_stats = (
            (self.ema["params"], self.ema["batch_stats"])
            if self.ema
            else (
                self.params,
                self.batch_stats,
            )
        )
        if batch_stats:
            return {"params": params, "batch_stats": batch_stats}
        return {"params": params}


def make_init_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, int, int],
) -> Callable[..., TrainState]:
    """``(seed, pretrained=None) -> TrainState``: params (and BatchNorm statistics)
    initialised on one example; ``pretrained`` (``{"params", "batch_stats"}`` of a
    TransferModel's headless backbone, ``cxrjax.models.transfer.load_backbone_weights``)
    replaces the backbone's before the optimiser state is made.

    Jitted as one program, the seed an argument: initialising eagerly would dispatch (and
    compile) every primitive of the network separately, tens of seconds on CPU, and one
    compiled init serves every seed of an experiment.
    """

    def init(seed: jax.Array, pretrained: Any) -> TrainState:
        init_key, dropout_key, step_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        x = jnp.zeros((1, *input_shape), jnp.float32)
        variables = model.init({"params": init_key, "dropout": dropout_key}, x, train=False)
        if pretrained is not None:
            variables = merge_pretrained(variables, pretrained)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=step_key,
            lr_scale=jnp.ones((), jnp.float32),
            skipped_steps=jnp.zeros((), jnp.int32),
            first_nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    jitted = jax.jit(init)

    def init_state(seed: int, pretrained: Any = None) -> TrainState:
        with random_config():
            return jitted(jnp.asarray(seed, jnp.uint32), pretrained)

    return init_state


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    input_shape: tuple[int, int, int],
) -> TrainState:
    """A fresh TrainState for ``seed`` (see :func:`make_init_fn`)."""
    return make_init_fn(model, tx, input_shape)(seed)


def random_config():
    """The random-number configuration every cxrjax program is traced and run under.

    JAX's classic threefry stream (``jax_threefry_partitionable=False``): the same
    numbers on every backend, and XLA:CPU compiles random-heavy programs (init, dropout)
    about three times faster than with the partitionable variant, which only pays off
    for sharded random arrays (here params are replicated and each replica draws its
    own dropout masks).
    """
    return jax.threefry_partitionable(False)


def to_tree(state: TrainState) -> dict[str, Any]:
    """Nested dict of numpy arrays (optax namedtuples become dicts), for checkpoints.

    Without a moving average (``ema == {}``) the tree has no ``ema`` key at all, so such
    checkpoints are laid out as before EMA existed and old ones still restore."""
    tree = jax.tree.map(np.asarray, flax.serialization.to_state_dict(jax.device_get(state)))
    if not tree.get("ema"):
        tree.pop("ema", None)
    return tree


def from_tree(target: TrainState, tree: dict[str, Any]) -> TrainState:
    """Inverse of :func:`to_tree`, shaped like ``target``."""
    if "ema" not in tree:
        tree = {**tree, "ema": {}}
    return flax.serialization.from_state_dict(target, tree)


def parameter_count(params: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
