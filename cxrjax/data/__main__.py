"""Command line for datasets.

  python -m cxrjax.data prepare NAME [--manual-dir DIR] --data-dir DIR [--json] [options]
      Prepares NAME once (array_record files under DIR) and prints per-split, per-class
      counts, skipped files (with reasons), duplicate groups and warnings; --json prints
      one JSON object {"dataset", "class_names", "splits", "skipped", "duplicate_groups",
      "duplicates", "warnings", "split_by", "sources", "groups", "split_sources"}:
      duplicates lists each group {"kind", "files", "classes", "splits", "members":
      [{"file", "label", "split"}], "mixed_labels"}
      (split null: a copy dropped so no image is in two splits); warnings are the
      report's warning lines (e.g. a group whose members carry different labels);
      split_by, sources ({"metadata_files", "unknown", "per_source": {source: {split:
      n}}} or null), groups (the groups file's matches or null) and split_sources
      ({split: [source, ...]} for split_by=source, else null).
      Prepared files are reused only while --manual-dir holds what they were prepared
      from; otherwise --overwrite prepares again.
  python -m cxrjax.data show NAME --data-dir DIR --out grid.png [--split S] [--masks]
      Writes a labelled grid of prepared samples per class.
  python -m cxrjax.data info NAME
      Where to download NAME, the layout it expects, and its options.

Options (each applies to the datasets whose options have it; see `info`):
  --image-size N --seed N --validation-fraction F --test-fraction F
  --near-duplicate-distance D --groups-file CSV --split-by example|group|source
  --num-train N --num-validation N --num-test N
  --shortcut-marker --shortcut-strength P --severity-range LO HI --noise-std S
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Any

from cxrjax.data.builders import DATASETS
from cxrjax.data.dataset import builder_class, get_builder, load_prepared, prepare
from cxrjax.data.decode import DecodeError
from cxrjax.data.layouts import LayoutError

JSON_KEYS = (
    "dataset",
    "class_names",
    "splits",
    "skipped",
    "duplicate_groups",
    "duplicates",
    "warnings",
    "split_by",
    "sources",
    "groups",
    "split_sources",
)
_DEFAULT_DATA_DIR = os.environ.get("CXRJAX_DATA_DIR", "data")
# CLI flag -> option field; type; help.
_OPTION_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("image_size", dict(type=int, help="side of the stored square images (default 256)")),
    ("seed", dict(type=int, help="seed of the split / the phantom stream (default 0)")),
    ("validation_fraction", dict(type=float, help="validation share (default 0.2)")),
    ("test_fraction", dict(type=float, help="test share when no test/ is given (default 0.1)")),
    (
        "near_duplicate_distance",
        dict(
            type=int,
            help="max Hamming distance of 256-bit dHashes of near-duplicates (default 10; -1: identical files only)",
        ),
    ),
    (
        "groups_file",
        dict(help="CSV naming each image's group (file_name,group[,source]); groups stay in one split"),
    ),
    (
        "split_by",
        dict(
            choices=("example", "group", "source"),
            help="example (default; stratified by class), group (needs --groups-file), or source "
            "(whole sources per split: leave-sources-out)",
        ),
    ),
    ("num_train", dict(type=int, help="phantoms in train (default 2000)")),
    ("num_validation", dict(type=int, help="phantoms in validation (default 400)")),
    ("num_test", dict(type=int, help="phantoms in test (default 400)")),
    (
        "shortcut_marker",
        dict(action="store_const", const=True, help="phantoms: draw the class-correlated corner marker"),
    ),
    ("shortcut_strength", dict(type=float, help="phantoms: P(marker corner = class)")),
    (
        "severity_range",
        dict(type=float, nargs=2, metavar=("LO", "HI"), help="phantoms: severity drawn uniformly in [LO, HI]"),
    ),
    ("noise_std", dict(type=float, help="phantoms: quantum noise std on [0, 1]")),
]


def _add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preparation options (part of the prepared folder name)")
    for field, kwargs in _OPTION_FLAGS:
        group.add_argument("--" + field.replace("_", "-"), dest=field, default=None, **kwargs)


def _options_from(args: argparse.Namespace) -> dict[str, Any] | None:
    given = {field: getattr(args, field) for field, _ in _OPTION_FLAGS if getattr(args, field) is not None}
    if "severity_range" in given:
        given["severity_range"] = tuple(given["severity_range"])
    return given or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxrjax.data", description="Prepare and inspect cxrjax datasets.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Not argparse choices: an unknown name is then one "error:" line from main (exit
    # 2) that lists the known ones, not a usage screen.
    name_help = f"dataset: {', '.join(sorted(DATASETS))}"

    p = commands.add_parser("prepare", help="prepare a dataset and print its report", allow_abbrev=False)
    p.add_argument("name", help=name_help)
    p.add_argument("--manual-dir", default=None, help="the unzipped manual download (not needed for cxr_phantoms)")
    p.add_argument(
        "--data-dir",
        default=_DEFAULT_DATA_DIR,
        help=f"where prepared files go (default: $CXRJAX_DATA_DIR or {_DEFAULT_DATA_DIR!r})",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--overwrite", action="store_true", help="prepare again even if prepared files exist for these options"
    )
    _add_options(p)

    s = commands.add_parser("show", help="write a labelled grid of samples per class", allow_abbrev=False)
    s.add_argument("name", help=name_help)
    s.add_argument("--data-dir", default=_DEFAULT_DATA_DIR)
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--split", default="train")
    s.add_argument("--per-class", type=int, default=6)
    s.add_argument("--masks", action="store_true", help="outline lung (cyan) / lesion (red) masks")
    _add_options(s)

    i = commands.add_parser("info", help="download instructions, layout and options", allow_abbrev=False)
    i.add_argument("name", help=name_help)
    return parser


def json_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report reduced to the documented JSON shape of `prepare --json` (reports of
    older preparations lack duplicates/warnings: empty lists; sources etc.: null)."""
    defaults = {"duplicates": [], "warnings": [], "split_by": "example", "sources": None, "groups": None}
    defaults["split_sources"] = None
    return {key: report[key] if key in report else defaults[key] for key in JSON_KEYS}


