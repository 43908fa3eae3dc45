"""TFDS builders on fixture trees (D4, D3, DP, class folders, phantoms), plus the
splitting and duplicate-detection they rely on."""

import collections
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from cxrjax import data
from cxrjax.data import duplicates as dup
from cxrjax.data.decode import decode_grayscale, decode_mask
from cxrjax.data.layouts import LayoutError
from cxrjax.data.splits import largest_remainder, stratified_group_split
from tests.data import fixtures as fx

SIZE = 32


def _records(ds):
    """{split: [record, ...]} read through the public random-access sources."""
    return {split: [source[i] for i in range(len(source))] for split, source in ds.splits.items()}


def _class_counts(ds, records):
    counts = collections.Counter()
    for recs in records.values():
        counts.update(ds.class_names[r["label"]] for r in recs)
    return dict(counts)


# ---------------------------------------------------------------------- D4 / D3


@pytest.fixture(scope="module")
def d4(tmp_path_factory):
    root = tmp_path_factory.mktemp("d4")
    facts = fx.make_d4(root / "download")
    ds = data.load(
        "covid19_radiography", data_dir=root / "prepared", manual_dir=root / "download", options={"image_size": SIZE}
    )
    return facts, ds, _records(ds)


def test_d4_reads_images_only_never_masks(d4):
    facts, ds, records = d4
    assert ds.class_names == list(fx.D4_CLASSES)
    assert ds.num_classes == 4
    # Masks are never counted as images: per-class totals equal the image files.
    assert _class_counts(ds, records) == facts["valid"]
    assert sum(len(r) for r in records.values()) == sum(facts["valid"].values())
    assert all("/images/" in r["file_name"] for recs in records.values() for r in recs)
    assert ds.report["splits"] == {
        split: {c: sum(ds.class_names[r["label"]] == c for r in recs) for c in ds.class_names}
        for split, recs in records.items()
    }
    assert ds.report["layout"] == "D4"


def test_d4_lung_mask_feature_matches_mask_file(d4):
    facts, ds, records = d4
    by_name = {r["file_name"]: r for recs in records.values() for r in recs}
    record = by_name["COVID/images/COVID-3.png"]
    mask_path = facts["root"] / "COVID" / "masks" / "COVID-3.png"
    assert record["has_lung_mask"]
    assert record["lung_mask"].shape == (SIZE, SIZE, 1) and record["lung_mask"].dtype == np.uint8
    np.testing.assert_array_equal(record["lung_mask"][..., 0], decode_mask(mask_path.read_bytes(), size=SIZE))
    image_path = facts["root"] / "COVID" / "images" / "COVID-3.png"
    np.testing.assert_array_equal(record["image"][..., 0], decode_grayscale(image_path.read_bytes(), size=SIZE).pixels)
    assert record["original_size"].tolist() == [60, 60]
    without = by_name[facts["no_mask"]]
    assert not without["has_lung_mask"] and not without["lung_mask"].any()
    assert ds.report["lung_masks"] == {
        "with_mask": facts["masks"],
        "without_mask": sum(facts["valid"].values()) - facts["masks"],
    }


def test_d4_report_accounts_for_every_file(d4):
    facts, ds, records = d4
    skipped = {e["file"]: e["reason"] for e in ds.report["skipped"]}
    assert "not a readable image" in skipped[facts["corrupt"]]
    assert "hidden" in skipped[facts["hidden"]]
    assert "without a matching file" in skipped[facts["orphan_mask"]]
    # The fixture's workbooks are not spreadsheets: reported, and their images have no source.
    assert "metadata not used: not a readable .xlsx workbook" in skipped["COVID.metadata.xlsx"]
    assert {r["source"] for recs in records.values() for r in recs} == {"unknown"}
    on_disk = sum(len(files) for _, _, files in os.walk(facts["root"]))
    used_images = sum(len(r) for r in records.values())
    assert used_images + facts["masks"] + len(skipped) == on_disk


