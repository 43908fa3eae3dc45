"""``python -m cxrjax.explain``: Grad-CAM grids of correct and wrong examples per class.

```
python -m cxrjax.explain --workdir RUN [--dataset NAME --data-dir DIR --manual-dir DIR]
    [--split test] --out DIR [--n 16] [--layer NAME] [--cam-method gradcam|layercam]
```

Writes ``gradcam_<class>.png`` per class: the first ``n`` correctly and the first ``n``
wrongly classified examples of that true class (split order, so the choice is
reproducible), each overlaid with the Grad-CAM of the class the model *predicted* and
captioned with true class, predicted class and probability; on datasets with lesion
masks (phantoms) the lesion (and the shortcut marker's label box, where drawn) is
outlined in white. There it also plays the pointing game over the whole split (saliency
of the true class against the lesion mask and, on phantoms, the shortcut marker's
position), with Grad-CAM and LayerCAM both (Grad-CAM
degenerates on flatten-dense heads, see ``cxrjax.explain.gradcam``), and writes
``pointing_game.json`` ({method: result}). ``explain.json`` lists what each grid shows.

```
python -m cxrjax.explain --workdir RUN --activations [--layer NAME] [--out DIR]
    [--examples 4] [--feature-channels 8]
```

Instead of the Grad-CAM grids: one grid of feature maps per conv stage (or only
``--layer``), ``activations_<layer>.png``, for the first ``--examples`` examples of the
split, and ``activations.json`` (:mod:`cxrjax.explain.activations`); ``--out`` defaults
to ``RUN/activations``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrjax import inference
from cxrjax.data.augment import crop
from cxrjax.data.subset import SubsetSource
from cxrjax.explain import activations, probes
from cxrjax.explain.gradcam import METHOD_TITLES, METHODS, add_saliency_arguments
from cxrjax.explain.overlay import Tile, save_grid_png
from cxrjax.explain.split import pointing_game_split, saliency
from cxrjax.reporting.jsonio import write_json
from cxrjax.train.evaluation import predict_split


def select_examples(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int, n: int
) -> dict[int, dict[str, list[int]]]:
    """{class: {"correct": first n indices, "wrong": first n indices}} in split order."""
    chosen = {}
    for k in range(num_classes):
        of_class = labels == k
        chosen[k] = {
            "correct": np.flatnonzero(of_class & (predicted == k))[:n].tolist(),
            "wrong": np.flatnonzero(of_class & (predicted != k))[:n].tolist(),
        }
    return chosen


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def explain(
    workdir: str,
    out: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    dataset_options: dict | None = None,
    split: str = "test",
    n: int = 16,
    layer: str | None = None,
    method: str = "gradcam",
    checkpoint: str = inference.DEFAULT_CHECKPOINT,
    batch_size: int = inference.DEFAULT_BATCH_SIZE,
    pointing: bool = True,
    weights: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the grids (and the pointing game where possible) into ``out``; return the summary.

    ``weights`` (``inference.WEIGHTS``; None: those the run evaluated with, its EMA when it
    kept one). Saliency explains the plain model: test-time augmentation does not apply."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = inference.load_run(workdir, checkpoint=checkpoint, weights=weights)
    request = inference.dataset_request(
        run, dataset=dataset, data_dir=data_dir, manual_dir=manual_dir, options=dataset_options
    )
    ds = inference.open_dataset(request)
    view, mapping = inference.evaluation_view(
        run, ds, request, split, inference.statistics_source(run, request, data_dir=data_dir)
    )
    preds = predict_split(run, view, split, batch_size, mapping=mapping, progress=progress)
    chosen = select_examples(preds.labels, preds.predictions, run.num_classes, n)
    indices = sorted({i for c in chosen.values() for kind in c.values() for i in kind})

    # Saliency of the predicted class for the chosen examples only.
    view.splits["explain"] = SubsetSource(view.splits[split], indices)
    maps = saliency(run, view, "explain", method=method, layer=layer, batch_size=batch_size, progress=progress)
    images = dict(zip(indices, maps.images))
    heatmaps = dict(zip(indices, maps.heatmaps))
    source = view.splits[split]
    has_lesions = inference.has_field(ds, split, "lesion_mask")
    marker_fn, marker_drawn = probes.marker_masker(request["name"], request["options"])
    names = run.class_names
    box = run.input_config.crop_box
    grids, listing = {}, {}
    for k, name in enumerate(names):
        sections = []
        for kind in ("correct", "wrong"):
            tiles = []
            for i in chosen[k][kind]:
                p = preds.probs[i]
                shape = images[i].shape[:2]  # masks cut to the run's crop_box, as the model input is
                outline = probes.binary_mask(crop(source[i]["lesion_mask"], box), shape) if has_lesions else None
                if outline is not None and marker_fn is not None and marker_drawn:  # and the marker's box
                    outline = outline | probes.binary_mask(crop(marker_fn(source[i]), box), shape)
                tiles.append(
                    Tile(
                        images[i],
                        heatmaps[i],
                        f"#{i} true {names[k]}\npred {names[int(p.argmax())]} {p.max():.2f}",
                        outline=outline,
                    )
                )
            total = int(((preds.labels == k) & ((preds.predictions == k) == (kind == "correct"))).sum())
            sections.append((f"{kind} ({len(tiles)} of {total})", tiles))
        path = save_grid_png(
            out / f"gradcam_{_slug(name)}.png",
            sections,
            title=f"{METHOD_TITLES[method]} ({maps.layer}, predicted class) - {run.config.model} "
            f"on {request['name']} {split}, true class {name}",
        )
        grids[name] = path.name
        listing[name] = chosen[k]
    summary = {
        "workdir": str(run.workdir),
        "checkpoint": {"which": run.checkpoint, "step": run.step},
        "weights": run.weights,
        "run_status": run.run_status,
        "run_status_note": run.run_status_note,
        "dataset": request["name"],
        "dataset_options": dict(request["options"] or {}),
        "split": split,
        "class_names": list(names),
        "method": method,
        "layer": maps.layer,
        "grids": grids,
        "examples": listing,
        "accuracy": float((preds.predictions == preds.labels).mean()) if len(preds.labels) else None,
        "pointing_game": None,
    }
    if pointing and has_lesions:
        # Both methods: on flatten-dense heads Grad-CAM can point at padding-dominated
        # border cells where LayerCAM does not (cxrjax.explain.gradcam), so show both.
        methods = (method, *[m for m in METHODS if m != method])
        games = pointing_game_split(
            run,
            view,
            split,
            preds.labels,
            request=request,
            cam_methods=methods,
            layer=layer,
            batch_size=batch_size,
            progress=progress,
        )
        summary["pointing_game"] = games[method]
        summary["pointing_game_all_methods"] = games
        write_json(out / "pointing_game.json", games)
        summary["pointing_game_table"] = "\n".join(
            f"{METHOD_TITLES[m]} (layer {g['layer']}):\n{probes.format_pointing_game(g)}" for m, g in games.items()
        )
    write_json(out / "explain.json", summary)
    return summary


def explain_activations(
    workdir: str,
    out: str | Path | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    dataset_options: dict | None = None,
    split: str = "test",
    layer: str | None = None,
    examples: int = activations.DEFAULT_EXAMPLES,
    channels: int = activations.DEFAULT_CHANNELS,
    checkpoint: str = inference.DEFAULT_CHECKPOINT,
    batch_size: int = inference.DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Write the activation grids (default folder ``<workdir>/activations``) and
    ``activations.json``; return that summary."""
    run = inference.load_run(workdir, checkpoint=checkpoint)
    out = Path(out) if out is not None else Path(run.workdir) / "activations"
    request = inference.dataset_request(
        run, dataset=dataset, data_dir=data_dir, manual_dir=manual_dir, options=dataset_options
    )
    ds = inference.open_dataset(request)
    view, mapping = inference.evaluation_view(
        run, ds, request, split, inference.statistics_source(run, request, data_dir=data_dir)
    )
    shown = activations.write_activations(
        run,
        view,
        split,
        out,
        mapping=mapping,
        examples=examples,
        channels=channels,
        layer=layer,
        title=f"{run.config.model} on {request['name']} {split}",
        batch_size=batch_size,
    )
    summary = {
        "workdir": str(run.workdir),
        "checkpoint": {"which": run.checkpoint, "step": run.step},
        "run_status": run.run_status,
        "run_status_note": run.run_status_note,
        "dataset": request["name"],
        "dataset_options": dict(request["options"] or {}),
        "split": split,
        "class_names": list(run.class_names),
        **shown,
        "out": str(out),
    }
    write_json(out / "activations.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = inference.run_parser(
        "python -m cxrjax.explain",
        "Grad-CAM grids of correctly and wrongly classified examples per "
        "class, and the pointing game on datasets with lesion masks.",
    )
    inference.add_dataset_arguments(p)
    p.add_argument("--out", help="folder for the grid PNGs and JSON (required, except with --activations)")
    p.add_argument("--n", type=int, default=16, help="examples per class and outcome (default 16)")
    add_saliency_arguments(
        p,
        method_help="gradcam (default) or layercam (per-location weights; better for flatten heads)",
        layer_help="Grad-CAM layer (default: the model's last conv stage); with --activations the one conv "
        "stage to show (default: every stage)",
    )
    inference.add_checkpoint_arguments(p)
    inference.add_weights_and_tta_arguments(p, tta=False)
    p.add_argument("--no-pointing-game", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--activations",
        action="store_true",
        help="instead of the Grad-CAM grids, write feature-map grids per conv stage (or only --layer); "
        "--out defaults to RUN/activations",
    )
    p.add_argument(
        "--examples",
        type=int,
        default=activations.DEFAULT_EXAMPLES,
        help=f"with --activations: the first N examples of the split (default {activations.DEFAULT_EXAMPLES})",
    )
    p.add_argument(
        "--feature-channels",
        type=int,
        default=activations.DEFAULT_CHANNELS,
        metavar="N",
        help=f"with --activations: the first N channels per stage (default {activations.DEFAULT_CHANNELS})",
    )
    a = p.parse_args(argv)
    if a.activations:
        return _main_activations(a)
    if a.out is None:
        p.error("the following arguments are required: --out (or give --activations)")
    try:
        summary = explain(
            a.workdir,
            a.out,
            **inference.common_kwargs(a),
            n=a.n,
            layer=a.layer,
            method=a.cam_method,
            pointing=not a.no_pointing_game,
            weights=a.weights,
            progress=not a.no_progress,
        )
    except inference.USER_ERRORS as error:
        return inference.user_error(error)
    if summary.get("run_status_note"):
        print(f"note: {summary['run_status_note']}", file=sys.stderr)
    print(f"accuracy on {summary['dataset']} {summary['split']}: {summary['accuracy']:.4f}")
    for name, grid in summary["grids"].items():
        print(f"{name}: {Path(a.out) / grid}")
    if summary.get("pointing_game_table"):
        print("pointing game (saliency of the true class):")
        print(summary["pointing_game_table"])
    print(f"wrote {Path(a.out) / 'explain.json'}")
    return 0


def _main_activations(a) -> int:
    try:
        summary = explain_activations(
            a.workdir,
            a.out,
            **inference.common_kwargs(a),
            layer=a.layer,
            examples=a.examples,
            channels=a.feature_channels,
        )
    except inference.USER_ERRORS as error:
        return inference.user_error(error)
    if summary.get("run_status_note"):
        print(f"note: {summary['run_status_note']}", file=sys.stderr)
    for name, layer in summary["layers"].items():
        print(f"{name} {layer['shape']}: {Path(summary['out']) / layer['file']}")
    print(f"wrote {Path(summary['out']) / 'activations.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
