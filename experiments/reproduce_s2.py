"""S2's ImageNet backbones, each frozen (EC) and fine-tuned (FT), over seeds, with S2's numbers.

    python -m experiments.reproduce_s2 --manual-dir "~/COVID-19 Radiography Database" \\
        --weights xception=xception_weights_tf_dim_ordering_tf_kernels_notop.h5 ...   # D3, S2's protocol
    python -m experiments.reproduce_s2                                               # phantoms (CPU demo)

S2 trained DenseNet121, ResNet50, VGG16, InceptionV3 and Xception on D3 (3 classes,
1200 images each), once as a frozen feature extractor + head ("EC") and once fine-tuned
("FT"), and reported one test accuracy per cell (Xception FT 98.75% the best, VGG16 FT
collapsed to one class, 33.88%). Here each of the ten cells is trained with N seeds
(default 3) from the ``s2_<backbone>_<ec|ft>`` presets (cxrjax/train/presets.py: S2's
head, SGD 0.01 with Keras decay 1e-6 and Nesterov momentum 0.9, batch 32, 20 epochs,
feature-wise normalisation, flips, brightness and zoom; the last epoch tested).

ImageNet weights: ``--weights NAME=FILE`` (repeatable; NAME a backbone part of the cell
names, e.g. ``xception``; FILE a Keras .h5, torchvision .pth / .safetensors or a folder
from ``python -m cxrjax.models import-weights``). Backbones without weights start from a
random init, and results.md says so at the top of the table (EC then trains a head on
random features): such numbers are not comparable with S2's.

Without ``--manual-dir`` it runs on ``cxr_phantoms`` with S2's three classes (COVID,
Normal, Viral Pneumonia), tiny on purpose (48 train / 12 validation / 12 test images,
stored at 32 px, backbones at their smallest Keras input: 32 px, InceptionV3 75 and
Xception 71), 2 epochs: a CPU check that every cell runs, not a measurement.
Every TrainConfig option can be changed on the command line (``--help``; e.g.
``--epochs 20 --image-size 224``).

Output in ``--workdir`` (default ``runs/reproduce_s2/<dataset>``): results.csv, results.md
(mean and 95% CI per cell, S2's number beside it), summary.md, summary.json,
accuracy_bars.png, learning_curves.png, runs/<cell>/seed_<k>/. Resumable (experiments.grid).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from experiments import experiment, train_options
from experiments.grid import Cell, RunFn, RunSpec
from experiments.report import Claim

EXPERIMENT = "reproduce_s2"
DESCRIPTION = (
    "S2's five ImageNet backbones, frozen (EC) and fine-tuned (FT), over several seeds with S2's "
    "protocol, on D3 (--manual-dir) or on phantoms. Resumable: re-run the same command."
)
D3 = "covid19_radiography"
PHANTOMS = "cxr_phantoms"
S2_CLASSES = ("COVID", "Normal", "Viral Pneumonia")  # D3's classes, in the phantoms' names
MODES = {"ec": "EC (frozen)", "ft": "FT (fine-tuned)"}


@dataclass(frozen=True)
class PhantomDefaults(experiment.PhantomSplit):
    """Tiny phantoms with S2's three classes: a CPU check, not a measurement."""

    epochs: int = 2


DEFAULTS = PhantomDefaults(num_train=48, num_validation=12, num_test=12, image_size=32)

S2_CLAIMS = (
    Claim("xception_ft", "xception_ec", "Fine-tuned Xception beats its frozen features (98.75% vs 91.53%)"),
    Claim("inceptionv3_ft", "inceptionv3_ec", "Fine-tuned InceptionV3 beats its frozen features (97.92% vs 89.03%)"),
    Claim("vgg16_ec", "vgg16_ft", "Fine-tuning VGG16 collapses it (33.88%) below its frozen features (93.75%)"),
    Claim("densenet121_ec", "resnet50_ec", "Frozen DenseNet121 features beat frozen ResNet50's (95.97% vs 88.05%)"),
)


def s2_backbones() -> dict[str, tuple[str, float, float]]:
    from cxrjax.train.presets import S2_BACKBONES

    return dict(S2_BACKBONES)


def s2_cells() -> list[Cell]:
    """Ten cells, ``<backbone>_<ec|ft>``; EC and FT of one backbone share the network (same
    initial weights and batches per seed), so they are compared with the paired tests."""
    cells = []
    for part, (model, ec, ft) in s2_backbones().items():
        for mode, ref in (("ec", ec), ("ft", ft)):
            cells.append(
                Cell(
                    name=f"{part}_{mode}",
                    label=f"{model} {MODES[mode]}",
                    factors={"backbone": part, "mode": mode},
                    network=part,
                    overrides={"preset": f"s2_{part}_{mode}", "backbone": part},
                    reference=ref,
                    reference_name="S2",
                    group=part,
                )
            )
    return cells


