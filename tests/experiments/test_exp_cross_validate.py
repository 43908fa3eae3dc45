"""`python -m experiments.cross_validate` end to end on tiny phantoms (16 px, 2 folds, 1
epoch, two recipes): every file, pooled predictions that match the runs' own test
metrics, the recorded recipe, a rerun that trains nothing, a refused change of folds,
and an interrupted CV that resumes to the same numbers."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from cxrjax.reporting.stats import mean_ci
from cxrjax.train import recipes
from experiments import cross_validate as cv
from tests.experiments.support import tiny_args


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    assert cv.main(tiny_args(tmp)) == 0
    return tmp


def _results(tmp, workdir="exp"):
    return json.loads((tmp / workdir / "results.json").read_text())


def test_every_file_is_written_and_every_example_is_tested_once(finished):
    exp = finished / "exp"
    for name in ("folds.json", "results.csv", "results.md", "results.json"):
        assert (exp / name).is_file(), name
    plan = json.loads((exp / "folds.json").read_text())
    assert plan["k"] == 2 and plan["examples"] == 40 and plan["validation_fraction"] == pytest.approx(0.2)
    tested = sorted(f for fold in plan["folds"] for f in fold["test"])
    assert len(tested) == len(set(tested)) == 40
    results = _results(finished)
    assert [c["name"] for c in results["cells"]] == ["s4_exp2__none", "s4_exp2__cxr"]
    with (exp / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["fold"] for r in rows} == {"0", "1"}
    text = (exp / "results.md").read_text()
    assert "## Comparison" in text and "| s4_exp2 |" in text and "## s4_exp2__cxr: per fold" in text


def test_pooled_predictions_match_the_runs_and_the_statistics_are_the_folds(finished):
    exp = finished / "exp"
    for cell in _results(finished)["cells"]:
        correct = total = 0
        for run in cell["runs"]:
            run_dir = exp / "runs" / f"{cell['name']}__fold{run['fold']}" / f"seed_{run['seed']}"
            preds = json.loads((run_dir / cv.PREDICTIONS_FILE).read_text())
            probs = np.asarray(preds["probabilities"])
            hits = int((probs.argmax(1) == np.asarray(preds["labels"])).sum())
            assert hits / len(preds["labels"]) == pytest.approx(run["accuracy"])  # = results.json test accuracy
            plan = json.loads((exp / "folds.json").read_text())
            assert preds["file_names"] == plan["folds"][run["fold"]]["test"]
            correct, total = correct + hits, total + len(preds["labels"])
        pooled = cell["pooled"]["per_seed"][0]
        assert pooled["complete"] and pooled["n"] == total == 40
        assert pooled["metrics"]["accuracy"]["value"] == pytest.approx(correct / total)
        acc = pooled["metrics"]["accuracy"]
        assert acc["low"] <= acc["value"] <= acc["high"]  # the stratified bootstrap interval
        folds = [r["macro_f1"] for r in sorted(cell["runs"], key=lambda r: r["fold"])]
        ci = mean_ci(folds)
        over = cell["over_folds"]["macro_f1"]
        assert over["per_fold"] == pytest.approx(folds)
        assert (over["mean"], over["n"]) == (pytest.approx(ci.mean), 2)
        assert over["low"] == pytest.approx(ci.low) and over["high"] == pytest.approx(ci.high)


def test_each_recipe_is_paired_with_the_models_first_by_fold_and_seed(finished):
    none, cxr = _results(finished)["cells"]
    assert "versus" not in none
    by_run = {(r["fold"], r["seed"]): r for r in none["runs"]}
    for metric in ("accuracy", "center_only"):
        diffs = [r[metric] - by_run[(r["fold"], r["seed"])][metric] for r in cxr["runs"]]
        versus = cxr["versus"][metric]
        assert versus["reference"] == "s4_exp2__none" and versus["n_pairs"] == 2
        assert versus["difference"] == pytest.approx(np.mean(diffs))
    text = (finished / "exp" / "results.md").read_text()
    assert "## Paired differences (each recipe minus the model's first)" in text
    row = next(line for line in text.splitlines() if line.startswith("| s4_exp2__cxr | s4_exp2__none |"))
    assert f"{100 * cxr['versus']['accuracy']['difference']:+.1f}" in row and "(2 pairs)" in row


def test_a_report_of_fewer_cells_names_the_cells_it_leaves_out(finished, tmp_path, capsys):
    shutil.copytree(finished / "exp", tmp_path / "exp")
    capsys.readouterr()
    argv = tiny_args(tmp_path, recipe="none")
    argv[argv.index("--data-dir") + 1] = str(finished / "data")
    assert cv.main(argv) == 0
    captured = capsys.readouterr()
    assert "(0 trained now, 2 already finished)" in captured.out
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "reported s4_exp2__cxr too" in notes[0]
    assert [c["name"] for c in _results(tmp_path)["cells"]] == ["s4_exp2__none"]
    assert cv.main(argv) == 0 and "note:" not in capsys.readouterr().err  # the same cells again: no note


def test_the_recipe_is_resolved_into_each_runs_config_and_explicit_options_win(finished):
    runs = finished / "exp" / "runs"
    with_recipe = json.loads((runs / "s4_exp2__cxr__fold0" / "seed_0" / "config.json").read_text())
    without = json.loads((runs / "s4_exp2__none__fold0" / "seed_0" / "config.json").read_text())
    assert with_recipe["recipe"] == "cxr" and without["recipe"] is None
    assert with_recipe["epochs"] == without["epochs"] == 1  # --epochs beats the recipe's 120
    for field in ("optimizer", "schedule", "monitor", "label_smoothing", "class_weights", "normalization"):
        assert with_recipe[field] == recipes.RECIPES["cxr"][field], field
    assert without["optimizer"] == "adam" and without["normalization"] != "dataset"
    info = json.loads((runs / "s4_exp2__cxr__fold1" / "seed_0" / "results.json").read_text())["dataset_info"]
    assert info["split_sizes"] == {"train": 16, "validation": 4, "test": 20}
    assert info["fingerprint"]["folds"]["fold"] == 1


def test_second_invocation_trains_nothing_and_writes_the_same_results(finished, capsys):
    before = _results(finished)
    assert cv.main(tiny_args(finished)) == 0
    assert "(0 trained now, 4 already finished)" in capsys.readouterr().out
    assert _results(finished) == before


def test_other_folds_in_the_same_workdir_are_refused(finished, capsys):
    assert cv.main(tiny_args(finished) + ["--fold-seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "folds.json" in err[0] and "fold_seed" in err[0]
    assert cv.main(tiny_args(finished) + ["--recipe", "fast"]) == 2
    assert "known recipes: cxr" in capsys.readouterr().err


def test_interrupted_cross_validation_resumes_to_the_same_numbers(finished, capsys):
    from cxrjax.train import train_and_evaluate

    calls = []

    def interrupt_second(config, workdir, dataset):
        calls.append(workdir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_and_evaluate(config, workdir, dataset=dataset)

    with pytest.raises(KeyboardInterrupt):
        cv.main(tiny_args(finished, "resumed", recipe="none"), train_fn=interrupt_second)
    first = finished / "resumed" / "runs" / "s4_exp2__none__fold0" / "seed_0" / "results.json"
    assert first.is_file() and not (finished / "resumed" / "results.json").exists()
    stamp = os.stat(first).st_mtime_ns
    capsys.readouterr()
    assert cv.main(tiny_args(finished, "resumed", recipe="none")) == 0
    assert "(1 trained now, 1 already finished)" in capsys.readouterr().out
    assert os.stat(first).st_mtime_ns == stamp  # the finished run was not trained again
    resumed = _results(finished, "resumed")["cells"][0]
    uninterrupted = _results(finished)["cells"][0]
    assert resumed["name"] == uninterrupted["name"] == "s4_exp2__none"
    assert resumed["runs"] == uninterrupted["runs"]
    assert resumed["pooled"] == uninterrupted["pooled"]


def test_cells_are_models_x_recipes_and_unknown_models_are_one_error_line(capsys, tmp_path):
    assert cv.main(["--model", "lenet5,s4_exp4", "--model", "lenet5", "--recipe", "cxr,none", "--list-cells"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert names == ["lenet5__cxr", "lenet5__none", "s4_exp4__cxr", "s4_exp4__none"]
    assert cv.main(["--model", "resnet9000", "--workdir", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'resnet9000'" in err[0] and "lenet5" in err[0]
    assert not (tmp_path / "x").exists()


def _accuracy(probs, labels):
    return float(np.mean(np.asarray(probs).argmax(1) == np.asarray(labels)))


def test_mask_free_probe_is_stored_per_run_and_reported_beside_accuracy(finished):
    from cxrjax.explain import mask_free

    exp = finished / "exp"
    results = _results(finished)
    assert results["mask_free_probe"] == {"thorax_box": list(mask_free.DEFAULT_THORAX_BOX), "border": 0.08}
    for cell in results["cells"]:
        pooled_labels, pooled_full, pooled_masked = [], [], {m: [] for m in cv.PROBE_MODES}
        for run in cell["runs"]:
            run_dir = exp / "runs" / f"{cell['name']}__fold{run['fold']}" / f"seed_{run['seed']}"
            preds = json.loads((run_dir / cv.PREDICTIONS_FILE).read_text())
            probe = preds["mask_free_probe"]
            assert probe["thorax_box"] == list(mask_free.DEFAULT_THORAX_BOX) and probe["border"] == 0.08
            labels = preds["labels"]
            for mode in cv.PROBE_MODES:
                probs = np.asarray(probe["probabilities"][mode])
                assert probs.shape == (len(labels), len(preds["class_names"])) and np.allclose(
                    probs.sum(1), 1.0, atol=1e-5
                )
                # per run: the stored probabilities' accuracy, = the probe's own report (another code path)
                assert run[mode] == pytest.approx(_accuracy(probs, labels))
                assert probe["report"][mode] == pytest.approx(run[mode])
                pooled_masked[mode].append(probs)
            assert probe["report"]["full"] == pytest.approx(run["accuracy"])
            assert run[cv.THORAX_GAP] == pytest.approx(run[mask_free.CENTER_ONLY] - run["accuracy"])
            pooled_labels += labels
            pooled_full.append(np.asarray(preds["probabilities"]))
        metrics = cell["pooled"]["per_seed"][0]["metrics"]
        full = _accuracy(np.concatenate(pooled_full), pooled_labels)
        for mode in cv.PROBE_MODES:
            m = metrics[mode]
            assert m["value"] == pytest.approx(_accuracy(np.concatenate(pooled_masked[mode]), pooled_labels))
            assert m["low"] <= m["value"] <= m["high"]
        gap = metrics[cv.THORAX_GAP]
        assert gap["value"] == pytest.approx(metrics[mask_free.CENTER_ONLY]["value"] - full)
        assert gap["low"] <= gap["value"] <= gap["high"]
        per_fold = [r[mask_free.CENTER_ONLY] for r in sorted(cell["runs"], key=lambda r: r["fold"])]
        assert cell["over_folds"][mask_free.CENTER_ONLY]["per_fold"] == pytest.approx(per_fold)
    text = (exp / "results.md").read_text()
    assert "## Mask-free probe (pooled test predictions)" in text and "thorax only - full (points)" in text
    assert "## Comparison (mask-free probe, pooled" in text
    with (exp / "results.csv").open() as f:
        row = next(csv.DictReader(f))
    assert float(row["center_only"]) == pytest.approx(results["cells"][0]["runs"][0]["center_only"])


def test_probe_can_be_left_out_and_another_region_replaces_the_stored_one(finished, tmp_path, capsys):
    import shutil

    shutil.copytree(finished / "exp", tmp_path / "copy")
    args = tiny_args(finished, "exp")
    args[args.index("--workdir") + 1] = str(tmp_path / "copy")
    assert cv.main(args + ["--no-mask-free-probe"]) == 0
    assert "(0 trained now, 4 already finished)" in capsys.readouterr().out
    results = json.loads((tmp_path / "copy" / "results.json").read_text())
    assert results["mask_free_probe"] is None
    assert all("center_only" not in c["over_folds"] and "center_only" not in c["runs"][0] for c in results["cells"])
    assert "Mask-free probe" not in (tmp_path / "copy" / "results.md").read_text()
    assert cv.main(args + ["--thorax-box", "0.2,0.8,0.25,0.75", "--border", "0.1"]) == 0
    captured = capsys.readouterr()
    assert "(0 trained now, 4 already finished)" in captured.out and captured.err.count("replaced by thorax box") == 4
    results = json.loads((tmp_path / "copy" / "results.json").read_text())
    assert results["mask_free_probe"] == {"thorax_box": [0.2, 0.8, 0.25, 0.75], "border": 0.1}
    preds = json.loads(
        (tmp_path / "copy" / "runs" / "s4_exp2__none__fold0" / "seed_0" / cv.PREDICTIONS_FILE).read_text()
    )
    assert preds["mask_free_probe"]["thorax_box"] == [0.2, 0.8, 0.25, 0.75]
    assert preds["mask_free_probe"]["report"]["thorax_box"] == {"top": 0.2, "bottom": 0.8, "left": 0.25, "right": 0.75}
    run = results["cells"][0]["runs"][0]
    assert run["center_only"] == pytest.approx(
        _accuracy(preds["mask_free_probe"]["probabilities"]["center_only"], preds["labels"])
    )
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses a box with top > bottom
        cv.main(args + ["--thorax-box", "0.5,0.2,0,1"])
    assert exit_info.value.code == 2
    assert "top < bottom" in capsys.readouterr().err


def test_recipe_expressions_are_cells(capsys):
    assert cv.main(["--model", "lenet5", "--recipe", "cxr-label_smoothing,none+augment,none", "--list-cells"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert names == ["lenet5__cxr-label_smoothing", "lenet5__none+augment", "lenet5__none"]
    assert cv.main(["--model", "lenet5", "--recipe", "cxr-foo", "--list-cells"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown ingredient 'foo'" in err[0] and "label_smoothing" in err[0]


def test_tta_is_reported_beside_the_plain_metrics_paired_per_fold(finished, tmp_path):
    """--tta shift: each run's TTA metrics come from its own results.json (the trainer's
    report["tta"]); TTA - plain is per run; the mean over folds is of the per-fold values.
    Without --tta (``finished``) there is no TTA section and the csv's TTA cells are empty."""
    args = tiny_args(tmp_path, "tta", recipe="none") + ["--tta", "shift", "--no-mask-free-probe"]
    assert cv.main(args) == 0
    results = json.loads((tmp_path / "tta" / "results.json").read_text())
    (cell,) = results["cells"]
    assert cell["tta"] == "shift" and len(cell["runs"]) == 2
    for run in cell["runs"]:
        run_dir = tmp_path / "tta" / "runs" / f"{cell['name']}__fold{run['fold']}" / f"seed_{run['seed']}"
        tta = json.loads((run_dir / "results.json").read_text())["test"]["tta"]
        assert tta["mode"] == run["tta_mode"] == "shift" and len(tta["views"]) == 5
        assert (run["tta_accuracy"], run["tta_macro_f1"], run["tta_roc_auc"]) == (
            tta["accuracy"],
            tta["macro_f1"],
            tta["roc_auc_ovr"],
        )
        assert run[cv.TTA_GAP] == pytest.approx(run["tta_accuracy"] - run["accuracy"])
    runs = sorted(cell["runs"], key=lambda r: r["fold"])
    for metric in cv.TTA_METRICS:
        assert cell["over_folds"][metric]["per_fold"] == pytest.approx([r[metric] for r in runs])
        assert cell["over_folds"][metric]["mean"] == pytest.approx(mean_ci([r[metric] for r in runs]).mean)
    text = (tmp_path / "tta" / "results.md").read_text()
    assert "## Test-time augmentation (beside the plain evaluation)" in text and "TTA accuracy %" in text
    with (tmp_path / "tta" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["tta_mode"] for r in rows] == ["shift", "shift"]
    assert float(rows[0]["tta_accuracy"]) == pytest.approx(runs[0]["tta_accuracy"])

    plain = _results(finished)
    assert all(c["tta"] is None and cv.TTA_GAP not in c["over_folds"] for c in plain["cells"])
    assert "Test-time augmentation" not in (finished / "exp" / "results.md").read_text()
    with (finished / "exp" / "results.csv").open() as f:
        assert {r["tta_accuracy"] for r in csv.DictReader(f)} == {""}


