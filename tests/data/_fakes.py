"""Tiny in-memory datasets for the pipeline tests: same duck type as PreparedDataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrjax.data.phantoms import CLASS_NAMES, PhantomOptions, phantom_example


class ArraySource:
    """Random-access source over in-memory arrays, like a TFDS data source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        assert images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(labels)
        self._images, self._labels = images, np.asarray(labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self._images[i], "label": int(self._labels[i]), "file_name": f"fake-{i:05d}.png"}


@dataclass
class FakeDataset:
    name: str
    class_names: list[str]
    splits: dict[str, ArraySource] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def phantom_dataset(sizes: dict[str, int], image_size: int = 32, seed: int = 0) -> FakeDataset:
    """Phantoms, as the cxr_phantoms builder would store them (indices run on across splits)."""
    opts = PhantomOptions(image_size=image_size)
    splits, start = {}, 0
    for split, n in sizes.items():
        exs = [phantom_example(seed, start + i, opts) for i in range(n)]
        start += n
        splits[split] = ArraySource(
            np.stack([e["image"] for e in exs]) if exs else np.zeros((0, image_size, image_size, 1), np.uint8),
            np.array([e["label"] for e in exs], dtype=np.int64),
        )
    return FakeDataset("fake_phantoms", list(CLASS_NAMES), splits)


def indexed_dataset(labels, image_size: int = 8, name: str = "indexed") -> FakeDataset:
    """Example i is a constant image of value i % 251 (so batches reveal which examples
    they hold) with the given label; one "train" split, also used as "validation"."""
    labels = np.asarray(labels, dtype=np.int64)
    values = (np.arange(len(labels)) % 251).astype(np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (len(labels), image_size, image_size, 1)).copy()
    src = ArraySource(images, labels)
    k = int(labels.max()) + 1 if len(labels) else 1
    return FakeDataset(name, [f"class{c}" for c in range(k)], {"train": src, "validation": src})
