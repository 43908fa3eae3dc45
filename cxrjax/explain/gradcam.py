"""Grad-CAM (Selvaraju et al., 2017) for every cxrjax model, with JAX autodiff.

Grad-CAM explains the logit y_c of class c through the activation A [h, w, C] of a conv
stage: weights alpha_k = mean_ij dy_c/dA_ijk, heatmap = ReLU(sum_k alpha_k A_k), upsampled
to the input size. Both ingredients come from the model contract (docs/ARCHITECTURE.md):
every model calls ``x = self.perturb(name, x)`` after each conv stage's activation and
lists the names in ``model.feature_names`` (the last one is the default target layer).

- dy_c/dA: flax adds the "perturbations" variable to A, so the gradient of y_c with
  respect to a zero perturbation *is* the gradient with respect to A.
- A itself: flax's ``perturb`` does not return A anywhere, and it is a plain method of
  the ``nn.Module`` base class, so neither ``capture_intermediates`` nor
  ``nn.intercept_methods`` (which only see methods of user subclasses) observe it.
  :func:`_recording_perturb` therefore wraps ``nn.Module.perturb`` *while the Grad-CAM
  function is traced* so that it also ``sow``\\ s its input into a private collection.
  The wrapper changes nothing unless that private collection is mutable, which only
  this module ever asks for, and it is removed again as soon as tracing ends.
  tests/explain/test_explain_gradcam.py checks the result against a hand-computed
  Grad-CAM, so a flax change that breaks this is caught.

Upsampling is aligned with the network's geometry: for a model with a ``spatial_plan``
(every cxrjax model), the centre of feature cell j of the target layer lies at input
coordinate c0 + s * j (s: the layer's stride, c0: from the kernels, paddings and
poolings before it; :func:`feature_geometry`), and the map is interpolated linearly
between those centres (constant beyond the outermost ones). A plain resize of the
feature map to the image stretches it over the whole image instead, which is off by
one to several pixels for S4's padded convolutions (cell 0 of s4_exp4's last stage at
64 px is centred on input pixel 0.5, not 1.5; its third stage is stretched 29 -> 64
instead of placed with stride 2, 3 px off at the far edge). Modules without a plan
(test models) keep the plain bilinear resize.

Grad-CAM on flatten-dense heads (S0, S4, LeNet, VGG "classifier") can degenerate.
Grad-CAM's channel weight alpha_k = mean_ij dy_c/dA_ijk is CAM's exact weight for a
global-average-pooling head, where the gradient is the same at every location. Behind
a max-pool + flatten + dense head the gradient is different at every location (and
zero where the pool discarded the cell), and averaging it throws away *where* channel
k matters: the map alpha_k A_k then peaks wherever channel k is strongly active, in
places the head may not use at all. On S4 models that place is the border: the last
stage (3x3 conv, padding 2) computes its outermost cells mostly from zero padding, and
after BatchNorm + ReLU those cells are much more active than the interior even on a
constant image. On phantoms with the class-coded corner marker, Grad-CAM therefore misses
the marker that LayerCAM (per-location weights ReLU(gradient), Jiang et al. 2021) finds,
and for a model trained without the marker it can even invent one; neither another
layer, the post-pool map nor dropping the padding-dominated outer ring rescues it
(measured in docs/measurements.md#grad-cam-on-flatten-dense-heads). So Grad-CAM is not
trusted alone on such heads: the pointing game (:mod:`cxrjax.explain.split`, run by
``cxrjax.evaluate`` and ``cxrjax.explain``) reports Grad-CAM *and* LayerCAM, and
LayerCAM is the method to read for S0/S4/LeNet-style heads. Border cells are not masked:
the corner marker sits in them, and hiding them would hide the shortcut.

Everything happens in one jitted function over a batch (forward, backward, weighting,
upsampling, normalisation).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

_FEATURES = "gradcam_features"  # private collection the wrapped perturb sows into
_PERTURBATIONS = "perturbations"
_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def _recording_perturb():
    """Make ``Module.perturb`` also sow its input A into ``_FEATURES`` (see module doc)."""
    with _PATCH_LOCK:
        original = nn.Module.perturb
        if getattr(original, "_cxrjax_records", False):  # nested use: already patched
            yield
            return

        def perturb(self, name, value, collection=_PERTURBATIONS):
            if collection == _PERTURBATIONS and self.scope is not None and self.is_mutable_collection(_FEATURES):
                self.sow(_FEATURES, name, value, reduce_fn=lambda _, v: v, init_fn=lambda: None)
            return original(self, name, value, collection)

        perturb._cxrjax_records = True  # type: ignore[attr-defined]
        nn.Module.perturb = perturb
        try:
            yield
        finally:
            nn.Module.perturb = original


def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def perturbation_paths(model: nn.Module, variables: Mapping[str, Any], example: jax.Array) -> list[tuple]:
    """Paths (tuples of names) of the model's perturb points, in natural name order.

    Flax stores collections as dicts with sorted keys, so the call order is lost;
    "feat2" < "feat10" (natural order) recovers it for the cxrjax naming "feat<i>".
    """
    shapes = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=[_PERTURBATIONS])[1],
        {k: v for k, v in variables.items() if k != _PERTURBATIONS},
        example,
    )
    return sorted(flatten_dict(dict(shapes.get(_PERTURBATIONS, {}))).keys(), key=_natural_key)


def _natural_key(path: tuple) -> tuple:
    return tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))) for p in path)


def resolve_layer(paths: list[tuple], layer: str | None, model: nn.Module) -> tuple:
    """The path of the Grad-CAM target layer: ``layer`` by name or a/b/c path, or the default.

    The default is the last entry of ``model.feature_names`` (the last conv stage), or,
    for a module without that attribute, the last perturb point in natural name order.
    """
    if not paths:
        raise ValueError(
            f"{type(model).__name__} has no perturb points, so Grad-CAM cannot see its conv "
            "activations; models must call `x = self.perturb(name, x)` after each conv stage "
            "(docs/ARCHITECTURE.md, cxrjax.models)"
        )
    names = [_path_str(p) for p in paths]
    if layer is None:
        feature_names = tuple(getattr(model, "feature_names", ()) or ())
        if not feature_names:
            return paths[-1]
        layer = feature_names[-1]
    exact = [p for p, n in zip(paths, names) if n == layer]
    if exact:
        return exact[0]
    by_leaf = [p for p in paths if p[-1] == layer]
    if len(by_leaf) == 1:
        return by_leaf[0]
    if len(by_leaf) > 1:
        raise ValueError(
            f"Grad-CAM layer {layer!r} is ambiguous in {type(model).__name__}: "
            f"name one of {[_path_str(p) for p in by_leaf]}"
        )
    raise ValueError(f"Grad-CAM layer {layer!r} does not exist in {type(model).__name__}; its conv stages are {names}")


def _leaf(tree: Mapping[str, Any], path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


_COMPILED: dict[tuple[str, tuple], Callable] = {}


def _compiled_gradcam(model: nn.Module, path: tuple, method: str) -> Callable:
    """The jitted Grad-CAM computation, one per module configuration and layer, so loading
    a run again or explaining several splits never recompiles for the same shapes.

    Keyed by the module's repr (class and fields): modules built from a JSON config hold
    lists and are not hashable.
    """
    key = (repr(model), path, method)
    if key not in _COMPILED:
        if len(_COMPILED) >= 16:
            _COMPILED.clear()
        _COMPILED[key] = _build_gradcam(model, path, method)
    return _COMPILED[key]


def feature_geometry(model: nn.Module, feature_size: int, image_size: int) -> tuple[float, float] | None:
    """Where the cells of a conv-stage output of side ``feature_size`` sit in the input.

    Returns (c0, s): the receptive-field centre of cell j is input coordinate c0 + s * j,
    with pixel i spanning [i, i + 1). Walks ``model.spatial_plan()`` (("conv", k, p): a
    stride-1 conv shifts centres by s * ((k - 1) / 2 - p); ("pool",): 2x2 stride-2
    pooling, c0 += s / 2, s *= 2) and takes the conv outputs of that side. None when the
    module has no plan, no conv output of that side, or several with different geometry.
    """
    plan_fn = getattr(model, "spatial_plan", None)
    if plan_fn is None:
        return None
    try:
        plan = list(plan_fn())
    except NotImplementedError:
        return None
    size, c0, s = int(image_size), 0.5, 1.0
    found = set()
    for step in plan:
        if step[0] == "conv":
            k, p = int(step[1]), int(step[2])
            size = size + 2 * p - k + 1
            c0 += s * ((k - 1) / 2 - p)
            if size == feature_size:
                found.add((c0, s))
        elif step[0] == "pool":
            size //= 2
            c0 += 0.5 * s
            s *= 2.0
        else:
            return None
    return found.pop() if len(found) == 1 else None


def interpolation_matrix(out_size: int, in_size: int, c0: float, s: float) -> np.ndarray:
    """[out_size, in_size] linear interpolation from cells centred at c0 + s * j to pixel
    centres i + 0.5; constant (the outermost cell's value) beyond the outermost centres."""
    f = np.clip((np.arange(out_size) + 0.5 - c0) / s, 0.0, in_size - 1)
    lo = np.floor(f).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    w = (f - lo).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - w)
    np.add.at(m, (rows, hi), w)
    return m


