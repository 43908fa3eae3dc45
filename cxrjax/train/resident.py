"""Device-resident input (``TrainConfig.data_placement="device"``): every split as uint8
on the devices once; batches gathered, augmented and normalised inside the compiled step.

For small models the host pipeline (decode, resize, augment in Python, even with grain
workers) cannot produce images as fast as the train step consumes them. When the splits
fit in device memory (D4 at 32 px: 21k x 1 KiB), the alternative is to put them on the
devices once, as the uint8 images the host pipeline would resize them to, and do the rest
in the compiled step:

- placement: each split's images uint8 [N, S, S] (one gray channel; 3-channel models get
  it repeated in-step, as the host pipeline does), cut to ``crop_box`` and resized by the
  host pipeline's own ``cxrjax.data.augment.prepare``, are SHARDED along the example axis
  over the engine's mesh (device r holds rows [r m, (r + 1) m), m = ceil(N / n)), so a
  split costs N S^2 / n bytes per device; labels are replicated (4 bytes each);
- order: the epoch's order is the host pipeline's own (``cxrjax.data.epoch_order``:
  shuffle, or class-balanced sampling with replacement), computed on the host (indices
  only) and put on the devices once per epoch; the batch of global step s is positions
  [(s mod spe) B, (s mod spe + 1) B) of that order, so with augmentation off the batches
  (order and content) are exactly the grain pipeline's;
- gather: every replica takes, for the whole global batch, the rows it holds (zeros
  elsewhere), and ``lax.psum_scatter`` hands replica r the sum over replicas of rows
  [r b, (r + 1) b): its own slice, exact (one replica contributes each row), one
  reduce-scatter of the uint8 batch per step;
- augmentation (the host path's options: flip, rotation, zoom, translation, brightness,
  contrast, gamma, random and border erasing): the four uniforms of an example come from
  ``fold_in(fold_in(aug_key, epoch), position)`` (``aug_key`` from the run's seed through
  the train state's key), and, when an option past those four is on, 13 more from that
  key folded with :data:`EXTRA_UNIFORMS_TAG` (so runs without them draw what they drew
  before those options existed); they depend only on (seed, epoch, position), not on the
  devices; they become parameters by the host path's own definition
  (``cxrjax.data.augment.params_from_uniforms``); the flip and the affine resampling
  follow ``cxrjax.data.augment.geometry`` (PIL's pixel-centre affine map, bilinear, zero
  fill outside), brightness ``to_unit_float``, and contrast, gamma and erasing are the
  host path's own array code (``augment.jitter_intensity``, ``augment.erase``), computed
  in float32 without the host path's rounding to uint8 between geometry and
  brightness, so augmented images equal the host's within interpolation tolerance, not
  bit for bit (and the random draws differ from the host's NumPy generator);
- normalisation: ``cxrjax.data.pipeline.normalization_shift_scale``, the same float32
  operations as the host path; ``per_image``: ``augment.normalize_per_image``, the host
  path's function, whose mean and std are reduced in another order on the device (equal
  within float32 rounding, not bit for bit);
- then the engine's own per-replica train step (``engine.train_fn``), K of them in one
  ``lax.scan`` per call (``steps_per_dispatch``), metrics stacked.

Evaluation (validation, test) reads the same device copy: batch b is positions
[b B, (b + 1) B) of the split, the last one padded with zero images and masked, as
``cxrjax.data.eval_batches`` does; outputs are fetched once at the end.

Resume: the batch of a step is a function of (seed, epoch, step), so the state after a
checkpoint continues exactly; the iterator state stored with a checkpoint is just
{"placement": "device", "epoch", "batch_in_epoch"} (where the grain state is stored for
the host path).

``data_placement="auto"`` picks "device" when the splits' uint8 bytes fit
:func:`memory_budget` (on accelerators a quarter of one device's memory per device
share, N S^2 / n; on CPU, where the forced devices share the host's memory, 1 GiB for
all of it), the engine is shard_map and there is one process; else "host".
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax.data import augment
from cxrjax.train.evaluation import EnginePredictor, SplitPredictions
from cxrjax.train.state import random_config
from cxrjax.train.steps import AXIS

PLACEMENTS = ("host", "device")
CPU_BUDGET_BYTES = 1 << 30  # all splits together, on CPU
ACCELERATOR_FRACTION = 0.25  # of one device's memory, for its share of the splits
EVAL_SPLITS = ("train", "validation", "test")


class PlacementError(ValueError):
    """``data_placement="device"`` cannot be honoured (pmap, several processes); the message
    names the fix. The trainer reports it as a RunSetupError (one ``error:`` line)."""


# ----------------------------------------------------------------------------- placement
def resident_bytes(dataset: Any, image_size: int, splits: tuple[str, ...] = EVAL_SPLITS) -> int:
    """uint8 bytes of the device copy of ``splits`` (those the dataset has) at ``image_size``."""
    return sum(len(dataset.splits[s]) for s in splits if s in dataset.splits) * image_size * image_size


def memory_budget(devices: list) -> tuple[int | None, str]:
    """(bytes the device copy may take in all, how that was decided); None: unknown (host).

    CPU: :data:`CPU_BUDGET_BYTES`. Accelerators: :data:`ACCELERATOR_FRACTION` of the
    smallest device's memory (``memory_stats()["bytes_limit"]``) times the devices (each
    holds 1/n of the copy); a backend without memory statistics gets None.
    """
    if devices[0].platform == "cpu":
        return CPU_BUDGET_BYTES, f"{CPU_BUDGET_BYTES / 2**30:g} GiB on CPU"
    limits = []
    for d in devices:
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return None, f"{d.platform} reports no memory statistics"
        limits.append(int(stats["bytes_limit"]))
    per_device = int(min(limits) * ACCELERATOR_FRACTION)
    return per_device * len(devices), f"{ACCELERATOR_FRACTION:g} of {min(limits) / 2**30:.1f} GiB x {len(devices)}"


def choose_placement(config: Any, dataset: Any, image_size: int, devices: list, *, resumed: str | None = None) -> str:
    """ "host" or "device" for this run; ``resumed``: the placement its checkpoint was trained
    with (``"auto"`` keeps it, so a resumed run sees the batches it started with)."""
    requested = config.data_placement
    if requested == "auto" and resumed in PLACEMENTS:
        requested = resumed
    if requested == "host":
        return "host"
    problem = None
    if config.parallel != "shard_map":
        problem = f"parallel={config.parallel!r} (the device-resident input runs on the shard_map engine)"
    elif jax.process_count() > 1:
        problem = f"{jax.process_count()} processes (the device-resident input is single-process)"
    if requested == "device":
        if problem:
            raise PlacementError(f"data_placement='device' cannot run with {problem}; use --data-placement host")
        return "device"
    if problem:
        return "host"
    budget, _ = memory_budget(devices)
    return "device" if budget is not None and resident_bytes(dataset, image_size) <= budget else "host"


# ------------------------------------------------------------------------ host-side copy
# uint8 images and labels per (dataset object, split, image size): an experiment grid that
# trains many runs on one opened dataset reads and resizes it once.
_HOST_COPIES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def host_copy(dataset: Any, split: str, image_size: int, crop_box=None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, S, S], int32 [N]): every record of ``split`` cropped and resized as the
    host pipeline does it (``cxrjax.data.augment.prepare``), and its label."""
    try:
        memo = _HOST_COPIES.setdefault(dataset, {})
    except TypeError:  # not weak-referenceable: no memo
        memo = {}
    key = (split, image_size, None if crop_box is None else tuple(crop_box))
    if key not in memo:
        src = dataset.splits[split]
        n = len(src)
        images = np.empty((n, image_size, image_size), np.uint8)
        labels = np.empty((n,), np.int32)
        for i in range(n):
            record = src[i]
            images[i] = augment.prepare(record["image"], image_size, crop_box)
            labels[i] = int(record["label"])
        memo[key] = (images, labels)
    return memo[key]


