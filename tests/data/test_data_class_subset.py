"""Class subsets (`data.load(..., classes=...)`): kept classes only, remapped labels in the
order given, class names and report of the view, clear errors, and the pipelines on top."""

import pickle

import numpy as np
import pytest
from _fakes import phantom_dataset

from cxrjax import data
from cxrjax.data import pipeline
from cxrjax.data.subset import normalize_classes, select_classes, split_options

OPTIONS = {"image_size": 24, "num_train": 16, "num_validation": 8, "num_test": 8, "seed": 1}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, the full 4-class dataset) of tiny phantoms, prepared once."""
    data_dir = tmp_path_factory.mktemp("subset")
    return data_dir, data.load("cxr_phantoms", data_dir=data_dir, options=OPTIONS)


def _labels(source):
    return np.array([int(source[i]["label"]) for i in range(len(source))])


def test_subset_keeps_only_the_given_classes_relabelled_in_order(prepared):
    data_dir, full = prepared
    sub = data.load("cxr_phantoms", data_dir=data_dir, options=OPTIONS, classes=("Normal", "COVID"))
    assert sub.class_names == ["Normal", "COVID"] and sub.num_classes == 2
    assert sub.class_subset == ("Normal", "COVID")
    assert sub.data_path == full.data_path  # a view: same prepared files, nothing re-prepared
    normal, covid = full.class_names.index("Normal"), full.class_names.index("COVID")
    for split, source in full.splits.items():
        old = _labels(source)
        kept_names = [source[i]["file_name"] for i in range(len(source)) if old[i] in (normal, covid)]
        view = sub.splits[split]
        new = _labels(view)
        assert set(new.tolist()) <= {0, 1}
        assert len(view) == int(np.sum(old == normal) + np.sum(old == covid))
        assert np.sum(new == 0) == np.sum(old == normal) and np.sum(new == 1) == np.sum(old == covid)
        # Same records, same order, only the label changed.
        assert [view[i]["file_name"] for i in range(len(view))] == kept_names
        expected = [0 if source[i]["label"] == normal else 1 for i in range(len(source)) if old[i] in (normal, covid)]
        assert new.tolist() == expected
        np.testing.assert_array_equal(view.labels, new)
        assert [r["label"] for r in view.__getitems__([0, len(view) - 1])] == [new[0], new[-1]]
        assert sub.report["splits"][split] == {"Normal": int(np.sum(old == normal)), "COVID": int(np.sum(old == covid))}
    assert sub.report["class_subset"]["all_class_names"] == full.class_names
    assert sub.report["class_names"] == ["Normal", "COVID"]
    # Picklable for grain workers, and a copy reads the same.
    copy = pickle.loads(pickle.dumps(sub.splits["train"]))
    assert copy[3]["file_name"] == sub.splits["train"][3]["file_name"]
    assert copy[3]["label"] == sub.splits["train"][3]["label"]


def test_classes_in_options_equal_the_keyword_and_never_change_preparation(prepared):
    data_dir, full = prepared
    via_options = data.load("cxr_phantoms", data_dir=data_dir, options={**OPTIONS, "classes": ["COVID", "Normal"]})
    via_keyword = data.load_prepared("cxr_phantoms", data_dir=data_dir, options=OPTIONS, classes="COVID,Normal")
    assert via_options.class_names == via_keyword.class_names == ["COVID", "Normal"]
    assert via_options.data_path == via_keyword.data_path == full.data_path
    for split in full.splits:
        np.testing.assert_array_equal(_labels(via_options.splits[split]), _labels(via_keyword.splits[split]))
    with pytest.raises(ValueError, match="give the class subset once"):
        data.load("cxr_phantoms", data_dir=data_dir, options={**OPTIONS, "classes": ["COVID"]}, classes=["Normal"])


def test_unknown_or_repeated_class_names_are_clear_errors(prepared):
    data_dir, _ = prepared
    with pytest.raises(
        ValueError,
        match=r"unknown class name\(s\) \['Pneumonia'\].*available class "
        r"names: \['COVID', 'Lung_Opacity', 'Normal', 'Viral Pneumonia'\]",
    ):
        data.load("cxr_phantoms", data_dir=data_dir, options=OPTIONS, classes=["COVID", "Pneumonia"])
    with pytest.raises(ValueError, match="more than once"):
        normalize_classes(["COVID", "COVID"])
    with pytest.raises(ValueError, match="at least one"):
        normalize_classes([])
    assert split_options({"a": 1, "classes": "A, B"}) == ({"a": 1}, ("A", "B"))
    assert split_options(None, None) == (None, None)


def test_subset_feeds_the_pipelines_with_remapped_labels():
    ds = phantom_dataset({"train": 24, "validation": 12}, image_size=16)  # the pipeline tests' fake
    sub = select_classes(ds, ["Viral Pneumonia", "COVID"])
    assert sub.class_names == ["Viral Pneumonia", "COVID"]
    old = _labels(ds.splits["validation"])
    cfg = pipeline.InputConfig(image_size=16)
    batches = list(pipeline.make_iterator(pipeline.eval_batches(sub, "validation", cfg, global_batch_size=4)))
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    vp, covid = ds.class_names.index("Viral Pneumonia"), ds.class_names.index("COVID")
    assert labels.tolist() == [0 if x == vp else 1 for x in old if x in (vp, covid)]
    train = pipeline.train_batches(sub, "train", cfg, seed=0, epoch=0, global_batch_size=4)
    assert {int(x) for b in pipeline.make_iterator(train) for x in b["label"]} <= {0, 1}
    np.testing.assert_allclose(pipeline.class_weights(sub), [1.0, 1.0])
    assert select_classes(ds, None) is ds


def test_record_source_labels_are_read_once_and_match_the_records(prepared):
    data_dir, _ = prepared
    full = data.load("cxr_phantoms", data_dir=data_dir, options=OPTIONS)  # not read by other tests yet
    source = full.splits["train"]
    # The labels are read from the split opened with every other feature left encoded.
    raw = source._label_source.__getitems__([0])[0]
    assert isinstance(raw["image"], bytes) and int(raw["label"]) == int(source[0]["label"])
    labels = source.labels
    assert source._label_source is None  # dropped once read
    assert labels.dtype == np.int64 and labels.tolist() == _labels(source).tolist()
    assert source.labels is labels  # cached
    np.testing.assert_array_equal(pipeline.split_labels(full, "train"), labels)
