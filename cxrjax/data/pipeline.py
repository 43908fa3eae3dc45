"""grain input pipelines: training and evaluation batches from a prepared dataset.

`ds` is duck-typed: anything with `.splits: dict[str, source]` (random access: `len(src)`,
`src[i]` -> {"image": uint8[H, W, 1], "label": int, ...}) and `.class_names`, e.g. a
`cxrjax.data.PreparedDataset`.

Determinism. Every random choice is a pure function of its coordinates:
  order of epoch e        = f(seed, e)                    (shuffle or balanced sampling)
  augmentation of example = f(seed, e, position in epoch)
so the batches are identical whatever the number of worker processes or threads, a
resumed run continues exactly, and evaluation is always the same (no augmentation, the
split's own order). The training order of an epoch is a fresh permutation per epoch.

Several processes (multi-host data parallel): the global batch of B rows is cut into
`jax.process_count()` equal, contiguous blocks; process p reads only rows
[p * B / P, (p + 1) * B / P) of every global batch. The local batches are ready for a
data-parallel step over the process's local devices (the step shards them further).
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import grain
import numpy as np
from tqdm.auto import tqdm

from cxrjax.data import augment
from cxrjax.data.errors import DataError
from cxrjax.data.input_options import (
    MAX_BORDER_ERASE,
    MAX_TRANSLATE,
    NORMALIZATIONS,
    RANGE_OPTIONS,
    InputOptions,
    box_problem,
    fraction_problem,
    range_problem,
)

# Threads per process that assemble whole batches ahead of the consumer, and how many
# finished batches each may hold. Small on purpose: a 32 x 224 x 224 x 3 float32 batch is
# 19 MB, and grain's defaults (16 threads, 500 elements) are meant for small records.
_READ_THREADS = 2
_READ_BUFFER = 4
_WORKER_BUFFER = 2


@dataclass(frozen=True)
class InputConfig(InputOptions):
    """How images are turned into model inputs.

    image_size: side of the square model input (the stored images are resized to it).
    channels: 1 (grayscale) or 3 (the gray image replicated, for 3-channel models).
    The other fields (normalization, augmentations, balanced_sampling, num_workers,
    keyword-only) are `cxrjax.data.input_options.InputOptions`, documented there.
    """

    image_size: int = 128
    channels: int = 1

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"InputConfig: {msg}")

        if self.image_size < 1:
            bad(f"image_size must be >= 1, got {self.image_size}")
        if self.channels not in (1, 3):
            bad(f"channels must be 1 or 3, got {self.channels}")
        if self.normalization not in NORMALIZATIONS:
            bad(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.rotate_degrees < 0:
            bad(f"rotate_degrees must be >= 0, got {self.rotate_degrees}")
        if self.num_workers < 0:
            bad(f"num_workers must be >= 0, got {self.num_workers}")
        for name in RANGE_OPTIONS:
            rng = getattr(self, name)
            if rng is None:
                continue
            problem = range_problem(name, rng)
            if problem:
                bad(problem)
            # Lists from JSON configs become tuples so the config stays hashable.
            object.__setattr__(self, name, (float(rng[0]), float(rng[1])))
        for problem in (
            fraction_problem("translate", self.translate, MAX_TRANSLATE, inclusive=True),
            fraction_problem("random_erasing", self.random_erasing, 1.0, inclusive=True),
            fraction_problem("border_erase", self.border_erase, MAX_BORDER_ERASE, inclusive=False),
            box_problem(self.crop_box),
        ):
            if problem:
                bad(problem)
        if self.crop_box is not None:
            object.__setattr__(self, "crop_box", tuple(float(v) for v in self.crop_box))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one model input."""
        return (self.image_size, self.image_size, self.channels)

    @property
    def augments(self) -> bool:
        """Whether training examples get random augmentation (crop_box and the
        normalisation apply to every split, and are not augmentation)."""
        return bool(self.hflip or self.rotate_degrees or self.zoom or self.brightness or self.extra_augments)

    @property
    def extra_augments(self) -> bool:
        """Whether an option drawn from uniforms past the first four is on
        (``augment.uses_extra_uniforms``)."""
        return augment.uses_extra_uniforms(**self.augment_options(extra_only=True))

    def augment_options(self, *, extra_only: bool = False) -> dict[str, Any]:
        """The keyword arguments of ``augment.draw_params`` / ``params_from_uniforms``."""
        return augment.options_of(self, extra_only=extra_only)

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        return {"image_size": fields.pop("image_size"), "channels": fields.pop("channels"), **fields}


