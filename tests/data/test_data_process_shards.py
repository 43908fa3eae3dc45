"""Per-process shards of the grain pipelines (issue 18): each process of a multi-process
run reads only its rows; together the shards are exactly the single-process epoch."""

import numpy as np
import pytest
from _fakes import indexed_dataset

from cxrjax.data import pipeline
from cxrjax.data.pipeline import InputConfig, epoch_order, eval_batches, train_batches

CFG = InputConfig(image_size=8, hflip=True, rotate_degrees=5.0)  # augmented: positions must agree too


def ids(batch):
    """Example ids of an indexed_dataset batch (every image is the constant id / 255)."""
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)


def shards(monkeypatch, count, make):
    """make() under each of `count` processes: [process][batch] -> batch dict."""
    out = []
    for process in range(count):
        monkeypatch.setattr(pipeline, "_process_info", lambda p=process: (p, count))
        out.append(list(make()))
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("count", [2, 4])
def test_train_shards_are_disjoint_and_rebuild_the_epoch_in_order(monkeypatch, count):
    # 30 examples, global batch 8: 3 steps, 6 examples dropped; values < 251 so ids are exact.
    ds = indexed_dataset(np.arange(30) % 3)
    plain = InputConfig(image_size=8)
    parts = shards(monkeypatch, count, lambda: train_batches(ds, "train", plain, seed=4, epoch=1, global_batch_size=8))
    order = epoch_order(ds, "train", plain, seed=4, epoch=1)
    per_process = [np.concatenate([ids(b) for b in part]) for part in parts]
    for a in range(count):
        for b in range(a + 1, count):
            assert not set(per_process[a]) & set(per_process[b])
    # step s of the run: process 0's rows, then process 1's, ... == the epoch's positions 8s..8s+7
    steps = [np.concatenate([ids(part[s]) for part in parts]) for s in range(3)]
    np.testing.assert_array_equal(np.concatenate(steps), order[:24])
    assert sorted(np.concatenate(per_process)) == sorted(order[:24])


def test_augmented_shards_equal_the_single_process_rows(monkeypatch):
    ds = indexed_dataset(np.arange(24) % 2)
    full = list(train_batches(ds, "train", CFG, seed=7, epoch=3, global_batch_size=8))
    parts = shards(monkeypatch, 2, lambda: train_batches(ds, "train", CFG, seed=7, epoch=3, global_batch_size=8))
    for s, batch in enumerate(full):
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([parts[0][s][key], parts[1][s][key]]), batch[key])


def test_eval_shards_cover_every_example_once_with_the_padding_masked(monkeypatch):
    ds = indexed_dataset(np.arange(13) % 3)  # 13 examples, global batch 4 over 2 processes: 4 batches, 3 padded
    parts = shards(monkeypatch, 2, lambda: eval_batches(ds, "validation", CFG, global_batch_size=4))
    assert [len(p) for p in parts] == [4, 4]
    rows = [np.concatenate([part[s][k] for part in parts]) for s in range(4) for k in ("label", "mask")]
    labels, masks = np.concatenate(rows[0::2]), np.concatenate(rows[1::2])
    assert masks.tolist() == [True] * 13 + [False] * 3
    np.testing.assert_array_equal(labels[masks], np.arange(13) % 3)
    images = np.concatenate([np.concatenate([part[s]["image"] for part in parts]) for s in range(4)])
    np.testing.assert_allclose(images[masks][:, 0, 0, 0], np.arange(13) / 255, atol=1e-6)
    assert not images[~masks].any()
