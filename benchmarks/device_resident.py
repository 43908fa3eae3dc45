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
- then the engine's own per-replica train step (``cxrjax.train.steps.train_step``),

all wrapped by the training engine itself (``cxrjax.train.parallel.ShardMapEngine`` with
the split replicated, ``batch_spec=P()``), like the plain benchmark step of jax_step.py.

This module is the benchmark's prototype of that path (issue 6 asks for it if the host
pipeline cannot keep up); see benchmarks/README.md for the measured rates and for what
integrating it into cxrjax.data / cxrjax.train would take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from PIL import Image

from benchmarks import jax_step
from cxrjax.train.parallel import ShardMapEngine
from cxrjax.train.steps import AXIS


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

    train: Callable[[Any, dict], tuple[Any, dict]]  # (state, data) -> (state, metrics)
    make_batch: Callable[[Any, dict], dict]  # (state, data) -> the global batch of state.step
    state: Any
    data: dict[str, jax.Array]  # {"image": uint8 [N, S, S, C], "label": int32 [N]}, on every device
    num_devices: int
    compile_s: float


def build_resident_steps(
    model_name: str,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: ResidentConfig,
    *,
    num_classes: int,
    overrides: dict | None = None,
    num_devices: int | None = None,
) -> ResidentSteps:
    """The engine's jit(shard_map) of [gather + augment + engine train step], the data
    replicated per device; the engine's eval slot compiles the batch maker alone (its
    per-replica output, concatenated over the devices, is the global batch)."""
    devices = jax_step.local_devices(num_devices)
    model = jax_step.bench_model(model_name, num_classes=num_classes, channels=images.shape[-1], overrides=overrides)
    tx, train_fn, _ = jax_step.adam_steps(model, num_classes)
    batch_fn = make_batch_fn(len(images), len(devices), cfg)

    def make_batch(state, data):
        return batch_fn(state.step, data["image"], data["label"])

    def resident_step(state, data):
        return train_fn(state, make_batch(state, data))

    engine = ShardMapEngine(resident_step, make_batch, devices, batch_spec=P())
    state = engine.put_state(jax_step.host_initialized_state(model, tx, tuple(images.shape[1:])))
    data = engine.put_batch({"image": images, "label": labels})
    train_c, compile_s = jax_step.compile_step(engine, "train", state, data)
    make_batch_c, _ = jax_step.compile_step(engine, "eval", state, data)
    return ResidentSteps(train_c, make_batch_c, state, data, len(devices), compile_s)