def test_d4_duplicate_pair_in_two_classes_is_kept_in_one_split(d4):
    facts, ds, records = d4
    assert ds.report["duplicate_groups"] == 1
    (group,) = ds.report["duplicates"]
    assert tuple(group["files"]) == facts["duplicate_pair"]
    assert group["kind"] == "identical" and group["classes"] == ["COVID", "Normal"]
    split_of = {r["file_name"]: s for s, recs in records.items() for r in recs}
    a, b = facts["duplicate_pair"]
    assert split_of[a] == split_of[b] and group["splits"] == [split_of[a]]


def test_d3_flat_layout_keeps_folder_names(tmp_path):
    fx.make_d3(tmp_path / "download")  # 4 per class: too few for a test split
    ds = data.load(
        "covid19_radiography",
        data_dir=tmp_path / "prepared",
        manual_dir=tmp_path / "download",
        options={"image_size": SIZE, "test_fraction": 0},
    )
    records = _records(ds)
    assert ds.class_names == ["COVID", "NORMAL", "Viral Pneumonia"]
    assert _class_counts(ds, records) == {c: 4 for c in fx.D3_CLASSES}
    assert ds.report["layout"] == "D3" and ds.report["skipped"] == []
    assert not any(r["has_lung_mask"] or r["lung_mask"].any() for recs in records.values() for r in recs)


# ---------------------------------------------------------------------- DP


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    facts = fx.make_dp(root / "download")
    ds = data.load(
        "covid19_image_dataset", data_dir=root / "prepared", manual_dir=root / "download", options={"image_size": SIZE}
    )
    return facts, ds, _records(ds)


def test_dp_test_split_is_given_and_validation_is_carved_from_train(dp):
    facts, ds, records = dp
    assert ds.class_names == list(fx.DP_CLASSES)
    names = {split: {r["file_name"] for r in recs} for split, recs in records.items()}
    given_test = {f for f, v in facts["files"].items() if v["split"] == "test"}
    assert names["test"] == given_test
    assert names["train"].isdisjoint(names["validation"])
    assert all(f.startswith("train/") for f in names["train"] | names["validation"])
    # 10 train/ images per class (+ Normal's duplicate of a test image, dropped):
    # 20% of 10 = 2 per class in validation, stratified.
    assert ds.report["splits"]["validation"] == {c: 2 for c in fx.DP_CLASSES}
    assert ds.report["splits"]["train"] == {c: 8 for c in fx.DP_CLASSES}


def test_dp_mixed_modes_sizes_and_extensions_decode(dp):
    facts, ds, records = dp
    seen_modes = collections.Counter()
    for recs in records.values():
        for r in recs:
            info = facts["files"][r["file_name"]]
            seen_modes[info["mode"]] += 1
            assert r["image"].shape == (SIZE, SIZE, 1) and r["image"].dtype == np.uint8
            assert r["original_size"].tolist() == list(info["size"])
            assert r["image"].max() > r["image"].min()  # not blank (16-bit windowed)
            assert ds.class_names[r["label"]] == info["class"]
    assert set(seen_modes) == {"L", "RGB", "RGBA", "P", "I;16"}
    extensions = {os.path.splitext(f)[1] for f in facts["files"]}
    assert extensions == {".png", ".jpeg", ".jpg"}


def test_dp_skips_bad_files_and_train_copy_of_a_test_image(dp):
    facts, ds, records = dp
    skipped = {e["file"]: e["reason"] for e in ds.report["skipped"]}
    assert "not a readable image" in skipped[facts["corrupt"]]
    assert "hidden" in skipped[facts["hidden"]]
    assert "not an image file" in skipped[facts["text"]]
    copy, original = facts["duplicate"]
    assert f"duplicate of {original}" in skipped[copy]
    all_names = [r["file_name"] for recs in records.values() for r in recs]
    assert copy not in all_names and original in all_names
    assert len(all_names) == len(set(all_names))
    assert ds.report["duplicate_groups"] == 1


# ---------------------------------------------------------------------- image_folder


def _membership(ds):
    return {split: sorted(src[i]["file_name"] for i in range(len(src))) for split, src in ds.splits.items()}


