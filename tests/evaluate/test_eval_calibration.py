"""Calibration, bootstrap intervals, operating points and paired comparison, wired through
the trainer (results.json, calibration.json), evaluate, predict and evaluate --compare, on
two runs trained in the test (tiny phantoms, one epoch, seeds 0 and 1)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cxrjax import inference
from cxrjax.data.phantoms import CLASS_NAMES
from cxrjax.reporting import calibration as cal
from cxrjax.train.evaluation import predict_split
from tests.train.support import phantom_run_config

DATASET_OPTIONS = {"image_size": 32, "num_train": 32, "num_validation": 12, "num_test": 12}
RESAMPLES = 200
CALIBRATION_KEYS = {"ece", "ece_equal_mass", "mce", "brier", "nll", "temperature"}
EVAL = ["--batch-size", "8", "--no-progress", "--no-probes", "--no-pointing-game"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs A (seed 0) and B (seed 1) on the same data, their dataset and the config."""
    from cxrjax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("calibration")
    config = phantom_run_config(root, DATASET_OPTIONS, bootstrap_resamples=RESAMPLES, target_sensitivity=0.9)
    train_and_evaluate(config, root / "a")
    train_and_evaluate(config.replace(seed=1), root / "b")
    return root, config


def assert_close(got, expected, rel=1e-4):
    """Nested dicts/lists of numbers equal up to ``rel`` (pytest.approx does not nest)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected)
        for key in expected:
            assert_close(got[key], expected[key], rel)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_close(g, e, rel)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=rel, abs=1e-9)
    else:
        assert got == expected


def _predictions(workdir, split):
    run = inference.load_run(workdir)
    request = inference.dataset_request(run)
    ds = inference.open_dataset(request)
    view, mapping = inference.evaluation_view(run, ds, request, split)
    return predict_split(run, view, split, 8, mapping=mapping)


def test_results_json_carries_calibration_intervals_and_operating_points(runs):
    root, _ = runs
    results = json.loads((root / "a" / "results.json").read_text())
    stored = json.loads((root / "a" / "calibration.json").read_text())
    assert stored["checkpoint"] == results["evaluated"] and stored["target_sensitivity"] == 0.9
    val = _predictions(root / "a", "validation")
    # The temperature and thresholds are those of the validation predictions.
    assert stored["temperature"] == pytest.approx(cal.fit_temperature(val.labels, val.probs), rel=1e-3)
    assert stored["nll_after"] <= stored["nll_before"] + 1e-9
    expected = cal.operating_thresholds(val.labels, val.probs, CLASS_NAMES, 0.9)
    assert_close(stored["operating_thresholds"], expected)
    for split in ("validation", "test"):
        report = results[split]
        assert set(report["calibration"]) == CALIBRATION_KEYS
        assert report["calibration"]["temperature"] == stored["temperature"]
        assert report["calibrated"]["accuracy"] == pytest.approx(report["accuracy"])  # scaling keeps argmax
        assert set(report["calibrated"]) == CALIBRATION_KEYS | {"accuracy"}
        ci = report["ci95"]
        assert ci["resamples"] == RESAMPLES and ci["seed"] == 0
        for metric in ("accuracy", "macro_f1", "roc_auc_ovr"):
            low, high = ci[metric]
            assert low <= report[metric] <= high
        assert list(report["operating_points"]) == list(CLASS_NAMES)
        assert (root / "a" / f"reliability_{split}.png").stat().st_size > 0
    # The validation operating points reach the target on validation by construction.
    for name, point in results["validation"]["operating_points"].items():
        assert point["sensitivity"] >= 0.9 and point["threshold"] == stored["operating_thresholds"][name]
    test = _predictions(root / "a", "test")
    points = cal.operating_points(test.labels, test.probs, CLASS_NAMES, stored["operating_thresholds"], 0.9)
    assert_close(results["test"]["operating_points"], points)


def test_reporting_fields_do_not_block_reusing_the_workdir(runs):
    from cxrjax.train import train_and_evaluate

    root, config = runs
    before = json.loads((root / "a" / "results.json").read_text())
    again = train_and_evaluate(config.replace(bootstrap_resamples=0, target_sensitivity=0.8), root / "a")
    assert again["test"]["accuracy"] == before["test"]["accuracy"]


def test_evaluate_reports_raw_and_calibrated_with_intervals(runs, capsys):
    from cxrjax.evaluate.__main__ import main

    root, _ = runs
    assert main(["--workdir", str(root / "a"), *EVAL]) == 0
    out = capsys.readouterr().out
    report = json.loads((root / "a" / "eval_cxr_phantoms_test.json").read_text())
    results = json.loads((root / "a" / "results.json").read_text())
    m = report["metrics"]
    assert report["calibration_source"]["source"] == "calibration.json"
    t = results["calibration"]["temperature"]
    assert m["calibration"]["temperature"] == t
    assert m["ci95"]["accuracy"] == results["test"]["ci95"]["accuracy"]  # same seed, resamples, predictions
    assert_close(m["operating_points"], results["test"]["operating_points"])
    probs = np.asarray(report["predictions"]["probs"])
    np.testing.assert_allclose(report["predictions"]["calibrated_probs"], cal.apply_temperature(probs, t), atol=1e-6)
    assert (root / "a" / report["plots"]["reliability"]).stat().st_size > 0
    low, high = m["ci95"]["accuracy"]
    assert f"accuracy {m['accuracy']:.3f} [{low:.3f}, {high:.3f}] (n=12: +-" in out
    assert "after temperature" in out and "operating points (90% sensitivity on validation)" in out


def test_evaluate_without_calibration_json_fits_on_validation_and_says_so(runs, capsys):
    from cxrjax.evaluate.__main__ import main

    root, _ = runs
    old = root / "old"
    if not old.exists():
        shutil.copytree(root / "a", old)
        (old / "calibration.json").unlink()
    assert main(["--workdir", str(old), *EVAL, "--bootstrap-resamples", "0"]) == 0
    out = capsys.readouterr().out
    report = json.loads((old / "eval_cxr_phantoms_test.json").read_text())
    source = report["calibration_source"]
    assert source["source"] == "validation split, fitted by evaluate"
    assert "calibration.json does not exist" in source["note"] and f"note: calibration: {source['note']}" in out
    stored = json.loads((root / "a" / "calibration.json").read_text())
    assert source["temperature"] == pytest.approx(stored["temperature"], rel=1e-3)
    assert report["metrics"]["ci95"] is None  # --bootstrap-resamples 0


def test_predict_prints_calibrated_or_raw_and_says_which(runs, tmp_path, capsys):
    from cxrjax.data import load
    from cxrjax.predict import main

    root, config = runs
    ds = load("cxr_phantoms", data_dir=config.data_dir, options=DATASET_OPTIONS)
    path = tmp_path / "x.png"
    Image.fromarray(ds.splits["test"][0]["image"][..., 0]).save(path)
    stored = json.loads((root / "a" / "calibration.json").read_text())
    capsys.readouterr()
    assert main(["--workdir", str(root / "a"), str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["probabilities"] == "calibrated" and printed["temperature"] == stored["temperature"]
    row = printed["predictions"][0]
    raw = np.asarray(list(row["raw_probabilities"].values()))
    calibrated = cal.apply_temperature(raw[None], stored["temperature"])[0]
    np.testing.assert_allclose(list(row["probabilities"].values()), calibrated, atol=1e-6)
    assert row["predicted_class"] == CLASS_NAMES[int(raw.argmax())]
    thresholds = stored["operating_thresholds"]
    assert row["screen_positive"] == {n: bool(p >= thresholds[n]) for n, p in row["raw_probabilities"].items()}
    assert main(["--workdir", str(root / "a"), str(path), "--json", "--raw"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["probabilities"] == "raw"
    assert printed["predictions"][0]["probabilities"] == printed["predictions"][0]["raw_probabilities"]
    assert main(["--workdir", str(root / "a"), str(path)]) == 0
    assert "(calibrated, temperature" in capsys.readouterr().out.splitlines()[0]


def test_compare_two_runs_paired(runs, capsys):
    from cxrjax.evaluate.__main__ import main

    root, _ = runs
    assert main(["--compare", str(root / "a"), str(root / "b"), "--batch-size", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((root / "a" / "compare_test_b.json").read_text())
    a = json.loads((root / "a" / "results.json").read_text())["test"]
    b = json.loads((root / "b" / "results.json").read_text())["test"]
    acc = report["accuracy"]
    assert (acc["a"], acc["b"]) == (pytest.approx(a["accuracy"]), pytest.approx(b["accuracy"]))
    assert acc["difference"] == pytest.approx(acc["a"] - acc["b"])
    assert acc["ci"][0] <= acc["difference"] <= acc["ci"][1]
    pa, pb = _predictions(root / "a", "test"), _predictions(root / "b", "test")
    right_a, right_b = pa.predictions == pa.labels, pb.predictions == pb.labels
    mc = report["mcnemar"]
    assert (mc["a_right_b_wrong"], mc["a_wrong_b_right"]) == (
        int(np.sum(right_a & ~right_b)),
        int(np.sum(~right_a & right_b)),
    )
    assert report["bootstrap"]["resamples"] == RESAMPLES and report["examples"] == 12
    assert "McNemar (exact)" in out and "A - B: accuracy" in out


def test_compare_refuses_runs_whose_splits_differ(runs, capsys):
    from cxrjax.evaluate.__main__ import main

    root, _ = runs
    other = root / "other_data"
    if not other.exists():
        shutil.copytree(root / "b", other)
        config = json.loads((other / "config.json").read_text())
        config["dataset_options"] = {**DATASET_OPTIONS, "num_test": 10}
        (other / "config.json").write_text(json.dumps(config))
    assert main(["--compare", str(root / "a"), str(other), "--batch-size", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after TFDS's preparation output
    assert err.startswith("error: ") and "different example ids" in err and "12 and 10 examples" in err
    assert not (root / "a" / "compare_test_other_data.json").exists()


def test_compare_command_line_mistakes_are_one_line(tmp_path, capsys):
    from cxrjax.evaluate.__main__ import main

    for argv in (["--compare", "a", "b", "--workdir", "c"], [], ["--compare", "a", "b", "--bootstrap-resamples", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "error:" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path / "nothing"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a cxrjax run folder" in err and len(err.strip().splitlines()) == 1
