"""Sources and groups: D4's metadata workbooks, groups files, and the splits that keep
groups and sources whole (`cxrjax.data.provenance`, `splits.stratified_group_split`)."""

import collections

import numpy as np
import pytest

from cxrjax import data
from cxrjax.data import provenance
from cxrjax.data.builders.options import SplitOptions
from cxrjax.data.fingerprint import SourceChangedError
from cxrjax.data.layouts import LayoutError
from cxrjax.data.splits import stratified_group_split
from tests.data import fixtures as fx

SIZE = 16


def _records(ds):
    return {split: [source[i] for i in range(len(source))] for split, source in ds.splits.items()}


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("value", "source"),
    [
        *fx.URL_SOURCES.items(),
        ("http://www.eurorad.org/case/12345", "eurorad.org"),
        ("github.com/ieee8023/covid-chestxray-dataset", "github.com/ieee8023"),  # no scheme
        ("https://www.kaggle.com/datasets/tawsifurrahman/covid19", "kaggle.com/tawsifurrahman"),
        ("BIMCV-COVID19+", "BIMCV-COVID19+"),  # a collection name, not a URL
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_source_from_url(value, source):
    assert provenance.source_from_url(value) == source


def test_metadata_workbook_rows_and_problems(tmp_path):
    path = fx.write_xlsx(
        tmp_path / "Normal.metadata.xlsx",
        [("NORMAL-1", "PNG", "299*299", "https://sirm.org/x"), ("Normal-2.PNG", "PNG", "", "")],
    )
    table = provenance.read_metadata_xlsx(path)
    assert table.error is None
    assert table.sources == {"normal-1": "sirm.org", "normal-2": "unknown"}
    no_url = provenance.read_metadata_xlsx(fx.write_xlsx(tmp_path / "a.metadata.xlsx", [("x", 1)], ("FILE NAME", "N")))
    assert no_url.sources == {} and "no 'FILE NAME' and 'URL' columns" in no_url.error
    broken = fx.write(tmp_path / "b.metadata.xlsx", b"PK\x03\x04 garbage")
    assert "not a readable .xlsx workbook" in provenance.read_metadata_xlsx(broken).error


def test_groups_file_matching_and_errors(tmp_path):
    relpaths = ["a/img-1.png", "b/img-1.png", "a/img-2.png", "a/img-3.png"]
    path = fx.write_groups_csv(
        tmp_path / "groups.csv",
        [("a/img-1.png", "p1"), ("B/IMG-1", "p1"), ("img-2.png", "p2"), ("img-1.png", "p9"), ("missing.png", "p3")],
    )
    groups, sources, report = provenance.match_groups(provenance.read_groups_file(path), relpaths)
    # by path (case and extension ignored), by unique file name; img-1.png is in two folders.
    assert groups == ["p1", "p1", "p2", ""]
    assert sources == [None] * 4
    assert report["unmatched_rows"] == 1 and report["unmatched_examples"] == ["missing.png"]
    assert report["ambiguous_rows"] == 1 and report["images_without_group"] == 1 and report["groups"] == 2
    assert len(provenance.groups_warnings(report)) == 2

    with pytest.raises(provenance.GroupsFileError, match="(?s)does not exist.*file_name"):
        provenance.read_groups_file(tmp_path / "nope.csv")
    bad = fx.write_groups_csv(tmp_path / "bad.csv", [("a/img-1.png", "p1")], header=("name", "patient"))
    with pytest.raises(provenance.GroupsFileError, match=r"(?s)bad\.csv.*lacks a file_name column"):
        provenance.read_groups_file(bad)
    twice = fx.write_groups_csv(tmp_path / "twice.csv", [("a/img-2.png", "p1"), ("img-2", "p2")])
    with pytest.raises(provenance.GroupsFileError, match="two groups"):
        provenance.match_groups(provenance.read_groups_file(twice), relpaths)


def test_options_name_and_validation(tmp_path):
    assert SplitOptions().config_name() == "s256_seed0_val0.2_dup10_test0.1"  # unchanged by the new fields
    options = SplitOptions(groups_file=str(tmp_path / "g.csv"), split_by="group")
    assert options.groups_file == str((tmp_path / "g.csv").resolve())
    assert options.config_name().startswith("s256_seed0_val0.2_dup10_groups") and "/" not in options.config_name()
    assert options.config_name().endswith("_bygroup_test0.1")
    with pytest.raises(ValueError, match="needs groups_file"):
        SplitOptions(split_by="group")
    with pytest.raises(ValueError, match="split_by must be one of"):
        SplitOptions(split_by="patient")


# ---------------------------------------------------------------------- splitting


def _split_of(parts):
    return {int(i): split for split, members in parts.items() for i in members}


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_extra_groups_and_duplicates_whole(seed):
    rng = np.random.default_rng(100 + seed)
    n = 120
    labels = rng.integers(0, 3, n)
    duplicates = np.arange(n)
    duplicates[1::7] = duplicates[0::7][: len(duplicates[1::7])]  # some duplicate pairs
    patients = rng.integers(0, 30, n)
    patients[rng.random(n) < 0.2] = -1  # no group
    fractions = {"train": 0.6, "validation": 0.2, "test": 0.2}
    parts = stratified_group_split(labels, duplicates, fractions, seed, extra_groups=[patients])
    split_of = _split_of(parts)
    assert sorted(split_of) == list(range(n))
    for ids in (duplicates, patients):
        for group in set(ids.tolist()) - {-1}:
            assert len({split_of[i] for i in np.flatnonzero(ids == group)}) == 1
    again = stratified_group_split(labels, duplicates, fractions, seed, extra_groups=[patients])
    assert split_of == _split_of(again)  # deterministic
    # Without the patients some patient would straddle splits: the grouping is doing work.
    plain = _split_of(stratified_group_split(labels, duplicates, fractions, seed))
    assert any(len({plain[i] for i in np.flatnonzero(patients == g)}) > 1 for g in range(30))


@pytest.mark.parametrize("seed", range(6))
def test_source_split_keeps_sources_whole_and_fills_every_split(seed):
    rng = np.random.default_rng(seed)
    sizes = [60, 25, 9, 4, 2]  # one dominant source, as in D4
    sources = np.repeat(np.arange(len(sizes)), sizes)[rng.permutation(sum(sizes))]  # any order
    labels = sources % 2  # class == source: unstratified on purpose
    fractions = {"train": 0.7, "validation": 0.2, "test": 0.1}
    parts = stratified_group_split(labels, None, fractions, seed, extra_groups=[sources], stratify=False)
    split_of = _split_of(parts)
    per_source = collections.defaultdict(set)
    for i, split in split_of.items():
        per_source[int(sources[i])].add(split)
    assert all(len(s) == 1 for s in per_source.values())
    assert all(len(parts[s]) for s in fractions)
    assert len(parts["train"]) >= 60  # the biggest source goes where the most is wanted


def test_source_split_needs_a_source_per_split():
    with pytest.raises(ValueError, match="2 group.*3 splits"):
        stratified_group_split(
            [0, 1, 0], None, {"train": 0.6, "validation": 0.2, "test": 0.2}, 0, extra_groups=[[0, 0, 1]], stratify=False
        )


# ---------------------------------------------------------------------- builders


@pytest.fixture(scope="module")
def d4_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("d4src")
    facts = fx.make_d4(root / "download", metadata=True)
    ds = data.load(
        "covid19_radiography",
        data_dir=root / "prepared",
        manual_dir=root / "download",
        options={"image_size": SIZE, "split_by": "source", "validation_fraction": 0.2, "test_fraction": 0.2},
    )
    return facts, ds, _records(ds)


def test_d4_metadata_gives_each_record_its_source(d4_sources):
    facts, ds, records = d4_sources
    got = {r["file_name"]: r["source"] for recs in records.values() for r in recs}
    assert got == facts["sources"]
    assert all(r["group"] == "" for recs in records.values() for r in recs)
    report = ds.report["sources"]
    assert sorted(m["file"] for m in report["metadata_files"]) == sorted(f"{c}.metadata.xlsx" for c in fx.D4_CLASSES)
    assert all(m["error"] is None for m in report["metadata_files"])
    assert report["unknown"] == 1  # the planted copy has no row
    assert any(w.startswith("1 image has no row in its class's .metadata.xlsx") for w in ds.report["warnings"])
    expected = collections.Counter(facts["sources"].values())
    assert {s: sum(c.values()) for s, c in report["per_source"].items()} == dict(expected)
    skipped = {e["file"] for e in ds.report["skipped"]}
    assert not any(f.endswith(".metadata.xlsx") for f in skipped)  # read, not skipped


def test_d4_split_by_source_keeps_sources_whole_and_names_them(d4_sources):
    facts, ds, records = d4_sources
    splits_of_source = collections.defaultdict(set)
    for split, recs in records.items():
        for r in recs:
            splits_of_source[r["source"]].add(split)
    # The COVID-2 / Normal-copy duplicate joins sirm.org or a GitHub source with "unknown";
    # every source still lies in one split.
    assert all(len(s) == 1 for s in splits_of_source.values()), dict(splits_of_source)
    assert set(records) == {"train", "validation", "test"}
    assert ds.report["split_by"] == "source"
    assert ds.report["split_sources"] == {split: sorted({r["source"] for r in recs}) for split, recs in records.items()}
    assert ds.report["sources"]["per_source"] == {
        source: {next(iter(splits)): sum(r["source"] == source for recs in records.values() for r in recs)}
        for source, splits in sorted(splits_of_source.items())
    }


def test_split_by_source_without_sources_names_the_problem(tmp_path):
    fx.make_class_folders(tmp_path / "download", per_class=4)
    with pytest.raises(LayoutError, match=r"(?s)split_by=.source..*needs at least 3 sources.*1: \['\(none\)'\]"):
        data.load(
            "image_folder",
            data_dir=tmp_path / "prepared",
            manual_dir=tmp_path / "download",
            options={"image_size": SIZE, "split_by": "source"},
        )


def test_groups_file_keeps_groups_whole_and_is_fingerprinted(tmp_path):
    root = fx.make_class_folders(tmp_path / "download", per_class=12)
    classes = ("cat_a", "cat_b", "cat_c")
    rows = [(f"{c}/img-{i:03d}.png", f"patient-{i % 4}") for c in classes for i in range(10)]  # 2 per class ungrouped
    rows.append(("cat_a/not-there.png", "patient-9"))
    groups_file = fx.write_groups_csv(tmp_path / "groups.csv", rows)
    options = {"image_size": SIZE, "groups_file": str(groups_file), "split_by": "group", "seed": 3}
    ds = data.load("image_folder", data_dir=tmp_path / "prepared", manual_dir=root, options=options)
    records = _records(ds)
    split_of_group = collections.defaultdict(set)
    for split, recs in records.items():
        for r in recs:
            split_of_group[r["group"]].add(split)
    ungrouped = split_of_group.pop("")
    assert sorted(split_of_group) == [f"patient-{k}" for k in range(4)]
    assert all(len(s) == 1 for s in split_of_group.values())
    assert len(ungrouped) >= 1  # images without a group are their own units
    groups = ds.report["groups"]
    assert groups["images_with_group"] == 30 and groups["images_without_group"] == 6
    assert groups["unmatched_rows"] == 1 and groups["unmatched_examples"] == ["cat_a/not-there.png"]
    assert any("1 of 31 rows name no prepared image" in w for w in ds.report["warnings"])
    assert {r["source"] for recs in records.values() for r in recs} == {""}
    assert ds.report["sources"] is None

    # The groups file is part of the source fingerprint: changing it is noticed.
    groups_file.write_text(groups_file.read_text() + "cat_b/img-011.png,patient-0\n")
    with pytest.raises(SourceChangedError, match="groups.csv"):
        data.load("image_folder", data_dir=tmp_path / "prepared", manual_dir=root, options=options)


def test_missing_groups_file_is_one_clear_error(tmp_path):
    root = fx.make_class_folders(tmp_path / "download", per_class=4)
    options = {"image_size": SIZE, "groups_file": str(tmp_path / "nope.csv"), "test_fraction": 0}
    with pytest.raises(provenance.GroupsFileError, match=r"(?s)nope\.csv: groups file does not exist.*file_name"):
        data.load("image_folder", data_dir=tmp_path / "prepared", manual_dir=root, options=options)


def test_cli_prints_where_sources_went_and_groups_file_errors(tmp_path, capsys):
    from cxrjax.data.__main__ import main

    fx.make_d4(tmp_path / "download", metadata=True)
    common = ["--manual-dir", str(tmp_path / "download"), "--data-dir", str(tmp_path / "prepared")]
    common += ["--image-size", str(SIZE), "--test-fraction", "0.2"]
    assert main(["prepare", "covid19_radiography", *common, "--split-by", "source"]) == 0
    out = capsys.readouterr().out
    assert "split by source:" in out and "  train: " in out and "  test: " in out
    assert "kaggle.com/c/rsna-pneumonia-detection-challenge:" in out

    code = main(["prepare", "covid19_radiography", *common, "--groups-file", str(tmp_path / "none.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "error: " in err and "none.csv: groups file does not exist" in err.split("error: ", 1)[1]
    assert "Traceback" not in err


def test_group_across_given_splits_keeps_only_its_test_images(tmp_path):
    facts = fx.make_dp(tmp_path / "download", train_per_class=4, test_per_class=2)
    train = sorted(f for f in facts["files"] if f.startswith("train/Covid/"))
    test = sorted(f for f in facts["files"] if f.startswith("test/Covid/"))
    groups_file = fx.write_groups_csv(tmp_path / "g.csv", [(train[0], "p1"), (test[0], "p1"), (train[1], "p2")])
    ds = data.load(
        "covid19_image_dataset",
        data_dir=tmp_path / "prepared",
        manual_dir=facts["root"],
        options={"image_size": SIZE, "groups_file": str(groups_file), "validation_fraction": 0.25},
    )
    split_of = {r["file_name"]: split for split, recs in _records(ds).items() for r in recs}
    assert train[0] not in split_of and split_of[test[0]] == "test"
    skipped = {e["file"]: e["reason"] for e in ds.report["skipped"]}
    assert f"in group 'p1' with {test[0]} in the given test split" in skipped[train[0]]
    assert train[1] in split_of  # a group inside train is carved whole, not dropped


def test_files_of_the_previous_version_are_never_opened(tmp_path):
    root = fx.make_class_folders(tmp_path / "download", per_class=4)
    options = {"image_size": SIZE, "test_fraction": 0}
    ds = data.load("image_folder", data_dir=tmp_path / "prepared", manual_dir=root, options=options)
    version = ds.data_path.name
    assert version == "1.1.0" and "source" in ds.splits["train"][0]
    # As if prepared by the code before the source/group features (version 1.0.0):
    ds.data_path.rename(ds.data_path.with_name("1.0.0"))
    with pytest.raises(LayoutError, match="not prepared"):
        data.load_prepared("image_folder", data_dir=tmp_path / "prepared")
    again = data.load("image_folder", data_dir=tmp_path / "prepared", manual_dir=root, options=options)
    assert again.data_path.name == "1.1.0" and again.splits["train"][0]["group"] == ""


def test_groups_file_source_column_drives_a_source_split(tmp_path):
    root = fx.make_class_folders(tmp_path / "download", per_class=8)
    rows = [
        (f"{c}/img-{i:03d}.png", f"{c}-p{i // 2}", f"site-{(i // 2 + k) % 4}")
        for k, c in enumerate(("cat_a", "cat_b", "cat_c"))
        for i in range(8)
    ]
    groups_file = fx.write_groups_csv(tmp_path / "g.csv", rows, header=("file_name", "patient_id", "source"))
    options = {"image_size": SIZE, "groups_file": str(groups_file), "split_by": "source", "seed": 1}
    ds = data.load("image_folder", data_dir=tmp_path / "prepared", manual_dir=root, options=options)
    records = _records(ds)
    where = collections.defaultdict(set)
    for split, recs in records.items():
        for r in recs:
            where[r["source"]].add(split)
            where[r["group"]].add(split)
    assert all(len(s) == 1 for s in where.values())
    assert set(records) == {"train", "validation", "test"}
    assert sorted(s for names in ds.report["split_sources"].values() for s in names) == [f"site-{k}" for k in range(4)]

    # Patients whose images come from two sites join sites 0+1 and 2+3: 2 units for 3 splits, refused.
    mixed = [(name, patient, f"site-{i % 4}") for i, (name, patient, _) in enumerate(rows)]
    fx.write_groups_csv(groups_file, mixed, header=("file_name", "patient_id", "source"))
    with pytest.raises(LayoutError, match="groups spanning sources join them into 2 units"):
        data.load("image_folder", data_dir=tmp_path / "prepared2", manual_dir=root, options=options)
