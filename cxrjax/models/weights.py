"""Import ImageNet weights the user already has: Keras application files and torchvision state dicts.

cxrjax never downloads anything. :func:`load_pretrained` reads

- a Keras legacy-HDF5 weight file (``*_weights_tf_dim_ordering_tf_kernels[_notop].h5``,
  or a whole model saved as legacy ``.h5``): root attribute ``layer_names``, one group per
  layer with attribute ``weight_names``, as Keras 2 wrote them (``conv1/kernel:0``) and
  Keras 3's legacy writer still does (``conv1/kernel``). Matched as Keras' own loader
  does: by layer name, and by weight order within a layer; the weight names, where they
  are Keras' standard ones, are checked against that order too. The backbones name
  their Flax layers after the Keras layers and their variables so that a layer's Keras
  weights, in order, are its Flax variables sorted by ``keras_layers.KERAS_ORDER``:
  the mapping is derived from the module, not written per model.
- a torchvision state dict (``.pth`` / ``.pt`` via ``torch.load(weights_only=True)``, or
  ``.safetensors`` without torch), for backbones with ``torchvision_layer`` (a method
  naming the torchvision module of each Flax layer; build them with
  ``variant="torchvision"`` where the two architectures differ). Conv kernels OIHW ->
  HWIO, depthwise [C*m, 1, kh, kw] -> [kh, kw, C, m], linear [out, in] -> [in, out],
  BatchNorm weight / bias / running_mean / running_var -> scale / bias / mean / var
  (``num_batches_tracked`` is ignored). Tensors under a backbone's
  ``torchvision_skipped`` prefixes (InceptionV3's training-only ``AuxLogits.*``) have no
  place in the model by design: they are skipped, listed in ``Unmatched.skipped`` and in
  a ``note:`` line on stderr, and ``import_weights`` records them (``tensors_skipped``).

Every tensor's shape is checked. Missing, unexpected or mis-shaped tensors are a
:class:`WeightFileError` naming the file, what did not match, the file's own layer
names and the fixes that apply (:func:`mismatch_hints`: the variant the file's format
needs, ``include_top=False`` for a file without the top); ``strict=False`` loads what
matches, keeps the seeded random init for the rest and returns the list of what did
not match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.efficientnet import IMAGENET_STDDEV_RGB
from cxrjax.models.keras_layers import KERAS_ORDER, Backbone
from cxrjax.models.preprocessing import preprocessing_mode
from cxrjax.models.registry import MODELS, create

KERAS_SUFFIXES = ("h5", "hdf5", "keras_h5")
TORCH_SUFFIXES = ("pth", "pt", "bin")
SAFETENSORS_SUFFIXES = ("safetensors",)
_ORDER: dict[tuple[str, str], int] = {}
for _i, (_, _collection, _var) in enumerate(KERAS_ORDER):
    _ORDER.setdefault((_collection, _var), _i)
# Keras weight name -> the Flax variables it may be (Keras 3 names a DepthwiseConv2D's
# depthwise kernel "kernel", Keras 2 "depthwise_kernel").
_KERAS_NAME: dict[str, set[tuple[str, str]]] = {}
for _keras, _collection, _var in KERAS_ORDER:
    _KERAS_NAME.setdefault(_keras, set()).add((_collection, _var))
_KERAS_NAME["kernel"].add(("params", "depthwise_kernel"))
_TORCH_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_MAX_LISTED = 40


class WeightFileError(ValueError):
    """A weight file that cannot be read, or that does not match the model; the message
    names the file and what did not match."""


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A weight file's tensors: ``layers`` maps a layer (Keras layer name, or torchvision
    key) to its [(weight name, array)] in file order; ``source`` is "keras_h5" or
    "torchvision"."""

    path: str
    source: str
    layers: dict[str, list[tuple[str, np.ndarray]]]
    layer_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Unmatched:
    """What did not match: (collection, layer, variable) targets the file lacks; file
    tensors the model has no place for; (target, file shape, model shape) mismatches.
    ``skipped``: file tensors left out by design (``torchvision_skipped``), not a mismatch."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label}: {_listing(items)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} mis-shaped: {_listing(self.mismatched)}")
        return "; ".join(parts)


def _listing(items) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------
def _attribute_list(group, name: str) -> list[str]:
    """Keras' ``load_attributes_from_hdf5_group``: ``name`` or its chunks ``name0``, ``name1``..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for v in values]