def upsample(cams: jax.Array, size: tuple[int, int], model: nn.Module) -> jax.Array:
    """[B, h, w] maps -> [B, H, W], aligned with the model's geometry (module docstring)."""
    (h, w), (H, W) = cams.shape[1:3], tuple(size)
    gy, gx = feature_geometry(model, h, H), feature_geometry(model, w, W)
    if gy is None or gx is None:
        return jax.image.resize(cams, (cams.shape[0], H, W), method="bilinear")
    my = jnp.asarray(interpolation_matrix(H, h, *gy))
    mx = jnp.asarray(interpolation_matrix(W, w, *gx))
    return jnp.einsum("Yh,bhw,Xw->bYX", my, cams, mx)


def _build_gradcam(model: nn.Module, path: tuple, method: str) -> Callable:
    layer_name = _path_str(path)

    def compute(variables, images, targets):
        with _recording_perturb():
            zero_shapes = jax.eval_shape(
                lambda: model.apply(variables, images, train=False, mutable=[_PERTURBATIONS])[1]
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_shapes[_PERTURBATIONS])

            def target_logits(perturbations):
                logits, state = model.apply(
                    {**variables, _PERTURBATIONS: perturbations}, images, train=False, mutable=[_FEATURES]
                )
                logits = logits.astype(jnp.float32)
                chosen = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
                picked = jnp.take_along_axis(logits, chosen[:, None], axis=1)
                return picked.sum(), (logits, chosen, _leaf(state[_FEATURES], path))

            grads, (logits, chosen, activation) = jax.grad(target_logits, has_aux=True)(zeros)
        gradient = _leaf(grads, path).astype(jnp.float32)
        activation = activation.astype(jnp.float32)
        if activation.ndim != 4:
            raise ValueError(
                f"Grad-CAM layer {layer_name!r} has shape {activation.shape}; "
                "it must be a conv activation [batch, height, width, channels]"
            )
        if method == "gradcam":
            weights = gradient.mean(axis=(1, 2))  # [B, C]
            cams = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", activation, weights))  # [B, h, w]
        else:  # layercam: per-location weights
            cams = jax.nn.relu(jnp.sum(jax.nn.relu(gradient) * activation, axis=-1))
        up = jnp.maximum(upsample(cams, images.shape[1:3], model), 0.0)
        peak = up.max(axis=(1, 2), keepdims=True)
        heatmaps = jnp.where(peak > 0, up / jnp.where(peak > 0, peak, 1.0), 0.0)
        return heatmaps, cams, chosen.astype(jnp.int32), jax.nn.softmax(logits, axis=-1)

    return jax.jit(compute)


