"""Device-resident input: a whole split as uint8 on every device, batches made in-step.

For small models the host pipeline (decode, resize, augment in Python/NumPy, even with
grain workers) cannot produce images as fast as the train step consumes them. When a
split fits in device memory (D4 at 32 px: 21k x 1 KiB = 21 MiB; at 224 px, 1 GiB), the
alternative is to keep it on the device as uint8 and do everything else inside the
compiled step:

- shuffling: a permutation of the split per epoch, from ``fold_in(seed, epoch)``, so the
  order depends only on (seed, step) exactly like the host pipeline's;
- batching: each replica gathers its slice of the global batch from the permutation;
- augmentation: uint8 -> float ("unit" normalisation), random horizontal flip and a
  random rotation (bilinear, zero fill) per example, keys from ``fold_in(step, replica)``;
- then the engine's own per-replica train step (``cxrjax.train.steps.train_step``).

This module is the benchmark's prototype of that path (issue 6 asks for it if the host
pipeline cannot keep up); see benchmarks/README.md for the measured rates and for what
integrating it into cxrjax.data / cxrjax.train would take.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from benchmarks.jax_step import host_initialized_state
from cxrjax import models
from cxrjax.train.steps import AXIS, LossConfig, train_step


@dataclass(frozen=True)
class ResidentConfig:
    """What the in-step input does: batch per device, augmentation, seed."""

    per_device_batch: int
    hflip: bool = True
    rotate_degrees: float = 10.0
    seed: int = 0


def resident_arrays(source: Sequence[dict], image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Every record of a split resized once to ``image_size``: uint8 [N, S, S, C], int32 [N].

    Grayscale is repeated to 3 channels for 3-channel models, as the host pipeline does.
    """
    n = len(source)
    images = np.empty((n, image_size, image_size, channels), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        record = source[i]
        img = np.asarray(record["image"])[..., 0]
        if img.shape != (image_size, image_size):
            img = np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR))
        images[i] = img[..., None]
        labels[i] = int(record["label"])
    return images, labels


def _rotate(image: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotate one [S, S, C] float image by `angle` radians about its centre (bilinear, zero fill)."""
    s = image.shape[0]
    c = (s - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(s, dtype=jnp.float32), jnp.arange(s, dtype=jnp.float32), indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_y = cos * (yy - c) - sin * (xx - c) + c
    src_x = sin * (yy - c) + cos * (xx - c) + c
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="constant", cval=0.0)  # noqa: E731
    return jnp.stack([sample(image[..., k]) for k in range(image.shape[-1])], axis=-1)


def augment(images_u8: jax.Array, key: jax.Array, cfg: ResidentConfig) -> jax.Array:
    """uint8 [B, S, S, C] -> float32 in [0, 1], with random flips and rotations per example."""
    x = images_u8.astype(jnp.float32) / 255.0
    flip_key, rot_key = jax.random.split(key)
    if cfg.hflip:
        flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0],))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    if cfg.rotate_degrees:
        limit = math.radians(cfg.rotate_degrees)
        angles = jax.random.uniform(rot_key, (x.shape[0],), minval=-limit, maxval=limit)
        x = jax.vmap(_rotate)(x, angles)
    return x


def make_batch_fn(num_examples: int, num_devices: int, cfg: ResidentConfig) -> Callable:
    """Per-replica (step, data_images, data_labels) -> batch {"image", "label"} of this replica."""
    global_batch = cfg.per_device_batch * num_devices
    steps_per_epoch = num_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"split of {num_examples} examples is smaller than one global batch of {global_batch}")
    base = jax.random.key(cfg.seed)

    def batch_fn(step, images, labels):
        epoch, within = step // steps_per_epoch, step % steps_per_epoch
        order = jax.random.permutation(jax.random.fold_in(base, epoch), num_examples)
        replica = jax.lax.axis_index(AXIS)
        start = within * global_batch + replica * cfg.per_device_batch
        idx = jax.lax.dynamic_slice(order, (start,), (cfg.per_device_batch,))
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, 1 << 20), step), replica)
        return {"image": augment(images[idx], key, cfg), "label": labels[idx]}

    return batch_fn


@dataclass
class ResidentSteps:
    """Compiled resident train step (and the batch maker alone), with placed data."""

    train: Callable[[Any, jax.Array, jax.Array], tuple[Any, dict]]
    make_batch: Callable[[jax.Array, jax.Array, jax.Array], dict]
    state: Any
    images: jax.Array
    labels: jax.Array
    num_devices: int
    compile_s: float


def build_resident_steps(model_name: str, images: np.ndarray, labels: np.ndarray, cfg: ResidentConfig, *,
                         num_classes: int, overrides: dict | None = None,
                         num_devices: int | None = None) -> ResidentSteps:
    """jit(shard_map) of [gather + augment + engine train step], the data replicated per device."""
    devices = jax.local_devices()[: num_devices or None]
    n = len(devices)
    mesh = Mesh(np.array(devices), (AXIS,))
    model = models.create(model_name, num_classes=num_classes, channels=images.shape[-1], axis_name=AXIS,
                          **(overrides or {}))
    tx = optax.adam(1e-3)
    state = host_initialized_state(model, tx, tuple(images.shape[1:]))
    train_fn = functools.partial(train_step, model=model, tx=tx, schedule=optax.constant_schedule(1e-3),
                                 loss=LossConfig(num_classes=num_classes))
    batch_fn = make_batch_fn(len(images), n, cfg)

    def resident_step(state, data_images, data_labels):
        return train_fn(state, batch_fn(state.step, data_images, data_labels))

    replicated = NamedSharding(mesh, P())
    state = jax.device_put(state, replicated)
    d_images = jax.device_put(images, replicated)
    d_labels = jax.device_put(labels, replicated)
    train = jax.jit(
        jax.shard_map(resident_step, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P()), check_vma=False),
        donate_argnums=0,
    )
    make_batch = jax.jit(
        jax.shard_map(batch_fn, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P(AXIS), check_vma=False)
    )
    t0 = time.perf_counter()
    train_c = train.lower(state, d_images, d_labels).compile()
    compile_s = time.perf_counter() - t0
    make_batch_c = make_batch.lower(state.step, d_images, d_labels).compile()
    return ResidentSteps(train_c, make_batch_c, state, d_images, d_labels, n, compile_s)