def test_cells_with_the_same_settings_are_found_across_models_and_recipes():
    # S0's presets never flip, so cxr-no_hflip is cxr for s0_c; S3's LeNet-5 flips. s0_a is
    # s0_c's network with the same preset settings, under any recipe.
    args = cv.build_parser().parse_args(["--model", "s0_c,s3_lenet5,s0_a", "--recipe", "none,cxr,cxr-no_hflip"])
    cells = cv.cells_of(args)
    repeats = {c.name: t.name for c, t in cv.repeated_cells(args, cells, cv.experiment.user_changes(args)).items()}
    assert repeats == {
        "s0_c__cxr-no_hflip": "s0_c__cxr",
        "s0_a__none": "s0_c__none",
        "s0_a__cxr": "s0_c__cxr",
        "s0_a__cxr-no_hflip": "s0_c__cxr",
    }


def test_cells_with_the_same_settings_are_trained_once_and_reported_under_both_names(tmp_path, capsys):
    from cxrjax.train import train_and_evaluate

    trained = []

    def counting(config, workdir, dataset):
        trained.append(os.path.basename(os.path.dirname(workdir)))
        return train_and_evaluate(config, workdir, dataset=dataset)

    # s4_exp5 is s4_exp4's network with S4's early stopping, which cxr replaces by its own.
    argv = tiny_args(tmp_path, "twins", recipe="cxr")
    argv[argv.index("s4_exp2")] = "s4_exp4,s4_exp5"
    assert cv.main(argv, train_fn=counting) == 0
    assert sorted(trained) == ["s4_exp4__cxr__fold0", "s4_exp4__cxr__fold1"]
    phrase = cv.repeat_phrase(cv.CvCell("s4_exp5", "cxr"), cv.CvCell("s4_exp4", "cxr"))
    captured = capsys.readouterr()
    assert [x for x in captured.err.splitlines() if x.startswith("note:")] == [f"note: {phrase}"]
    assert "2 runs (2 trained now, 0 already finished)" in captured.out
    results = _results(tmp_path, "twins")
    cells = {c["name"]: c for c in results["cells"]}
    assert list(cells) == ["s4_exp4__cxr", "s4_exp5__cxr"] and len(cells["s4_exp5__cxr"]["runs"]) == 2
    assert cells["s4_exp5__cxr"]["runs"] == cells["s4_exp4__cxr"]["runs"]
    assert cells["s4_exp5__cxr"]["pooled"] == cells["s4_exp4__cxr"]["pooled"]
    assert results["same_runs"] == {"s4_exp5__cxr": "s4_exp4__cxr"}
    assert phrase in (tmp_path / "twins" / "results.md").read_text()
    assert not (tmp_path / "twins" / "runs" / "s4_exp5__cxr__fold0").exists()
    assert cv.main(argv, train_fn=counting) == 0 and len(trained) == 2
    assert "2 runs (0 trained now, 2 already finished)" in capsys.readouterr().out


def test_the_users_options_are_read_once_so_a_deprecated_spelling_warns_once(tmp_path, capsys):
    argv = ["--model", "s0_c", "--recipe", "cxr,cxr-no_hflip", "--set", "batch_size=16", "--dataset", "image_folder"]
    argv += ["--manual-dir", str(tmp_path / "missing"), "--data-dir", str(tmp_path), "--workdir", str(tmp_path / "x")]
    assert cv.main(argv) == 2  # prepare reads the options too, then fails on the missing folder
    err = capsys.readouterr().err
    assert err.count("warning: --set batch_size=... is deprecated") == 1 and "error:" in err
