"""`python -m experiments.ablation_bn_dropout` end to end with the real training engine on
tiny phantoms: 2 cells x 2 seeds x 1 epoch writes every file; a second invocation trains
nothing."""

import csv
import json

import pytest

from experiments import ablation_bn_dropout as ablation

CELLS = ("exp2_bn-all_do-0_es-off", "exp2_bn-all_do-0_es-on")  # one network: compiled once


def tiny_args(tmp):
    return [
        "--workdir",
        str(tmp / "exp"),
        "--data-dir",
        str(tmp / "data"),
        "--compilation-cache",
        "",
        "--cells",
        ",".join(CELLS),
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--no-progress",
        "--dataset-option",
        "num_train=32",
        "--dataset-option",
        "num_validation=8",
        "--dataset-option",
        "num_test=8",
        "--dataset-option",
        "image_size=20",
        "--image-size",
        "20",
        "--global-batch-size",
        "8",
        "--jobs",
        "1",
        "--model-option",
        "features=[3,4,5,6]",
        "--model-option",
        "head_width=7",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    assert ablation.main(tiny_args(tmp)) == 0
    return tmp


def test_every_file_is_written(finished):
    exp = finished / "exp"
    for name in ("results.csv", "results.md", "summary.md", "accuracy_bars.png", "learning_curves.png"):
        assert (exp / name).stat().st_size > 0, name
    rows = list(csv.DictReader((exp / "results.csv").open()))
    assert [(r["cell"], r["seed"]) for r in rows] == [(c, s) for c in CELLS for s in ("0", "1")]
    for row in rows:
        assert row["status"] == "ok"
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0 and row["epochs_run"] == "1"
        run = exp / "runs" / row["cell"] / f"seed_{row['seed']}"
        results = json.loads((run / "results.json").read_text())
        assert results["test"]["accuracy"] == float(row["test_accuracy"])
        assert (run / "metrics.jsonl").exists() and float(row["train_val_gap"]) == float(row["train_val_gap"])
        config = json.loads((run / "config.json").read_text())
        assert config["seed"] == int(row["seed"]) and config["model_options"]["batchnorm"] == "all"
        assert config["early_stopping_patience"] == (ablation.DEFAULTS.patience if row["cell"].endswith("on") else None)
    md = (exp / "results.md").read_text()
    assert "Exp4: BN all" in md and "Exp5: BN all, ES" in md and "83.75 (Exp4)" in md
    assert "early_stopping: off -> on" in md and "| paired |" in md  # same network: paired test


def test_second_invocation_trains_nothing(finished, capsys):
    calls = []

    def must_not_train(config, workdir):
        calls.append(workdir)
        raise AssertionError("a finished run was trained again")

    assert ablation.main(tiny_args(finished), run_fn=must_not_train) == 0
    assert calls == []
    out = capsys.readouterr().out
    assert "0 trained now, 4 already finished" in out
    assert "results.csv" in out and "results.md" in out and "learning_curves.png" in out
