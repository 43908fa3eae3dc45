"""S4's BatchNorm / Dropout / early-stopping ablation, done with seeds and statistics.

    python -m experiments.ablation_bn_dropout                  # phantoms, 13 cells x 10 seeds
    python -m experiments.ablation_bn_dropout --seeds 3 --s0   # fewer seeds, plus S0's grid
    python -m experiments.ablation_bn_dropout --seeds 16       # 208 runs, 12-17 min on 2 cores: see below
    python -m experiments.ablation_bn_dropout --dataset covid19_radiography \\
        --manual-dir ~/COVID-19_Radiography_Dataset           # S4's own data and settings

S4 trained nine networks once each and ranked them by differences smaller than the
seed-to-seed noise it never measured. Here every cell is trained with N seeds (default
10) on ONE shared data split (seeds vary initialisation, dropout masks and shuffling), and
the report says which differences exceed seed noise.

The grid (13 cells), on S4's Exp2 network (16-32-64-128 channels, ``s4_exp2`` with model
options ``batchnorm`` and ``dropout``):
    BatchNorm none / first layer / every layer  x  dropout 0 / 0.25  x  early stopping off / on
plus Exp1 (the reversed 128-64-32-32 channel order, no BatchNorm, no dropout). S4's nine
experiments are named cells: Exp2 (none, 0, off), Exp3 (first, 0, off), Exp4 (all, 0,
off), Exp5 (all, 0, on), Exp6 (none, 0.25, off), Exp7 (none, 0.25, on), Exp8 (all,
0.25, off), Exp9 (all, 0.25, on); the other four cells fill the grid. ``--s0`` adds a
second grid: S0-A, S0-B (dropout + early stopping on validation loss) and S0-C, with S0's
networks and optimiser (Adam 1e-3) on the same data, epochs and input as the S4 grid.

Training settings are S4's, from the engine's presets (``cxrjax.train.PRESETS["s4_exp2"]``
and ``["s4_exp5"]``): Adam, lr 0.01, global batch 32 (split over all local devices),
3-channel input; without early stopping the final model is tested (S4 trained a fixed
number of epochs), with it the best checkpoint by validation accuracy (S4's monitor),
patience 3 on real data. On ``covid19_radiography`` the split is 70/20/10, 20 epochs,
128x128 input (S4 does not state its size). Every TrainConfig option can be changed
(see ``--help``); a cell keeps the factors it studies.

Default (no options) -- chosen so that the whole grid (130 runs) finishes within 15
minutes on a 2-core CPU from a fresh clone, phantom preparation and compilation
included, with S4's ordering of the networks kept:

    cxr_phantoms, 640 train / 128 validation / 256 test images (balanced, 4 classes),
    held on the devices (``data_placement="auto"``; ``--data-placement host`` for grain),
    findings of severity 1-2 (denser than the generator's "florid" 1: the networks learn
    within 6 epochs), 28x28x3 input, Adam lr 0.01, batch 32, 6 epochs, early-stopping
    patience 3 (on validation accuracy, as S4), 10 seeds; one worker process per CPU core.

Why these: S4's claims are about how fast the networks learn at lr 0.01 (the networks
without BatchNorm collapse to the majority class, S4's own finding; BatchNorm everywhere
learns fastest; dropout slows it), so the budget goes to seeds and to enough steps that
the BatchNorm networks are still learning at the last epoch. 24 px reverses S4's
BN-first / BN-all order; a stronger signal (severity 2-3) lets every BatchNorm network
learn and erases the contrasts; 32 px x 8 epochs took 24 minutes. Each early-stopping run
is the prefix of its twin without early stopping (same seed: the same trajectory until it
stops), so the twin continues from where it stopped instead of training those epochs
again (``cxrjax.train.continuation``): about 40% of the Exp2 training is saved. The
search and its measurements: docs/measurements.md#ablation-choosing-the-10-seed-default.

Each claim is judged in its own direction, and S4's two "no difference" claims by an
equivalence test (TOST, within 5 points; experiments.report). 10 seeds supported 3 of
the 7 claims after Holm on seeds 0-9 and on seeds 100-109 (0 contradicted), 16 seeds
(``--seeds 16``) 4 of 7; of the 5 directional claims 10 seeds support 1-2
(docs/measurements.md#claims-judged-by-direction-and-equivalence-2026-12-02).

Expected: about 7-11 minutes on a 2-core CPU from a fresh clone (``make ablation``: venv,
pinned install of the package alone, phantom preparation, 130 runs on two workers,
report); measured times and the latest result in
docs/measurements.md#ablation-wall-time-and-result.

Output in ``--workdir`` (default ``runs/ablation_bn_dropout/<dataset>``): results.csv,
results.md, summary.md, summary.json (the claims: paired tests within a network, Welch
and permutation tests between networks, equivalence tests (TOST, margin 5 points) for the
two "no difference" claims, Holm over the 7 claims, a verdict each), accuracy_bars.png,
learning_curves.png, and runs/<cell>/seed_<k>/ (each run's own engine workdir with its
checkpoints, metrics.jsonl and results.json with its ``timings``; per-run plots only with
``--plots``). Re-running skips finished runs and resumes an interrupted one; a changed
configuration for an existing run folder is refused (use a new --workdir). Statistics:
see ``experiments.report`` and ``cxrjax.reporting.stats``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from experiments import experiment, train_options
from experiments.grid import Cell, RunFn, RunSpec
from experiments.report import Claim

EXPERIMENT = "ablation_bn_dropout"
DESCRIPTION = (
    "S4's BatchNorm / dropout / early-stopping ablation over several seeds, with "
    "confidence intervals and significance tests. Resumable: re-run the same command."
)
PHANTOMS = "cxr_phantoms"
D4 = "covid19_radiography"


@dataclass(frozen=True)
class PhantomDefaults(experiment.PhantomSplit):
    """The default run on the synthetic phantoms (see the module docstring for why);
    ``image_size`` is the model input as well as the stored size."""

    epochs: int = 6
    patience: int = 3  # early-stopping patience of the ES cells (S4's)
    # 10 seeds: an exact sign-flip p of a paired claim can reach 2/2^10 = 0.002, low enough
    # to survive Holm over the 7 claims (3 seeds cannot go below 0.25). The settings tried
    # for it: docs/measurements.md#ablation-choosing-the-10-seed-default.
    seeds: int = 10
    # The split on the devices (small: yes): no grain host work per step, and without
    # augmentation bit-identical to the host path (tests/train/test_train_resident.py).
    data_placement: str = "auto"


DEFAULTS = PhantomDefaults(num_train=640, num_validation=128, num_test=256, image_size=28, severity_range=(1.0, 2.0))

# S4's single-run test accuracies (SPEC.md, S4), on D4.
S4_TEST_ACCURACY = {
    "Exp1": 0.479,
    "Exp2": 0.485,
    "Exp3": 0.596,
    "Exp4": 0.8375,
    "Exp5": 0.828,
    "Exp6": 0.481,
    "Exp7": 0.481,
    "Exp8": 0.683,
    "Exp9": 0.782,
}
# (batchnorm, dropout, early stopping) -> S4 experiment on the Exp2 network
S4_NAMES = {
    ("none", 0.0, False): "Exp2",
    ("first", 0.0, False): "Exp3",
    ("all", 0.0, False): "Exp4",
    ("all", 0.0, True): "Exp5",
    ("none", 0.25, False): "Exp6",
    ("none", 0.25, True): "Exp7",
    ("all", 0.25, False): "Exp8",
    ("all", 0.25, True): "Exp9",
}
S4_CLAIMS = (
    Claim(
        "exp1",
        "exp2_bn-none_do-0_es-off",
        "the channel order does not matter without BatchNorm (Exp1 vs Exp2)",
        expect="=",
    ),
    Claim("exp2_bn-first_do-0_es-off", "exp2_bn-none_do-0_es-off", "BatchNorm on the first layer helps (Exp3 vs Exp2)"),
    Claim(
        "exp2_bn-all_do-0_es-off",
        "exp2_bn-first_do-0_es-off",
        "BatchNorm on every layer is better still (Exp4 vs Exp3)",
    ),
    Claim(
        "exp2_bn-all_do-0_es-on",
        "exp2_bn-all_do-0_es-off",
        "early stopping costs a little without dropout (Exp5 vs Exp4)",
        expect="<",
    ),
    Claim(
        "exp2_bn-none_do-0.25_es-off",
        "exp2_bn-none_do-0_es-off",
        "dropout alone changes nothing (Exp6 vs Exp2)",
        expect="=",
    ),
    Claim(
        "exp2_bn-all_do-0.25_es-off",
        "exp2_bn-all_do-0_es-off",
        "dropout 0.25 hurts the BatchNorm network (Exp8 vs Exp4)",
        expect="<",
    ),
    Claim(
        "exp2_bn-all_do-0.25_es-on",
        "exp2_bn-all_do-0.25_es-off",
        "early stopping rescues the dropout network (Exp9 vs Exp8)",
    ),
)
S0_CELLS = (("s0_a", "S0-A"), ("s0_b", "S0-B"), ("s0_c", "S0-C"))


def _fmt_rate(rate: float) -> str:
    return f"{rate:g}"


def s4_cells() -> list[Cell]:
    """The 13 cells, ordered so that cells training the same network are adjacent (the
    engine then reuses the compiled step)."""
    cells = [
        Cell(
            name="exp1",
            label="Exp1: reversed channels",
            factors={"architecture": "exp1", "batch_norm": "none", "dropout": "0", "early_stopping": "off"},
            network="s4_exp1",
            overrides={
                "model": "s4_exp1",
                "model_options": {"layout": "exp1", "batchnorm": "none", "dropout": 0.0},
                "early_stopping": False,
            },
            reference=S4_TEST_ACCURACY["Exp1"],
            reference_name="Exp1",
            group="S4 grid",
        )
    ]
    for bn in ("none", "first", "all"):
        for rate in (0.0, 0.25):
            for es in (False, True):
                s4 = S4_NAMES.get((bn, rate, es))
                desc = f"BN {bn}" + (f", DO {_fmt_rate(rate)}" if rate else "") + (", ES" if es else "")
                cells.append(
                    Cell(
                        name=f"exp2_bn-{bn}_do-{_fmt_rate(rate)}_es-{'on' if es else 'off'}",
                        label=f"{s4}: {desc}" if s4 else desc,
                        factors={
                            "architecture": "exp2",
                            "batch_norm": bn,
                            "dropout": _fmt_rate(rate),
                            "early_stopping": "on" if es else "off",
                        },
                        # Dropout has no weights: seed k initialises the same weights and
                        # draws the same batches at every rate, so dropout cells are paired.
                        network=f"s4_exp2/bn={bn}",
                        overrides={
                            "model": "s4_exp2",
                            "model_options": {"layout": "exp2", "batchnorm": bn, "dropout": rate},
                            "early_stopping": es,
                        },
                        reference=S4_TEST_ACCURACY[s4] if s4 else None,
                        reference_name=s4,
                        group="S4 grid",
                    )
                )
    return cells


def s0_cells() -> list[Cell]:
    group = "S0 grid (same data, S0's networks and optimiser)"
    return [experiment.preset_cell(model, label, model, {"model": label}, group=group) for model, label in S0_CELLS]


def base_config(args: argparse.Namespace, num_devices: int) -> Any:
    """S4's settings (engine preset) on the chosen dataset, before the user's changes."""
    config = experiment.preset_config(args, "s4_exp2", num_devices)
    if args.dataset == PHANTOMS:
        d = DEFAULTS
        config = config.replace(
            dataset=PHANTOMS,
            dataset_options=d.dataset_options(),
            image_size=d.image_size,
            epochs=d.epochs,
            data_placement=d.data_placement,
        )
    elif args.dataset != D4:
        config = config.replace(dataset=args.dataset, dataset_options={})
    return config


def early_stopping_patience(args: argparse.Namespace, changes: dict) -> int:
    if changes.get("early_stopping_patience") is not None:
        return int(changes["early_stopping_patience"])
    if args.dataset == PHANTOMS:
        return DEFAULTS.patience
    from cxrjax.train import PRESETS

    return int(PRESETS["s4_exp5"].early_stopping_patience)


def cell_config(base: Any, cell: Cell, seed: int, patience: int) -> Any:
    """The TrainConfig of one run: the base with the cell's factors and the seed."""
    o = dict(cell.overrides)
    if "preset" in o:  # S0 cells: S0's network and optimisation, the grid's data and length
        from cxrjax.train import PRESETS

        s0 = PRESETS[o["preset"]]
        keep = (  # model_options are merged below
            "model",
            "optimizer",
            "lr",
            "adam_eps",
            "monitor",
            "early_stopping_patience",
            "early_stopping_min_delta",
            "restore_best",
        )
        return base.replace(
            **{k: getattr(s0, k) for k in keep}, model_options={**base.model_options, **s0.model_options}, seed=seed
        )
    es = bool(o.pop("early_stopping"))
    return base.replace(
        model=o["model"],
        model_options={**base.model_options, **o["model_options"]},
        early_stopping_patience=patience if es else None,
        restore_best=es,
        seed=seed,
    )