def test_image_folder_split_is_deterministic_stratified_and_seeded(tmp_path):
    fx.make_class_folders(tmp_path / "download", per_class=10)
    load = lambda d, seed: data.load(
        "image_folder",
        data_dir=tmp_path / d,
        manual_dir=tmp_path / "download",
        options={"image_size": 16, "seed": seed},
    )
    first, again, other = load("a", 0), load("b", 0), load("c", 1)
    assert _membership(first) == _membership(again)
    assert _membership(first) != _membership(other)
    for ds in (first, other):
        assert ds.report["splits"] == {
            "train": {c: 7 for c in ("cat_a", "cat_b", "cat_c")},
            "validation": {c: 2 for c in ("cat_a", "cat_b", "cat_c")},
            "test": {c: 1 for c in ("cat_a", "cat_b", "cat_c")},
        }


def test_options_map_to_distinct_prepared_dirs(tmp_path):
    fx.make_class_folders(tmp_path / "download", per_class=4)  # too few for a test split
    kwargs = dict(data_dir=tmp_path / "prepared", manual_dir=tmp_path / "download")
    small = data.load("image_folder", options={"image_size": 16, "test_fraction": 0}, **kwargs)
    large = data.load("image_folder", options={"image_size": 24, "test_fraction": 0}, **kwargs)
    assert small.data_path != large.data_path
    assert small.splits["train"][0]["image"].shape == (16, 16, 1)
    assert large.splits["train"][0]["image"].shape == (24, 24, 1)
    stamp = (small.data_path / "preparation_report.json").stat().st_mtime_ns
    reopened = data.load("image_folder", options={"image_size": 16, "test_fraction": 0}, **kwargs)
    assert reopened.data_path == small.data_path
    assert (small.data_path / "preparation_report.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="valid options"):
        data.load("image_folder", options={"num_train": 3}, **kwargs)


def test_phantom_dataset_options_draw_with_their_phantom_options_and_check_them_at_once():
    from cxrjax.data import phantoms
    from cxrjax.data.builders import PhantomDatasetOptions

    opts = PhantomDatasetOptions(
        image_size=48,
        shortcut_marker=True,
        shortcut_strength=0.5,
        severity_range=[0.2, 0.8],
        noise_std=0.01,
        num_train=4,
    )
    assert opts.phantom_options() == phantoms.PhantomOptions(
        image_size=48, shortcut_marker=True, shortcut_strength=0.5, severity_range=(0.2, 0.8), noise_std=0.01
    )
    assert opts.severity_range == (0.2, 0.8)  # JSON lists become tuples, as in PhantomOptions
    # The defaults are PhantomOptions' own (beside the stored image size).
    default = PhantomDatasetOptions().phantom_options()
    assert default == phantoms.PhantomOptions(image_size=PhantomDatasetOptions().image_size)
    # Users' prepared directories are named by the options: the default name must not drift.
    assert PhantomDatasetOptions().config_name() == (
        "s256_seed0_train2000_val400_test400_marker0_strength0.9_severity0-1_noise0.02"
    )
    # Bad drawing options fail when the options are made, before any preparation.
    with pytest.raises(ValueError, match="shortcut_strength"):
        PhantomDatasetOptions(shortcut_strength=1.5)
    with pytest.raises(ValueError, match="severity_range"):
        PhantomDatasetOptions(severity_range=(0.6, 0.2))


def test_reusing_prepared_files_from_another_folder_is_refused(tmp_path):
    fx.make_class_folders(tmp_path / "one", per_class=3)
    fx.make_class_folders(tmp_path / "two", per_class=3, seed=77)
    options = {"image_size": 16, "test_fraction": 0}  # 3 per class: too few for a test split
    data.prepare("image_folder", data_dir=tmp_path / "p", manual_dir=tmp_path / "one", options=options)
    with pytest.raises(ValueError, match="was prepared from"):
        data.load("image_folder", data_dir=tmp_path / "p", manual_dir=tmp_path / "two", options=options)
    # Without a manual dir, the prepared files are simply opened.
    ds = data.load("image_folder", data_dir=tmp_path / "p", options=options)
    assert sum(len(s) for s in ds.splits.values()) == 9
    # overwrite=True replaces them with the other folder's images.
    report = data.prepare(
        "image_folder", data_dir=tmp_path / "p", manual_dir=tmp_path / "two", options=options, overwrite=True
    )
    assert report["source"] == str((tmp_path / "two").resolve())
    ds = data.load("image_folder", data_dir=tmp_path / "p", manual_dir=tmp_path / "two", options=options)
    np.testing.assert_array_equal(
        ds.splits["train"][0]["image"][..., 0],
        decode_grayscale((tmp_path / "two" / ds.splits["train"][0]["file_name"]).read_bytes(), size=16).pixels,
    )


def _expect_layout_error(name, root, *fragments):
    with pytest.raises(LayoutError) as error:
        data.prepare(name, data_dir=root.parent / f"prepared-{root.name}", manual_dir=root)
    message = str(error.value)
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def test_empty_class_folder_fails_naming_it(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=2)
    (root / "empty_class").mkdir()
    (root / "empty_class" / ".hidden.png").write_bytes(b"x")
    _expect_layout_error("image_folder", root, root / "empty_class", "no image files", "Expected layout")


def test_wrong_or_missing_layouts_fail_with_expected_layout(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(fx.image_bytes(1))
    _expect_layout_error("image_folder", flat, flat, "Expected layout", "<class A>")
    _expect_layout_error("covid19_radiography", flat, flat, "D4 layout", "D3 layout")
    with pytest.raises(LayoutError, match="does not exist"):
        data.prepare("covid19_image_dataset", data_dir=tmp_path / "p", manual_dir=tmp_path / "nowhere")
    with pytest.raises(LayoutError, match="manual_dir"):
        data.prepare("covid19_image_dataset", data_dir=tmp_path / "p")


def test_layout_errors_point_to_the_right_builder(tmp_path):
    d4 = fx.make_d4(tmp_path / "d4", per_class=2)["root"]
    _expect_layout_error("image_folder", d4, d4 / "COVID", "covid19_radiography")
    dp = fx.make_dp(tmp_path / "dp", train_per_class=1, test_per_class=1)["root"]
    _expect_layout_error("covid19_radiography", dp, "covid19_image_dataset")
    # A D4 tree where one class folder lacks images/.
    (d4 / "Normal" / "images").rename(d4 / "Normal" / "pictures")
    _expect_layout_error("covid19_radiography", d4, "images/", "Normal")


def test_split_layout_requires_matching_classes_and_test(tmp_path):
    root = fx.make_dp(tmp_path / "dp", train_per_class=2, test_per_class=1)["root"]
    for f in (root / "test" / "Covid").iterdir():
        f.unlink()
    (root / "test" / "Covid").rmdir()
    _expect_layout_error("covid19_image_dataset", root, root / "test", "differ")
    for f in (root / "test").rglob("*"):
        if f.is_file():
            f.unlink()
    import shutil

    shutil.rmtree(root / "test")
    _expect_layout_error("covid19_image_dataset", root, "no test/ folder")


def test_class_with_only_unreadable_files_fails(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=2)
    (root / "broken").mkdir()
    (root / "broken" / "x.png").write_bytes(fx.corrupt_png(1))
    _expect_layout_error("image_folder", root, root / "broken", "no readable image")


# ---------------------------------------------------------------------- phantoms


def test_phantom_builder_stores_generator_output(tmp_path):
    from cxrjax.data import phantoms

    options = {"image_size": 32, "num_train": 8, "num_validation": 4, "num_test": 4, "seed": 3}
    ds = data.load("cxr_phantoms", data_dir=tmp_path, options=options)
    assert ds.class_names == list(phantoms.CLASS_NAMES)
    assert {s: len(src) for s, src in ds.splits.items()} == {"train": 8, "validation": 4, "test": 4}
    assert ds.report["splits"]["train"] == {c: 2 for c in phantoms.CLASS_NAMES}
    names = [r["file_name"] for recs in _records(ds).values() for r in recs]
    assert len(set(names)) == 16  # splits are disjoint index ranges
    record = ds.splits["validation"][0]
    index = int(record["file_name"].split("-")[-1].split(".")[0])
    assert 8 <= index < 12
    expected = phantoms.phantom_example(3, index, phantoms.PhantomOptions(image_size=32))
    np.testing.assert_array_equal(record["image"], expected["image"])
    np.testing.assert_array_equal(record["lung_mask"], expected["lung_mask"])
    np.testing.assert_array_equal(record["lesion_mask"], expected["lesion_mask"])
    assert record["label"] == expected["label"]
    # Sources cross process boundaries (grain workers): a pickled copy reads the same.
    copy = pickle.loads(pickle.dumps(ds.splits["validation"]))
    np.testing.assert_array_equal(copy[0]["image"], record["image"])
    assert copy[0]["file_name"] == record["file_name"]


def test_phantoms_from_another_generator_version_are_refused(tmp_path, monkeypatch):
    from cxrjax.data import phantoms

    options = {"image_size": 16, "num_train": 4, "num_validation": 0, "num_test": 0}
    data.prepare("cxr_phantoms", data_dir=tmp_path, options=options)
    original = phantoms.phantom_example

    def changed_generator(seed, index, opts):
        example = original(seed, index, opts)
        example["image"] = 255 - example["image"]
        return example

    monkeypatch.setattr(phantoms, "phantom_example", changed_generator)
    with pytest.raises(ValueError, match="another version of cxrjax.data.phantoms"):
        data.load("cxr_phantoms", data_dir=tmp_path, options=options)


def test_prepared_dataset_feeds_the_grain_eval_pipeline(tmp_path):
    options = {"image_size": 24, "num_train": 8, "num_validation": 6, "num_test": 0}
    ds = data.load("cxr_phantoms", data_dir=tmp_path, options=options)
    assert set(ds.splits) == {"train", "validation"}  # empty splits are not created
    cfg = data.InputConfig(image_size=16)
    batches = list(data.make_iterator(data.eval_batches(ds, "validation", cfg, global_batch_size=4)))
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    source = ds.splits["validation"]
    assert labels.tolist() == [source[i]["label"] for i in range(len(source))]
    assert batches[0]["image"].shape == (4, 16, 16, 1) and len(batches) == 2


# ---------------------------------------------------------------------- splits


def test_stratified_split_meets_targets_and_is_deterministic():
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    fractions = {"train": 0.7, "validation": 0.2, "test": 0.1}
    parts = stratified_group_split(labels, None, fractions, seed=0)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(labels)))
    for c, n in enumerate([50, 30, 7]):
        counts = [int((labels[parts[s]] == c).sum()) for s in fractions]
        assert counts == largest_remainder(n, list(fractions.values()))
    assert largest_remainder(7, [0.7, 0.2, 0.1]) == [5, 1, 1]
    again = stratified_group_split(labels, None, fractions, seed=0)
    other = stratified_group_split(labels, None, fractions, seed=1)
    assert all(np.array_equal(parts[s], again[s]) for s in fractions)
    assert not all(np.array_equal(parts[s], other[s]) for s in fractions)


