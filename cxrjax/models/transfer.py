"""An ImageNet backbone with one of the studies' heads: S0-D, S1 and S2's transfer learning.

:class:`TransferModel` wraps a headless backbone of the registry (``mobilenet_v2``,
``densenet121``...) under the parameter key ``"backbone"`` (so the variables of
``cxrjax.models.load_pretrained(name, file, include_top=False)`` drop in as they are, see
:func:`merge_pretrained`) and a head under ``"head"``:

- ``"s2"`` / ``"s2_dropout"`` (S2): global average pooling, Dense 500 ReLU, (Dropout 0.5),
  Dense 200 ReLU, Dense K. S2 does not say how the feature map becomes a vector; global
  average pooling (Keras' ``pooling="avg"``) is used.
- ``"s1"`` (S1): AveragePooling2D, Flatten, Dense ReLU, Dropout, Dense K. S1 names only the
  layer types; its sizes are those of the Keras COVID-19 transfer-learning code S1 follows
  (pool 4x4, Dense 64, Dropout 0.5). The pool is ``min(4, feature map)`` so small test
  inputs still work (at 224 px the maps are 7x7: 4x4 pooling, as there).
- ``"s0_d"`` (S0-D): global average pooling, Dense ReLU (128 units, S0's width; S0-D does
  not state it), Dropout 0.5, Dense K.

``dense_units`` / ``dropout`` / ``pool_size`` override a head's sizes. The softmax of the
studies lives in the loss (logits out, as every cxrjax model).

Input: the pipeline's images (``normalization="unit"``: [0, 1], 1 or 3 channels).
Grayscale is replicated to 3 channels, then ``preprocessing`` is applied inside the
model, so training, evaluation, prediction and Grad-CAM all see the same input:
"caffe" / "tf" / "torch" / "pixels" scale to [0, 255] and apply Keras' ``preprocess_input``
(:mod:`cxrjax.models.preprocessing`); "none" passes the (3-channel) images as they are
(what S0, S1 and S2 did: [0, 1] or feature-wise normalised images). ``resolve_preprocessing``
turns "auto" into the mode the backbone's ImageNet weights expect (EfficientNet: "pixels",
[0, 255] as they are: its rescaling and normalisation are layers of the model).

Freezing (``frozen_layers``: names of the backbone's layers with weights, its direct
children, named after the Keras layers): their parameters are labelled "frozen" by
:func:`param_labels` (the optimiser gives them no update and no state) and their
BatchNorm runs on its moving statistics and never writes them (a frozen Keras layer).
With the whole backbone frozen it also runs with ``train=False`` (no dropout) on
``stop_gradient``-ed parameters: no weight gradients are computed for it (activations
still get theirs, for Grad-CAM). :func:`frozen_layers_for` turns
``TrainConfig.freeze`` into the list: ``"backbone"`` (all), ``"all_but_last:N"`` (all but
the last N layers WITH WEIGHTS, in Keras' ``model.layers`` order, which is the
backbone's call order; Keras' weightless layers (activations, padding, adds) are not
counted, as freezing them changes nothing. S0-D's "all but the last 50 layers" of
Keras' MobileNetV2 are its last 34 layers with weights, block_11_project onwards;
the ``s0_d`` preset says ``all_but_last:34``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.base import Classifier, logits_float32
from cxrjax.models.keras_layers import Backbone, KDense
from cxrjax.models.preprocessing import MODES, preprocess_input, preprocessing_mode
from cxrjax.models.registry import MODELS, create

BACKBONE = "backbone"
HEAD = "head"
HEADS = ("s2", "s2_dropout", "s1", "s0_d")
# head -> (dense units, dropout, pool size); s2's units are (500, 200).
HEAD_DEFAULTS: dict[str, tuple[tuple[int, ...], float, int | None]] = {
    "s2": ((500, 200), 0.0, None),
    "s2_dropout": ((500, 200), 0.5, None),
    "s1": ((64,), 0.5, 4),
    "s0_d": ((128,), 0.5, None),
}
FROZEN = "frozen"
TRAINABLE = "trainable"


def is_backbone(name: str) -> bool:
    """Whether registered model ``name`` is an ImageNet backbone (cxrjax.models.keras_layers.Backbone)."""
    if name not in MODELS:
        return False
    build = MODELS[name].build
    return issubclass(getattr(build, "func", build), Backbone)


def backbones() -> list[str]:
    return sorted(n for n in MODELS if is_backbone(n))


def resolve_preprocessing(name: str, preprocessing: str, variant: str = "keras") -> str:
    """ "auto" -> the Keras mode backbone ``name`` (``variant``) expects; other modes as given."""
    if preprocessing == "auto":
        return preprocessing_mode(name, variant)
    if preprocessing not in MODES:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; choose auto or one of {MODES}")
    return preprocessing


class Head(nn.Module):
    """A study's head on the backbone's feature map [B, h, w, C] -> logits [B, K]."""

    kind: str
    num_classes: int
    units: tuple[int, ...]
    dropout: float
    pool_size: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.kind == "s1":
            size = min(self.pool_size or 4, x.shape[1], x.shape[2])
            # Keras' AveragePooling2D (padding "valid") as flax's: differentiable under jit
            # (keras_layers.avg_pool's array init value is not, for a fine-tuned S1 run).
            x = nn.avg_pool(x, (size, size), strides=(size, size), padding="VALID")
            x = x.reshape(x.shape[0], -1)
        else:
            x = jnp.mean(x, axis=(1, 2))
        for i, units in enumerate(self.units):
            x = nn.relu(KDense(units, dtype=self.dtype, name=f"dense{i + 1}")(x))
            if self.dropout and (self.kind != "s2_dropout" or i == 0):
                x = nn.Dropout(self.dropout, deterministic=not train, name=f"dropout{i + 1}")(x)
        return logits_float32(KDense(self.num_classes, dtype=self.dtype, name="predictions")(x))


class TransferModel(Classifier):
    """Backbone ``backbone_name`` (headless) + head ``head``; see the module docstring."""

    backbone_name: str = "mobilenet_v2"
    head: str = "s2"
    preprocessing: str = "none"  # resolved: caffe | tf | torch | pixels | none
    frozen_layers: tuple[str, ...] = ()
    backbone_options: tuple[tuple[str, Any], ...] = ()
    dense_units: tuple[int, ...] | None = None
    dropout: float | None = None
    pool_size: int | None = None

    def setup(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        self.backbone = create(
            self.backbone_name,
            num_classes=1,
            channels=3,
            dtype=self.dtype,
            axis_name=self.axis_name,
            include_top=False,
            pooling=None,
            freeze_batchnorm=self.all_frozen,
            **dict(self.backbone_options),
        )
        units, dropout, pool = HEAD_DEFAULTS[self.head]
        self.classifier = Head(
            self.head,
            self.num_classes,
            tuple(self.dense_units or units),
            dropout if self.dropout is None else self.dropout,
            self.pool_size or pool,
            dtype=self.dtype,
            name=HEAD,
        )

    @property
    def all_frozen(self) -> bool:
        return bool(self.frozen_layers) and set(self.frozen_layers) >= set(backbone_layers(self.backbone_name))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The backbone's stages (their perturb points sit under "backbone/"; Grad-CAM
        finds them by name)."""
        return backbone_module(self.backbone_name, dict(self.backbone_options)).feature_names

    @nn.nowrap
    def min_image_size(self) -> int:
        return backbone_module(self.backbone_name, dict(self.backbone_options)).min_image_size()

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(
                f"TransferModel expects NHWC images with 1 or 3 channels, got shape {x.shape}; "
                "grayscale is replicated to RGB inside the model"
            )
        x = x.astype(jnp.float32)
        if self.preprocessing == "none":
            x = jnp.concatenate([x] * 3, axis=-1) if x.shape[-1] == 1 else x
        else:
            x = preprocess_input(x * 255.0, self.preprocessing)
        if self.all_frozen:
            # No gradient for the frozen parameters (no backward pass for them), but one
            # for the activations: Grad-CAM differentiates through the backbone.
            initializing = self.is_initializing()
            frozen_call = nn.map_variables(
                lambda mdl, x: mdl.backbone(x, train=False),
                "params",
                trans_in_fn=jax.lax.stop_gradient,
                init=initializing,
                mutable=initializing,
            )
            features = frozen_call(self, x)
        elif self.frozen_layers:
            with nn.intercept_methods(functools.partial(_frozen_batchnorm, frozen=frozenset(self.frozen_layers))):
                features = self.backbone(x, train=train)
        else:
            features = self.backbone(x, train=train)
        return self.classifier(features, train=train)