def build_parser() -> argparse.ArgumentParser:
    p = experiment.parser(
        EXPERIMENT, DESCRIPTION, default_dataset=PHANTOMS, global_batch=32, default_seeds=DEFAULTS.seeds
    )
    p.add_argument("--s0", action="store_true", help="also run S0's grid (S0-A, S0-B, S0-C)")
    train_options.add_train_options(p)
    return p


def run_configs(args: argparse.Namespace, num_devices: int, changes: dict[str, Any]) -> Callable[[Cell, int], Any]:
    """The TrainConfig of each (cell, seed); ``changes``: the user's training options."""
    base = train_options.apply_changes(base_config(args, num_devices), changes)
    patience = early_stopping_patience(args, changes)
    return lambda cell, seed: cell_config(base, cell, seed, patience)


def describe(specs: Sequence[RunSpec]) -> list[str]:
    c = specs[0].config
    patience = next((s.config.early_stopping_patience for s in specs if s.config.early_stopping_patience), None)
    return [
        experiment.dataset_phrase(c) + f"; input {c.image_size or 'model default'} px, "
        f"{c.channels} channels; {c.optimizer} lr {c.lr}, batch {c.per_device_batch_size} per device, "
        f"up to {c.epochs} epochs; "
        + (
            f"early stopping on {c.monitor}, patience {patience}, best checkpoint tested; "
            "without it the last epoch is tested."
            if patience
            else "no early stopping."
        ),
        "S4's numbers are single runs on the COVID-19 Radiography Database (D4), 70/20/10 split.",
    ]


def main(argv: Sequence[str] | None = None, *, run_fn: RunFn | None = None) -> int:
    args = build_parser().parse_args(argv)
    known = s4_cells() + s0_cells()
    cells = experiment.pick_cells(args, s4_cells() + (s0_cells() if args.s0 else []), known)
    note = None
    if args.dataset not in (PHANTOMS,) and not args.manual_dir:
        note = f"note: {args.dataset} needs --manual-dir unless it is already prepared under {args.data_dir}"
    title = f"BatchNorm / dropout / early-stopping ablation on {args.dataset}"
    report = experiment.ReportSpec(
        title, claims=S4_CLAIMS, reference_source="S4", references_comparable=args.dataset == D4
    )
    return experiment.run_from_args(args, EXPERIMENT, cells, known, run_configs, report, describe, run_fn, note=note)


if __name__ == "__main__":
    raise SystemExit(main())