@dataclass(frozen=True)
class GradCAMOutput:
    """One batch of explanations. Arrays are NumPy, first axis = batch."""

    heatmaps: np.ndarray  # float32 [B, H, W]: input size, each scaled to [0, 1] (max = 1)
    cams: np.ndarray  # float32 [B, h, w]: ReLU(sum_k alpha_k A_k) at the layer's size
    targets: np.ndarray  # int32 [B]: the class each heatmap explains
    probs: np.ndarray  # float32 [B, K]: softmax of the logits (same forward pass)
    layer: str


METHODS = ("gradcam", "layercam")
METHOD_TITLES = {"gradcam": "Grad-CAM", "layercam": "LayerCAM"}  # as plots and tables name them
LAYER_HELP = "Grad-CAM layer (default: the model's last conv stage)"


def add_saliency_arguments(
    p: argparse.ArgumentParser, *, method_help: str, layer_help: str = LAYER_HELP, several: bool = False
) -> None:
    """``--layer`` and ``--cam-method`` (one of :data:`METHODS`) for a command line that
    draws saliency maps: one method (default gradcam), or with ``several`` a repeatable
    one (a list; None when not given)."""
    p.add_argument("--layer", help=layer_help)
    if several:
        p.add_argument("--cam-method", action="append", choices=METHODS, help=method_help)
    else:
        p.add_argument("--cam-method", default="gradcam", choices=METHODS, help=method_help)


