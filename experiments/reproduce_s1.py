"""S1's three transfer-learning members and its ensemble, both ways, over seeds, with S1's numbers.

    python -m experiments.reproduce_s1 --manual-dir ~/DC --weights mobilenet=mobilenet_1_0_224_tf_no_top.h5 ...
    python -m experiments.reproduce_s1                                   # phantoms (CPU demo)

S1 fine-tuned DenseNet201, EfficientNetB7 and MobileNet (ImageNet weights; head
AveragePooling2D, Flatten, Dense, Dropout) on DC (3 classes, 248 train / 90 test images),
reported test accuracies 93 / 75 / 94%, and an ensemble that concatenated the three
members' outputs and trained a Dense layer on them: 48%, below every member. Here, per
seed:

* the three members, from the ``s1_<member>`` presets (cxrjax/train/presets.py: Adam 1e-4
  reduced on plateau to 5e-5, batch 16, up to 16 epochs, early stopping);
* ``ensemble_concat``: S1's ensemble -- the members' softmax outputs on each split,
  concatenated ([N, 3K]), and one Dense layer K -> softmax trained on the train split's
  (full batch, Adam lr 0.01, :data:`STACK_STEPS` steps, seeded Glorot init; S1 does not
  say how it trained it);
* ``ensemble_average``: the mean of the members' probabilities
  (``cxrjax.evaluate.ensemble.average_probabilities``, what ``python -m cxrjax.evaluate``
  does with several runs).

The ensembles are computed from the members' finished run folders (their evaluated
checkpoint), with the runs' own evaluation pipeline, and written to
``runs/ensemble_<kind>/seed_<k>/ensemble.json``.

ImageNet weights: ``--weights NAME=FILE`` per member (NAME: densenet201, efficientnetb7,
mobilenet). Members without weights start from random init, and results.md says so at
the top of the table. Without ``--manual-dir`` it runs on tiny phantoms with S1's three
classes (48 / 12 / 12 images at 32 px, 2 epochs) and, unless ``--study-members``, the small
members of the same families (densenet121 for densenet201, efficientnet_b0 for
efficientnet_b7), so it finishes on a CPU: a check that everything runs, not a
measurement.

Output in ``--workdir`` (default ``runs/reproduce_s1/<dataset>``): results.csv, results.md,
summary.md, summary.json, accuracy_bars.png, learning_curves.png, runs/<cell>/seed_<k>/.
Resumable (experiments.grid); the ensembles are recomputed each time.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from experiments import experiment, reproduce_s2, train_options
from experiments.grid import Cell, RunFn, RunRecord, RunSpec, run_dir_for
from experiments.report import Claim

EXPERIMENT = "reproduce_s1"
DESCRIPTION = (
    "S1's DenseNet201 / EfficientNetB7 / MobileNet members and their ensemble (S1's concatenation + "
    "Dense, and probability averaging) over several seeds, on DC (--manual-dir) or on phantoms."
)
DC = "image_folder"
PHANTOMS = "cxr_phantoms"
S1_CLASSES = ("COVID", "Normal", "Viral Pneumonia")  # DC: COVID, normal, pneumonia
STACK_STEPS = 500
STACK_LR = 0.01


@dataclass(frozen=True)
class PhantomDefaults(experiment.PhantomSplit):
    epochs: int = 2


DEFAULTS = PhantomDefaults(num_train=48, num_validation=12, num_test=12, image_size=32)
# member -> (preset, S1's test accuracy, the small model used on phantoms)
S1_MEMBERS = {
    "densenet201": ("s1_densenet201", 0.93, "densenet121"),
    "efficientnetb7": ("s1_efficientnetb7", 0.75, "efficientnet_b0"),
    "mobilenet": ("s1_mobilenet", 0.94, "mobilenet"),
}
ENSEMBLES = {"ensemble_concat": 0.48, "ensemble_average": None}
S1_CLAIMS = (
    Claim("mobilenet", "ensemble_concat", "S1's concatenation ensemble scores below its members (94% vs 48%)"),
    Claim(
        "ensemble_average", "ensemble_concat", "Averaging probabilities beats S1's concatenation + Dense (not in S1)"
    ),
)


def s1_cells() -> list[Cell]:
    cells = [
        Cell(
            name=name,
            label=f"{name} (S1 member)",
            factors={"system": name},
            network=name,
            overrides={"preset": preset, "backbone": name},
            reference=ref,
            reference_name="S1",
        )
        for name, (preset, ref, _) in S1_MEMBERS.items()
    ]
    labels = {"ensemble_concat": "ensemble: concat + Dense (S1's)", "ensemble_average": "ensemble: mean probabilities"}
    for name, ref in ENSEMBLES.items():
        cells.append(
            Cell(
                name=name,
                label=labels[name],
                factors={"system": name},
                network=name,
                reference=ref,
                reference_name="S1" if ref is not None else None,
            )
        )
    return cells


def dataset_of(args: argparse.Namespace) -> str:
    return args.dataset or (DC if args.manual_dir else PHANTOMS)


def cell_config(args: argparse.Namespace, cell: Cell, seed: int, num_devices: int, changes: dict) -> Any:
    """S1's preset for a member, on the chosen data, with its weights and the user's changes."""
    config = experiment.preset_config(args, cell.overrides["preset"], num_devices)
    if dataset_of(args) == PHANTOMS:
        d = DEFAULTS
        model = config.model if args.study_members else S1_MEMBERS[cell.name][2]
        config = config.replace(
            model=model,
            dataset=PHANTOMS,
            dataset_options={**d.dataset_options(), "classes": list(S1_CLASSES)},
            classes=S1_CLASSES,
            image_size=reproduce_s2.phantom_size(model, d.image_size),
            epochs=d.epochs,
        )
    elif dataset_of(args) != DC:
        config = config.replace(dataset=dataset_of(args), dataset_options={})
    config = config.replace(pretrained=args.weights_by_name.get(cell.name))
    return train_options.apply_changes(config, changes).replace(seed=seed)


# ------------------------------------------------------------------------------------
# The ensembles, from the members' run folders
# ------------------------------------------------------------------------------------
def member_predictions(run_dir: Path, splits: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """(class names, {split: Predictions}) of one finished member run, through its own
    evaluation pipeline (cxrjax.inference), at its evaluated checkpoint."""
    from cxrjax.inference import dataset_request, evaluation_view, load_run, open_dataset
    from cxrjax.train.evaluation import predict_split

    run = load_run(run_dir)
    request = dataset_request(run)
    ds = open_dataset(request)
    out = {}
    for split in splits:
        view, mapping = evaluation_view(run, ds, request, split)
        out[split] = predict_split(run, view, split, 32, mapping=mapping)
    return list(run.class_names), out


def train_stacker(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> Callable:
    """S1's Dense layer on the concatenated member outputs: softmax regression trained with
    full-batch Adam (lr :data:`STACK_LR`, :data:`STACK_STEPS` steps) from a seeded Glorot init;
    returns ``features -> probabilities``."""
    import jax
    import jax.numpy as jnp
    import optax

    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32)
    params = {
        "kernel": jax.nn.initializers.glorot_uniform()(jax.random.PRNGKey(seed), (x.shape[1], num_classes)),
        "bias": jnp.zeros((num_classes,)),
    }
    tx = optax.adam(STACK_LR)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["kernel"] + p["bias"], y).mean()

    @jax.jit
    def fit(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=STACK_STEPS)
        return p

    fitted = fit(params)
    return lambda f: np.asarray(jax.nn.softmax(jnp.asarray(f, jnp.float32) @ fitted["kernel"] + fitted["bias"]))


def ensemble_results(member_dirs: dict[str, Path], seed: int) -> dict[str, dict[str, Any]]:
    """{"ensemble_concat": results, "ensemble_average": results} for one seed's members
    (results like a run's results.json: "test", "validation", "members")."""
    from cxrjax.evaluate.ensemble import average_probabilities, check_members_aligned
    from cxrjax.reporting.metrics import classification_report

    splits = ("train", "validation", "test")
    names, preds = None, {}
    for member, run_dir in member_dirs.items():
        class_names, preds[member] = member_predictions(run_dir, splits)
        if names is not None and class_names != names:
            raise ValueError(f"ensemble member {member} has classes {class_names}, the others {names}")
        names = class_names
    members = list(member_dirs)
    for split in splits:
        check_members_aligned([preds[m][split].labels for m in members], members)
    labels = {split: preds[members[0]][split].labels for split in splits}
    concat = {split: np.concatenate([preds[m][split].probs for m in members], axis=1) for split in splits}
    stacker = train_stacker(concat["train"], labels["train"], len(names), seed)
    out = {}
    for kind, probs_of in (
        ("ensemble_concat", lambda split: stacker(concat[split])),
        ("ensemble_average", lambda split: average_probabilities([preds[m][split].probs for m in members])),
    ):
        out[kind] = {
            "test": classification_report(labels["test"], probs_of("test"), names),
            "validation": classification_report(labels["validation"], probs_of("validation"), names),
            "members": {m: str(d) for m, d in member_dirs.items()},
            "class_names": names,
        }
    return out


def derive_ensembles(workdir: Path, cells: Sequence[Cell]) -> Callable[[Sequence[RunRecord]], list[RunRecord]]:
    """The ensemble cells' records, from the finished member runs of each seed."""
    wanted = [c.name for c in cells if c.name in ENSEMBLES]
    members = [c.name for c in cells if c.name in S1_MEMBERS]

    def derived(records: Sequence[RunRecord]) -> list[RunRecord]:
        if not wanted:
            return []
        out = []
        for seed in sorted({r.seed for r in records}):
            ok = {r.cell: r.run_dir for r in records if r.seed == seed and r.ok and r.cell in members}
            error = None
            if len(members) < 2:
                error = "an ensemble needs at least two member cells (--cells)"
            elif len(ok) < len(members):
                error = f"members without a finished run: {sorted(set(members) - set(ok))}"
            results: dict[str, dict] = {}
            if error is None:
                try:
                    results = ensemble_results({m: Path(ok[m]) for m in members}, seed)
                except Exception as err:  # noqa: BLE001 - reported in the table's status, as a failed run
                    error = f"{type(err).__name__}: {err}"
            for name in wanted:
                run_dir = run_dir_for(workdir, name, seed)
                if error is None:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    (run_dir / "ensemble.json").write_text(json.dumps(results[name], indent=2) + "\n")
                out.append(RunRecord(name, seed, run_dir, results.get(name, {}), None, False, error))
        return out

    return derived


# ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = experiment.parser(EXPERIMENT, DESCRIPTION, default_dataset=None, global_batch=16)
    reproduce_s2.add_arguments(p)
    p.add_argument(
        "--study-members",
        action="store_true",
        help="on phantoms too, S1's own members (densenet201, efficientnet_b7) instead of the small ones",
    )
    train_options.add_train_options(p)
    return p


def run_configs(args: argparse.Namespace, num_devices: int, changes: dict[str, Any]) -> Callable[[Cell, int], Any]:
    return lambda cell, seed: cell_config(args, cell, seed, num_devices, changes)


def describe_with(note: str) -> Callable[[Sequence[RunSpec]], list[str]]:
    def describe(specs: Sequence[RunSpec]) -> list[str]:
        c = specs[0].config
        members = ", ".join(dict.fromkeys(f"{s.cell}: {s.config.model} {s.config.image_size} px" for s in specs))
        return [
            note,
            experiment.dataset_phrase(c) + f"; members: {members}; head {c.head}, freeze {c.freeze}, "
            f"{c.optimizer} lr {c.lr} ({c.schedule}, floor {c.plateau_min_lr}), batch {c.per_device_batch_size} "
            f"per device, up to {c.epochs} epochs. Ensembles from the members of each seed: concatenated softmax "
            f"outputs + a trained Dense layer (S1's), and the mean of the probabilities.",
            "S1's numbers are single runs on DC (3 classes, 90 test images).",
        ]

    return describe


def main(argv: Sequence[str] | None = None, *, run_fn: RunFn | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dataset = dataset_of(args)
    known = s1_cells()
    try:
        args.weights_by_name = reproduce_s2.parse_weights(args.weights, list(S1_MEMBERS))
    except ValueError as err:
        print(f"error: {err}")
        return 2
    cells = experiment.pick_cells(args, known, known)
    members = [c for c in cells if c.name in S1_MEMBERS]
    note = reproduce_s2.weights_note(args.weights_by_name, [c.name for c in members], "S1")
    names = {c.name for c in cells}
    report = experiment.ReportSpec(
        f"S1 reproduced: transfer-learning members and their ensembles on {args.dataset}",
        claims=[c for c in S1_CLAIMS if {c.a, c.b} <= names],
        reference_source="S1",
        references_comparable=args.dataset == DC and all(c.name in args.weights_by_name for c in members),
    )
    workdir = experiment.default_workdir(args, EXPERIMENT)
    return experiment.run_from_args(
        args,
        EXPERIMENT,
        members,
        known,
        run_configs,
        report,
        describe_with(note),
        run_fn,
        note=note,
        derived=derive_ensembles(workdir, cells),
        report_cells=cells,
    )


if __name__ == "__main__":
    raise SystemExit(main())
