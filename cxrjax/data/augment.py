"""Per-example image operations of the input pipelines: crop, resize, geometry, intensity,
erasing, per-image normalisation.

All functions are pure and take their randomness as explicit parameters, so the pipeline
can draw them from a generator seeded by (seed, epoch, position) and get the same result
in any worker process. The parameter definition (:func:`params_from_uniforms`) and the
operations after the geometry (:func:`jitter_intensity`, :func:`erase`,
:func:`normalize_per_image`) are array code written once for NumPy (the host pipeline, one
image) and ``jax.numpy`` (the trainer's device-resident input, a batch), so both paths
mean the same thing by every option.

Order of operations (every split: 1, 4's normalisation; training only: the rest):
1. crop to ``crop_box`` (fractions of the stored image), then resize to the model input;
2. geometry: horizontal flip, then rotation, zoom and translation as ONE affine
   resampling about the centre;
3. [0, 1] values, brightness (clipped), contrast about the image mean (clipped), gamma;
4. random erasing and border erasing (filled with the mean of the kept pixels), then the
   normalisation (unit / half / dataset shift and scale, or per-image standardisation).

Choices, written down because the studies differ:
- Resize: PIL bilinear. When shrinking, PIL widens the bilinear kernel to the scale
  factor, i.e. it antialiases (like `tf.image.resize(..., antialias=True)`); S2 used
  bilinear resizing, Keras' default. Non-square inputs (and crop boxes) are stretched to
  a square (the prepared datasets are square already).
- Rotation, zoom and translation are one affine resampling (bilinear) about the image
  centre, done after the resize, at the model's input size. Pixels that come from
  outside the image are black (0), like torchvision's RandomRotation (S3). Zoom z >= 1
  magnifies the content by z (1.2 = a 20% zoom-in that crops the border). Keras'
  `zoom_range` uses the reciprocal convention; the studies' range (1, 1.2) is read as
  "up to 20% in". Translation (dx, dy) moves the content by dx W right and dy H down
  after rotation and zoom.
- Horizontal flip mirrors the columns exactly (no resampling).
- Brightness multiplies the [0, 1] intensities by a factor and clips to [0, 1], as
  Keras' `brightness_range` does; contrast c maps x to m + c (x - m) (m: the image's
  mean; torchvision's adjust_contrast, on gray) clipped to [0, 1]; gamma g maps x to
  x ** g (torchvision's adjust_gamma, gain 1). All before normalisation.
- Random erasing (Zhong et al. 2017; torchvision RandomErasing's scale (0.02, 0.2) and
  ratio (0.3, 3.3)): with its probability, one rectangle of area fraction s ~ U(0.02,
  0.2) and aspect h/w = exp(U(log 0.3, log 3.3)), sides sqrt(s a) and sqrt(s / a) of the
  square (always inside it: sqrt(0.2 * 3.3) < 1, so no rejection loop), top-left corner
  uniform where it fits. Border erasing: four strips (top, bottom, left, right), each of
  width U(0, f) of the side. A pixel is erased when its centre lies inside. Erased pixels
  get the mean of the kept pixels of the same image (why: InputOptions' docstring).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

# Uniforms per training example: the first LEGACY_UNIFORMS (flip, angle, zoom,
# brightness) are the ones drawn before the other options existed, so runs that use none
# of those draw exactly what they drew then.
LEGACY_UNIFORMS = 4
NUM_UNIFORMS = 17
ERASE_AREA = (0.02, 0.2)  # random erasing: area fraction (torchvision's scale)
ERASE_ASPECT = (0.3, 3.3)  # random erasing: aspect ratio h / w, log-uniform (torchvision's ratio)
# normalization="per_image": the smallest std divided by, one grey level. A flat image (std
# below it) stays flat, near 0, instead of its float32 rounding residue (the mean of a
# constant image is not exactly its value) being blown up to unit variance.
PER_IMAGE_EPS = 1.0 / 255.0


class AugmentParams(NamedTuple):
    """One example's random augmentation, already resolved to concrete values (fractions
    of the side for translation, erasing and border widths)."""

    flip: bool = False
    angle_degrees: float = 0.0
    zoom: float = 1.0
    brightness: float = 1.0
    translate_x: float = 0.0  # content moves right by this fraction of the width
    translate_y: float = 0.0  # ... and down by this fraction of the height
    contrast: float = 1.0
    gamma: float = 1.0
    erase: bool = False  # random erasing applies to this example
    erase_top: float = 0.0  # the rectangle: top-left corner and size, fractions of the side
    erase_left: float = 0.0
    erase_height: float = 0.0
    erase_width: float = 0.0
    border_top: float = 0.0  # border erasing: each strip's width, a fraction of the side
    border_bottom: float = 0.0
    border_left: float = 0.0
    border_right: float = 0.0


def draw_params(
    rng: np.random.Generator,
    *,
    hflip: bool,
    rotate_degrees: float,
    zoom: tuple[float, float] | None,
    brightness: tuple[float, float] | None,
    translate: float = 0.0,
    contrast: tuple[float, float] | None = None,
    gamma: tuple[float, float] | None = None,
    random_erasing: float = 0.0,
    border_erase: float = 0.0,
) -> AugmentParams:
    """Draws the augmentation of one example.

    Always consumes exactly :data:`NUM_UNIFORMS` uniforms in a fixed order (the first
    four are what ``rng.random(4)`` gives), so switching one augmentation on or off
    never changes the values drawn for the others.
    """
    p = params_from_uniforms(
        rng.random(NUM_UNIFORMS),
        hflip=hflip,
        rotate_degrees=rotate_degrees,
        zoom=zoom,
        brightness=brightness,
        translate=translate,
        contrast=contrast,
        gamma=gamma,
        random_erasing=random_erasing,
        border_erase=border_erase,
    )
    return AugmentParams(*(bool(v) if k in ("flip", "erase") else float(v) for k, v in zip(p._fields, p)))


# The augmentation options, named as InputConfig's fields and as the keyword arguments of
# draw_params / params_from_uniforms: the first four read uniforms r[..., :4], the others
# r[..., 4:] (uses_extra_uniforms).
BASE_OPTIONS = ("hflip", "rotate_degrees", "zoom", "brightness")
EXTRA_OPTIONS = ("translate", "contrast", "gamma", "random_erasing", "border_erase")


def options_of(source: Any, *, extra_only: bool = False) -> dict[str, Any]:
    """The augmentation options of ``source`` (anything with those attributes: an
    InputConfig, the device path's Transform) as keyword arguments of :func:`draw_params`
    / :func:`params_from_uniforms` (``extra_only``: of :func:`uses_extra_uniforms`)."""
    names = EXTRA_OPTIONS if extra_only else BASE_OPTIONS + EXTRA_OPTIONS
    return {name: getattr(source, name) for name in names}


def uses_extra_uniforms(
    *,
    translate: float = 0.0,
    contrast: tuple[float, float] | None = None,
    gamma: tuple[float, float] | None = None,
    random_erasing: float = 0.0,
    border_erase: float = 0.0,
) -> bool:
    """Whether any option past the first four reads uniforms ``r[..., 4:]``."""
    return bool(translate or contrast or gamma or random_erasing or border_erase)


def params_from_uniforms(
    r,
    *,
    hflip: bool,
    rotate_degrees: float,
    zoom: tuple[float, float] | None,
    brightness: tuple[float, float] | None,
    translate: float = 0.0,
    contrast: tuple[float, float] | None = None,
    gamma: tuple[float, float] | None = None,
    random_erasing: float = 0.0,
    border_erase: float = 0.0,
) -> AugmentParams:
    """The augmentation given uniforms in [0, 1) ``r[..., 0:17]``, in the order flip,
    angle, zoom, brightness, translate x, translate y, contrast, gamma, erase?, erase
    area, erase aspect, erase top, erase left, border top, bottom, left, right. Only the
    first four are read unless :func:`uses_extra_uniforms` (so ``r`` may have 4 columns).

    Array arithmetic only (no Python branches on the values), so the same definition
    serves :func:`draw_params` (NumPy, one example) and the trainer's device-resident
    input (``jax.numpy`` arrays of a whole batch, cxrjax/train/resident.py).
    """
    r0, r1, r2, r3 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    zero = 0.0 * r0

    def uniform(column, lo, hi):
        return lo + r[..., column] * (hi - lo)

    def factor(column, rng):
        return uniform(column, rng[0], rng[1]) if rng else 1.0 + zero

    out = dict(
        flip=(r0 < 0.5) & bool(hflip),
        angle_degrees=(2.0 * r1 - 1.0) * rotate_degrees,
        zoom=zoom[0] + r2 * (zoom[1] - zoom[0]) if zoom else 1.0 + 0.0 * r2,
        brightness=brightness[0] + r3 * (brightness[1] - brightness[0]) if brightness else 1.0 + 0.0 * r3,
    )
    if not uses_extra_uniforms(
        translate=translate, contrast=contrast, gamma=gamma, random_erasing=random_erasing, border_erase=border_erase
    ):
        return AugmentParams(**out)
    out.update(
        translate_x=uniform(4, -translate, translate) if translate else zero,
        translate_y=uniform(5, -translate, translate) if translate else zero,
        contrast=factor(6, contrast),
        gamma=factor(7, gamma),
    )
    if random_erasing:
        area = uniform(9, *ERASE_AREA)
        lo, hi = ERASE_ASPECT
        aspect = lo * (hi / lo) ** r[..., 10]  # log-uniform: exp(U(log lo, log hi))
        height, width = (area * aspect) ** 0.5, (area / aspect) ** 0.5
        out.update(
            erase=r[..., 8] < random_erasing,
            erase_top=r[..., 11] * (1.0 - height),
            erase_left=r[..., 12] * (1.0 - width),
            erase_height=height,
            erase_width=width,
        )
    else:
        out.update(erase=r0 < 0.0)
    if border_erase:
        out.update(
            border_top=r[..., 13] * border_erase,
            border_bottom=r[..., 14] * border_erase,
            border_left=r[..., 15] * border_erase,
            border_right=r[..., 16] * border_erase,
        )
    return AugmentParams(**out)


def crop_bounds(image_shape: tuple[int, ...], box) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) pixel bounds of ``box`` (top, bottom, left, right fractions) in an
    image of ``image_shape`` [H, W, ...]: the rounding of the mask-free probe's regions,
    widened to at least one pixel."""
    h, w = image_shape[:2]
    top, bottom, left, right = box
    r0, r1 = round(top * h), round(bottom * h)
    c0, c1 = round(left * w), round(right * w)
    r0, c0 = min(r0, h - 1), min(c0, w - 1)
    return r0, max(r1, r0 + 1), c0, max(c1, c0 + 1)


def crop(image: np.ndarray, box) -> np.ndarray:
    """``image`` ([H, W] or [H, W, C]: an image or a mask) cut to ``box`` (top, bottom,
    left, right fractions; None: unchanged), see :func:`crop_bounds`."""
    if box is None:
        return image
    r0, r1, c0, c1 = crop_bounds(np.shape(image), box)
    return np.asarray(image)[r0:r1, c0:c1]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, 1] -> uint8 [size, size] by PIL bilinear (antialiased)."""
    img = image[..., 0] if image.ndim == 3 else image
    if img.shape == (size, size):
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))


def prepare(image: np.ndarray, size: int, box=None) -> np.ndarray:
    """A stored image (uint8 [H, W] or [H, W, 1]) as every split sees it before any
    augmentation: cut to ``box`` (``crop_box``), then resized to uint8 [size, size]."""
    return resize(crop(np.asarray(image), box), size)


def affine_coefficients(
    h: int, w: int, angle_degrees: float, zoom: float, translate_x: float = 0.0, translate_y: float = 0.0
) -> tuple[float, float, float, float, float, float]:
    """PIL's AFFINE coefficients (a, b, c, d, e, f): output pixel centre p reads input
    (a x + b y + c, d x + e y + f) = c0 + R(-a) (p - c0 - t) / z, with c0 the centre and
    t = (translate_x w, translate_y h) (image y points down, so a positive angle turns the
    content counter-clockwise)."""
    cx, cy = w / 2.0, h / 2.0
    ox, oy = cx + translate_x * w, cy + translate_y * h
    a = math.radians(angle_degrees)
    ca, sa = math.cos(a) / zoom, math.sin(a) / zoom
    return (ca, -sa, cx - ca * ox + sa * oy, sa, ca, cy - sa * ox - ca * oy)


def geometry(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Applies flip, then rotation, zoom and translation (one resampling) to a uint8
    [S, S] image about its centre."""
    out = image[:, ::-1] if params.flip else image
    if params.angle_degrees == 0.0 and params.zoom == 1.0 and params.translate_x == 0.0 and params.translate_y == 0.0:
        return np.ascontiguousarray(out)
    h, w = out.shape
    coeffs = affine_coefficients(h, w, params.angle_degrees, params.zoom, params.translate_x, params.translate_y)
    pil = Image.fromarray(np.ascontiguousarray(out))
    return np.asarray(pil.transform((w, h), Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=0))


