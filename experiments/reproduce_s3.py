"""S3's LeNet-5 vs VGG16 comparison, over seeds, with S3's numbers beside the means.

    python -m experiments.reproduce_s3 --manual-dir ~/Covid19-dataset   # DP, S3's protocol
    python -m experiments.reproduce_s3                                  # phantoms (CPU demo)

S3 trained each network once on the Kaggle "Covid-19 Image Dataset" (DP: train/ and
test/, 3 classes) and reported LeNet-5 84.8% and VGG16 72.7% test accuracy. Here the
three networks are trained with N seeds (default 3) on one shared split:

* ``lenet5``: S3's LeNet-5, 32x32 grayscale (``PRESETS["s3_lenet5"]``);
* ``vgg16``: S3's faithful VGG16, 224x224 grayscale, N(0, 0.05) initialisation
  (``PRESETS["s3_vgg16"]``);
* ``vgg16_bn``: VGG16 with BatchNorm and He initialisation, the version one would train
  from scratch today (``PRESETS["s3_vgg16_bn"]``); S3 has no number for it.

S3's protocol, from the engine's presets: 20% of train/ carved out (stratified) as
validation, test/ as test; mean/std 0.5 normalisation, horizontal flips and rotations up
to 10 degrees on training images only (S3 also augmented its test set; here evaluation
is deterministic); Adam lr 1e-3, batch 25 (split over the local devices), at most 10
epochs, early stopping on validation loss (patience 3, min_delta 0.001), best checkpoint
tested. Every TrainConfig option can be changed on the command line (see ``--help``).

Without ``--manual-dir`` it runs on ``cxr_phantoms`` sized like DP (200 train / 52
validation / 68 test images, 4 classes, findings of severity 0.5-1, the phantom experiments'
default), stored at 32 px, and trains VGG16 at 32x32 instead of 224x224 -- the smallest
input its five poolings allow, and the same resolution LeNet-5 sees. At 224 px one VGG16
run takes hours on a 2-core CPU (~30 GFLOPs per image and step); at 32 px it is a few
minutes, and the 9 runs (3 networks x 3 seeds) take roughly 15-25 minutes on a 2-core CPU
(estimated from FLOPs and the measured LeNet/S4 step rates; the machine was too loaded to
time it). ``--vgg-image-size 224`` restores S3's input on phantoms as well.

Output in ``--workdir`` (default ``runs/reproduce_s3/<dataset>``): results.csv,
results.md (mean and 95% CI per network, S3's number beside it), summary.md,
summary.json, accuracy_bars.png, learning_curves.png, runs/<cell>/seed_<k>/ (no per-run
plots unless ``--plots``). Resumable like every
experiment here (``experiments.grid``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from experiments import experiment, train_options
from experiments.grid import Cell, RunFn, RunSpec
from experiments.report import Claim

EXPERIMENT = "reproduce_s3"
DESCRIPTION = (
    "S3's LeNet-5 vs VGG16 (and VGG16-BN) over several seeds with S3's protocol, on DP "
    "(--manual-dir) or on phantoms. Resumable: re-run the same command."
)
DP = "covid19_image_dataset"
PHANTOMS = "cxr_phantoms"


@dataclass(frozen=True)
class PhantomDefaults(experiment.PhantomSplit):
    """DP-sized phantoms (DP: 251 train/ images, 80/20 -> ~200/51, 66 test/ images),
    stored at 32 px, findings of severity 0.5-1 (``PhantomSplit``'s default)."""

    vgg_image_size: int = 32  # 224 on DP; see the module docstring


DEFAULTS = PhantomDefaults(num_train=200, num_validation=52, num_test=68, image_size=32)

# cell name -> (preset, label, S3's single-run test accuracy)
S3_NETWORKS = {
    "lenet5": ("s3_lenet5", "LeNet-5 (32 px)", 0.848),
    "vgg16": ("s3_vgg16", "VGG16", 0.727),
    "vgg16_bn": ("s3_vgg16_bn", "VGG16-BN", None),
}
S3_CLAIMS = (
    Claim("lenet5", "vgg16", "LeNet-5 beats VGG16 trained from scratch (84.8% vs 72.7%)"),
    Claim("vgg16_bn", "vgg16", "BatchNorm makes VGG16 trainable from scratch (not in S3)"),
)


def s3_cells() -> list[Cell]:
    return [
        experiment.preset_cell(
            name, label, preset, {"network": name}, reference=ref, reference_name="S3" if ref is not None else None
        )
        for name, (preset, label, ref) in S3_NETWORKS.items()
    ]


def dataset_of(args: argparse.Namespace) -> str:
    return args.dataset or (DP if args.manual_dir else PHANTOMS)


def cell_config(args: argparse.Namespace, cell: Cell, seed: int, num_devices: int, changes: dict) -> Any:
    """S3's preset for the cell's network, on the chosen data, with the user's changes."""
    dataset = dataset_of(args)
    config = experiment.preset_config(args, cell.overrides["preset"], num_devices)
    if dataset == PHANTOMS:
        d = DEFAULTS
        size = config.image_size if cell.name == "lenet5" else (args.vgg_image_size or d.vgg_image_size)
        config = config.replace(dataset=PHANTOMS, dataset_options=d.dataset_options(), image_size=size)
    else:
        if dataset != DP:
            config = config.replace(dataset=dataset, dataset_options={})
        if args.vgg_image_size and cell.name != "lenet5":
            config = config.replace(image_size=args.vgg_image_size)
    return train_options.apply_changes(config, changes).replace(seed=seed)


def build_parser() -> argparse.ArgumentParser:
    p = experiment.parser(EXPERIMENT, DESCRIPTION, default_dataset=None, global_batch=25)
    p.add_argument(
        "--vgg-image-size",
        type=int,
        default=None,
        help=f"VGG input size (default: 224 on DP as S3, {DEFAULTS.vgg_image_size} on phantoms)",
    )
    train_options.add_train_options(p)
    return p


def run_configs(args: argparse.Namespace, num_devices: int, changes: dict[str, Any]) -> Callable[[Cell, int], Any]:
    """The TrainConfig of each (cell, seed); ``changes``: the user's training options."""
    return lambda cell, seed: cell_config(args, cell, seed, num_devices, changes)


def describe(specs: Sequence[RunSpec]) -> list[str]:
    c = specs[0].config
    sizes = ", ".join(dict.fromkeys(f"{s.cell} {s.config.image_size} px" for s in specs))
    return [
        experiment.dataset_phrase(c) + f"; inputs: {sizes}; {c.channels} channel(s); "
        f"{c.optimizer} lr {c.lr}, batch {c.per_device_batch_size} per device, up to {c.epochs} epochs, "
        "early stopping on "
        f"{c.monitor} (patience {c.early_stopping_patience}, min_delta {c.early_stopping_min_delta}), best "
        "checkpoint tested.",
        "S3's numbers are single runs on DP (3 classes, 66 test images).",
    ]


def main(argv: Sequence[str] | None = None, *, run_fn: RunFn | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dataset = dataset_of(args)
    known = s3_cells()
    cells = experiment.pick_cells(args, known, known)
    title = f"S3 reproduced: LeNet-5 vs VGG16 from scratch on {args.dataset}"
    report = experiment.ReportSpec(
        title, claims=S3_CLAIMS, reference_source="S3", references_comparable=args.dataset == DP
    )
    return experiment.run_from_args(args, EXPERIMENT, cells, known, run_configs, report, describe, run_fn)


if __name__ == "__main__":
    raise SystemExit(main())
