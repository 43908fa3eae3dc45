"""Recipes: named, documented bundles of training options applied on top of any model or
preset (``--recipe NAME``, ``TrainConfig.recipe``).

A recipe is not a model: it says HOW to train (augmentation, optimiser and schedule,
regularisation, class balance, model selection), and applies to whatever network and
data the run names. Resolution, lowest to highest priority::

    preset (or TrainConfig's defaults)  <  recipe  <  options given explicitly

so ``--preset s3_lenet5 --recipe cxr --lr 3e-4`` is S3's LeNet-5 set-up, with the cxr
recipe's options over S3's, and lr 3e-4 over both. :func:`apply_recipe` does it; the
result is an ordinary TrainConfig whose every field holds the resolved value, with
``recipe`` naming the bundle, so a run's ``config.json`` records what was trained (the
recipe's contents may change later; a run never re-reads them).

Recipe values are TrainConfig field values, validated like any other (a recipe that
names an unknown field or a refused value fails :func:`check_recipes`, run by the tests).

RECIPES["cxr"] -- PROVISIONAL. Meant for small CNNs trained from scratch on a few hundred
to a few thousand chest radiographs. Its contents are a first guess made only of options
that exist today; they are to be chosen by measurement (k-fold cross-validation,
``python -m experiments.cross_validate``), and will change. Why each entry:

* ``normalization="dataset"``: the train split's mean/std; sources differ in exposure.
* ``rotate_degrees=7``, ``zoom=(0.9, 1.1)``, ``brightness=(0.85, 1.15)``: positioning,
  field of view and exposure vary between radiographs; no horizontal flip (the heart and
  the aortic knob sit on the left: a flipped film is not a plausible radiograph).
* ``optimizer="adamw"``, ``lr=1e-3``, ``weight_decay=1e-4``, ``schedule="warmup_cosine"``
  with one warm-up epoch, ``grad_clip_norm=1.0``: a stable default for networks without
  pretrained weights.
* ``label_smoothing=0.1``: labels of public COVID collections are noisy.
* ``class_weights="balanced"``: the collections are imbalanced.
* ``monitor="val_macro_f1"``, ``early_stopping_patience=8``, ``restore_best=True``,
  ``epochs=40``: select on the metric reported, stop when it stalls.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

RECIPES: dict[str, dict[str, Any]] = {
    "cxr": {
        "normalization": "dataset",
        "hflip": False,
        "rotate_degrees": 7.0,
        "zoom": (0.9, 1.1),
        "brightness": (0.85, 1.15),
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "warmup_cosine",
        "warmup_epochs": 1.0,
        "min_lr": 0.0,
        "grad_clip_norm": 1.0,
        "label_smoothing": 0.1,
        "class_weights": "balanced",
        "monitor": "val_macro_f1",
        "early_stopping_patience": 8,
        "restore_best": True,
        "epochs": 40,
    },
}

RECIPE_NAMES = tuple(RECIPES)


def unknown_recipe_message(name: Any) -> str:
    known = ", ".join(RECIPE_NAMES)
    return f"unknown recipe {name!r}; known recipes: {known} (cxrjax.train.recipes.RECIPES)"


def recipe_values(name: str) -> dict[str, Any]:
    """The options of recipe ``name`` (a copy); ValueError listing the known recipes."""
    if name not in RECIPES:
        raise ValueError(unknown_recipe_message(name))
    return dict(RECIPES[name])


def apply_recipe(config: Any, name: str | None, explicit: Iterable[str] = ()) -> Any:
    """``config`` (a TrainConfig: a preset or the defaults) with recipe ``name``'s options,
    except the fields in ``explicit`` (the options the user gave, applied after this by
    the caller, so they win), and ``recipe=name``. None: ``config`` with ``recipe=None``.

    Raises ValueError for an unknown recipe or a value TrainConfig refuses.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "none")):
        return config.replace(recipe=None)
    skip = set(explicit)
    values = {k: v for k, v in recipe_values(name).items() if k not in skip}
    try:
        return config.replace(**values, recipe=name)
    except (TypeError, ValueError) as err:
        raise ValueError(f"recipe {name!r}: {err}") from err


def resolve(config: Any, changes: Mapping[str, Any]) -> Any:
    """``config`` < recipe (``changes["recipe"]``, if given) < the other ``changes``: the
    one resolution every command line uses. Returns the config with every change applied.

    Raises ValueError (unknown recipe, refused value).
    """
    changes = dict(changes)
    if "recipe" in changes:
        config = apply_recipe(config, changes.pop("recipe"), explicit=changes)
    return config.replace(**changes) if changes else config


def check_recipes() -> None:
    """Every recipe names TrainConfig fields with values it accepts (ValueError otherwise)."""
    from cxrjax.train.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    for name, values in RECIPES.items():
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"recipe {name!r} names unknown TrainConfig field(s) {unknown}")
        TrainConfig().replace(**values)