def make_gradcam_fn(
    model: nn.Module,
    variables: Mapping[str, Any],
    image_shape: tuple[int, ...],
    layer: str | None = None,
    method: str = "gradcam",
) -> Callable[..., GradCAMOutput]:
    """A function ``f(images, targets=None) -> GradCAMOutput`` compiled once for the model.

    ``image_shape`` is one input's (H, W, C), used to find the perturb points.
    ``targets``: int [B] class per image, or -1 / None for the predicted class.
    ``method``: "gradcam" (Selvaraju et al.: channel weights = spatial mean of the
    gradient) or "layercam" (Jiang et al., 2021: weights ReLU(gradient) per location).
    Grad-CAM's spatial averaging assumes a pooling head; with a flatten-dense head (the
    S0/S4 networks) the gradient differs per location and LayerCAM keeps that (the
    module docstring shows Grad-CAM pointing at padding-dominated border cells there).
    Eval mode throughout (BatchNorm running statistics, no dropout), so each image's
    heatmap is independent of the rest of the batch and summing the per-image target
    logits gives every image's own gradient in one backward pass.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {METHODS}")
    variables = {k: v for k, v in variables.items() if k != _PERTURBATIONS}
    example = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    path = resolve_layer(perturbation_paths(model, variables, example), layer, model)
    layer_name = _path_str(path)
    compiled = _compiled_gradcam(model, path, method)

    def gradcam(images, targets=None) -> GradCAMOutput:
        images = jnp.asarray(images, jnp.float32)
        if targets is None:
            targets = np.full((images.shape[0],), -1, np.int32)
        heat, cams, chosen, probs = compiled(variables, images, jnp.asarray(targets, jnp.int32))
        return GradCAMOutput(np.asarray(heat), np.asarray(cams), np.asarray(chosen), np.asarray(probs), layer_name)

    return gradcam


_COMPILED_FEATURES: dict[tuple[str, tuple], Callable] = {}


def make_feature_fn(
    model: nn.Module, variables: Mapping[str, Any], image_shape: tuple[int, ...], layer: str | None = None
) -> Callable[[Any], dict[str, np.ndarray]]:
    """A function ``f(images) -> {layer: float32 [B, h, w, C]}``: the conv-stage activations.

    The activations are captured as Grad-CAM captures its A (the wrapped ``perturb``
    sows its input; module docstring), in eval mode, in one jitted forward pass. Every
    perturb point of the model in natural order, or with ``layer`` only that one
    (resolved like Grad-CAM's ``--layer``: a name of ``model.feature_names`` or an a/b/c
    path). ``image_shape``: one input's (H, W, C).
    """
    variables = {k: v for k, v in variables.items() if k != _PERTURBATIONS}
    example = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    paths = perturbation_paths(model, variables, example)
    if layer is not None or not paths:  # no paths: resolve_layer says why there are none
        paths = [resolve_layer(paths, layer, model)]
    key = (repr(model), tuple(paths))
    if key not in _COMPILED_FEATURES:
        if len(_COMPILED_FEATURES) >= 16:
            _COMPILED_FEATURES.clear()

        def compute(variables, images):
            with _recording_perturb():
                _, state = model.apply(variables, images, train=False, mutable=[_FEATURES])
            return [_leaf(state[_FEATURES], p).astype(jnp.float32) for p in paths]

        _COMPILED_FEATURES[key] = jax.jit(compute)
    compiled, names = _COMPILED_FEATURES[key], [_path_str(p) for p in paths]

    def features(images) -> dict[str, np.ndarray]:
        out = compiled(variables, jnp.asarray(images, jnp.float32))
        return {name: np.asarray(a) for name, a in zip(names, out)}

    return features


def gradcam(
    model: nn.Module,
    variables: Mapping[str, Any],
    images,
    targets=None,
    layer: str | None = None,
    method: str = "gradcam",
) -> GradCAMOutput:
    """Grad-CAM for one batch (see :func:`make_gradcam_fn`, which is cheaper for many batches)."""
    images = np.asarray(images, np.float32)
    return make_gradcam_fn(model, variables, images.shape[1:], layer, method)(images, targets)
