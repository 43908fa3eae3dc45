"""``python -m cxrjax.models summary NAME [--image-size N] [--channels C] [--num-classes K] [--json]``.

Prints a per-layer table (output shape, parameters) and totals: parameters and FLOPs per
image for the forward pass and for one training step, as counted by XLA's cost analysis
of the compiled functions. ``--json`` prints
``{"model", "input_shape", "params", "forward_flops", "train_step_flops"}`` instead.
``python -m cxrjax.models list`` lists the registered models.
``python -m cxrjax.models import-weights NAME FILE [--out DIR] [--top | --no-top]
[--variant V] [--json]`` converts a Keras HDF5 / torchvision weight file once to an orbax
checkpoint ``DIR/variables`` (+ ``DIR/meta.json``, the summary) and prints the summary:
tensors loaded, parameters, source format, the file's sha256. ``DIR`` defaults to
``<FILE without suffix>.orbax``; an existing checkpoint is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys

from cxrjax.models.registry import MODELS
from cxrjax.models.summary import summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxrjax.models", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="per-layer table, parameter and FLOP totals", allow_abbrev=False)
    s.add_argument("name", help=f"registered model: {', '.join(MODELS)}")
    s.add_argument("--image-size", type=int, default=None, help="default: the model's study size")
    s.add_argument("--channels", type=int, default=None, help="default: the model's study channels")
    s.add_argument("--num-classes", type=int, default=None, help="default: the model's study's")
    s.add_argument("--batch-size", type=int, default=2, help="batch the FLOPs are counted on (then / batch)")
    s.add_argument("--json", action="store_true", help="print one JSON record instead of the table")
    sub.add_parser("list", help="list the registered models", allow_abbrev=False)
    w = sub.add_parser(
        "import-weights", help="convert a Keras .h5 / torchvision .pth weight file to orbax", allow_abbrev=False
    )
    w.add_argument("name", help="registered ImageNet backbone (e.g. resnet50)")
    w.add_argument("file", help="Keras *_weights_tf_dim_ordering_tf_kernels[_notop].h5, or .pth / .safetensors")
    w.add_argument("--out", default=None, help="output directory (default: FILE without suffix + .orbax)")
    top = w.add_mutually_exclusive_group()
    top.add_argument("--top", dest="include_top", action="store_true", default=None, help="the file has the top")
    top.add_argument("--no-top", dest="include_top", action="store_false", help="a _notop / headless file")
    w.add_argument("--variant", default=None, help="architecture variant (default: by the file's format)")
    w.add_argument("--json", action="store_true", help="print the summary as one JSON record")
    args = parser.parse_args(argv)

    if args.command == "import-weights":
        return _import_weights(args)

    if args.command == "list":
        for name, spec in MODELS.items():
            print(f"{name:10s} {spec.image_size}x{spec.image_size}x{spec.channels}  {spec.description}")
        return 0
    if args.name not in MODELS:
        parser.error(f"unknown model {args.name!r}; registered models: {', '.join(MODELS)}")
    try:
        num_classes = args.num_classes or MODELS[args.name].num_classes
        result = summarize(
            args.name,
            image_size=args.image_size,
            channels=args.channels,
            num_classes=num_classes,
            batch_size=args.batch_size,
        )
    except ValueError as e:  # e.g. an input size the model's pooling cannot take
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()) if args.json else result.to_text())
    return 0


def _import_weights(args) -> int:
    from pathlib import Path

    from cxrjax.models.weights import WeightFileError, import_weights

    out = args.out or str(Path(args.file).with_suffix(".orbax"))
    options = {"variant": args.variant} if args.variant else {}
    try:
        record = import_weights(args.name, args.file, out, include_top=args.include_top, **options)
    except (WeightFileError, FileExistsError, KeyError, ValueError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(record))
    else:
        width = max(len(k) for k in record)
        print("\n".join(f"{k:{width}s}  {v}" for k, v in record.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
