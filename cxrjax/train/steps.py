"""The per-replica train and eval steps: ONE code path for every parallel wrapper.

Both functions run on one replica's slice of the global batch inside a named device axis
(:data:`AXIS`), provided by ``jax.shard_map`` or ``jax.pmap`` (see parallel.py):

- gradients, loss and accuracy are averaged over replicas with ``lax.pmean``, so the
  update equals the single-device update on the global batch (equal slice sizes);
- BatchNorm statistics are cross-replica because the model is built with
  ``axis_name=AXIS``;
- the dropout key is ``fold_in(fold_in(rng, step), replica index)``: fresh per step, and
  different on every replica;
- a non-finite loss or gradient, or an update that would make the new params, optimizer
  state or BatchNorm statistics non-finite (a finite loss can still overflow them, e.g.
  with a huge learning rate), leaves params, optimizer state and BatchNorm statistics
  exactly as they were; so the state is finite after every step. The step counter still
  advances (a batch was consumed), the skip is counted and the first such step recorded,
  all on device, so the host learns about it from the metrics it fetches anyway (no
  extra synchronisation per step): ``finite`` (the update was applied) and
  ``finite_loss_and_grads`` (which of the two checks failed).

Losses: softmax cross-entropy with optional label smoothing and class weights, the mean
over the batch of ``weight[label] * loss`` (Keras' ``class_weight`` semantics); with
``mixup`` (:func:`mixup_batch`) the images of the replica's slice are mixed with their
neighbour's and the loss is the same mix of the two labels' losses. Eval
returns per-example log-probabilities; validation loss and metrics are computed on the
host over the full split (mask-aware), without label smoothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from cxrjax.train import ema
from cxrjax.train.state import TrainState

AXIS = "batch"


@dataclass(frozen=True)
class LossConfig:
    num_classes: int
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    mixup: float = 0.0  # Beta(a, a) parameter; 0: off (mixup_batch)


# fold_in data of the mixup stream: not a replica index, so never the dropout key's.
_MIXUP_STREAM = 0x6D697875


def mixup_batch(images: jax.Array, alpha: float, key: jax.Array, first: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018) of one replica's slice: ``(mixed images, lam)``.

    Example i is mixed with its neighbour ``i ^ 1`` (pairs 0-1, 2-3, ... of the slice;
    an even slice, checked by TrainConfig), ``lam * x_i + (1 - lam) * x_{i^1}``, and
    ``lam_i ~ Beta(alpha, alpha)`` is drawn from ``fold_in(key, first + i)``, where
    ``first`` is the slice's first index in the global batch. Both depend only on an
    example's place in the global batch, so N devices mix exactly as one does (the
    global batch splits into even slices without splitting a pair)."""
    n = images.shape[0]
    index = jnp.arange(n)
    lam = jax.vmap(lambda i: jax.random.beta(jax.random.fold_in(key, first + i), alpha, alpha))(index)
    shape = (n,) + (1,) * (images.ndim - 1)
    partner = images[index ^ 1]
    mixed = lam.reshape(shape).astype(images.dtype) * images + (1 - lam.reshape(shape)).astype(images.dtype) * partner
    return mixed, lam


def per_example_loss(logits: jax.Array, labels: jax.Array, loss: LossConfig) -> jax.Array:
    targets = jax.nn.one_hot(labels, loss.num_classes, dtype=jnp.float32)
    if loss.label_smoothing:
        targets = optax.smooth_labels(targets, loss.label_smoothing)
    values = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    if loss.class_weights is not None:
        values = values * jnp.asarray(loss.class_weights, jnp.float32)[labels]
    return values


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array],
    loss: LossConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step on this replica's slice; must run inside the AXIS device axis."""
    replica = lax.axis_index(AXIS)
    step_key = jax.random.fold_in(state.rng, state.step)
    dropout_key = jax.random.fold_in(step_key, replica)
    has_batch_stats = bool(jax.tree.leaves(state.batch_stats))
    images, labels = batch["image"], batch["label"]
    if loss.mixup:
        first = replica * images.shape[0]
        images, lam = mixup_batch(images, loss.mixup, jax.random.fold_in(step_key, _MIXUP_STREAM), first)
        partner_labels = labels[jnp.arange(labels.shape[0]) ^ 1]

    def loss_fn(params):
        variables = {"params": params}
        if has_batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits, mutated = model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
        )
        values = per_example_loss(logits, labels, loss)
        if loss.mixup:  # cross-entropy is linear in the targets: the loss of the mixed targets
            values = lam * values + (1 - lam) * per_example_loss(logits, partner_labels, loss)
        value = jnp.mean(values)
        return value, (logits, mutated.get("batch_stats", state.batch_stats))

    (value, (logits, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    value = lax.pmean(value, AXIS)
    accuracy = lax.pmean(jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)), AXIS)

    finite_loss_and_grads = jnp.isfinite(value) & _all_finite(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    new_params = optax.apply_updates(state.params, updates)
    # The updated state too: finite loss and gradients can still overflow it.
    finite = finite_loss_and_grads & _all_finite((new_params, new_opt_state, new_batch_stats))

    new_state = state.replace(
        step=state.step + 1,
        params=_select(finite, new_params, state.params),
        opt_state=_select(finite, new_opt_state, state.opt_state),
        batch_stats=_select(finite, new_batch_stats, state.batch_stats),
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where(
            (state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step
        ),
    )
    new_state = ema.update(new_state, state.step)  # the weights' moving average, if kept (ema.py)
    metrics = {
        "loss": value,
        "accuracy": accuracy,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
        "lr": schedule(state.step) * state.lr_scale,
        "finite": finite,
        "finite_loss_and_grads": finite_loss_and_grads,
    }
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module) -> jax.Array:
    """Per-example log-probabilities [local batch, K] (deterministic: train=False)."""
    logits = model.apply(state.variables, batch["image"], train=False)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def scan_steps(train_fn: Callable[[TrainState, dict], tuple[TrainState, dict]]) -> Callable:
    """``(state, batches) -> (state, metrics)``: ``train_fn`` (a per-replica train step of
    :func:`bind_steps`) applied to each of K stacked batches (leading axis K) in one
    ``lax.scan``, so K steps are one compiled call; the metrics come back stacked, [K]
    per name. The same step, not a second one: K scanned steps equal K single ones."""

    def multi(state: TrainState, batches: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        return lax.scan(train_fn, state, batches)

    return multi


def bind_steps(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array],
    loss: LossConfig,
) -> tuple[Callable[[TrainState, dict], tuple[TrainState, dict]], Callable[[TrainState, dict], jax.Array]]:
    """(train_fn, eval_fn): :func:`train_step` and :func:`eval_step` with one run's model,
    optimizer, schedule and loss bound, the ``(state, batch)`` form parallel.py's engines
    wrap. One place, so training (run_setup.build_engine) and the benchmarks
    (benchmarks/jax_step.py, with their own optimizer) compile the same step."""
    return (
        functools.partial(train_step, model=model, tx=tx, schedule=schedule, loss=loss),
        functools.partial(eval_step, model=model),
    )
