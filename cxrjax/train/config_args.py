"""TrainConfig on a command line: named flags built from the fields' declarations, and
``--dataset-option`` / ``--model-option`` / ``--set``.

``python -m cxrjax.train`` and the experiments (``experiments.train_options``) both call
:func:`add_config_flags` and :func:`flag_changes`, so a flag's spelling, type, choices and
help come from one place: the field's :func:`cxrjax.train.config.option` metadata (the
type from its annotation). A field without a named flag is reachable with ``--set``.

Flags default to "not given" (``argparse.SUPPRESS``): only what the user typed becomes a
change, so ``--classes all`` (None, every class) differs from no ``--classes`` at all.
Bool fields get ``--NAME`` / ``--no-NAME``. The old spellings of renamed fields
(``config.RENAMED_FIELDS``: ``--batch-size``, ``--set batch_size=...``) still work and
print a deprecation message naming the new one.

Errors in what was typed (``--set`` of an unknown field, ``KEY`` without ``=VALUE``) are
ValueError, like TrainConfig's own; the command lines turn them into one ``error:`` line
and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Iterable, Mapping, Sequence

from cxrjax.train.config import RENAMED_FIELDS, TrainConfig, flag_of, scalar_kinds

_NEW_TO_OLD = {new: old for old, new in RENAMED_FIELDS.items()}


def deprecated(old: str, new: str) -> None:
    """Tell the user (stderr) that ``old`` still works but is now spelled ``new``."""
    print(f"warning: {old} is deprecated; use {new} (same meaning)", file=sys.stderr)


class _StoreMaybeDeprecated(argparse.Action):
    """Store the value; warn when it came through a deprecated option string."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        deprecated_spellings: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.deprecated_spellings = dict(deprecated_spellings or {})
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string in self.deprecated_spellings:
            deprecated(option_string, self.deprecated_spellings[option_string])
        setattr(namespace, self.dest, values)


def flag_fields(exclude: Iterable[str] = ()) -> list[dataclasses.Field]:
    """TrainConfig's fields that have a named flag, minus ``exclude``, in the order of the
    class body (the re-declared input options sit after ``channels`` there)."""
    skip = set(exclude)
    unknown = skip - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"flag_fields: {sorted(unknown)} are not TrainConfig fields")
    order = {name: i for i, name in enumerate(TrainConfig.__annotations__)}
    fields = [f for f in dataclasses.fields(TrainConfig) if flag_of(f) and f.name not in skip]
    return sorted(fields, key=lambda f: order.get(f.name, -1))


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    exclude: Iterable[str] = (),
    help_overrides: Mapping[str, str] | None = None,
) -> list[str]:
    """Add one flag per TrainConfig field with a named flag (but those in ``exclude``);
    return the field names, for :func:`flag_changes`.

    ``help_overrides``: {field: help} where the caller's meaning is narrower (e.g. an
    experiment applies early-stopping patience only to its early-stopping cells).
    """
    kinds = scalar_kinds()
    names = []
    for f in flag_fields(exclude):
        flag = flag_of(f)
        meta = f.metadata
        help_ = (help_overrides or {}).get(f.name, meta["help"])
        kind = kinds.get(f.name, (None, False))[0]
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
            )
        else:
            spellings = [flag]
            old_flags = {}
            if f.name in _NEW_TO_OLD:  # the flag of the field's old name still works
                old_flag = "--" + _NEW_TO_OLD[f.name].replace("_", "-")
                spellings.append(old_flag)
                old_flags[old_flag] = flag
                help_ += f" ({old_flag}: deprecated spelling)"
            parser.add_argument(
                *spellings,
                dest=f.name,
                action=_StoreMaybeDeprecated,
                deprecated_spellings=old_flags,
                type=meta["parse"] or kind,
                choices=meta["choices"],
                metavar=meta["metavar"],
                default=argparse.SUPPRESS,
                help=help_,
            )
        names.append(f.name)
    return names


def flag_changes(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """{field: value} for the flags of ``names`` that were given on the command line."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def add_passthrough_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    dataset_help: str = "dataset preparation option (repeatable), e.g. num_train=500",
    model_help: str = "model constructor override (repeatable), e.g. dropout=0.25",
) -> None:
    """``--dataset-option KEY=VALUE``, ``--model-option KEY=VALUE`` and ``--set FIELD=VALUE``."""
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help=dataset_help)
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help=model_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any TrainConfig field (repeatable), VALUE parsed as JSON if it parses, "
        "e.g. --set momentum=0.9 --set class_weights=[1,2]",
    )


def parse_value(text: str) -> Any:
    """A command-line VALUE: JSON when it parses (numbers, lists, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` options as a dict (dashes in KEY become underscores)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def set_changes(items: Sequence[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` options, each FIELD checked against TrainConfig's fields (the
    old names of renamed fields are mapped to the new ones, with a deprecation message)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = {}
    for name, value in key_values(items, "--set").items():
        if name in RENAMED_FIELDS:
            deprecated(f"--set {name}=...", f"--set {RENAMED_FIELDS[name]}=...")
            name = RENAMED_FIELDS[name]
        if name not in fields:
            raise ValueError(f"--set {name}=...: TrainConfig has no field {name!r}; fields: {sorted(fields)}")
        changes[name] = value
    return changes