def _frozen_batchnorm(next_fun, args, kwargs, context, *, frozen: frozenset):
    """Run the frozen backbone layers' BatchNorm on their moving statistics (no update):
    an ``nn.intercept_methods`` interceptor, so the backbones need no per-layer switch."""
    module = context.module
    if (
        isinstance(module, nn.BatchNorm)
        and context.method_name == "__call__"
        and module.scope is not None
        and len(module.scope.path) >= 2
        and module.scope.path[-2] == BACKBONE
        and module.name in frozen
    ):
        # The backbone passes use_running_average to the constructor (flax refuses it again
        # at call time); the instance is created anew on every call of the backbone
        # (compact), so setting the field on it changes this call only.
        object.__setattr__(module, "use_running_average", True)
    return next_fun(*args, **kwargs)


def backbone_module(name: str, options: dict[str, Any] | None = None) -> Backbone:
    """The headless backbone ``name`` as TransferModel builds it (unbound)."""
    return create(name, num_classes=1, channels=3, include_top=False, pooling=None, **(options or {}))


@functools.lru_cache(maxsize=32)
def _layers(name: str, options: tuple[tuple[str, Any], ...]) -> tuple[str, ...]:
    from cxrjax.models.weights import abstract_variables

    module = backbone_module(name, dict(options))
    size = max(module.min_image_size(), 32)
    _, order = abstract_variables(module, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return tuple(order)


def backbone_layers(name: str, options: dict[str, Any] | tuple | None = None) -> tuple[str, ...]:
    """The headless backbone's layers with weights, in call order (= Keras' ``model.layers``
    order of its layers with weights)."""
    items = tuple(sorted(dict(options or {}).items()))
    return _layers(name, items)


def frozen_layers_for(
    name: str, kind: str, count: int | None, options: dict[str, Any] | None = None
) -> tuple[str, ...]:
    """The frozen layers of backbone ``name`` for ``TrainConfig.freeze`` parsed as (kind, count):
    none -> (), backbone -> all, all_but_last:N -> all but the last N layers with weights."""
    layers = backbone_layers(name, options)
    if kind == "none":
        return ()
    if kind == "backbone":
        return layers
    if kind == "all_but_last":
        if count > len(layers):
            raise ValueError(
                f"freeze all_but_last:{count}: {name} has only {len(layers)} layers with weights; "
                f"use a number <= {len(layers)}"
            )
        return layers[: len(layers) - count]
    raise ValueError(f"unknown freeze {kind!r}")


def param_labels(params: Any, frozen_layers: tuple[str, ...] | frozenset) -> Any:
    """A tree like ``params`` of "frozen" (under params["backbone"][layer] of a frozen layer)
    and "trainable" labels, for ``optax.multi_transform``."""
    frozen = frozenset(frozen_layers)

    def label(path, _leaf):
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        if len(keys) >= 2 and keys[0] == BACKBONE and keys[1] in frozen:
            return FROZEN
        return TRAINABLE

    return jax.tree_util.tree_map_with_path(label, params)


def merge_pretrained(variables: dict[str, Any], pretrained: dict[str, Any]) -> dict[str, Any]:
    """``variables`` (of a TransferModel) with the backbone's replaced by ``pretrained``
    (``{"params": ..., "batch_stats": ...}`` of the headless backbone)."""
    out = {k: dict(v) for k, v in variables.items()}
    for collection, tree in pretrained.items():
        if collection in out and tree:
            out[collection][BACKBONE] = tree
    return out


def create_transfer(
    name: str,
    *,
    head: str,
    num_classes: int,
    channels: int | None = None,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    preprocessing: str = "auto",
    freeze: tuple[str, int | None] = ("none", None),
    **options: Any,
) -> TransferModel:
    """TransferModel of backbone ``name`` with ``head``; ``options``: the head's
    (``dense_units``, ``dropout``, ``pool_size``), the rest the backbone's (e.g. ``variant``)."""
    if not is_backbone(name):
        raise ValueError(f"head={head!r} needs an ImageNet backbone as the model; backbones: {backbones()}")
    head_fields = {"dense_units", "dropout", "pool_size"}
    head_options = {k: v for k, v in options.items() if k in head_fields}
    if "dense_units" in head_options and head_options["dense_units"] is not None:
        head_options["dense_units"] = tuple(head_options["dense_units"])
    backbone_options = {k: v for k, v in options.items() if k not in head_fields}
    cls = getattr(MODELS[name].build, "func", MODELS[name].build)
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "include_top", "pooling"}
    fields -= {"num_classes", "channels", "dtype", "axis_name", "freeze_batchnorm"}
    unknown = sorted(set(backbone_options) - fields)
    if unknown:
        raise TypeError(
            f"model {name!r} with head {head!r} has no option(s) {unknown}; valid options: "
            f"{sorted(fields | head_fields)}"
        )
    mode = resolve_preprocessing(name, preprocessing, backbone_options.get("variant", "keras"))
    return TransferModel(
        num_classes=num_classes,
        channels=channels or 3,
        dtype=dtype,
        axis_name=axis_name,
        backbone_name=name,
        head=head,
        preprocessing=mode,
        frozen_layers=frozen_layers_for(name, freeze[0], freeze[1], backbone_options),
        backbone_options=tuple(sorted(backbone_options.items())),
        **head_options,
    )


