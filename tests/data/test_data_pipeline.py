"""grain pipelines: determinism, epoch shuffles, workers, eval coverage, resume, options."""

import json

import numpy as np
import pytest
from _fakes import indexed_dataset, phantom_dataset

from cxrjax.data import augment, pipeline
from cxrjax.data.pipeline import (
    InputConfig,
    class_weights,
    dataset_statistics,
    eval_batches,
    make_iterator,
    train_batches,
)

AUGMENTED = InputConfig(
    image_size=24, channels=3, hflip=True, rotate_degrees=10.0, zoom=(1.0, 1.2), brightness=(0.8, 1.25)
)


@pytest.fixture(scope="module")
def phantoms():
    return phantom_dataset({"train": 32, "validation": 10}, image_size=32)


def ids(batch):
    """Example ids of an indexed_dataset batch (every image is the constant id % 251)."""
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_are_seeded_and_reshuffled_every_epoch():
    ds = indexed_dataset(np.arange(40) % 4)
    cfg = InputConfig(image_size=8)
    epoch0 = list(train_batches(ds, "train", cfg, seed=3, epoch=0, global_batch_size=8))
    again = list(train_batches(ds, "train", cfg, seed=3, epoch=0, global_batch_size=8))
    epoch1 = list(train_batches(ds, "train", cfg, seed=3, epoch=1, global_batch_size=8))
    other_seed = list(train_batches(ds, "train", cfg, seed=4, epoch=0, global_batch_size=8))
    assert_same_batches(epoch0, again)
    order0, order1 = sum(map(ids, epoch0), []), sum(map(ids, epoch1), [])
    assert sorted(order0) == list(range(40)) == sorted(order1)  # a permutation each epoch
    assert order0 != order1 and order0 != sum(map(ids, other_seed), [])
    assert order0 != list(range(40))
    b = epoch0[0]
    assert b["image"].shape == (8, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["label"], np.array(ids(b)) % 4)  # labels stay aligned


def test_last_partial_train_batch_is_dropped_and_small_splits_fail_clearly():
    ds = indexed_dataset(np.zeros(10, int))
    assert len(train_batches(ds, "train", InputConfig(image_size=8), seed=0, epoch=0, global_batch_size=4)) == 2
    with pytest.raises(ValueError, match="fewer than global_batch_size=16"):
        train_batches(ds, "train", InputConfig(image_size=8), seed=0, epoch=0, global_batch_size=16)
    with pytest.raises(KeyError, match="available"):
        eval_batches(ds, "test", InputConfig(image_size=8), global_batch_size=4)


