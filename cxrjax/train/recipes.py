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

Recipes are made of INGREDIENTS (:data:`INGREDIENTS`: name -> TrainConfig values, each
with its reason in :data:`INGREDIENT_WHY`), so that each can be switched on and off and
measured: a recipe is the union of a list of ingredients (:data:`RECIPE_INGREDIENTS`), and
``--recipe`` takes an EXPRESSION of them (:func:`parse_recipe`)::

    cxr                          the recipe
    cxr-label_smoothing          cxr without one ingredient (leave-one-out)
    none+augment                 the studies' settings (no recipe) plus one ingredient
    cxr+ema                      cxr plus an ingredient it does not contain
    cxr-normalization+augment    (any sequence; applied left to right)

An unknown ingredient, adding one already there or removing one that is not, and two
ingredients that set one field to different values are errors (ValueError listing the
known names). The expression is what ``TrainConfig.recipe`` and ``config.json`` record,
next to the resolved values; ``python -m experiments.recipe_ablation`` runs the
leave-one-out (and add-one) cells under k-fold cross-validation.

RECIPES["cxr"] -- PROVISIONAL. Meant for small CNNs trained from scratch on a few hundred
to a few thousand chest radiographs. Its first seven ingredients were a first guess; the
first measurement (docs/measurements.md, "Recipe ablation on the development set": 5-fold
CV, one seed, s4_exp4 at 64 px) added ``thorax_crop``: without it the recipe's model lost
31 points when shown the thorax alone, with it the model cannot use anything outside the
thorax box, for 3.3 points of accuracy. Later measurements (S0-C at 64 px, 5 folds, one
seed) lengthened ``early_stopping`` and added ``shift`` and ``contrast_gamma``; weight
decay 0.05, a stronger zoom/rotation, batch 16, EMA and per-image normalisation did not
beat it (docs/measurements.md); a second seed of cxr itself differs by -3.9 points, as
much as any of those screens. With three seeds (2026-12-04): the leave-one-out ablation
of LeNet-5 at 32 px (every ingredient, 5 folds x 3 seeds; docs/measurements.md, "Three
seeds") finds the long schedule the one large gain (-9.2 points without it) and
``thorax_crop`` the one cost (-3.0 points on the full film, +20.2 on the thorax alone);
the others are within +-1.6 points; and ``early_stopping`` now monitors validation loss.
Every model is still to be measured, and the contents may change. Its ingredients, and
why each (:data:`INGREDIENT_WHY` says the same per ingredient):

* ``normalization`` (``normalization="dataset"``): the train split's mean/std; sources
  differ in exposure.
* ``no_hflip`` (``hflip=False``): the heart and the aortic knob sit on the left, so a
  flipped film is not a plausible radiograph (presets that flip, S2's and S3's, stop; for
  S0's and S4's, which never flip, it changes nothing, and ``experiments.recipe_ablation``
  does not train its leave-one-out row there). Measured: ``cxr --set hflip=true`` on S0-C
  at 64 px, 5 folds, -2.8 points [-8.5, +2.9] (docs/measurements.md, "Seed noise of
  cxr, and the horizontal flip"): no gain.
* ``augment`` (``rotate_degrees=7``, ``zoom=(0.9, 1.1)``, ``brightness=(0.85, 1.15)``):
  positioning, field of view and exposure vary between radiographs.
* ``shift`` (``translate=0.06``) and ``contrast_gamma`` (``contrast=(0.8, 1.2)``,
  ``gamma=(0.8, 1.25)``): patients are not centred alike, and detectors and
  post-processing differ between hospitals. Added 2026-12-03: +2.2 points paired over 5
  folds (t-interval [-3.9, +8.3], 4 of 5 folds higher; 85.2% [80.8, 89.6] against 83.0%
  for S0-C at 64 px, thorax-only = full; docs/measurements.md, "More augmentation once it
  fits"). Not significant on its own; kept because it is the best cell measured, costs no
  step time (one resampling with the rotation and zoom) and has a reason on X-rays.
* ``adamw_cosine`` (``optimizer="adamw"``, ``lr=1e-3``, ``weight_decay=1e-4``,
  ``schedule="warmup_cosine"`` with one warm-up epoch to ``min_lr=0``,
  ``grad_clip_norm=1.0``): a stable default for networks without pretrained weights.
* ``label_smoothing`` (``label_smoothing=0.1``): labels of public COVID collections are
  noisy.
* ``class_weights`` (``class_weights="balanced"``): the collections are imbalanced.
* ``early_stopping`` (``monitor="val_loss"``, ``early_stopping_patience=30``,
  ``restore_best=True``, ``epochs=120``): train longer, stop when validation loss stalls,
  test its best epoch. Was 40 epochs / patience 8 until 2026-12-03: S0-C stopped at
  16-24 epochs with its training accuracy (77-83%) no higher than its validation
  accuracy, i.e. still underfitting (a few hundred images are ~15 steps an epoch);
  120 / 30 gave +5.9 points over 5 folds at 64 px (docs/measurements.md, "Longer
  training"). Monitored validation macro-F1 until 2026-12-04: on ~125 validation images
  it jumps by whole images and picked lucky early epochs (one S0-C run kept epoch 13 of
  43, training accuracy 78%, and tested at 71%); validation loss is smooth and keeps
  falling later. Over 3 seeds x 5 folds it gave S0-C at 64 px +2.5 points [+0.3, +4.6]
  (84.6% [83.6, 85.6], no run lower) and LeNet-5 at 32 px +1.1 [+0.2, +2.0]
  (docs/measurements.md, "Three seeds"). Testing the last epoch of the full 120
  (``--set early_stopping_patience=null --set restore_best=false``) is as good (S0-C
  -0.5 [-2.1, +1.2] against the validation loss, LeNet-5 +0.7) and always costs 120
  epochs.
* ``thorax_crop`` (``crop_box=(0.15, 0.90, 0.15, 0.85)``, every split): the model sees
  only the thorax box, never the border, collimation edges or corner markers that say
  which hospital a film came from (the mask-free probe's thorax-only input is then its
  full input, so the probe cannot fail for it: see cxrjax/explain/mask_free.py).

Ingredients outside cxr, for ``cxr+NAME`` / ``none+NAME``: ``ema`` (``ema_decay=0.99``;
-3.8 points at 64 px, docs/measurements.md), ``balanced_sampling``
(``balanced_sampling=True``; with ``class_weights`` it balances twice: try
``cxr-class_weights+balanced_sampling``), ``mixup`` (``mixup=0.2``; -1.4 points
[-2.7, -0.1] on LeNet-5 at 32 px, 3 seeds, docs/measurements.md), ``random_erasing``,
``border_erase`` and ``per_image_normalization`` (as
``cxr-normalization+per_image_normalization``: -5.5 points at 64 px; both measured on the
cxr of before shift and contrast_gamma).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# Ingredient name -> the TrainConfig values it sets. Why each: INGREDIENT_WHY.
INGREDIENTS: dict[str, dict[str, Any]] = {
    "normalization": {"normalization": "dataset"},
    "no_hflip": {"hflip": False},
    "augment": {"rotate_degrees": 7.0, "zoom": (0.9, 1.1), "brightness": (0.85, 1.15)},
    "adamw_cosine": {
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "warmup_cosine",
        "warmup_epochs": 1.0,
        "min_lr": 0.0,
        "grad_clip_norm": 1.0,
    },
    "label_smoothing": {"label_smoothing": 0.1},
    "class_weights": {"class_weights": "balanced"},
    "early_stopping": {"monitor": "val_loss", "early_stopping_patience": 30, "restore_best": True, "epochs": 120},
    "shift": {"translate": 0.06},
    "contrast_gamma": {"contrast": (0.8, 1.2), "gamma": (0.8, 1.25)},
    # --- not in cxr (cxr+NAME, none+NAME) ---
    "ema": {"ema_decay": 0.99},
    "balanced_sampling": {"balanced_sampling": True},
    "mixup": {"mixup": 0.2},
    # --- aimed at the thorax (the mask-free probe's thorax-only accuracy) ---
    "random_erasing": {"random_erasing": 0.5},
    "border_erase": {"border_erase": 0.12},
    "per_image_normalization": {"normalization": "per_image"},
    "thorax_crop": {"crop_box": (0.15, 0.90, 0.15, 0.85)},
}

# Why each ingredient, and what it is for (check_recipes: one entry per ingredient).
INGREDIENT_WHY: dict[str, str] = {
    "normalization": "standardise with the train split's mean/std: sources differ in exposure",
    "no_hflip": "no horizontal flip: the heart sits on the left, a mirrored film is not a plausible radiograph",
    "augment": "small rotations, zoom and brightness changes: positioning, field of view and exposure vary",
    "adamw_cosine": "AdamW with weight decay, one warm-up epoch, cosine decay and gradient clipping: a stable "
    "default for networks trained from scratch",
    "label_smoothing": "label smoothing 0.1: labels of public COVID collections are noisy",
    "class_weights": "class-balanced loss weights: the collections are imbalanced",
    "early_stopping": "up to 120 epochs, early stopping on validation loss (patience 30), best checkpoint "
    "restored: train longer, select on a smooth metric (macro-F1 of ~125 images picks lucky early epochs)",
    "ema": "evaluate and checkpoint an exponential moving average of the weights (decay 0.99, about 100 "
    "steps): smoother than the last step's weights on small, noisy data",
    "balanced_sampling": "draw each epoch with replacement so classes are equally likely (balances twice "
    "with class_weights: use cxr-class_weights+balanced_sampling)",
    "mixup": "mixup with Beta(0.2, 0.2) weights: each training image blended with its neighbour, the loss "
    "with both labels; a smoother decision boundary from a few hundred images",
    "shift": "random shifts of up to 6% of the side (with rotation and zoom, one resampling): patients are "
    "not centred alike",
    "contrast_gamma": "contrast (0.8-1.2) and gamma (0.8-1.25) jitter: detectors and post-processing differ "
    "between hospitals",
    "random_erasing": "with probability 0.5 blank one rectangle (2-20% of the area) with the image mean: no "
    "single region (a marker, a tube) can carry the decision",
    "border_erase": "blank each border strip with a random width up to 12% of the side: collimation edges and "
    "corner markers say which hospital, not which disease",
    "per_image_normalization": "standardise each image by its own mean/std (every split): exposure and "
    "windowing differ per film (sets the field the normalization ingredient sets: "
    "cxr-normalization+per_image_normalization)",
    "thorax_crop": "train and evaluate on the thorax box (rows 15-90%, columns 15-85%, the mask-free probe's): "
    "the model never sees the border (the probe's thorax-only input is then its full input)",
}

# Recipe name -> its ingredients, in order; RECIPES holds the union of their values.
RECIPE_INGREDIENTS: dict[str, tuple[str, ...]] = {
    "cxr": (
        "normalization",
        "no_hflip",
        "augment",
        "shift",
        "contrast_gamma",
        "adamw_cosine",
        "label_smoothing",
        "class_weights",
        "early_stopping",
        "thorax_crop",
    ),
}

NO_RECIPE = "none"  # the base of an expression without a recipe: the preset's (studies') settings


def _union(ingredients: Iterable[str], what: str) -> dict[str, Any]:
    """The values of ``ingredients`` together; ValueError when two set a field differently."""
    values: dict[str, Any] = {}
    setter: dict[str, str] = {}
    for name in ingredients:
        if name not in INGREDIENTS:
            raise ValueError(unknown_ingredient_message(name, what))
        for field, value in INGREDIENTS[name].items():
            if field in values and values[field] != value:
                raise ValueError(
                    f"recipe {what!r}: ingredients {setter[field]!r} and {name!r} both set {field} "
                    f"({values[field]!r} and {value!r}); remove one of them (e.g. {what}-{setter[field]})"
                )
            values[field], setter[field] = value, name
    return values


def unknown_ingredient_message(name: Any, what: str) -> str:
    known = ", ".join(INGREDIENTS)
    return (
        f"unknown ingredient {name!r} in recipe {what!r}; known ingredients: {known} (cxrjax.train.recipes.INGREDIENTS)"
    )


RECIPES: dict[str, dict[str, Any]] = {name: _union(parts, name) for name, parts in RECIPE_INGREDIENTS.items()}

RECIPE_NAMES = tuple(RECIPES)


def unknown_recipe_message(name: Any) -> str:
    known = ", ".join(RECIPE_NAMES)
    return (
        f"unknown recipe {name!r}; known recipes: {known} (cxrjax.train.recipes.RECIPES), or an expression "
        f"of ingredients such as cxr-label_smoothing or none+augment (ingredients: {', '.join(INGREDIENTS)})"
    )


@dataclass(frozen=True)
class RecipeExpression:
    """A parsed ``--recipe`` expression: ``base`` (a recipe name, or None for ``none``)
    with ingredients added (``+``) and removed (``-``) left to right; ``ingredients`` is
    the result, in order (the base's, then the added ones); ``text`` the canonical
    spelling, which configs record: the base, the base's ingredients removed (in its
    order), then those added (in the order given), e.g. ``none+a+b-a`` -> ``none+b``."""

    text: str
    base: str | None
    added: tuple[str, ...]
    removed: tuple[str, ...]
    ingredients: tuple[str, ...]

    @property
    def is_none(self) -> bool:
        """The studies' settings: no recipe, nothing added."""
        return self.base is None and not self.ingredients


_OPERATOR = re.compile(r"\s*([+-])\s*")


def parse_recipe(text: str) -> RecipeExpression:
    """``"cxr-label_smoothing+ema"`` -> its :class:`RecipeExpression`.

    Raises ValueError (listing the known recipes or ingredients) for an unknown base or
    ingredient, an empty name, an ingredient added twice or removed while absent, or two
    ingredients that set a field to different values.
    """
    raw = str(text).strip()
    parts = _OPERATOR.split(raw)
    head, rest = parts[0].strip(), parts[1:]
    if not head:
        raise ValueError(f"recipe {raw!r} must start with a recipe name or 'none'; {unknown_recipe_message(raw)}")
    if head.lower() == NO_RECIPE:
        base, current = None, []
    elif head in RECIPES:
        base, current = head, list(RECIPE_INGREDIENTS[head])
    elif head in INGREDIENTS:
        raise ValueError(
            f"recipe {raw!r}: {head!r} is an ingredient, not a recipe; write none+{head} (the studies' settings "
            f"plus it) or cxr+{head}; known recipes: {', '.join(RECIPE_NAMES)}"
        )
    else:
        raise ValueError(unknown_recipe_message(head))
    added: list[str] = []
    removed: list[str] = []
    text_parts = [NO_RECIPE if base is None else base]
    for op, name in zip(rest[0::2], rest[1::2]):
        name = name.strip()
        if not name:
            raise ValueError(f"recipe {raw!r}: {op!r} must be followed by an ingredient name")
        if name not in INGREDIENTS:
            raise ValueError(unknown_ingredient_message(name, raw))
        if op == "+":
            if name in current:
                have = ", ".join(current)
                raise ValueError(f"recipe {raw!r}: ingredient {name!r} is already in it (ingredients: {have})")
            current.append(name)
            added.append(name)
        else:
            if name not in current:
                raise ValueError(
                    f"recipe {raw!r}: ingredient {name!r} is not in it (ingredients: {', '.join(current) or 'none'})"
                )
            current.remove(name)
            removed.append(name)
    # The canonical text depends only on the result: the base, its ingredients removed (in
    # its order), then the ingredients added (in the order given): none+a+b-a -> none+b.
    base_ingredients = RECIPE_INGREDIENTS[base] if base is not None else ()
    text_parts += [f"-{name}" for name in base_ingredients if name not in current]
    text_parts += [f"+{name}" for name in current if name not in base_ingredients]
    canonical = "".join(text_parts)
    _union(current, canonical)
    return RecipeExpression(canonical, base, tuple(added), tuple(removed), tuple(current))


def check_recipe(text: str) -> str:
    """The canonical spelling of recipe expression ``text`` (ValueError if it is refused)."""
    return parse_recipe(text).text


def recipe_values(name: str) -> dict[str, Any]:
    """The options of recipe expression ``name`` (a recipe, or ingredients added to or
    removed from one, :func:`parse_recipe`): a new dict. ValueError listing the known
    recipes or ingredients."""
    expression = parse_recipe(name)
    return _union(expression.ingredients, expression.text)


def apply_recipe(config: Any, name: str | None, explicit: Iterable[str] = ()) -> Any:
    """``config`` (a TrainConfig: a preset or the defaults) with recipe expression
    ``name``'s options, except the fields in ``explicit`` (the options the user gave,
    applied after this by the caller, so they win), and ``recipe`` = the expression's
    canonical text. None or ``none``: ``config`` with ``recipe=None``.

    Raises ValueError for an unknown recipe or ingredient, or a value TrainConfig refuses.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", NO_RECIPE)):
        return config.replace(recipe=None)
    expression = parse_recipe(name)
    skip = set(explicit)
    values = {k: v for k, v in recipe_values(expression.text).items() if k not in skip}
    try:
        return config.replace(**values, recipe=expression.text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"recipe {expression.text!r}: {err}") from err


def resolve(config: Any, changes: Mapping[str, Any]) -> Any:
    """``config`` < recipe (``changes["recipe"]``, if given) < the other ``changes``: the
    one resolution every command line uses. Returns the config with every change applied.

    Raises ValueError (unknown recipe, refused value).
    """
    changes = dict(changes)
    if "recipe" in changes:
        config = apply_recipe(config, changes.pop("recipe"), explicit=changes)
    return config.replace(**changes) if changes else config


def leave_one_out(recipe: str) -> list[str]:
    """``recipe`` without each of its ingredients in turn: ``["cxr-normalization", ...]``."""
    expression = parse_recipe(recipe)
    return [f"{expression.text}-{name}" for name in expression.ingredients]


def add_one(recipe: str = NO_RECIPE) -> list[str]:
    """``recipe`` plus each ingredient it lacks in turn: ``["none+normalization", ...]``."""
    expression = parse_recipe(recipe)
    return [f"{expression.text}+{name}" for name in INGREDIENTS if name not in expression.ingredients]


def check_recipes() -> None:
    """Every ingredient (alone, and in every recipe) names TrainConfig fields with values
    it accepts and has a reason in INGREDIENT_WHY; every recipe's ingredients agree
    (ValueError otherwise)."""
    from cxrjax.train.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    undocumented = sorted(set(INGREDIENTS) ^ set(INGREDIENT_WHY))
    if undocumented:
        raise ValueError(
            f"ingredients without an INGREDIENT_WHY entry (or entries without an ingredient): {undocumented}"
        )
    for name, values in INGREDIENTS.items():
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"ingredient {name!r} names unknown TrainConfig field(s) {unknown}")
        if not values:
            raise ValueError(f"ingredient {name!r} sets nothing")
        try:
            TrainConfig().replace(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ingredient {name!r}: {err}") from err
    for name in RECIPES:
        values = recipe_values(name)
        TrainConfig().replace(**values)
        if values != RECIPES[name]:
            raise ValueError(f"recipe {name!r}: RECIPES differs from the union of its ingredients")