def format_report(report: dict[str, Any], data_path: str | None = None) -> str:
    """Human-readable report: counts table, lung masks, skipped files, duplicate groups."""
    classes = report["class_names"]
    splits = report["splits"]
    lines = [f"{report['dataset']}  (config {report.get('config', '?')})"]
    if data_path:
        lines.append(f"prepared in: {data_path}")
    if report.get("source"):
        lines.append(f"source: {report['source']}  (layout: {report.get('layout', '?')})")
    width = max([len(c) for c in classes] + [10])
    header = f"{'':<12}" + "".join(f"{c:>{width + 2}}" for c in classes) + f"{'total':>9}"
    lines += ["", header]
    totals = [0] * len(classes)
    for split, counts in splits.items():
        row = [counts.get(c, 0) for c in classes]
        totals = [a + b for a, b in zip(totals, row)]
        lines.append(f"{split:<12}" + "".join(f"{n:>{width + 2}}" for n in row) + f"{sum(row):>9}")
    lines.append(f"{'total':<12}" + "".join(f"{n:>{width + 2}}" for n in totals) + f"{sum(totals):>9}")
    if "lung_masks" in report:
        masks = report["lung_masks"]
        lines.append(f"\nlung masks: {masks['with_mask']} images with one, {masks['without_mask']} without")
    skipped = report["skipped"]
    lines.append(f"\nskipped: {len(skipped)}")
    lines += [f"  {entry['file']}: {entry['reason']}" for entry in skipped]
    groups = report.get("duplicates", [])
    lines.append(f"\nduplicate groups: {report['duplicate_groups']}")
    for group in groups:
        where = ", ".join(group.get("splits", [])) or "dropped"
        lines.append(
            f"  [{group['kind']}] {' = '.join(group['files'])}  -> {where}"
            + (f"  (classes: {', '.join(group['classes'])})" if len(group["classes"]) > 1 else "")
        )
    lines += _sources_lines(report)
    warnings = report.get("warnings", [])
    if warnings:
        lines.append("")
        lines += [f"warning: {warning}" for warning in warnings]
    return "\n".join(lines)


def _sources_lines(report: dict[str, Any]) -> list[str]:
    """Images per source and split, the groups file's matches, and (split_by="source")
    which sources went where; nothing for datasets without them."""
    lines = []
    sources = report.get("sources")
    if sources:
        lines.append(f"\nsources: {len(sources['per_source'])} ({sources['unknown']} images without one)")
        for source, counts in sources["per_source"].items():
            lines.append(f"  {source or '(none)'}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    groups = report.get("groups")
    if groups:
        lines.append(
            f"\ngroups: {groups['groups']} from {groups['file']} ({groups['images_with_group']} images with "
            f"a group, {groups['images_without_group']} without; {groups['unmatched_rows']} rows matched no "
            f"image, {groups['ambiguous_rows']} several)"
        )
    held_out = report.get("split_sources")
    if held_out:
        lines.append("\nsplit by source:")
        lines += [f"  {split}: {', '.join(s or '(none)' for s in names)}" for split, names in held_out.items()]
    return lines


def _info(name: str) -> str:
    cls = DATASETS[name]
    fields = dataclasses.fields(cls.OPTIONS_CLASS)
    defaults = cls.OPTIONS_CLASS()
    lines = [f"{name}: {cls.DESCRIPTION}", "", (cls.__doc__ or "").strip(), ""]
    lines.append(cls.MANUAL_DOWNLOAD_INSTRUCTIONS or "No manual download needed.")
    lines.append("options (--flag: default):")
    lines += [f"  --{f.name.replace('_', '-')}: {getattr(defaults, f.name)}" for f in fields]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        builder_class(args.name)  # an unknown name: one error line
        if args.command == "info":
            print(_info(args.name))
            return 0
        options = _options_from(args)
        if args.command == "prepare":
            # TFDS prints progress to stdout; keep stdout for the report (and clean JSON).
            with contextlib.redirect_stdout(sys.stderr):
                report = prepare(
                    args.name,
                    data_dir=args.data_dir,
                    manual_dir=args.manual_dir,
                    options=options,
                    overwrite=args.overwrite,
                )
            if args.json:
                print(json.dumps(json_summary(report)))
            else:
                builder = get_builder(args.name, data_dir=args.data_dir, options=options)
                print(format_report(report, str(builder.data_path)))
            return 0
        if args.command == "show":
            from cxrjax.data.grid import sample_grid

            dataset = load_prepared(args.name, data_dir=args.data_dir, options=options)
            out = sample_grid(dataset, args.out, split=args.split, per_class=args.per_class, masks=args.masks)
            print(f"wrote {out} ({dataset.name}/{args.split}, {args.per_class} per class, from {dataset.data_path})")
            return 0
    except (LayoutError, DecodeError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Nothing half-written stays: TFDS removes its incomplete.* folder on the way out.
        print("interrupted; nothing was prepared", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