def to_unit_float(image: np.ndarray, brightness: float = 1.0) -> np.ndarray:
    """uint8 [S, S] -> float32 [S, S] in [0, 1], times `brightness`, clipped to [0, 1]."""
    x = image.astype(np.float32)
    x *= np.float32(brightness / 255.0)
    if brightness > 1.0:
        np.minimum(x, 1.0, out=x)
    return x


def apply(
    image: np.ndarray,
    params: AugmentParams,
    *,
    contrast: tuple[float, float] | None = None,
    gamma: tuple[float, float] | None = None,
    random_erasing: float = 0.0,
    border_erase: float = 0.0,
) -> np.ndarray:
    """The host path's whole augmentation of one training image: uint8 [S, S] (cropped
    and resized) -> float32 [S, S] in [0, 1], before the normalisation: :func:`geometry`,
    brightness (:func:`to_unit_float`), :func:`jitter_intensity`, :func:`erase` (the
    options say which are on; ``params`` their values)."""
    x = to_unit_float(geometry(image, params), params.brightness)
    x = jitter_intensity(x, params, np, contrast=contrast, gamma=gamma)
    return erase(x, params, np, random_erasing=random_erasing, border_erase=border_erase)


# ---------------------------------------------- array code shared by host and device paths
def _column(value, xp):
    """A per-example parameter ([...]) as float32 [..., 1, 1], to broadcast over images."""
    return xp.asarray(value, dtype=xp.float32)[..., None, None]


