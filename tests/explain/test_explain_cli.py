"""evaluate / predict / explain on a run trained in the test (tiny phantoms, one epoch).

One module-scoped run is trained once and shared. The checks: report schemas, class
order, probabilities summing to 1, evaluate == the training run's own test evaluation,
predict on files == evaluate on the same examples, a corrupt file among the inputs,
class-list mismatch, label remapping, ensembles, the explain grids.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrjax import inference as R
from cxrjax.data.phantoms import CLASS_NAMES
from cxrjax.evaluate.ensemble import average_probabilities, check_members_aligned
from tests.train.support import train_phantom_run

NUM_TEST = 12  # not a multiple of the eval batch: the last batch is padded
DATASET_OPTIONS = {"image_size": 32, "num_train": 32, "num_validation": 8, "num_test": NUM_TEST}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_phantom_run(tmp_path_factory.mktemp("explain_cli"), DATASET_OPTIONS)


@pytest.fixture(scope="module")
def evaluated(run_dir):
    from cxrjax.evaluate.__main__ import main

    assert main(["--workdir", str(run_dir), "--batch-size", "8", "--no-progress"]) == 0
    return json.loads((run_dir / "eval_cxr_phantoms_test.json").read_text())


def test_evaluate_report_schema_order_and_probabilities(run_dir, evaluated):
    report = evaluated
    assert report["class_names"] == list(CLASS_NAMES) == report["dataset_class_names"]
    assert report["dataset"] == "cxr_phantoms" and report["split"] == "test"
    m = report["metrics"]
    assert m["num_examples"] == NUM_TEST and m["class_names"] == list(CLASS_NAMES)
    assert list(m["per_class"]) == list(CLASS_NAMES)
    assert np.asarray(m["confusion_matrix"]).sum() == NUM_TEST
    preds = report["predictions"]
    probs = np.asarray(preds["probs"])
    assert probs.shape == (NUM_TEST, len(CLASS_NAMES)) and len(preds["file_name"]) == NUM_TEST
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(preds["predicted"], probs.argmax(1))
    assert m["accuracy"] == pytest.approx(np.mean(np.asarray(preds["predicted"]) == np.asarray(preds["label"])))
    # Labels in split order: phantoms are class-balanced, 3 per class here.
    assert np.bincount(preds["label"], minlength=4).tolist() == [3, 3, 3, 3]
    for name in report["plots"].values():
        assert (run_dir / name).stat().st_size > 0
    # Same numbers as the training run's own test evaluation of the same checkpoint.
    results = json.loads((run_dir / "results.json").read_text())
    assert m["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert m["confusion_matrix"] == results["test"]["confusion_matrix"]


def test_evaluate_reports_the_probes_on_phantoms(evaluated):
    probe = evaluated["lung_mask_probe"]
    for key in ("normal_accuracy", "lungs_only_accuracy", "lungs_blanked_accuracy", "chance_accuracy"):
        assert 0.0 <= probe[key] <= 1.0
    assert probe["normal_accuracy"] == pytest.approx(evaluated["metrics"]["accuracy"])
    assert probe["num_examples"] == NUM_TEST and "lungs blanked" in probe["verdict"]
    # the mask-free probe runs by default, on any dataset
    free = evaluated["mask_free_probe"]
    assert free["full"] == pytest.approx(evaluated["metrics"]["accuracy"])
    for key in ("center_blanked", "center_only", "border_only", "majority_rate"):
        assert 0.0 <= free[key] <= 1.0
    assert free["majority_rate"] == 0.25 and free["num_examples"] == NUM_TEST and free["verdict"]
    assert set(evaluated["pointing_game"]) == {"gradcam", "layercam"}
    for game in evaluated["pointing_game"].values():
        assert list(game["per_class"]) == list(CLASS_NAMES) and game["layer"] == "feat4"
        assert game["overall"]["n"] == NUM_TEST
        assert game["per_class"]["Normal"]["n_with_lesion"] == 0  # Normal phantoms have no lesion
        # phantoms: also scored against the (here not drawn) shortcut marker's position
        assert game["marker_drawn"] is False
        assert 0.0 <= game["overall"]["max_on_marker_rate"] <= game["overall"]["max_near_marker_rate"] <= 1.0
        assert 0.0 < game["overall"]["mean_marker_area"] < game["overall"]["mean_marker_near_area"] < 1.0


def write_test_images(run_dir, folder, count):
    from cxrjax.data import load

    ds = load("cxr_phantoms", data_dir=str(run_dir.parent / "data"), options=DATASET_OPTIONS)
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"test{i}.png"
        Image.fromarray(ds.splits["test"][i]["image"][..., 0]).save(path)
        paths.append(str(path))
    return paths


def test_predict_on_files_equals_evaluate_and_survives_bad_files(run_dir, evaluated, tmp_path, capsys):
    from cxrjax.predict import main

    good = write_test_images(run_dir, tmp_path / "files", 3)
    truncated = tmp_path / "files" / "truncated.png"
    truncated.write_bytes(Path(good[0]).read_bytes()[:60])
    notes = tmp_path / "files" / "notes.png"
    notes.write_text("not an image")
    inputs = [good[0], str(truncated), good[1], str(notes), good[2]]
    capsys.readouterr()
    rc = main(["--workdir", str(run_dir), *inputs, "--json", "--gradcam", str(tmp_path / "cams")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1  # some files failed, the rest were classified
    assert out["class_names"] == list(CLASS_NAMES)
    rows = out["predictions"]
    assert [r["file"] for r in rows] == inputs
    assert "error" in rows[1] and "truncated.png" in rows[1]["error"]
    assert "error" in rows[3] and "notes.png" in rows[3]["error"]
    expected = np.asarray(evaluated["predictions"]["probs"])
    for i, row in zip(range(3), [rows[0], rows[2], rows[4]]):
        assert list(row["probabilities"]) == list(CLASS_NAMES)
        probs = np.asarray(list(row["raw_probabilities"].values()))  # evaluate's "probs" are raw
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(probs, expected[i], rtol=1e-5, atol=1e-6)
        assert row["predicted_class"] == CLASS_NAMES[int(expected[i].argmax())]
        assert Image.open(row["gradcam"]).size == (20, 20)  # the model's input size


def test_predict_table_output(run_dir, tmp_path, capsys):
    from cxrjax.predict import main

    good = write_test_images(run_dir, tmp_path / "files", 1)
    capsys.readouterr()
    assert main(["--workdir", str(run_dir), good[0]]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:3] == ["file", "predicted", "p"] and "Viral Pneumonia" in header
    assert row.split()[0] == good[0]


def test_class_list_mismatch_and_remapping(run_dir, evaluated):
    from cxrjax.data import load
    from cxrjax.evaluate.report import EvalOptions, evaluate_member
    from cxrjax.inference import load_run

    run = load_run(run_dir, checkpoint="best")
    ds = load("cxr_phantoms", data_dir=str(run_dir.parent / "data"), options=DATASET_OPTIONS)
    request = {"name": "cxr_phantoms", "options": DATASET_OPTIONS}
    options = EvalOptions(workdirs=(str(run_dir),), batch_size=8, probes=False, pointing_game=False, progress=False)
    other = R.DatasetView("other", ["cat", "dog", "Normal", "COVID"], {"test": ds.splits["test"]})
    with pytest.raises(R.ClassListMismatchError) as error:
        evaluate_member(run, other, request, options, write=False)
    assert "['cat', 'dog', 'Normal', 'COVID']" in str(error.value)
    assert str(list(CLASS_NAMES)) in str(error.value)

    # Same classes in another order: labels are remapped into the model's order.
    order = [2, 0, 3, 1]  # dataset id -> model id is the inverse of this listing
    names = [CLASS_NAMES[k] for k in order]

    class Relabelled:
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return len(self.src)

        def __getitem__(self, i):
            rec = dict(self.src[i])
            rec["label"] = order.index(int(rec["label"]))
            return rec

    permuted = R.DatasetView("permuted", names, {"test": Relabelled(ds.splits["test"])})
    member = evaluate_member(run, permuted, request, options, write=False)
    assert member.report["metrics"]["confusion_matrix"] == evaluated["metrics"]["confusion_matrix"]
    np.testing.assert_array_equal(member.predictions.labels, evaluated["predictions"]["label"])


def test_ensemble_of_runs(run_dir, evaluated, tmp_path):
    from cxrjax.evaluate.__main__ import main

    assert (
        main(
            [
                "--workdir",
                str(run_dir),
                "--workdir",
                str(run_dir),
                "--batch-size",
                "8",
                "--no-pointing-game",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "ensemble_cxr_phantoms_test.json").read_text())
    assert len(report["members"]) == 2 and report["class_names"] == list(CLASS_NAMES)
    # Two copies of one run: the average is the run itself.
    np.testing.assert_allclose(report["predictions"]["probs"], evaluated["predictions"]["probs"], atol=1e-6)
    assert report["ensemble"]["accuracy"] == pytest.approx(evaluated["metrics"]["accuracy"])
    assert report["members"][0]["accuracy"] == pytest.approx(evaluated["metrics"]["accuracy"])
    assert report["lung_mask_probe"]["lungs_blanked_accuracy"] == pytest.approx(
        evaluated["lung_mask_probe"]["lungs_blanked_accuracy"]
    )


def test_average_probabilities_by_hand():
    a = np.array([[0.8, 0.2], [0.4, 0.6]])
    b = np.array([[0.2, 0.8], [0.6, 0.4]])
    np.testing.assert_allclose(average_probabilities([a, b]), [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(average_probabilities([a, b], weights=[3, 1]), [[0.65, 0.35], [0.45, 0.55]])
    with pytest.raises(ValueError, match="same dataset and split"):
        check_members_aligned([np.array([0, 1]), np.array([1, 0])], ["r1", "r2"])


def test_explain_writes_grids_and_pointing_game(run_dir, evaluated, tmp_path):
    from cxrjax.explain.__main__ import main

    assert main(["--workdir", str(run_dir), "--out", str(tmp_path), "--n", "2", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "explain.json").read_text())
    assert list(summary["grids"]) == list(CLASS_NAMES)
    labels = np.asarray(evaluated["predictions"]["label"])
    predicted = np.asarray(evaluated["predictions"]["predicted"])
    for k, name in enumerate(CLASS_NAMES):
        assert Image.open(tmp_path / summary["grids"][name]).size[0] > 100
        shown = summary["examples"][name]
        correct = np.flatnonzero((labels == k) & (predicted == k)).tolist()
        wrong = np.flatnonzero((labels == k) & (predicted != k)).tolist()
        assert shown == {"correct": correct[:2], "wrong": wrong[:2]}
    games = json.loads((tmp_path / "pointing_game.json").read_text())
    assert list(games) == ["gradcam", "layercam"]  # the chosen method first, then the other
    for game in games.values():
        assert list(game["per_class"]) == list(CLASS_NAMES) and "max_on_marker_rate" in game["overall"]


def test_explain_activations_writes_a_grid_per_conv_stage(run_dir, evaluated, tmp_path, capsys):
    from cxrjax.explain.__main__ import main

    common = ["--workdir", str(run_dir), "--activations", "--examples", "3", "--feature-channels", "2"]
    assert main([*common, "--no-progress", "--batch-size", "8"]) == 0
    out = run_dir / "activations"  # the default folder
    summary = json.loads((out / "activations.json").read_text())
    assert summary["examples"] == [0, 1, 2] and summary["class_names"] == list(CLASS_NAMES)
    assert list(summary["layers"]) == ["feat1", "feat2", "feat3", "feat4"]  # s4_exp4's conv stages
    features = [3, 4, 5, 6]  # the run's model_options
    for (name, layer), width in zip(summary["layers"].items(), features):
        assert layer["file"] == f"activations_{name}.png" and layer["channels_shown"] == 2
        assert layer["shape"][-1] == width and layer["min"] >= 0.0  # post-ReLU
        assert Image.open(out / layer["file"]).size[0] > 100
    assert "feat4" in capsys.readouterr().out
    # --layer: only that stage, into --out
    assert main([*common, "--layer", "feat2", "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["activations.json", "activations_feat2.png"]
    # an unknown layer is a user error: one error: line naming the stages
    capsys.readouterr()
    assert main([*common, "--layer", "conv9", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "feat1" in err and "Traceback" not in err
    # the Grad-CAM grids still need --out
    with pytest.raises(SystemExit):
        main(["--workdir", str(run_dir)])


def test_tta_beside_the_plain_numbers_in_evaluate_and_predict(run_dir, evaluated, tmp_path, capsys):
    from cxrjax.data import load
    from cxrjax.evaluate.__main__ import main as evaluate_main
    from cxrjax.predict import main as predict_main
    from cxrjax.train.evaluation import predict_split
    from cxrjax.train.tta import TTAPredictor

    run = R.load_run(run_dir)
    assert run.weights == "live" and run.config.tta == "none"  # trained without EMA or TTA
    ds = load("cxr_phantoms", data_dir=run.config.data_dir, options=DATASET_OPTIONS)
    expected = predict_split(TTAPredictor(run, "flip"), ds, "test", 8)
    capsys.readouterr()
    assert evaluate_main(["--workdir", str(run_dir), "--batch-size", "8", "--no-progress", "--tta", "flip"]) == 0
    assert "test-time augmentation (flip: mean of 2 views" in capsys.readouterr().out
    report = json.loads((run_dir / "eval_cxr_phantoms_test.json").read_text())
    assert report["weights"] == "live"
    assert report["metrics"]["accuracy"] == evaluated["metrics"]["accuracy"]  # the plain numbers unchanged
    tta = report["metrics"]["tta"]
    assert tta["mode"] == "flip" and tta["views"] == ["identity", "hflip"]
    np.testing.assert_allclose(report["predictions"]["tta_probs"], expected.probs, rtol=1e-5, atol=1e-6)
    assert tta["accuracy"] == pytest.approx(float((expected.predictions == expected.labels).mean()))

    good = write_test_images(run_dir, tmp_path / "files", 2)
    assert predict_main(["--workdir", str(run_dir), *good, "--json", "--tta", "flip"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tta"]["mode"] == "flip" and out["weights"] == "live"
    for i, row in enumerate(out["predictions"]):
        np.testing.assert_allclose(list(row["tta_probabilities"].values()), expected.probs[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            list(row["raw_probabilities"].values()), evaluated["predictions"]["probs"][i], rtol=1e-5, atol=1e-6
        )
    # A run without a moving average has no EMA weights to load: one error line.
    assert predict_main(["--workdir", str(run_dir), good[0], "--weights", "ema"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no moving average" in err and len(err.strip().splitlines()) == 1


def test_compare_refuses_tta_and_weights(capsys):
    from cxrjax.evaluate.__main__ import parse_args

    for extra in (["--tta", "flip"], ["--weights", "live"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--compare", "a", "b", *extra])
        assert exit_info.value.code == 2
        assert "--tta and --weights apply to --workdir evaluation" in capsys.readouterr().err