# --------------------------------------------------------------------------------------
# Pretrained weights of the backbone
# --------------------------------------------------------------------------------------
IMPORTED_META = "meta.json"  # python -m cxrjax.models import-weights: <dir>/meta.json + <dir>/variables


def _top_layer(entry: str, cls: Any) -> bool:
    """Whether an 'unexpected' entry of a weight file is the ImageNet classifier (a full,
    not _notop, file loaded into the headless backbone)."""
    layer = entry.split(" ")[0]
    if layer in getattr(cls, "top_layers", ()):
        return True
    top = getattr(cls, "torchvision_top", None)
    return bool(top) and layer.startswith(top)


def _check_like(loaded: dict, expected: dict, where: str) -> None:
    """Refuse loaded variables whose layers / shapes differ from the headless backbone's."""
    from flax.traverse_util import flatten_dict

    got = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(loaded).items()}
    want = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(expected).items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shaped = sorted(f"{k}: {got[k]} vs model {want[k]}" for k in set(got) & set(want) if got[k] != want[k])
    if missing or unexpected or shaped:
        parts = [
            f"{len(v)} {label}: {', '.join(v[:20])}{' ...' if len(v) > 20 else ''}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
            if v
        ]
        raise ValueError(f"{where} does not match the headless backbone: " + "; ".join(parts))


