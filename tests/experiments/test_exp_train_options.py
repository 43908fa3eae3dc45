"""experiments.train_options: the experiments' training flags are the train CLI's, built
from the same TrainConfig field declarations (same spelling, type, choices), minus the
fields an experiment decides itself; the old --batch-size / --set batch_size spellings
still work with a deprecation message."""

import argparse

from cxrjax.train.cli import build_parser as train_parser
from experiments import reproduce_s3, train_options


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_experiment_flags_are_the_train_clis():
    train, exp = _options(train_parser()), _options(reproduce_s3.build_parser())
    config_flags = {
        s: a for s, a in train.items() if a.dest not in ("help", "workdir", "preset", "list_presets", "print_config")
    }
    shared = set(config_flags) & set(exp)
    for spelling in shared - {
        "--dataset",
        "--data-dir",
        "--manual-dir",
        "--compilation-cache",
        "--no-progress",
        "--progress",
    }:
        a, b = config_flags[spelling], exp[spelling]
        assert (a.dest, a.type, a.choices) == (b.dest, b.type, b.choices), spelling
    # Every flagged field but the experiment's own is passed through.
    missing = set(config_flags) - set(exp)
    assert {config_flags[s].dest for s in missing} <= set(train_options.EXPERIMENT_FIELDS), missing
    for spelling in (
        "--epochs",
        "--lr",
        "--per-device-batch-size",
        "--batch-size",
        "--normalization",
        "--num-workers",
        "--grad-clip-norm",
        "--dtype",
    ):
        assert spelling in exp, spelling


def test_experiment_changes_and_the_deprecated_batch_size(capsys):
    parser = reproduce_s3.build_parser()
    args = parser.parse_args(["--batch-size", "4", "--lr", "0.01", "--set", "label_smoothing=0.1"])
    assert train_options.train_changes(args) == {"per_device_batch_size": 4, "lr": 0.01, "label_smoothing": 0.1}
    assert "--batch-size is deprecated; use --per-device-batch-size" in capsys.readouterr().err
    args = parser.parse_args(["--set", "batch_size=8"])
    assert train_options.train_changes(args) == {"per_device_batch_size": 8}
    assert "use --set per_device_batch_size=..." in capsys.readouterr().err
    assert train_options.train_changes(parser.parse_args([])) == {}


def test_an_experiment_reports_a_deprecated_spelling_once(tmp_path, capsys):
    seen = []

    def fake(config, workdir):
        seen.append(config.per_device_batch_size)
        return {"test": {"accuracy": 0.5}}

    argv = [
        "--workdir",
        str(tmp_path / "s3"),
        "--seeds",
        "1",
        "--no-progress",
        "--compilation-cache",
        "",
        "--jobs",
        "1",
        "--set",
        "batch_size=5",
    ]
    assert reproduce_s3.main(argv, run_fn=fake) == 0
    assert seen == [5, 5, 5]  # every cell got it, under its new name
    assert capsys.readouterr().err.count("--set batch_size=... is deprecated") == 1