def read_keras_h5(path: str | os.PathLike) -> WeightFile:
    import h5py

    path = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(
            f"{path}: not a readable HDF5 file (truncated, corrupt or another format: {e}); "
            "expected a Keras application weight file such as resnet50_weights_tf_dim_ordering_tf_kernels.h5"
        ) from None
    with f:
        group = f["model_weights"] if "model_weights" in f and "layer_names" not in f.attrs else f
        names = _attribute_list(group, "layer_names")
        if not names:
            hint = (
                " (this looks like Keras 3's new .weights.h5 format; save the legacy layout with "
                "keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group)"
                if "layers" in f or "vars" in f
                else ""
            )
            raise WeightFileError(f"{path}: an HDF5 file without Keras' 'layer_names' attribute{hint}")
        layers: dict[str, list[tuple[str, np.ndarray]]] = {}
        try:
            for name in names:
                if name not in group:
                    raise WeightFileError(f"{path}: layer {name!r} is listed in 'layer_names' but has no group")
                layer = group[name]
                weights = []
                for w in _attribute_list(layer, "weight_names"):
                    weights.append((w, np.asarray(layer[w])))
                if weights:
                    layers[name] = weights
        except (OSError, KeyError, RuntimeError) as e:
            raise WeightFileError(f"{path}: cannot read its tensors (truncated or corrupt?): {e}") from None
    return WeightFile(path, "keras_h5", layers, tuple(names))


def read_torch_state_dict(path: str | os.PathLike) -> WeightFile:
    path = str(path)
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file

            flat = load_file(path)
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise WeightFileError(f"{path}: not a readable .safetensors file (truncated or corrupt?): {e}") from None
    else:
        try:
            import torch
        except ImportError:
            raise WeightFileError(
                f"{path}: reading a .pth state dict needs torch (pip install cxrjax[torch]), "
                "or convert it to .safetensors"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip errors of a corrupt or truncated file
            raise WeightFileError(f"{path}: not a readable torch state dict (truncated or corrupt?): {e}") from None
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict):
            raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
        flat = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    flat = {k.removeprefix("module."): v for k, v in flat.items()}
    layers = {k: [(k, np.asarray(v))] for k, v in flat.items() if not k.endswith("num_batches_tracked")}
    return WeightFile(path, "torchvision", layers, tuple(layers))


