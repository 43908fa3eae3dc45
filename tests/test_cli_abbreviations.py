"""No command line accepts an abbreviated long option.

argparse takes a unique prefix of a long option by default, so ``--border 0.1`` would
set ``--border-erase`` without a word; a later flag sharing the prefix would then change
what an old command means. Every parser is built with ``allow_abbrev=False``: checked on
the source (every ``ArgumentParser(...)`` and subcommand ``add_parser(...)`` call) and by
running the train CLI and an experiment with an abbreviation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cxrjax", "experiments", "benchmarks")


def parser_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, refuses abbreviations) of every ``ArgumentParser(...)`` / ``.add_parser(...)``
    call in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name not in ("ArgumentParser", "add_parser"):
            continue
        refuses = any(
            k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in node.keywords
        )
        found.append((node.lineno, refuses))
    return found


def test_parser_calls_finds_both_kinds(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import argparse\n"
        "p = argparse.ArgumentParser(prog='x')\n"
        "s = p.add_subparsers().add_parser('a', allow_abbrev=False)\n"
        "q = ArgumentParser(allow_abbrev=True)\n"
    )
    assert parser_calls(source) == [(2, False), (3, True), (4, False)]


def test_every_parser_refuses_abbreviations():
    calls = {
        f"{path.relative_to(ROOT)}:{line}": refuses
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, refuses in parser_calls(path)
    }
    # The walk sees the parsers (train, data + its subcommands, models, run_parser,
    # experiments, benchmarks), so an empty result cannot pass.
    files = {key.split(":")[0] for key in calls}
    assert {"cxrjax/train/cli.py", "cxrjax/inference.py", "experiments/experiment.py"} <= files
    assert len(calls) >= 15
    allowing = sorted(key for key, refuses in calls.items() if not refuses)
    assert not allowing, f"argparse parsers without allow_abbrev=False: {allowing}"


def test_train_cli_refuses_an_abbreviated_flag(capsys):
    from cxrjax.train.cli import build_parser, main

    assert build_parser().parse_args(["--border-erase", "0.1"]).border_erase == 0.1
    with pytest.raises(SystemExit) as exit_:
        main(["--border", "0.1", "--print-config"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --border 0.1" in capsys.readouterr().err


def test_an_experiment_refuses_an_abbreviated_flag(capsys):
    from experiments import reproduce_s3

    assert reproduce_s3.build_parser().parse_args(["--epochs", "1"]).epochs == 1
    with pytest.raises(SystemExit) as exit_:
        reproduce_s3.build_parser().parse_args(["--epoch", "1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --epoch 1" in capsys.readouterr().err