def load_backbone_weights(name: str, path: str, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(variables of the headless backbone ``name``, a record of what was loaded) from
    ``path``: a weight file (Keras .h5, torchvision .pth / .safetensors; a file with the
    ImageNet top loads too, the top is dropped) or a folder written by
    ``python -m cxrjax.models import-weights`` (``meta.json`` + orbax ``variables``).

    The record (results.json ``weights``): {"pretrained": path, "kind": "weight_file" |
    "imported_checkpoint", "sha256": of the weight file, "source_format", "tensors",
    "tensors_skipped": the file's tensors left out by design (the backbone's
    ``torchvision_skipped``, e.g. InceptionV3's ``AuxLogits.*``; [] for most files)}.
    Raises ValueError (a WeightFileError for unreadable or mismatching files) naming the
    file and what did not match.
    """
    import json
    from pathlib import Path

    from cxrjax.models import weights

    options = dict(options or {})
    cls = getattr(MODELS[name].build, "func", MODELS[name].build)
    module = backbone_module(name, options)
    size = max(module.min_image_size(), 32)
    expected, _ = weights.abstract_variables(module, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    p = Path(path)
    if p.is_dir():
        meta_path = p / IMPORTED_META
        if not meta_path.is_file() or not (p / "variables").exists():
            raise ValueError(
                f"{p} is a folder but not one written by 'python -m cxrjax.models import-weights' (no "
                f"{IMPORTED_META} and variables/); pass the weight file itself or import it first"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("model") != name:
            raise ValueError(
                f"{p} holds weights of {meta.get('model')!r}, not {name!r}; use --model {meta.get('model')}"
            )
        variant = options.get("variant", "keras")
        if meta.get("variant", "keras") != variant:
            raise ValueError(
                f"{p} holds the {meta.get('variant')!r} variant of {name} but the model is {variant!r}; "
                f'set --set \'model_options={{"variant": "{meta.get("variant")}"}}\''
            )
        import orbax.checkpoint as ocp

        restored = ocp.StandardCheckpointer().restore((p / "variables").absolute())
        top = set(getattr(cls, "top_layers", ()))
        loaded = {c: {k: v for k, v in tree.items() if k not in top} for c, tree in restored.items()}
        record = {
            "pretrained": str(p),
            "kind": "imported_checkpoint",
            "sha256": meta.get("sha256"),
            "weights_file": meta.get("weights_file"),
            "source_format": meta.get("source_format"),
            # import-weights records them since the first backbone that skips any (inception_v3)
            "tensors_skipped": list(meta.get("tensors_skipped", [])),
        }
    else:
        file = weights.read_weight_file(p)
        if file.source == "torchvision" and "torchvision" in cls.variants and options.get("variant") != "torchvision":
            raise ValueError(
                f"{p} is a torchvision state dict; {name}'s torchvision architecture differs slightly from "
                'Keras\': set --set \'model_options={"variant": "torchvision"}\''
            )
        create_options = dict(options)
        module_, loaded, unmatched = weights.load_pretrained(
            name, file, include_top=False, pooling=None, strict=False, image_size=size, **create_options
        )
        for option in ("variant", "imagenet_rescaling"):
            wanted, built = getattr(module_, option, None), getattr(module, option, None)
            if wanted != built:  # load_pretrained chose it from the file; the run's model must agree
                raise ValueError(
                    f"{p} needs {name} with {option}={wanted!r} but the model has {built!r}; set "
                    f"--set 'model_options={{\"{option}\": {json.dumps(wanted)}}}'"
                )
        unexpected = [u for u in unmatched.unexpected if not _top_layer(u, cls)]
        if unmatched.missing or unmatched.mismatched or unexpected:
            raise weights.WeightFileError(
                f"{p} does not match {name} (headless): "
                + weights.Unmatched(unmatched.missing, tuple(unexpected), unmatched.mismatched).describe()
                + f". The file's layers: {', '.join(file.layer_names[:40])}"
            )
        record = {
            "pretrained": str(p),
            "kind": "weight_file",
            "sha256": weights.sha256(p),
            "weights_file": str(p),
            "source_format": file.source,
            "tensors_skipped": list(unmatched.skipped),
        }
    loaded = jax.tree_util.tree_map(jnp.asarray, loaded)
    _check_like(loaded, expected, str(p))
    record["tensors"] = len(jax.tree_util.tree_leaves(loaded))
    return loaded, record


RANDOM_INIT = {"pretrained": None, "kind": "random_init", "note": "random init: no ImageNet weights were loaded"}