# ------------------------------------------------------------------- in-step operations
@dataclass(frozen=True)
class Transform:
    """What the in-step input does to a uint8 batch (static: part of the compiled program)."""

    image_size: int
    channels: int
    shift: float
    scale: float
    hflip: bool = False
    rotate_degrees: float = 0.0
    zoom: tuple[float, float] | None = None
    brightness: tuple[float, float] | None = None
    translate: float = 0.0
    contrast: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None
    random_erasing: float = 0.0
    border_erase: float = 0.0
    per_image: bool = False  # normalization="per_image" (shift 0, scale 1 then)
    crop_box: tuple[float, float, float, float] | None = None  # applied by host_copy, before the device

    @classmethod
    def of(cls, input_config: Any, dataset: Any) -> "Transform":
        from cxrjax.data.pipeline import dataset_statistics, normalization_shift_scale

        stats = dataset_statistics(dataset) if input_config.normalization == "dataset" else None
        shift, scale = normalization_shift_scale(input_config, stats)

        def pair(value):
            return tuple(float(v) for v in value) if value else None

        return cls(
            image_size=input_config.image_size,
            channels=input_config.channels,
            shift=float(shift),
            scale=float(scale),
            hflip=bool(input_config.hflip),
            rotate_degrees=float(input_config.rotate_degrees),
            zoom=pair(input_config.zoom),
            brightness=pair(input_config.brightness),
            translate=float(input_config.translate),
            contrast=pair(input_config.contrast),
            gamma=pair(input_config.gamma),
            random_erasing=float(input_config.random_erasing),
            border_erase=float(input_config.border_erase),
            per_image=input_config.normalization == "per_image",
            crop_box=pair(input_config.crop_box),
        )

    def augment_options(self) -> dict[str, Any]:
        """The keyword arguments of ``cxrjax.data.augment.params_from_uniforms``."""
        return augment.options_of(self)

    @property
    def extra_uniforms(self) -> bool:
        """Whether an option past the first four uniforms is on (they are drawn apart)."""
        return augment.uses_extra_uniforms(**augment.options_of(self, extra_only=True))

    @property
    def augments(self) -> bool:
        return bool(self.hflip or self.rotate_degrees or self.zoom or self.brightness or self.extra_uniforms)

    @property
    def resamples(self) -> bool:
        return bool(self.rotate_degrees or self.zoom or self.translate)

    @property
    def float_path(self) -> bool:
        """Whether augmented pixels need float arithmetic (else the exact table look-up)."""
        return bool(self.resamples or self.brightness or self.contrast or self.gamma or self.erases)

    @property
    def erases(self) -> bool:
        return bool(self.random_erasing or self.border_erase)