def jitter_intensity(x, p: AugmentParams, xp, *, contrast=None, gamma=None):
    """float32 [..., S, S] in [0, 1] after contrast (about each image's mean, clipped to
    [0, 1]) and gamma; unchanged where an option is None. ``xp``: numpy or jax.numpy."""
    if not (contrast or gamma):
        return x
    if contrast:
        m = x.mean(axis=(-2, -1), keepdims=True)
        x = xp.clip(m + _column(p.contrast, xp) * (x - m), 0.0, 1.0)
    if gamma:
        x = x ** _column(p.gamma, xp)
    return x.astype(xp.float32)


def erase_mask(shape: tuple[int, ...], p: AugmentParams, xp, *, random_erasing=0.0, border_erase=0.0):
    """bool [..., H, W]: the pixels random erasing and border erasing blank (pixel centres
    inside the rectangle or a strip), per example of ``p``."""
    h, w = shape[-2:]
    rows = ((xp.arange(h, dtype=xp.float32) + 0.5) / h)[:, None]  # centres as fractions
    cols = ((xp.arange(w, dtype=xp.float32) + 0.5) / w)[None, :]
    erased = xp.zeros(shape, dtype=bool)
    if random_erasing:
        top, left = _column(p.erase_top, xp), _column(p.erase_left, xp)
        inside = (
            (rows >= top)
            & (rows < top + _column(p.erase_height, xp))
            & (cols >= left)
            & (cols < left + _column(p.erase_width, xp))
        )
        erased = erased | (inside & xp.asarray(p.erase)[..., None, None])
    if border_erase:
        erased = (
            erased
            | (rows < _column(p.border_top, xp))
            | (rows >= 1.0 - _column(p.border_bottom, xp))
            | (cols < _column(p.border_left, xp))
            | (cols >= 1.0 - _column(p.border_right, xp))
        )
    return erased


def erase(x, p: AugmentParams, xp, *, random_erasing=0.0, border_erase=0.0):
    """float32 [..., S, S] with :func:`erase_mask`'s pixels set to the mean of the kept
    pixels of the same image (0 if none is kept); unchanged when both options are off."""
    if not (random_erasing or border_erase):
        return x
    erased = erase_mask(x.shape, p, xp, random_erasing=random_erasing, border_erase=border_erase)
    keep = (~erased).astype(xp.float32)
    count = keep.sum(axis=(-2, -1), keepdims=True)
    fill = (x * keep).sum(axis=(-2, -1), keepdims=True) / xp.maximum(count, 1.0)
    return xp.where(erased, fill, x).astype(xp.float32)


def normalize_per_image(x, xp):
    """float32 [..., S, S]: each image minus its mean, divided by max(its std,
    :data:`PER_IMAGE_EPS`, one grey level) (normalization="per_image"; a constant image
    becomes ~0)."""
    m = x.mean(axis=(-2, -1), keepdims=True)
    s = x.std(axis=(-2, -1), keepdims=True)
    return ((x - m) / xp.maximum(s, PER_IMAGE_EPS)).astype(xp.float32)
