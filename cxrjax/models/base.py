"""What every cxrjax classifier shares: input checks, and ``init`` without perturbations.

Models call ``self.perturb(name, x)`` after each conv stage so Grad-CAM can take the
gradient of the logits with respect to that activation. Flax's ``init`` makes every
collection mutable and would therefore store zero "perturbations" next to the params;
:meth:`Classifier.init` drops them so ``variables`` holds only "params" (and
"batch_stats"), which is what training, optimizers and checkpoints expect. Grad-CAM
gets the zero perturbations with
``model.apply(variables, x, train=False, mutable=["perturbations"])``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.layers import Plan, plan_output_size, smallest_valid_size


class Classifier(nn.Module):
    """Base class: subclasses define ``__call__(x, *, train)`` and ``spatial_plan()``.

    The options every model takes (``models.create`` passes them): ``num_classes``,
    ``channels`` of the input (each model redeclares it with its study's default),
    ``dtype`` of the computation and ``axis_name``, the device axis BatchNorm averages its
    statistics over (None: one device; accepted by models without BatchNorm too, for a
    uniform interface). A subclass's own options follow them.
    """

    num_classes: int
    channels: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.nowrap
    def init(self, rngs, *args, **kwargs):  # noqa: D102 - documented in the module docstring
        variables = super().init(rngs, *args, **kwargs)
        return {k: v for k, v in variables.items() if k != "perturbations"}

    @nn.nowrap
    def spatial_plan(self) -> Plan:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Grad-CAM's layers: the activation after each conv of :meth:`spatial_plan`, in
        order, as the model ``perturb``s them (feat1, feat2, ...); the last is the default."""
        n = sum(1 for step in self.spatial_plan() if step[0] == "conv")
        return tuple(f"feat{i}" for i in range(1, n + 1))

    @nn.nowrap
    def min_image_size(self) -> int:
        """Smallest square input this model's convolutions and poolings accept."""
        return smallest_valid_size(self.spatial_plan())

    @nn.nowrap
    def check_input(self, x: Any) -> None:
        """Raise a clear error for inputs the model cannot take (layout, dtype, size)."""
        name = type(self).__name__
        if x.ndim != 4:
            raise ValueError(f"{name} expects NHWC images [batch, height, width, channels], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{name} expects float images (normalised by cxrjax.data), got {x.dtype}; "
                "convert with x.astype(jnp.float32) / 255"
            )
        channels = getattr(self, "channels", None)
        if channels is not None and x.shape[-1] != channels:
            raise ValueError(
                f"{name} was built for {channels} input channel(s) but got {x.shape[-1]} "
                f"(shape {x.shape}); pass channels={x.shape[-1]} to models.create"
            )
        plan = self.spatial_plan()
        for axis, size in (("height", x.shape[1]), ("width", x.shape[2])):
            if plan_output_size(size, plan) is None:
                smallest = smallest_valid_size(plan)
                raise ValueError(
                    f"{name}: input {axis} {size} is too small for its convolutions and "
                    f"poolings; the smallest valid input size is {smallest}x{smallest}"
                )


def logits_float32(x: jax.Array) -> jax.Array:
    """Logits are float32 for float32 / bfloat16 compute, so losses are computed stably.

    (float64 compute, used by the finite-difference tests, keeps float64.)
    """
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