class ImageStatistics(NamedTuple):
    """Pixel mean and standard deviation on the [0, 1] scale."""

    mean: float
    std: float


# ----------------------------------------------------------------------------- pipelines


def train_batches(
    ds, split: str, cfg: InputConfig, *, seed: int, epoch: int, global_batch_size: int
) -> grain.MapDataset:
    """Training batches of one epoch: {"image": float32[b, S, S, C], "label": int32[b]}.

    b = global_batch_size / jax.process_count() rows per process. len() is
    len(split) // global_batch_size: the last partial batch is dropped (a fresh
    permutation every epoch means every example still gets its turn).
    """
    src = _source(ds, split)
    n = len(src)
    process, count = _process_info()
    local = _local_batch_size(global_batch_size, count)
    num_batches = n // global_batch_size
    if num_batches == 0:
        raise ValueError(
            f"train_batches: split {split!r} of {_name(ds)} has {n} examples, fewer than "
            f"global_batch_size={global_batch_size}; use a smaller batch size"
        )
    order = epoch_order(ds, split, cfg, seed=seed, epoch=epoch)
    example = _Example(src, order, n, cfg, _stats_for(ds, cfg), augment_seed=(seed, epoch))
    positions = _local_positions(num_batches, global_batch_size, process, local)
    return grain.MapDataset.source(positions).map(example).batch(local, drop_remainder=True)


def epoch_order(ds, split: str, cfg: InputConfig, *, seed: int, epoch: int) -> np.ndarray:
    """int64[len(split)]: the split's example indices in epoch ``epoch``'s training order
    (position p of the epoch reads example ``order[p]``); a pure function of (seed, epoch)
    and, with ``balanced_sampling``, the labels. :func:`train_batches` reads the epoch in
    this order, and the trainer's device-resident input (cxrjax/train/resident.py)
    gathers its batches in the same order, so both paths see the same batches."""
    if cfg.balanced_sampling:
        return balanced_order(split_labels(ds, split), seed, epoch)
    return np.random.default_rng([seed, epoch, _ORDER_TAG]).permutation(len(_source(ds, split)))


def eval_batches(ds, split: str, cfg: InputConfig, *, global_batch_size: int) -> grain.MapDataset:
    """Evaluation batches: every example exactly once, in the split's order, no augmentation.

    {"image": float32[b, S, S, C], "label": int32[b], "mask": bool[b]}; the last batch
    is padded (zero images, label 0, mask False) instead of dropped, so metrics must
    weight by `mask`. len() is ceil(len(split) / global_batch_size).
    """
    src = _source(ds, split)
    n = len(src)
    process, count = _process_info()
    local = _local_batch_size(global_batch_size, count)
    num_batches = -(-n // global_batch_size)
    example = _Example(src, np.arange(n), n, cfg, _stats_for(ds, cfg), augment_seed=None, with_mask=True)
    positions = _local_positions(num_batches, global_batch_size, process, local)
    return grain.MapDataset.source(positions).map(example).batch(local, drop_remainder=True)


def make_iterator(batches: grain.MapDataset, num_workers: int = 0) -> grain.DatasetIterator:
    """Iterates over `batches`, prefetching in `num_workers` processes (0 = in-process).

    The iterator's `get_state()` is a JSON-serialisable dict; `set_state(state)` on a
    fresh iterator over the same batches resumes at exactly the next batch. With
    workers, call `.close()` when done (or let it be garbage-collected).
    """
    it = batches.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_BUFFER))
    if num_workers > 0:
        _allow_unparsed_absl_flags()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=_WORKER_BUFFER)
        )
    return iter(it)


# ----------------------------------------------------------------- class imbalance, stats