def test_eval_covers_every_example_once_in_order_with_a_padding_mask():
    ds = indexed_dataset(np.arange(10) % 3)
    batches = list(eval_batches(ds, "validation", AUGMENTED, global_batch_size=4))
    assert len(batches) == 3
    assert [b["mask"].tolist() for b in batches][-1] == [True, True, False, False]
    images = np.concatenate([b["image"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert images.shape == (12, 24, 24, 3) and mask.sum() == 10
    # no augmentation in evaluation: every pixel is exactly the stored constant
    np.testing.assert_allclose(
        images[mask], (np.arange(10, dtype=np.float32) / 255)[:, None, None, None] * np.ones((1, 24, 24, 3)), atol=1e-6
    )
    np.testing.assert_array_equal(labels[mask], np.arange(10) % 3)
    assert not images[~mask].any()


def test_each_process_reads_only_its_rows(monkeypatch):
    ds = indexed_dataset(np.arange(20) % 2)
    cfg = InputConfig(image_size=8)
    full_train = list(train_batches(ds, "train", cfg, seed=1, epoch=2, global_batch_size=8))
    full_eval = list(eval_batches(ds, "train", cfg, global_batch_size=8))
    for process in range(2):
        monkeypatch.setattr(pipeline, "_process_info", lambda p=process: (p, 2))
        rows = slice(process * 4, process * 4 + 4)
        train = list(train_batches(ds, "train", cfg, seed=1, epoch=2, global_batch_size=8))
        evalb = list(eval_batches(ds, "train", cfg, global_batch_size=8))
        assert len(train) == len(full_train) and len(evalb) == len(full_eval) == 3
        for part, full in zip(train + evalb, full_train + full_eval):
            for k in full:
                np.testing.assert_array_equal(part[k], full[k][rows])
    with pytest.raises(ValueError, match="not divisible by the number of processes"):
        train_batches(ds, "train", cfg, seed=1, epoch=0, global_batch_size=7)


def test_workers_0_and_2_give_identical_augmented_batches_and_state_is_json(phantoms):
    batches = train_batches(phantoms, "train", AUGMENTED, seed=5, epoch=1, global_batch_size=8)
    in_process = list(make_iterator(batches, num_workers=0))
    it = make_iterator(batches, num_workers=2)
    try:
        first = next(it)
        state = json.loads(json.dumps(it.get_state()))
        with_workers = [first] + list(it)
    finally:
        it.close()
    assert_same_batches(in_process, with_workers)
    assert len(in_process) == 4 and isinstance(state, dict)
    with_workers.clear()


def test_set_state_resumes_at_the_exact_next_batch(phantoms):
    batches = train_batches(phantoms, "train", AUGMENTED, seed=2, epoch=0, global_batch_size=4)
    it = make_iterator(batches)
    seen = [next(it), next(it)]
    state = json.loads(json.dumps(it.get_state()))
    expected = next(it)
    resumed = make_iterator(batches)
    resumed.set_state(state)
    assert_same_batches([next(resumed)], [expected])
    assert_same_batches(seen, [batches[0], batches[1]])  # the iterator follows the index


def test_augmentation_keeps_shape_dtype_and_range(phantoms):
    plain_cfg = InputConfig(image_size=24, channels=3)
    aug = train_batches(phantoms, "train", AUGMENTED, seed=0, epoch=0, global_batch_size=16)[0]
    plain = train_batches(phantoms, "train", plain_cfg, seed=0, epoch=0, global_batch_size=16)[0]
    assert aug["image"].shape == plain["image"].shape == (16, 24, 24, 3)
    assert aug["image"].dtype == np.float32
    assert aug["image"].min() >= 0.0 and aug["image"].max() <= 1.0
    np.testing.assert_array_equal(aug["label"], plain["label"])  # same order, same examples
    assert not np.array_equal(aug["image"], plain["image"])
    np.testing.assert_array_equal(aug["image"][..., 0], aug["image"][..., 2])  # replicated gray
    # flip alone mirrors exactly, about half of the time
    flip = train_batches(
        phantoms, "train", InputConfig(image_size=24, hflip=True), seed=0, epoch=0, global_batch_size=16
    )[0]["image"]
    gray = plain["image"][..., :1]
    mirrored = [np.array_equal(f, g[:, ::-1]) for f, g in zip(flip, gray)]
    unchanged = [np.array_equal(f, g) for f, g in zip(flip, gray)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)


def test_rotation_and_zoom_geometry():
    img = np.random.default_rng(0).integers(0, 256, (9, 9), dtype=np.uint8)
    half_turn = augment.geometry(img, augment.AugmentParams(angle_degrees=180.0))
    assert np.abs(half_turn.astype(int) - img[::-1, ::-1]).max() <= 1
    quarter = augment.geometry(img, augment.AugmentParams(angle_degrees=90.0))
    assert np.abs(quarter.astype(int) - np.rot90(img)).max() <= 1
    ramp = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (24, 1))  # columns 0, 10, .. 230
    zoomed = augment.geometry(ramp, augment.AugmentParams(zoom=2.0))
    assert np.all(np.diff(zoomed[12].astype(int)) <= 6)  # slope halved: magnified 2x
    assert abs(int(zoomed[12, 12]) - int(ramp[12, 12])) <= 6  # about the centre


def test_normalisations_on_constant_images():
    ds = indexed_dataset([0, 1], image_size=8)
    ds.splits["train"]._images[0] = 51  # 0.2
    ds.splits["train"]._images[1] = 153  # 0.6
    stats = dataset_statistics(ds)
    assert stats.mean == pytest.approx(0.4) and stats.std == pytest.approx(0.2)
    expected = {"unit": [0.2, 0.6], "half": [-0.6, 0.2], "dataset": [-1.0, 1.0]}
    for name, values in expected.items():
        cfg = InputConfig(image_size=5, channels=3, normalization=name)
        (batch,) = list(eval_batches(ds, "train", cfg, global_batch_size=2))
        assert batch["image"].shape == (2, 5, 5, 3)
        np.testing.assert_allclose(
            batch["image"],
            np.array(values, np.float32)[:, None, None, None] * np.ones((1, 5, 5, 3)),
            rtol=0,
            atol=1e-6,
            err_msg=name,
        )


def test_balanced_sampling_and_class_weights_on_a_skewed_split():
    labels = np.array([0] * 160 + [1] * 30 + [2] * 10)
    ds = indexed_dataset(labels)
    np.testing.assert_allclose(class_weights(ds, "train"), [200 / (3 * 160), 200 / (3 * 30), 200 / (3 * 10)], rtol=1e-6)
    cfg = InputConfig(image_size=4, balanced_sampling=True)
    drawn = np.concatenate([b["label"] for b in train_batches(ds, "train", cfg, seed=0, epoch=0, global_batch_size=20)])
    counts = np.bincount(drawn, minlength=3)
    assert counts.sum() == 200 and counts.min() > 45 and counts.max() < 90  # ~67 each
    again = train_batches(ds, "train", cfg, seed=0, epoch=0, global_batch_size=20)[3]["label"]
    other = train_batches(ds, "train", cfg, seed=0, epoch=1, global_batch_size=20)[3]["label"]
    np.testing.assert_array_equal(again, drawn[60:80])
    assert not np.array_equal(other, again)


def test_input_config_is_validated():
    with pytest.raises(ValueError, match="normalization"):
        InputConfig(normalization="imagenet")
    with pytest.raises(ValueError, match="channels"):
        InputConfig(channels=2)
    with pytest.raises(ValueError, match="zoom"):
        InputConfig(zoom=(1.2, 1.0))
    assert InputConfig(brightness=[0.8, 1.25]).brightness == (0.8, 1.25)


# ------------------------------------------- translate, contrast, gamma, erasing, per_image, crop_box
NEW_OPTIONS = dict(translate=0.15, contrast=(0.7, 1.3), gamma=(0.7, 1.4), random_erasing=0.7, border_erase=0.15)


def test_new_augmentations_keep_shape_and_range_and_are_deterministic(phantoms):
    cfg = InputConfig(image_size=24, channels=3, **NEW_OPTIONS)
    plain = train_batches(
        phantoms, "train", InputConfig(image_size=24, channels=3), seed=0, epoch=0, global_batch_size=16
    )
    first = train_batches(phantoms, "train", cfg, seed=0, epoch=0, global_batch_size=16)
    again = train_batches(phantoms, "train", cfg, seed=0, epoch=0, global_batch_size=16)
    other = train_batches(phantoms, "train", cfg, seed=0, epoch=1, global_batch_size=16)
    assert cfg.augments and not InputConfig(crop_box=(0.1, 0.9, 0.1, 0.9), normalization="per_image").augments
    for i in range(2):
        batch = first[i]
        assert batch["image"].shape == (16, 24, 24, 3) and batch["image"].dtype == np.float32
        assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
        np.testing.assert_array_equal(batch["label"], plain[i]["label"])  # same order, same examples
        np.testing.assert_array_equal(batch["image"], again[i]["image"])  # (seed, epoch, position) only
        assert not np.allclose(batch["image"], plain[i]["image"], atol=0.05)
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    # Each option alone changes the images; with it the first four uniforms are drawn as before.
    legacy = dict(hflip=True, rotate_degrees=10.0, zoom=(1.0, 1.2), brightness=(0.8, 1.25))
    old = augment.draw_params(np.random.default_rng(7), **legacy)
    for name, value in NEW_OPTIONS.items():
        one = train_batches(
            phantoms, "train", InputConfig(image_size=24, **{name: value}), seed=0, epoch=0, global_batch_size=16
        )[0]["image"]
        assert not np.allclose(one, plain[0]["image"][..., :1], atol=1e-3), name
        new = augment.draw_params(np.random.default_rng(7), **legacy, **{name: value})
        assert new[:4] == old[:4], name


def test_new_augmentation_parameters_by_hand():
    u = np.zeros(augment.NUM_UNIFORMS)
    u[[4, 5, 6, 7]] = [1.0, 0.0, 0.25, 0.5]  # translate x at +max, y at -max; contrast, gamma
    u[[8, 9, 10, 11, 12]] = [0.1, 0.5, 0.5, 1.0, 0.0]  # erase (0.1 < 0.5); area 0.11; aspect sqrt(0.3 * 3.3)
    u[13:17] = [1.0, 0.5, 0.0, 0.25]
    p = augment.params_from_uniforms(
        u,
        hflip=False,
        rotate_degrees=0.0,
        zoom=None,
        brightness=None,
        translate=0.2,
        contrast=(0.6, 1.4),
        gamma=(0.5, 1.5),
        random_erasing=0.5,
        border_erase=0.2,
    )
    assert (p.translate_x, p.translate_y) == pytest.approx((0.2, -0.2))
    assert (p.contrast, p.gamma) == pytest.approx((0.8, 1.0))
    aspect = np.sqrt(0.3 * 3.3)
    assert bool(p.erase) and p.erase_height == pytest.approx(np.sqrt(0.11 * aspect))
    assert p.erase_width == pytest.approx(np.sqrt(0.11 / aspect))
    assert (p.erase_top, p.erase_left) == pytest.approx((1.0 - p.erase_height, 0.0))  # bottom-left corner
    assert (p.border_top, p.border_bottom, p.border_left, p.border_right) == pytest.approx((0.2, 0.1, 0.0, 0.05))


def test_translation_contrast_gamma_and_erasing_on_known_images():
    img = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    shifted = augment.geometry(img, augment.AugmentParams(translate_x=0.25, translate_y=-0.125))
    expected = np.zeros_like(img)
    expected[:7, 2:] = img[1:, :6]  # 2 px right, 1 px up, zeros shifted in
    np.testing.assert_array_equal(shifted, expected)
    x = np.array([[0.2, 0.6], [0.2, 0.6]], np.float32)  # mean 0.4
    p = augment.AugmentParams(contrast=2.0, gamma=0.5)
    np.testing.assert_allclose(augment.jitter_intensity(x, p, np, contrast=(2.0, 2.0)), [[0.0, 0.8]] * 2, atol=1e-6)
    np.testing.assert_allclose(augment.jitter_intensity(x, p, np, gamma=(0.5, 0.5)), np.sqrt(x), atol=1e-6)
    np.testing.assert_allclose(
        augment.jitter_intensity(x, p, np, contrast=(2.0, 2.0), gamma=(0.5, 0.5)), [[0.0, np.sqrt(0.8)]] * 2, atol=1e-6
    )
    # A rectangle of rows 1-2, columns 2-4 of a 10 x 10 ramp: filled with the mean of the other pixels.
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10) / 100
    rect = augment.AugmentParams(erase=True, erase_top=0.1, erase_left=0.2, erase_height=0.2, erase_width=0.3)
    out = augment.erase(ramp, rect, np, random_erasing=1.0)
    erased = np.zeros((10, 10), bool)
    erased[1:3, 2:5] = True
    np.testing.assert_allclose(out[erased], ramp[~erased].mean(), atol=1e-6)
    np.testing.assert_array_equal(out[~erased], ramp[~erased])
    np.testing.assert_array_equal(augment.erase(ramp, rect._replace(erase=False), np, random_erasing=1.0), ramp)
    # Border strips of 0.2 (top), 0 (bottom), 0.1 (left), 0.3 (right) of the side.
    border = augment.AugmentParams(border_top=0.2, border_left=0.1, border_right=0.3)
    mask = augment.erase_mask((10, 10), border, np, border_erase=0.3)
    expected = np.zeros((10, 10), bool)
    expected[:2], expected[:, :1], expected[:, 7:] = True, True, True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(
        augment.erase(ramp, border, np, border_erase=0.3)[expected], ramp[~expected].mean(), atol=1e-6
    )


def test_per_image_normalisation_and_crop_box_apply_to_every_split():
    ds = indexed_dataset([0, 1], image_size=10)
    images = ds.splits["train"]._images
    images[0, :, :5], images[0, :, 5:] = 51, 153  # left 0.2, right 0.6
    images[1] = 77  # constant
    cfg = InputConfig(image_size=10, normalization="per_image")
    for batch in (
        next(iter(eval_batches(ds, "train", cfg, global_batch_size=2))),
        train_batches(ds, "train", cfg, seed=0, epoch=0, global_batch_size=2)[0],
    ):
        x = batch["image"][..., 0]
        by_label = {int(label): img for label, img in zip(batch["label"], x)}
        np.testing.assert_allclose(
            by_label[0], np.where(np.arange(10) < 5, -1.0, 1.0)[None, :] * np.ones((10, 1)), atol=1e-5
        )
        np.testing.assert_allclose(by_label[1], 0.0, atol=1e-4)  # constant image: stays flat, no division by 0
    # crop_box: the right half only (columns [5, 10)), at eval and in training; the rounding is the probe's.
    crop = InputConfig(image_size=4, crop_box=(0.0, 1.0, 0.5, 1.0))
    (batch,) = list(eval_batches(ds, "train", crop, global_batch_size=2))
    np.testing.assert_allclose(batch["image"][0], 0.6, atol=1e-6)
    train = train_batches(ds, "train", crop, seed=0, epoch=0, global_batch_size=2)[0]
    np.testing.assert_allclose(train["image"][list(train["label"]).index(0)], 0.6, atol=1e-6)
    box = (0.15, 0.90, 0.15, 0.85)
    from cxrjax.explain import mask_free

    stored = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    keep = mask_free.region_keep_masks(40, 30, box)[mask_free.CENTER_ONLY]
    cut = augment.crop(stored, box)
    np.testing.assert_array_equal(cut.reshape(-1), stored[keep])  # exactly the probe's center_only region


def test_new_input_options_are_validated():
    for bad, match in (
        (dict(translate=0.6), "translate"),
        (dict(translate=-0.1), "translate"),
        (dict(contrast=(1.2, 0.8)), "contrast"),
        (dict(gamma=(0.0, 1.0)), "gamma"),
        (dict(random_erasing=1.5), "random_erasing"),
        (dict(border_erase=0.5), "border_erase"),
        (dict(crop_box=(0.5, 0.2, 0.0, 1.0)), "crop_box"),
        (dict(crop_box=(0.1, 0.9, 0.1)), "crop_box"),
        (dict(normalization="per-image"), "normalization"),
    ):
        with pytest.raises(ValueError, match=match):
            InputConfig(**bad)
    assert InputConfig(crop_box=[0.1, 0.9, 0.2, 0.8], gamma=[0.9, 1.1]).crop_box == (0.1, 0.9, 0.2, 0.8)