def affine(
    image: jax.Array,
    angle_degrees: jax.Array,
    zoom: jax.Array,
    translate_x: jax.Array = 0.0,
    translate_y: jax.Array = 0.0,
) -> jax.Array:
    """float [S, S] rotated by ``angle_degrees``, zoomed by ``zoom`` about its centre and
    moved by (translate_x W, translate_y H): ``cxrjax.data.augment.geometry``'s map
    (``augment.affine_coefficients``, PIL's AFFINE transform: output pixel centre p + 0.5
    reads input c + R(-a) (p + 0.5 - c - t) / z; bilinear with edge clamping inside the
    image, 0 where the source point lies outside it), in float32."""
    h, w = image.shape
    cx, cy = w / 2.0, h / 2.0
    ox, oy = cx + translate_x * w, cy + translate_y * h
    a = angle_degrees * (math.pi / 180.0)
    ca, sa = jnp.cos(a) / zoom, jnp.sin(a) / zoom
    x = jnp.arange(w, dtype=jnp.float32)[None, :] + 0.5
    y = jnp.arange(h, dtype=jnp.float32)[:, None] + 0.5
    xin = ca * x - sa * y + (cx - ca * ox + sa * oy)
    yin = sa * x + ca * y + (cy - sa * ox - ca * oy)
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = jnp.floor(xs), jnp.floor(ys)
    dx, dy = xs - x0, ys - y0
    x0i, x1i = jnp.clip(x0, 0, w - 1).astype(jnp.int32), jnp.clip(x0 + 1, 0, w - 1).astype(jnp.int32)
    y0i, y1i = jnp.clip(y0, 0, h - 1).astype(jnp.int32), jnp.clip(y0 + 1, 0, h - 1).astype(jnp.int32)
    top = image[y0i, x0i] + (image[y0i, x1i] - image[y0i, x0i]) * dx
    bottom = image[y1i, x0i] + (image[y1i, x1i] - image[y1i, x0i]) * dx
    return jnp.where(inside, top + (bottom - top) * dy, 0.0)


def pixel_table(t: Transform) -> np.ndarray:
    """float32 [256]: the model input of each uint8 value without brightness, by the host
    path's own float32 operations (``augment.to_unit_float``, then the normalisation), so
    a table look-up on the device gives exactly the host pipeline's values whatever the
    compiler makes of the arithmetic (it may contract a multiply and a subtract)."""
    x = np.arange(256, dtype=np.float32)
    x *= np.float32(1.0 / 255.0)
    if t.shift:
        x -= np.float32(t.shift)
    if t.scale != 1.0:
        x *= np.float32(t.scale)
    return x