def parse_weights(items: Sequence[str] | None, known: Sequence[str]) -> dict[str, str]:
    """``["xception=FILE", ...]`` -> {"xception": "FILE"}; unknown names are refused."""
    out = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--weights {item!r}: write NAME=FILE, e.g. --weights xception=xception_notop.h5")
        if name not in known:
            raise ValueError(f"--weights {item!r}: unknown backbone {name!r}; choose from {sorted(known)}")
        out[name] = path
    return out


def weights_note(weights: dict[str, str], parts: Sequence[str], study: str) -> str:
    """The first line of the report: which backbones start from ImageNet weights."""
    missing = [p for p in parts if p not in weights]
    if not weights:
        return (
            f"**Random init: no ImageNet weights were given (--weights), so every backbone is trained from "
            f"scratch (a frozen one is a fixed random feature extractor). Not comparable with {study}'s numbers.**"
        )
    given = ", ".join(f"{p}: {weights[p]}" for p in parts if p in weights)
    if missing:
        return f"**ImageNet weights: {given}; random init (from scratch) for {', '.join(missing)}.**"
    return f"ImageNet weights: {given}."


def dataset_of(args: argparse.Namespace) -> str:
    return args.dataset or (D3 if args.manual_dir else PHANTOMS)


def phantom_size(model: str, requested: int) -> int:
    """The input side on phantoms: ``requested``, at least the backbone's smallest Keras input."""
    from cxrjax import models

    return max(requested, models.create(model, num_classes=2, include_top=False).min_image_size())


def cell_config(args: argparse.Namespace, cell: Cell, seed: int, num_devices: int, changes: dict) -> Any:
    """S2's preset for the cell, on the chosen data, with its weights and the user's changes."""
    dataset = dataset_of(args)
    config = experiment.preset_config(args, cell.overrides["preset"], num_devices)
    if dataset == PHANTOMS:
        d = DEFAULTS
        config = config.replace(
            dataset=PHANTOMS,
            dataset_options={**d.dataset_options(), "classes": list(S2_CLASSES)},
            classes=S2_CLASSES,
            image_size=phantom_size(config.model, d.image_size),
            epochs=d.epochs,
        )
    elif dataset != D3:
        config = config.replace(dataset=dataset, dataset_options={})
    config = config.replace(pretrained=args.weights_by_name.get(cell.overrides["backbone"]))
    return train_options.apply_changes(config, changes).replace(seed=seed)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The option reproduce_s1 and reproduce_s2 add: per-backbone weights (``--pretrained``
    would give every cell the same file)."""
    p.add_argument(
        "--weights",
        action="append",
        metavar="NAME=FILE",
        help="ImageNet weights of one backbone (repeatable): a Keras .h5, torchvision .pth / .safetensors or "
        "an import-weights folder; backbones without weights start from random init",
    )


def build_parser() -> argparse.ArgumentParser:
    p = experiment.parser(EXPERIMENT, DESCRIPTION, default_dataset=None, global_batch=32)
    add_arguments(p)
    train_options.add_train_options(p)
    return p


def run_configs(args: argparse.Namespace, num_devices: int, changes: dict[str, Any]) -> Callable[[Cell, int], Any]:
    return lambda cell, seed: cell_config(args, cell, seed, num_devices, changes)


def describe_with(note: str) -> Callable[[Sequence[RunSpec]], list[str]]:
    def describe(specs: Sequence[RunSpec]) -> list[str]:
        c = specs[0].config
        sizes = ", ".join(dict.fromkeys(f"{s.cell.rsplit('_', 1)[0]} {s.config.image_size} px" for s in specs))
        return [
            note,
            experiment.dataset_phrase(c) + f"; inputs: {sizes}; {c.optimizer} lr {c.lr} (decay {c.decay}, "
            f"momentum {c.momentum}, nesterov {c.nesterov}), batch {c.per_device_batch_size} per device, "
            f"{c.epochs} epochs, last epoch tested; head {c.head}, preprocessing {c.preprocessing}.",
            "S2's numbers are single runs on D3 (3 classes, 720 test images).",
        ]

    return describe


def main(argv: Sequence[str] | None = None, *, run_fn: RunFn | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dataset = dataset_of(args)
    known = s2_cells()
    parts = list(s2_backbones())
    try:
        args.weights_by_name = parse_weights(args.weights, parts)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    cells = experiment.pick_cells(args, known, known)
    used = list(dict.fromkeys(c.overrides["backbone"] for c in cells))
    note = weights_note(args.weights_by_name, used, "S2")
    title = f"S2 reproduced: ImageNet backbones, frozen (EC) and fine-tuned (FT), on {args.dataset}"
    report = experiment.ReportSpec(
        title,
        claims=[c for c in S2_CLAIMS if {c.a, c.b} <= {x.name for x in cells}],
        reference_source="S2",
        references_comparable=args.dataset == D3 and all(p in args.weights_by_name for p in used),
    )
    return experiment.run_from_args(
        args, EXPERIMENT, cells, known, run_configs, report, describe_with(note), run_fn, note=note
    )


if __name__ == "__main__":
    raise SystemExit(main())
