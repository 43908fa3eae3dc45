"""optax optimisers and learning-rate schedules, built from a TrainConfig.

Everything numeric comes from the config; the train step only applies the resulting
``optax.GradientTransformation`` and multiplies its updates by the host-controlled
``lr_scale`` (1.0 unless ``schedule="plateau"`` reduced it), which for every optimiser
here is the same as scaling the learning rate, because the learning rate is their last
(linear) stage.

- ``adam``: optax.adam; ``weight_decay`` adds L2 to the gradient first (PyTorch's
  ``Adam(weight_decay=...)``).
- ``adamw``: optax.adamw, decoupled weight decay.
- ``sgd``: optax.sgd with ``momentum`` (0 disables it) and ``nesterov`` (S2); with
  ``weight_decay`` as L2 on the gradient.
- ``grad_clip_norm`` clips the global gradient norm before everything else.
- Schedules, in optimisation steps (``steps_per_epoch`` converts epochs):
  ``constant``; ``step`` (x ``step_gamma`` every ``step_every_epochs``); ``warmup_cosine``
  (linear warm-up from 0 over ``warmup_epochs``, cosine to ``min_lr`` at the last step);
  ``plateau`` (constant here; reduced on the host by early_stopping.PlateauScaler).
  ``decay`` > 0 divides any of them by ``1 + decay * step`` (Keras' legacy SGD decay, S2).
- Frozen layers (``TrainConfig.freeze``, a TransferModel's ``frozen_layers``): the whole
  chain above runs on the trainable parameters only (``optax.multi_transform`` by the
  label tree of ``cxrjax.models.transfer.param_labels``); frozen ones get
  ``optax.set_to_zero()``: a zero update (so they stay bit-identical) and no optimiser
  state. Gradient clipping and weight decay therefore see the trainable parameters only,
  as in Keras, where frozen weights have no gradient.
"""

from __future__ import annotations

import optax

from cxrjax.models.transfer import FROZEN, TRAINABLE, param_labels
from cxrjax.train.config import TrainConfig


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    lr = config.lr
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule in ("constant", "plateau"):
        base = optax.constant_schedule(lr)
    elif config.schedule == "step":
        base = optax.exponential_decay(
            lr,
            transition_steps=max(1, config.step_every_epochs * steps_per_epoch),
            decay_rate=config.step_gamma,
            staircase=True,
        )
    elif config.schedule == "warmup_cosine":
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        base = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total, warmup + 1),
            end_value=config.min_lr,
        )
    else:  # pragma: no cover - TrainConfig.validated() rejects it
        raise ValueError(f"unknown schedule {config.schedule!r}")
    if config.decay:
        decay = config.decay

        def schedule(step):
            return base(step) / (1.0 + decay * step)

        return schedule
    return base


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int, frozen_layers: tuple[str, ...] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule); the schedule is also used to report the learning rate.
    ``frozen_layers``: backbone layers whose parameters get no update and no state."""
    schedule = make_schedule(config, steps_per_epoch)
    stages: list[optax.GradientTransformation] = []
    if config.grad_clip_norm is not None:
        stages.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == "adamw":
        stages.append(
            optax.adamw(
                schedule,
                b1=config.adam_b1,
                b2=config.adam_b2,
                eps=config.adam_eps,
                weight_decay=config.weight_decay,
            )
        )
    else:
        if config.weight_decay:
            stages.append(optax.add_decayed_weights(config.weight_decay))
        if config.optimizer == "adam":
            stages.append(optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
        elif config.optimizer == "sgd":
            momentum = config.momentum or None
            stages.append(optax.sgd(schedule, momentum=momentum, nesterov=config.nesterov and bool(momentum)))
        else:  # pragma: no cover - TrainConfig.validated() rejects it
            raise ValueError(f"unknown optimizer {config.optimizer!r}")
    tx = stages[0] if len(stages) == 1 else optax.chain(*stages)
    if frozen_layers:
        frozen = tuple(frozen_layers)
        tx = optax.multi_transform(
            {TRAINABLE: tx, FROZEN: optax.set_to_zero()}, lambda params: param_labels(params, frozen)
        )
    return tx, schedule