def to_model_input(images: jax.Array, t: Transform, uniforms: jax.Array | None = None) -> jax.Array:
    """uint8 [b, S, S] -> float32 [b, S, S, C]: augmentation from ``uniforms`` ([b, 4], or
    [b, 17] with the options past the first four; None: none), then [0, 1] scaling,
    intensity jitter, erasing and normalisation, as the host path does.

    Without resampling, intensity changes or erasing (evaluation, flips only) the pixels
    go through :func:`pixel_table`: bit-identical to the host pipeline (but for
    normalization="per_image", whose mean and std are reduced in another order: equal
    within float32 rounding). Otherwise the float32 arithmetic of ``to_unit_float`` and
    the shared array code of ``cxrjax.data.augment`` (``jitter_intensity``, ``erase``,
    ``normalize_per_image``), on the interpolated values.
    """
    p = None
    if uniforms is not None and t.augments:
        p = augment.params_from_uniforms(uniforms, **t.augment_options())
        if t.hflip:
            images = jnp.where(p.flip[:, None, None], images[:, :, ::-1], images)
    if p is None or not t.float_path:
        x = jnp.asarray(pixel_table(t))[images.astype(jnp.int32)]
    else:
        x = images.astype(jnp.float32)
        if t.resamples:
            shifts = [
                jnp.broadcast_to(jnp.asarray(v, jnp.float32), x.shape[:1]) for v in (p.translate_x, p.translate_y)
            ]
            x = jax.vmap(affine)(x, p.angle_degrees, p.zoom, *shifts)
        if t.brightness:
            x = jnp.minimum(x * (p.brightness / 255.0).astype(jnp.float32)[:, None, None], 1.0)
        else:
            x = x * np.float32(1.0 / 255.0)
        x = augment.jitter_intensity(x, p, jnp, contrast=t.contrast, gamma=t.gamma)
        x = augment.erase(x, p, jnp, random_erasing=t.random_erasing, border_erase=t.border_erase)
        if t.shift:
            x = x - np.float32(t.shift)
        if t.scale != 1.0:
            x = x * np.float32(t.scale)
    if t.per_image:
        x = augment.normalize_per_image(x, jnp)
    x = x[..., None]
    if t.channels == 3:
        x = jnp.broadcast_to(x, (*x.shape[:3], 3))
    return x


def gather_rows(shard: jax.Array, indices: jax.Array) -> jax.Array:
    """This replica's slice of ``shard``-ed rows ``indices`` (the global batch, replicated):
    each replica contributes the rows it holds, ``psum_scatter`` gives replica r rows
    [r b, (r + 1) b) of the batch. Runs inside the AXIS device axis."""
    m = shard.shape[0]
    local = indices - lax.axis_index(AXIS) * m
    held = (local >= 0) & (local < m)
    rows = jnp.where(held[:, None, None], shard[jnp.clip(local, 0, m - 1)], jnp.zeros((), shard.dtype))
    return lax.psum_scatter(rows, AXIS, scatter_dimension=0, tiled=True)


def _replica_slice(x: jax.Array, per_replica: int) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, lax.axis_index(AXIS) * per_replica, per_replica)


def augment_root(rng: jax.Array) -> jax.Array:
    """The augmentation key of a run, from its train state's key (so from its seed)."""
    return jax.random.split(rng)[1]


EXTRA_UNIFORMS_TAG = 0xE7  # folded into an example's key for the uniforms past the first four


def uniforms_for(rng: jax.Array, epoch: jax.Array, positions: jax.Array, extra: bool = False) -> jax.Array:
    """[b, 4] uniforms of the examples at ``positions`` of ``epoch`` (``extra``: [b, 17],
    the last 13 from the example's key folded with :data:`EXTRA_UNIFORMS_TAG`, so the
    first four are the same either way): a pure function of (seed, epoch, position)."""
    epoch_key = jax.random.fold_in(augment_root(rng), epoch)

    def one(p):
        key = jax.random.fold_in(epoch_key, p)
        u = jax.random.uniform(key, (augment.LEGACY_UNIFORMS,))
        if not extra:
            return u
        more = augment.NUM_UNIFORMS - augment.LEGACY_UNIFORMS
        return jnp.concatenate([u, jax.random.uniform(jax.random.fold_in(key, EXTRA_UNIFORMS_TAG), (more,))])

    return jax.vmap(one)(positions)