def read_weight_file(path: str | os.PathLike) -> WeightFile:
    """Read a Keras HDF5 or torchvision weight file, by its suffix."""
    path = str(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such file")
    suffix = path.rsplit(".", 1)[-1].lower()
    if suffix in KERAS_SUFFIXES:
        return read_keras_h5(path)
    if suffix in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES:
        return read_torch_state_dict(path)
    raise WeightFileError(
        f"{path}: unknown weight-file type .{suffix}; expected a Keras .h5 or a torchvision .pth / .safetensors"
    )


# --------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------
def abstract_variables(module, x: jax.ShapeDtypeStruct, seed: int = 0) -> tuple[dict, list[str]]:
    """(``jax.eval_shape`` of ``module.init``, the module's layers in call order).

    Variable dicts come back with sorted keys; the call order (Keras' layer order, which
    its loader pairs files by) is recorded while tracing."""
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        scope = context.module.scope
        if context.method_name == "__call__" and scope is not None and len(scope.path) == 1:
            if context.module.name not in order:
                order.append(context.module.name)
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(record):
            return module.init(jax.random.key(seed), x, train=False)

    return jax.eval_shape(init, x), order


def _targets(abstract: dict, order: list[str]) -> dict[str, list[tuple[str, str, tuple[int, ...]]]]:
    """Flax layer -> [(collection, variable, shape)] in Keras weight order, layers in ``order``."""
    out: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {name: [] for name in order}
    for collection in ("params", "batch_stats"):
        for layer, leaves in abstract.get(collection, {}).items():
            for var, leaf in leaves.items():
                out.setdefault(layer, []).append((collection, var, tuple(leaf.shape)))
    for layer in out:
        out[layer].sort(key=lambda t: _ORDER[(t[0], t[1])])
    return {layer: wanted for layer, wanted in out.items() if wanted}


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _keras_weight_name(name: str) -> str:
    """``block1_conv1/kernel:0`` or ``block1_conv1/kernel`` -> ``kernel``."""
    return re.sub(r"(_\d+)?:\d+$", "", name.rsplit("/", 1)[-1])


def _match_keras(file: WeightFile, targets) -> tuple[dict, Unmatched]:
    values: dict[tuple[str, str, str], np.ndarray] = {}
    missing, mismatched = [], []
    used = set()
    # tf.keras 2 named some layers with a "/" (DenseNet's "conv1/conv", "conv1/bn"), Keras 3 "_".
    by_name = {n.replace("/", "_"): n for n in file.layers}
    by_name.update(_auto_named_sources(file, targets))
    for layer, wanted in targets.items():
        source = by_name.get(layer)
        if source is None:  # auto-named layers (Normalization) get a _<n> suffix in Keras
            aliases = [n for n in file.layers if re.fullmatch(re.escape(layer) + r"_\d+", n)]
            source = aliases[0] if len(aliases) == 1 else None
        if source is None:
            missing.extend(f"{layer}/{var}" for _, var, _ in wanted)
            continue
        used.add(source)
        got = file.layers[source]
        if len(got) != len(wanted):
            mismatched.append(
                f"{layer}: {len(got)} weights in the file ({', '.join(n for n, _ in got)}), "
                f"the model has {len(wanted)} ({', '.join(v for _, v, _ in wanted)})"
            )
            continue
        for (collection, var, shape), (wname, array) in zip(wanted, got):
            expected = _KERAS_NAME.get(_keras_weight_name(wname))
            if expected is not None and (collection, var) not in expected:
                mismatched.append(f"{layer}/{var}: the file's weight in this position is {wname}")
            elif _squeezed(array.shape) != _squeezed(shape):
                mismatched.append(f"{layer}/{var}: file {tuple(array.shape)} ({wname}), model {shape}")
            else:  # equal up to singleton axes (Keras 2's Normalization stored mean as [1, 1, 1, C])
                values[(collection, layer, var)] = array.reshape(shape)
    # Layers Keras names automatically ("conv2d_3": numbered in creation order, per
    # session; Keras 2 from _1) may differ in number: the leftover layers of each base
    # name are paired in creation order (their number), if every count and shape agrees.
    left_file = [n for n in file.layers if n not in used]
    left_model = list(dict.fromkeys(m.split("/")[0] for m in missing))
    paired = _pair_auto_named(left_model, left_file, targets, file) if left_file and left_model else None
    if paired is not None:
        values.update(paired)
        used.update(left_file)
        missing = []
    unexpected = [f"{n} ({', '.join(w for w, _ in file.layers[n])})" for n in file.layers if n not in used]
    return values, Unmatched(tuple(missing), tuple(unexpected), tuple(mismatched))


# Layer classes Keras names after themselves when the application gives no name
# (InceptionV3's and Xception's plain convolutions and their BatchNorms).
_AUTO_NAMED = ("conv2d", "batch_normalization", "dense", "depthwise_conv2d", "separable_conv2d", "normalization")


def _auto_named_sources(file: WeightFile, targets) -> dict[str, str]:
    """Model layer -> file layer for automatically named layers, paired in creation order.

    Keras numbers them per session, in creation order: the model's ``conv2d, conv2d_1, ...``
    are ``conv2d_1, conv2d_2, ...`` in a file Keras 2 wrote in a fresh session (the published
    InceptionV3 file), and numbered on further in a later model of a session. Pairing such
    layers by name would pair a layer with its neighbour, whose shapes may even agree; so
    when both sides have the same number of weighted layers of a base name, the k-th of the
    model's takes the k-th of the file's (by number), whatever the numbers.
    """
    pairs: dict[str, str] = {}
    for base in _AUTO_NAMED:
        pattern = re.compile(re.escape(base) + r"(?:_(\d+))?")
        ours = sorted((n for n in targets if pattern.fullmatch(n)), key=_auto_name_key)
        theirs = sorted((n for n, w in file.layers.items() if w and pattern.fullmatch(n)), key=_auto_name_key)
        if ours and len(ours) == len(theirs):
            pairs.update(zip(ours, theirs))
    return pairs


def _auto_name_key(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return m.group(1), int(m.group(2) or 0)


def _pair_auto_named(left_model: list[str], left_file: list[str], targets, file: WeightFile) -> dict | None:
    groups_model: dict[str, list[str]] = {}
    groups_file: dict[str, list[str]] = {}
    for names, groups in ((left_model, groups_model), (left_file, groups_file)):
        for n in sorted(names, key=_auto_name_key):
            groups.setdefault(_auto_name_key(n)[0], []).append(n)
    if {k: len(v) for k, v in groups_model.items()} != {k: len(v) for k, v in groups_file.items()}:
        return None
    paired = {}
    for base, layers in groups_model.items():
        for layer, source in zip(layers, groups_file[base]):
            wanted, got = targets[layer], file.layers[source]
            if len(wanted) != len(got) or any(tuple(a.shape) != t[2] for t, (_, a) in zip(wanted, got)):
                return None
            for (collection, var, _), (_, array) in zip(wanted, got):
                paired[(collection, layer, var)] = array
    return paired


def _torch_tensor(var: str, kernel_shape: tuple[int, ...], array: np.ndarray) -> np.ndarray:
    """A torch tensor in the Flax variable's layout."""
    if var == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if var == "depthwise_kernel" and array.ndim == 4:
        kh, kw, c, m = kernel_shape
        return array.transpose(2, 3, 0, 1).reshape(kh, kw, c, m) if array.shape[1] == 1 else array
    if var == "kernel" and array.ndim == 2:
        return array.T
    return array


def skipped_by_design(file: WeightFile, module: Backbone) -> list[str]:
    """The torchvision file's tensors under the module's ``torchvision_skipped`` prefixes."""
    prefixes = tuple(getattr(module, "torchvision_skipped", ()))
    return [k for k in file.layers if file.source == "torchvision" and prefixes and k.startswith(prefixes)]


def _match_torch(file: WeightFile, targets, module: Backbone) -> tuple[dict, Unmatched]:
    flat = {k: v[0][1] for k, v in file.layers.items()}
    values: dict[tuple[str, str, str], np.ndarray] = {}
    missing, mismatched = [], []
    used = set()
    for layer, wanted in targets.items():
        prefix = module.torchvision_layer(layer)
        for collection, var, shape in wanted:
            leaf = "weight" if var in ("kernel", "depthwise_kernel") else _TORCH_BN.get(var, var)
            key = f"{prefix}.{leaf}"
            if key not in flat:
                missing.append(f"{layer}/{var} ({key})")
                continue
            used.add(key)
            array = _torch_tensor(var, shape, flat[key])
            if tuple(array.shape) != shape:
                mismatched.append(f"{layer}/{var}: file {tuple(flat[key].shape)} ({key}), model {shape}")
            else:
                values[(collection, layer, var)] = array
    skipped = skipped_by_design(file, module)
    unexpected = [k for k in flat if k not in used and k not in skipped]
    return values, Unmatched(tuple(missing), tuple(unexpected), tuple(mismatched), tuple(skipped))


def match(file: WeightFile, module: Backbone, abstract: dict, order: list[str]) -> tuple[dict, Unmatched]:
    """Map the file's tensors onto ``abstract`` (the module's ``jax.eval_shape``d variables,
    its layers called in ``order``; :func:`abstract_variables`):
    ({(collection, layer, variable): array}, what did not match)."""
    targets = _targets(abstract, order)
    if file.source == "keras_h5":
        return _match_keras(file, targets)
    if not hasattr(module, "torchvision_layer"):
        torch_models = sorted(n for n, s in MODELS.items() if hasattr(_module_class(n), "torchvision_layer"))
        raise WeightFileError(
            f"{file.path}: a torchvision state dict, but {type(module).__name__} has no torchvision "
            f"counterpart here; torchvision files load for {torch_models}"
        )
    return _match_torch(file, targets, module)


_VARIANT_FIX = 'pass variant="torchvision" (import-weights: --variant torchvision, or no --variant)'


def _other_variant(file: WeightFile, module: Backbone) -> bool:
    """A torchvision file given to another variant of an architecture that has a torchvision one."""
    return file.source == "torchvision" and "torchvision" in module.variants and module.variant != "torchvision"


def mismatch_hints(file: WeightFile, module: Backbone, name: str, unmatched: Unmatched) -> list[str]:
    """The fixes that apply to a file that does not match ``module``, one sentence each:
    the variant the file's format needs (a torchvision state dict: variant="torchvision";
    a Keras file: the Keras variant), and ``include_top=False`` where only the top is
    missing (a Keras ``_notop`` file, a torchvision state dict without its classifier).
    A hint that names the wrong format's fix misleads more than none."""
    hints = []
    if _other_variant(file, module):
        hints.append(f"A torchvision state dict needs the torchvision variant of {name}: {_VARIANT_FIX}")
    elif file.source == "keras_h5" and module.variant != "keras":
        hints.append(
            f'A Keras file needs the Keras variant of {name} (not {module.variant!r}): pass variant="keras" '
            "(import-weights: no --variant)"
        )
    top = set(getattr(module, "top_layers", ()))
    only_top = unmatched.missing and {m.split("/")[0] for m in unmatched.missing} <= top
    if module.include_top and only_top and not unmatched.unexpected:
        if file.source == "keras_h5":
            hints.append("For a _notop file pass include_top=False (import-weights: --no-top)")
        else:
            classifier = f" ({module.torchvision_top}*)" if module.torchvision_top else ""
            hints.append(
                f"The state dict has no classifier{classifier}: pass include_top=False (import-weights: --no-top)"
            )
    return hints


def _module_class(name: str):
    build = MODELS[name].build
    return getattr(build, "func", build)


# --------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------
def load_pretrained(
    name: str,
    weights_file: str | os.PathLike | WeightFile,
    *,
    include_top: bool = True,
    pooling: str | None = None,
    strict: bool = True,
    image_size: int | None = None,
    seed: int = 0,
    **create_options: Any,
):
    """``(module, variables)`` of backbone ``name`` with the weights of ``weights_file``.

    ``module.apply(variables, x, train=False)`` returns the ImageNet logits with
    ``include_top`` (``num_classes`` defaults to 1000), else the last feature map or its
    ``pooling`` ("avg" | "max") vector. ``create_options`` go to ``models.create`` (e.g.
    ``dtype``, ``variant="torchvision"``; torchvision state dicts of an architecture that
    has that variant select it by default). ``image_size`` is the input the variables are
    shaped for (only VGG's flattening top depends on it; default: the model's Keras
    default). ``strict=False`` returns ``(module, variables, unmatched)``: what matched is
    loaded, the rest keeps the seeded random init. Tensors skipped by design
    (``torchvision_skipped``) are printed as a ``note:`` line on stderr (and are
    ``unmatched.skipped``); they never make a load fail. So is a torchvision state dict
    loaded into the Keras variant (``variant="keras"`` given): its shapes may fit
    (MobileNetV2, DenseNet) while the architecture differs.
    """
    path = weights_file.path if isinstance(weights_file, WeightFile) else str(weights_file)
    if name not in MODELS or not issubclass(_module_class(name), Backbone):
        backbones = sorted(n for n in MODELS if issubclass(_module_class(n), Backbone))
        raise KeyError(f"{name!r} is not an ImageNet backbone; choose one of {backbones}")
    file = weights_file if isinstance(weights_file, WeightFile) else read_weight_file(path)
    cls = _module_class(name)
    if file.source == "torchvision" and "torchvision" in cls.variants:
        create_options.setdefault("variant", "torchvision")
    create_options.setdefault("num_classes", 1000)
    if "imagenet_rescaling" in {f.name for f in dataclasses.fields(cls)} and file.source == "keras_h5":
        norm = [w for n, w in file.layers.items() if re.fullmatch(r"normalization(_\d+)?", n)]
        variance = [a for n, a in (norm[0] if len(norm) == 1 else []) if _keras_weight_name(n) == "variance"]
        published = bool(variance) and np.allclose(np.ravel(variance[0]), IMAGENET_STDDEV_RGB)
        create_options.setdefault("imagenet_rescaling", published)
    module = create(name, include_top=include_top, pooling=pooling, **create_options)
    size = image_size or MODELS[name].image_size
    x = jax.ShapeDtypeStruct((1, size, size, module.channels), jnp.float32)
    abstract, order = abstract_variables(module, x, seed)
    values, unmatched = match(file, module, abstract, order)
    if unmatched.skipped:
        print(
            f"note: {path}: skipped {len(unmatched.skipped)} tensor(s) under "
            f"{', '.join(p + '*' for p in module.torchvision_skipped)}, which {type(module).__name__} leaves out "
            f"by design (its torchvision_skipped): {_listing(unmatched.skipped)}",
            file=sys.stderr,
        )
    if unmatched and strict:
        raise WeightFileError(
            f"{path} does not match {name} (include_top={include_top}, source {file.source}): "
            f"{unmatched.describe()}. The file's layers: {_listing(file.layer_names)}"
            + "".join(f". {hint}" for hint in mismatch_hints(file, module, name, unmatched))
        )
    if _other_variant(file, module):
        print(
            f"note: {path}: a torchvision state dict loaded into the {module.variant!r} variant of {name}, "
            f"whose architecture differs from torchvision's; {_VARIANT_FIX}",
            file=sys.stderr,
        )
    keyed = [(c, layer, var) for c, layers in abstract.items() for layer, leaves in layers.items() for var in leaves]
    if any(key not in values for key in keyed):  # a missing or mis-shaped leaf keeps the init
        base = random_init(module, x.shape, seed)
    else:
        base = jax.tree_util.tree_map(lambda leaf: None, abstract)
    variables: dict[str, dict] = {}
    for collection, layers in abstract.items():
        variables[collection] = {}
        for layer, leaves in layers.items():
            variables[collection][layer] = {}
            for var, leaf in leaves.items():
                value = values.get((collection, layer, var))
                value = base[collection][layer][var] if value is None else value
                variables[collection][layer][var] = jnp.asarray(value, leaf.dtype)
    if strict:
        return module, variables
    return module, variables, unmatched


def random_init(module: nn.Module, shape: tuple[int, ...], seed: int) -> dict:
    """``module.init(key(seed), zeros(shape), train=False)`` as numpy arrays, jitted as ONE
    program: the same numbers as running it op by op (which dispatches and compiles every
    operation on its own), in a third of the time -- 2026-12-02, 2-core CPU: mobilenet_v2
    @ 64 21.5 -> 7.0 s, densenet121 @ 224 35.5 -> 12.6 s, every leaf bit-identical.
    (XLA's backend optimisations off would compile faster still, 4.6 / 8.7 s, but its
    truncated-normal samples differ in the last bit: tests/models/test_random_init.py.)"""
    x = jnp.zeros(shape, jnp.float32)
    variables = jax.jit(lambda x: module.init(jax.random.key(seed), x, train=False))(x)
    return jax.tree_util.tree_map(np.asarray, variables)


def count_parameters(variables: dict) -> int:
    """Every number in ``variables`` (params and batch_stats): Keras' ``count_params()``."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(variables)))


def import_weights(name: str, weights_file: str, out: str | os.PathLike, *, include_top: bool | None = None, **options):
    """Convert ``weights_file`` once to an orbax checkpoint ``<out>/variables`` (+ ``meta.json``);
    returns the summary record. ``include_top=None``: whether the file has the model's
    top layers (a ``_notop`` file has not)."""
    import json

    import orbax.checkpoint as ocp

    file = read_weight_file(weights_file)
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models (cxrjax/models/registry.py): {sorted(MODELS)}")
    cls = _module_class(name)
    target = Path(out) / "variables"
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --out or remove it")
    if include_top is None and hasattr(cls, "top_layers"):
        if file.source == "keras_h5":
            include_top = all(layer in file.layers for layer in cls.top_layers)
        else:
            include_top = any(k.startswith(cls.torchvision_top) for k in file.layers) if cls.torchvision_top else True
    module, variables = load_pretrained(name, file, include_top=bool(include_top), **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target.absolute(), variables)
    checkpointer.wait_until_finished()
    record = {
        "model": name,
        "weights_file": str(weights_file),
        "sha256": sha256(weights_file),
        "source_format": file.source,
        "include_top": bool(include_top),
        "variant": module.variant,
        "tensors_loaded": len(jax.tree_util.tree_leaves(variables)),
        "tensors_skipped": skipped_by_design(file, module),
        "parameters": count_parameters(variables),
        "trainable_parameters": count_parameters(variables.get("params", {})),
        "preprocessing": preprocessing_mode(name, module.variant),
        "checkpoint": str(target),
    }
    (out / "meta.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
