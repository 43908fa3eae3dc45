"""Prepared files are reused only while the source folder is what they were prepared
from; the opened data carries a fingerprint a training run can store and compare."""

import json

import pytest

from cxrjax import data
from cxrjax.data.__main__ import main
from tests.data import fixtures as fx

OPTIONS = {"image_size": 16}


def test_changed_source_folder_is_refused_until_prepared_again(tmp_path, capsys):
    source = fx.make_class_folders(tmp_path / "download", per_class=10)
    kwargs = {"data_dir": tmp_path / "p", "manual_dir": source, "options": OPTIONS}
    first = data.prepare("image_folder", **kwargs)
    assert sum(sum(c.values()) for c in first["splits"].values()) == 30
    data.prepare("image_folder", **kwargs)  # unchanged: reused
    (source / "cat_a" / "img-000.png").unlink()
    (source / "cat_b" / "new.png").write_bytes(fx.image_bytes(4242, size=(40, 40)))
    data_path = data.get_builder("image_folder", data_dir=tmp_path / "p", options=OPTIONS).data_path
    with pytest.raises(ValueError) as error:
        data.prepare("image_folder", **kwargs)
    message = str(error.value)
    for fragment in (data_path, source, "1 added", "cat_b/new.png", "1 removed", "cat_a/img-000.png", "--overwrite"):
        assert str(fragment) in message, message
    with pytest.raises(ValueError, match="changed since"):  # load reuses the same check
        data.load("image_folder", **kwargs)
    argv = [
        "prepare",
        "image_folder",
        "--manual-dir",
        str(source),
        "--data-dir",
        str(tmp_path / "p"),
        "--image-size",
        "16",
    ]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err, err
    # A changed file (same name, new bytes) is a change too.
    again = data.prepare("image_folder", **kwargs, overwrite=True)
    assert sum(sum(c.values()) for c in again["splits"].values()) == 30
    target = source / "cat_c" / "img-003.png"
    target.write_bytes(fx.image_bytes(999, size=(44, 44)))
    with pytest.raises(ValueError, match=r"1 changed \(e\.g\. cat_c/img-003\.png\)"):
        data.prepare("image_folder", **kwargs)
    # Without a manual dir the prepared files are opened as they are.
    assert data.load("image_folder", data_dir=tmp_path / "p", options=OPTIONS).report == again
    # Files prepared before sources were fingerprinted cannot be checked: refused too.
    report_path = data_path / "preparation_report.json"
    report = json.loads(report_path.read_text())
    del report["source_fingerprint"]
    report_path.write_text(json.dumps(report))
    target.write_bytes(fx.image_bytes(3, size=(40, 40)))
    with pytest.raises(ValueError, match="older cxrjax.*--overwrite"):
        data.prepare("image_folder", **kwargs)


def test_fingerprint_identifies_the_prepared_data(tmp_path):
    source = fx.make_class_folders(tmp_path / "download", per_class=10)
    ds = data.load("image_folder", data_dir=tmp_path / "p", manual_dir=source, options=OPTIONS)
    fingerprint = ds.fingerprint
    assert fingerprint["dataset"] == "image_folder"
    assert fingerprint["version"] == str(ds.builder.version)
    assert fingerprint["config"] == ds.builder.builder_config.name
    assert fingerprint["class_names"] == ds.class_names
    assert {s: v["examples"] for s, v in fingerprint["splits"].items()} == {s: len(src) for s, src in ds.splits.items()}
    assert all(len(v["sha256"]) == 64 for v in fingerprint["splits"].values())
    json.dumps(fingerprint)  # storable with a training run
    # The stored fingerprint is the one of the records as they are read back.
    from cxrjax.data.dataset import records_fingerprint

    assert records_fingerprint(ds.builder) == ds.report["fingerprint"]
    # The same data, reopened or prepared in another data_dir, has the same fingerprint.
    assert data.load_prepared("image_folder", data_dir=tmp_path / "p", options=OPTIONS).fingerprint == fingerprint
    twin = data.load("image_folder", data_dir=tmp_path / "q", manual_dir=source, options=OPTIONS)
    assert twin.fingerprint == fingerprint
    # Other splits, other options or a class subset are different data.
    other = data.load("image_folder", data_dir=tmp_path / "p", manual_dir=source, options={**OPTIONS, "seed": 1})
    assert other.fingerprint["splits"]["train"]["sha256"] != fingerprint["splits"]["train"]["sha256"]
    assert other.fingerprint["sha256"] != fingerprint["sha256"]
    subset = data.load("image_folder", data_dir=tmp_path / "p", options=OPTIONS, classes=("cat_b", "cat_a"))
    assert subset.fingerprint["class_subset"] == ["cat_b", "cat_a"]
    assert subset.fingerprint["sha256"] != fingerprint["sha256"]
    assert fingerprint["class_subset"] is None
    # Every builder stores it (the tally is in the shared base class).
    phantoms = data.load(
        "cxr_phantoms",
        data_dir=tmp_path / "p",
        options={"image_size": 16, "num_train": 4, "num_validation": 4, "num_test": 0},
    )
    assert phantoms.fingerprint["splits"].keys() == {"train", "validation"}
    assert records_fingerprint(phantoms.builder) == phantoms.report["fingerprint"]


def test_a_copy_with_new_times_is_the_same_source_but_new_bytes_are_not(tmp_path):
    import os

    source = fx.make_class_folders(tmp_path / "download", per_class=10)
    kwargs = {"data_dir": tmp_path / "p", "manual_dir": source, "options": OPTIONS}
    first = data.prepare("image_folder", **kwargs)
    files = sorted(p for p in source.rglob("*.png"))
    # A re-copy or a fresh checkout: every modification time changes, no byte does.
    for i, path in enumerate(files):
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    assert data.prepare("image_folder", **kwargs) == first  # reused, not refused
    assert data.load("image_folder", **kwargs).report == first
    # Same name, same size, other bytes (and a new time): a change.
    target = files[2]
    payload = bytearray(target.read_bytes())
    payload[-5] ^= 0xFF
    target.write_bytes(bytes(payload))
    name = target.relative_to(source).as_posix()
    with pytest.raises(ValueError, match=rf"1 changed \(e\.g\. {name}\).*--overwrite"):
        data.prepare("image_folder", **kwargs)
    # Prepared by a cxrjax that kept no digests: a touched file cannot be told apart.
    again = data.prepare("image_folder", **kwargs, overwrite=True)
    data_path = data.get_builder("image_folder", **{k: kwargs[k] for k in ("data_dir", "options")}).data_path
    kept_path = data_path / "source_files.json"
    kept = json.loads(kept_path.read_text())
    assert set(kept["sha256"]) == {p.relative_to(source).as_posix() for p in files}
    del kept["sha256"]
    kept_path.write_text(json.dumps(kept))
    os.utime(files[0], ns=(10**18 + 99, 10**18 + 99))
    with pytest.raises(ValueError, match="changed since"):
        data.prepare("image_folder", **kwargs)
    assert again["splits"] == first["splits"]