def train_batch_fn(t: Transform, spe: int, global_batch: int, num_devices: int):
    """Per-replica ``(step, rng, images, labels, order) -> {"image", "label"}``: this
    replica's slice of the batch of global step ``step`` (positions [(step mod spe) B,
    (step mod spe + 1) B) of the epoch's ``order``), augmented by (seed, epoch, position)."""
    per_replica = global_batch // num_devices

    def make(step, rng, images, labels, order):
        epoch, within = step // spe, step % spe
        positions = within * global_batch + jnp.arange(global_batch, dtype=jnp.int32)
        indices = order[positions]
        raw = gather_rows(images, indices)
        mine = _replica_slice(positions, per_replica)
        uniforms = uniforms_for(rng, epoch, mine, t.extra_uniforms) if t.augments else None
        return {"image": to_model_input(raw, t, uniforms), "label": _replica_slice(labels[indices], per_replica)}

    return make


# ---------------------------------------------------------------------- the input object
@dataclass
class _Split:
    images: jax.Array  # uint8 [n * m, S, S], sharded along the first axis
    labels: jax.Array  # int32 [N], replicated
    host_labels: np.ndarray  # int32 [N]
    size: int  # N


class ResidentInput:
    """The device copy of a run's splits and the compiled steps that read it.

    ``start_epoch(seed, epoch)`` puts that epoch's order on the devices;
    ``train_steps(state, k)`` runs the next k steps (from ``state.step``) in one call,
    metrics stacked [k]; ``batch(state)`` is the global batch of ``state.step`` on the host
    (tests, benchmarks); ``predict_split(state, split)`` evaluates a split from the copy.
    The compiled programs are kept on the engine (memoised per run configuration by
    run_setup.build_engine), keyed by everything static they depend on.
    """

    def __init__(
        self,
        engine: Any,
        dataset: Any,
        input_config: Any,
        *,
        global_batch: int,
        eval_global_batch: int,
        steps_per_epoch: int,
        splits: tuple[str, ...] = EVAL_SPLITS,
    ):
        if getattr(engine, "kind", None) != "shard_map":
            raise PlacementError("the device-resident input needs the shard_map engine; use --data-placement host")
        self.engine, self.dataset, self.input_config = engine, dataset, input_config
        self.transform = Transform.of(input_config, dataset)
        self.global_batch, self.eval_global_batch, self.spe = global_batch, eval_global_batch, steps_per_epoch
        n = engine.num_devices
        self._rows = NamedSharding(engine.mesh, P(AXIS))
        self._replicated = NamedSharding(engine.mesh, P())
        self.splits: dict[str, _Split] = {}
        size = self.transform.image_size
        for name in splits:
            if name not in dataset.splits or len(dataset.splits[name]) == 0:
                continue
            images, labels = host_copy(dataset, name, size, self.transform.crop_box)
            rows = -(-len(images) // n) * n
            padded = np.zeros((rows, size, size), np.uint8)
            padded[: len(images)] = images
            self.splits[name] = _Split(
                images=jax.device_put(padded, self._rows),
                labels=jax.device_put(labels, self._replicated),
                host_labels=labels,
                size=len(labels),
            )
        self._order: jax.Array | None = None
        self.epoch: int | None = None
        self._programs = engine.__dict__.setdefault("_resident_programs", {})

    # --- compiled programs, memoised on the engine ----------------------------------
    def _program(self, kind: str, **static: Any):
        key = (kind, self.transform, self.spe, self.global_batch, self.eval_global_batch, tuple(sorted(static.items())))
        if key not in self._programs:
            self._programs[key] = getattr(self, f"_build_{kind}")(**static)
        return self._programs[key]

    def _shard_map(self, fn, in_specs, out_specs, **jit):
        return jax.jit(
            jax.shard_map(fn, mesh=self.engine.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False), **jit
        )

    def _build_train(self, num_steps: int):
        make = train_batch_fn(self.transform, self.spe, self.global_batch, self.engine.num_devices)
        train_fn = self.engine.train_fn

        def step(state, images, labels, order):
            return train_fn(state, make(state.step, state.rng, images, labels, order))

        def steps(state, images, labels, order):
            if num_steps == 1:  # no loop: the host path's single step, numerically
                state, metrics = step(state, images, labels, order)
                return state, jax.tree.map(lambda m: m[None], metrics)
            return lax.scan(lambda s, _: step(s, images, labels, order), state, None, length=num_steps)

        return self._shard_map(steps, (P(), P(AXIS), P(), P()), (P(), P()), donate_argnums=0)

    def _build_batch(self):
        make = train_batch_fn(self.transform, self.spe, self.global_batch, self.engine.num_devices)
        return self._shard_map(
            lambda state, images, labels, order: make(state.step, state.rng, images, labels, order),
            (P(), P(AXIS), P(), P()),
            P(AXIS),
        )

    def _build_eval(self):
        t, batch, n = self.transform, self.eval_global_batch, self.engine.num_devices
        eval_fn, per_replica = self.engine.eval_fn, batch // n

        def evaluate(state, images, size, index):
            positions = index * batch + jnp.arange(batch, dtype=jnp.int32)
            valid = positions < size
            raw = gather_rows(images, jnp.where(valid, positions, 0))
            x = jnp.where(_replica_slice(valid, per_replica)[:, None, None, None], to_model_input(raw, t), 0.0)
            return eval_fn(state, {"image": x})

        return self._shard_map(evaluate, (P(), P(AXIS), P(), P()), P(AXIS))

    # --- training ----------------------------------------------------------------
    def start_epoch(self, seed: int, epoch: int) -> None:
        """Put epoch ``epoch``'s (0-based) training order on the devices: the host
        pipeline's own order (``cxrjax.data.epoch_order``)."""
        from cxrjax.data.pipeline import epoch_order

        order = epoch_order(self.dataset, "train", self.input_config, seed=seed, epoch=epoch)
        self._order = jax.device_put(np.asarray(order, np.int32), self._replicated)
        self.epoch = epoch

    def _current_order(self) -> jax.Array:
        if self._order is None:
            raise RuntimeError("ResidentInput: call start_epoch(seed, epoch) before training")
        return self._order

    def train_steps(self, state: Any, num_steps: int) -> tuple[Any, dict[str, jax.Array]]:
        """The next ``num_steps`` train steps (from ``state.step``, inside the current
        epoch) in one call; metrics stacked [num_steps]."""
        split = self.splits["train"]
        program = self._program("train", num_steps=int(num_steps))
        with random_config():
            return program(state, split.images, split.labels, self._current_order())

    def device_batch(self, state: Any) -> dict[str, jax.Array]:
        """The global batch of ``state.step`` as the train step sees it (device arrays,
        split over the devices like a host batch; the benchmarks time it)."""
        split = self.splits["train"]
        with random_config():
            return self._program("batch")(state, split.images, split.labels, self._current_order())

    def batch(self, state: Any) -> dict[str, np.ndarray]:
        """:meth:`device_batch` on the host."""
        return jax.device_get(self.device_batch(state))

    def iterator_state(self, batch_in_epoch: int) -> dict[str, Any]:
        """What a checkpoint stores where the grain iterator state goes for the host path."""
        return {"placement": "device", "epoch": self.epoch, "batch_in_epoch": int(batch_in_epoch)}

    # --- evaluation ----------------------------------------------------------------
    def predict_split(self, state: Any, split: str) -> SplitPredictions:
        """Probabilities for every example of ``split``, in order, from the device copy."""
        s = self.splits[split]
        program = self._program("eval")
        size = jax.device_put(np.int32(s.size), self._replicated)
        with random_config():
            outputs = [program(state, s.images, size, np.int32(b)) for b in range(-(-s.size // self.eval_global_batch))]
        if not outputs:
            return SplitPredictions(np.zeros(0, np.int64), np.zeros((0, self.dataset.num_classes), np.float32))
        logp = np.concatenate([np.asarray(o) for o in jax.device_get(outputs)])[: s.size]
        return SplitPredictions(labels=s.host_labels.astype(np.int64), probs=np.exp(logp).astype(np.float32))

    def predictor(self, device_state: Any) -> "ResidentPredictor":
        return ResidentPredictor(self.engine, device_state, self.input_config, self.dataset.num_classes, resident=self)


@dataclass
class ResidentPredictor(EnginePredictor):
    """The engine's predictor, evaluating the splits it holds from the device copy
    (``cxrjax.train.evaluation.predict_split`` asks :meth:`predict_split` first); any
    other dataset, split or batch size goes through the host pipeline as before."""

    resident: ResidentInput | None = None

    def predict_split(self, dataset: Any, split: str, batch_size: int) -> SplitPredictions | None:
        r = self.resident
        if r is None or dataset is not r.dataset or split not in r.splits or batch_size != r.eval_global_batch:
            return None
        return r.predict_split(self.device_state, split)