def test_split_keeps_groups_whole():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    groups = np.arange(300)
    for start in range(0, 120, 4):  # 30 groups of 4 with mixed labels
        groups[start : start + 4] = start
    parts = stratified_group_split(labels, groups, {"train": 0.8, "validation": 0.2}, seed=5)
    split_of = np.empty(300, object)
    for split, members in parts.items():
        split_of[members] = split
    for start in range(0, 120, 4):
        assert len(set(split_of[start : start + 4])) == 1
    assert abs(len(parts["validation"]) - 60) <= 4 * 3  # within one group per stratum


def test_split_fraction_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_group_split([0, 1], None, {"train": 0.5, "test": 0.2}, seed=0)
    parts = stratified_group_split([0, 0, 1, 1], None, {"train": 1.0, "test": 0.0}, seed=0)
    assert len(parts["train"]) == 4 and len(parts["test"]) == 0


# ---------------------------------------------------------------------- duplicates


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    n, words = 300, dup.DHASH_WORDS
    hashes = rng.integers(0, 2**63, size=(n, words), dtype=np.int64).astype(np.uint64)
    for i in range(0, 60, 2):  # plant pairs at distance i % 14, bits spread over words
        bits = rng.choice(64 * words, size=i % 14, replace=False)
        hashes[i + 100] = hashes[i]
        for b in bits:
            hashes[i + 100, b // 64] ^= np.uint64(1 << int(b % 64))
    as_int = [sum(int(w) << (64 * k) for k, w in enumerate(row)) for row in hashes]
    brute = {(i, j) for i in range(n) for j in range(i + 1, n) if bin(as_int[i] ^ as_int[j]).count("1") <= 10}
    found = {tuple(p) for p in dup.near_pairs(hashes, 10, chunk=64).tolist()}
    assert found == brute and len(brute) >= 20
    assert dup.hamming(hashes[0], hashes[100]) == 0


def test_find_duplicates_identical_near_and_confirmation():
    base = fx.noise(11, 64, 64)
    variants = {
        "a.png": fx.encode(base),
        "a_copy.png": fx.encode(base),
        "a.jpg": fx.encode(base, "JPEG", quality=70),
        "a_small.png": fx.encode(np.asarray(Image.fromarray(base).resize((48, 48)))),
        "b.png": fx.encode(fx.noise(12, 64, 64)),
    }
    names = list(variants)
    pixels = [decode_grayscale(v, size=32).pixels for v in variants.values()]
    digests = [dup.sha256_bytes(v) for v in variants.values()]
    hashes = np.stack([dup.dhash(p) for p in pixels])
    thumbs = np.stack([dup.thumbnail(p) for p in pixels])
    labels, groups = dup.find_duplicates(digests, hashes, thumbs, max_distance=4)
    assert [(tuple(names[i] for i in g.members), g.kind) for g in groups] == [
        (("a.png", "a_copy.png", "a.jpg", "a_small.png"), "near")
    ]
    assert labels.tolist() == [0, 0, 0, 0, 4]
    only_identical, groups = dup.find_duplicates(digests, hashes, thumbs, max_distance=-1)
    assert [g.members for g in groups] == [(0, 1)] and groups[0].kind == "identical"
    # Equal hashes but uncorrelated thumbnails: not merged.
    flat = np.zeros((2, 256), np.float32)
    flat[0, 0], flat[1, 1] = 1.0, 1.0
    _, groups = dup.find_duplicates(["x", "y"], np.zeros(2, np.uint64), flat)
    assert groups == []


class _DyingPool:
    """A process pool whose workers die after `survive` chunks (as when a spawned worker
    re-runs an unguarded main script)."""

    def __init__(self, survive):
        self.survive, self.calls = survive, 0

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        import concurrent.futures

        future = concurrent.futures.Future()
        if self.calls < self.survive:
            future.set_result(fn(*args))
        else:
            future.set_exception(concurrent.futures.process.BrokenProcessPool("worker died"))
        self.calls += 1
        return future


def test_phantoms_are_drawn_in_process_when_the_workers_die(monkeypatch):
    from cxrjax.data import phantoms
    from cxrjax.data.builders import phantoms as builder

    options = phantoms.PhantomOptions(image_size=16)
    expected = [phantoms.phantom_example(3, i, options)["image"] for i in range(10)]
    monkeypatch.setattr(builder, "num_threads", lambda: 2)
    monkeypatch.setattr(builder, "_MIN_FOR_PROCESSES", 4)
    monkeypatch.setattr(builder, "_CHUNK", 3)
    monkeypatch.setattr(builder.concurrent.futures, "ProcessPoolExecutor", _DyingPool(survive=1))
    with pytest.warns(RuntimeWarning, match=r"remaining 3 of 4 chunks .*`if __name__ == \"__main__\":`"):
        records = list(builder.generate_phantoms(3, range(10), options))
    assert [r["file_name"] for r in records] == [phantoms.phantom_file_name(3, i) for i in range(10)]
    for record, image in zip(records, expected):
        np.testing.assert_array_equal(record["image"], image)


def test_phantom_workers_are_not_spawned_when_main_cannot_be_rerun(monkeypatch, tmp_path):
    import types

    from cxrjax.data.builders import phantoms as builder

    main = types.ModuleType("__main__")
    monkeypatch.setitem(__import__("sys").modules, "__main__", main)
    assert builder._main_is_importable()  # interactive, -c, notebook: nothing to re-run
    main.__file__ = str(tmp_path / "<stdin>")
    assert not builder._main_is_importable()  # `python -` reading a script from stdin
    (tmp_path / "script.py").write_text("")
    main.__file__ = str(tmp_path / "script.py")
    assert builder._main_is_importable()