def balanced_order(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """len(labels) indices drawn with replacement so that every present class is equally
    likely; a pure function of (labels, seed, epoch)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    p = 1.0 / counts[labels]
    p /= p.sum()
    rng = np.random.default_rng([seed, epoch, _BALANCED_TAG])
    return rng.choice(len(labels), size=len(labels), replace=True, p=p)


def class_weights(ds, split: str = "train") -> np.ndarray:
    """float32[num_classes]: n / (K * n_k), sklearn's "balanced" weights.

    Frequent classes get weights < 1, rare ones > 1; a weighted mean loss then gives every
    class the same total weight. Read from the split's labels only (no image is decoded).
    A class absent from the split has no balanced weight: DataError naming it.
    """
    labels = split_labels(ds, split)
    k = len(ds.class_names)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    if np.any(counts == 0):
        missing = [n for n, c in zip(ds.class_names, counts) if c == 0]
        raise DataError(
            f"balanced class weights: the {split} split of {_name(ds)} has no example of "
            f"{missing}; give explicit class_weights or drop those classes (classes=...)"
        )
    return (len(labels) / (k * counts)).astype(np.float32)


def split_labels(ds, split: str) -> np.ndarray:
    """int64[len(split)] labels of a split, read once per dataset object and cached.

    Uses the source's `labels` attribute when it has one of the right length; otherwise
    reads every record.
    """

    def read():
        src = _source(ds, split)
        n = len(src)
        labels = getattr(src, "labels", None)
        if labels is not None and len(labels) == n:
            return np.asarray(labels, dtype=np.int64)
        return np.fromiter((int(r["label"]) for r in _records(src, f"labels of {split}")), dtype=np.int64, count=n)

    return _memo(ds, ("labels", split), read)


def dataset_statistics(ds) -> ImageStatistics:
    """Mean and std of all train-split pixels on the [0, 1] scale, at the stored size.

    Used by normalization="dataset". Computed once per dataset object (a pass over the
    train split, exact, in float64) and cached.
    """

    def compute():
        src = _source(ds, "train")
        if len(src) == 0:
            raise ValueError(f"dataset_statistics: the train split of {_name(ds)} is empty")
        total = total_sq = count = 0.0
        for rec in _records(src, "pixel statistics"):
            x = np.asarray(rec["image"], dtype=np.float64)
            total += x.sum()
            total_sq += np.square(x).sum()
            count += x.size
        mean = total / count
        var = max(total_sq / count - mean * mean, 0.0)
        return ImageStatistics(mean=float(mean / 255.0), std=float(np.sqrt(var) / 255.0))

    return _memo(ds, ("statistics",), compute)


def set_dataset_statistics(ds, mean: float, std: float) -> ImageStatistics:
    """Declare the normalization="dataset" statistics of ``ds`` instead of computing them,
    e.g. those a training run stored with itself, so evaluating or predicting with that
    run does not need its training split. Returns what :func:`dataset_statistics` will give."""
    if not std > 0:
        raise ValueError(f"set_dataset_statistics: std must be > 0, got {std}")
    stats = ImageStatistics(mean=float(mean), std=float(std))
    _memo(ds, ("statistics",), lambda: stats)
    if dataset_statistics(ds) != stats:
        raise ValueError(
            f"set_dataset_statistics: statistics of {_name(ds)} were already computed "
            f"({dataset_statistics(ds)}); set them before the first use"
        )
    return stats


# ------------------------------------------------------------------------------ internals

_ORDER_TAG, _BALANCED_TAG, _AUGMENT_TAG = 0x0D, 0xBA, 0xA6


def normalization_shift_scale(cfg: InputConfig, stats: ImageStatistics | None) -> tuple[float, float]:
    """(shift, scale) of ``cfg.normalization``: a [0, 1] pixel x becomes (x - shift) * scale
    (in float32, subtraction first; the device-resident input applies the same two).
    "per_image" is (0, 1) here: ``augment.normalize_per_image`` follows, on both paths."""
    if cfg.normalization in ("unit", "per_image"):  # per_image: augment.normalize_per_image after
        return 0.0, 1.0
    if cfg.normalization == "half":
        return 0.5, 2.0
    return stats.mean, 1.0 / max(stats.std, 1e-6)


class _Example:
    """Position in the (local) epoch -> one preprocessed example. Picklable, so grain
    can ship it to worker processes; holds everything it needs, computes from nothing
    but its arguments."""

    def __init__(
        self,
        src,
        order: np.ndarray,
        n_valid: int,
        cfg: InputConfig,
        stats: ImageStatistics | None,
        augment_seed: tuple[int, int] | None,
        with_mask: bool = False,
    ):
        self.src = src
        self.order = np.asarray(order, dtype=np.int64)
        self.n_valid = n_valid
        self.cfg = cfg
        self.augment_seed = augment_seed if cfg.augments else None
        self.with_mask = with_mask
        self.shift, self.scale = normalization_shift_scale(cfg, stats)

    def __call__(self, position) -> dict[str, Any]:
        position = int(position)
        cfg = self.cfg
        if position >= self.n_valid:  # evaluation padding
            out = {"image": np.zeros(cfg.image_shape, np.float32), "label": np.int32(0)}
            if self.with_mask:
                out["mask"] = np.False_
            return out
        rec = self.src[int(self.order[position])]
        image = augment.prepare(rec["image"], cfg.image_size, cfg.crop_box)
        if self.augment_seed is None:
            x = augment.to_unit_float(image)
        else:
            seed, epoch = self.augment_seed
            options = cfg.augment_options()
            params = augment.draw_params(np.random.default_rng([seed, epoch, position, _AUGMENT_TAG]), **options)
            x = augment.apply(
                image, params, **{k: options[k] for k in ("contrast", "gamma", "random_erasing", "border_erase")}
            )
        if self.shift:
            x -= np.float32(self.shift)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if cfg.normalization == "per_image":
            x = augment.normalize_per_image(x, np)
        x = x[..., None]
        if cfg.channels == 3:  # a view; batching writes the 3 copies into the batch array
            x = np.broadcast_to(x, (*x.shape[:2], 3))
        out = {"image": x, "label": np.int32(rec["label"])}
        if self.with_mask:
            out["mask"] = np.True_
        return out


def _allow_unparsed_absl_flags() -> None:
    """grain's mp_prefetch reads an absl flag (worker profiling) whenever jax is installed,
    and absl raises UnparsedFlagAccessError unless the command line was parsed, which
    only absl.app programs do. Marking the flags parsed leaves every flag at its default
    and does not stop a later absl.app from parsing argv as usual."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _local_positions(num_batches: int, global_batch: int, process: int, local: int) -> np.ndarray:
    """Positions (in the epoch) of this process's rows, batch after batch."""
    rows = process * local + np.arange(local)
    return (np.arange(num_batches)[:, None] * global_batch + rows[None, :]).reshape(-1)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the number of "
            f"processes ({process_count}); every process must get the same number of rows. "
            f"Use a multiple of {process_count}."
        )
    return global_batch_size // process_count


def _process_info() -> tuple[int, int]:
    import jax  # here, not at import time: worker processes never need jax

    return jax.process_index(), jax.process_count()


def _source(ds, split: str):
    splits = getattr(ds, "splits", None)
    if splits is None:
        raise TypeError(
            f"{_name(ds)} has no .splits; expected a cxrjax.data.PreparedDataset "
            "or any object with .splits (dict of random-access sources)"
        )
    if split not in splits:
        raise KeyError(f"split {split!r} not in {_name(ds)}; available: {sorted(splits)}")
    return splits[split]


def _stats_for(ds, cfg: InputConfig) -> ImageStatistics | None:
    return dataset_statistics(ds) if cfg.normalization == "dataset" else None


def _name(ds) -> str:
    return f"dataset {getattr(ds, 'name', type(ds).__name__)!r}"


def _records(src, what: str):
    n = len(src)
    for i in tqdm(range(n), desc=f"reading {what}", unit="ex", leave=False, disable=n < 2000):
        yield src[i]


# Per-dataset-object memo (labels, statistics). Keyed by id(); a weak reference drops the
# entry when the dataset is garbage-collected so a new object at the same id starts clean.
_MEMO: dict[int, tuple[Callable[[], Any], dict]] = {}


def _memo(obj, key, compute: Callable[[], Any]):
    oid = id(obj)
    entry = _MEMO.get(oid)
    if entry is None or entry[0]() is not obj:
        try:
            ref = weakref.ref(obj, lambda _, oid=oid: _MEMO.pop(oid, None))
        except TypeError:  # not weak-referenceable: keep it alive with its entry
            ref = lambda obj=obj: obj  # noqa: E731
        entry = (ref, {})
        _MEMO[oid] = entry
    values = entry[1]
    if key not in values:
        values[key] = compute()
    return values[key]
