"""Per-example image operations of the input pipelines: resize, geometry, brightness.

All functions are pure and take their randomness as explicit parameters, so the pipeline
can draw them from a generator seeded by (seed, epoch, position) and get the same result
in any worker process.

Choices, written down because the studies differ:
- Resize: PIL bilinear. When shrinking, PIL widens the bilinear kernel to the scale
  factor, i.e. it antialiases (like `tf.image.resize(..., antialias=True)`); S2 used
  bilinear resizing, Keras' default. Non-square inputs are stretched to a square (the
  prepared datasets are square already, so this only matters for foreign sources).
- Rotation and zoom are one affine resampling (bilinear) about the image centre, done
  after the resize, at the model's input size. Pixels that come from outside the image
  are black (0), like torchvision's RandomRotation (S3). Zoom z >= 1 magnifies the
  content by z (1.2 = a 20% zoom-in that crops the border). Keras' `zoom_range` uses
  the reciprocal convention; the studies' range (1, 1.2) is read as "up to 20% in".
- Horizontal flip mirrors the columns exactly (no resampling).
- Brightness multiplies the [0, 1] intensities by a factor and clips to [0, 1], as
  Keras' `brightness_range` does; it is applied before normalisation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image


class AugmentParams(NamedTuple):
    """One example's random augmentation, already resolved to concrete values."""

    flip: bool = False
    angle_degrees: float = 0.0
    zoom: float = 1.0
    brightness: float = 1.0


def draw_params(
    rng: np.random.Generator,
    *,
    hflip: bool,
    rotate_degrees: float,
    zoom: tuple[float, float] | None,
    brightness: tuple[float, float] | None,
) -> AugmentParams:
    """Draws the augmentation of one example.

    Always consumes exactly four uniforms in a fixed order, so switching one augmentation
    on or off never changes the values drawn for the others.
    """
    p = params_from_uniforms(
        rng.random(4), hflip=hflip, rotate_degrees=rotate_degrees, zoom=zoom, brightness=brightness
    )
    return AugmentParams(
        flip=bool(p.flip), angle_degrees=float(p.angle_degrees), zoom=float(p.zoom), brightness=float(p.brightness)
    )


def params_from_uniforms(
    r,
    *,
    hflip: bool,
    rotate_degrees: float,
    zoom: tuple[float, float] | None,
    brightness: tuple[float, float] | None,
) -> AugmentParams:
    """The augmentation given four uniforms in [0, 1) ``r[..., 0:4]``, in the order
    flip, angle, zoom, brightness.

    Array arithmetic only (no Python branches on the values), so the same definition
    serves :func:`draw_params` (NumPy, one example) and the trainer's device-resident
    input (``jax.numpy`` arrays of a whole batch, cxrjax/train/resident.py).
    """
    r0, r1, r2, r3 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    return AugmentParams(
        flip=(r0 < 0.5) & bool(hflip),
        angle_degrees=(2.0 * r1 - 1.0) * rotate_degrees,
        zoom=zoom[0] + r2 * (zoom[1] - zoom[0]) if zoom else 1.0 + 0.0 * r2,
        brightness=brightness[0] + r3 * (brightness[1] - brightness[0]) if brightness else 1.0 + 0.0 * r3,
    )


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, 1] -> uint8 [size, size] by PIL bilinear (antialiased)."""
    img = image[..., 0] if image.ndim == 3 else image
    if img.shape == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def geometry(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Applies flip, rotation and zoom to a uint8 [S, S] image about its centre."""
    out = image[:, ::-1] if params.flip else image
    if params.angle_degrees == 0.0 and params.zoom == 1.0:
        return np.ascontiguousarray(out)
    h, w = out.shape
    cx, cy = w / 2.0, h / 2.0
    # PIL maps each output pixel centre back to the input: p_in = c + R(-a) (p_out - c) / z
    # (image y points down, so a positive angle turns the content counter-clockwise).
    a = math.radians(params.angle_degrees)
    ca, sa = math.cos(a) / params.zoom, math.sin(a) / params.zoom
    coeffs = (ca, -sa, cx - ca * cx + sa * cy, sa, ca, cy - sa * cx - ca * cy)
    pil = Image.fromarray(np.ascontiguousarray(out))
    return np.asarray(pil.transform((w, h), Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=0))


def to_unit_float(image: np.ndarray, brightness: float = 1.0) -> np.ndarray:
    """uint8 [S, S] -> float32 [S, S] in [0, 1], times `brightness`, clipped to [0, 1]."""
    x = image.astype(np.float32)
    x *= np.float32(brightness / 255.0)
    if brightness > 1.0:
        np.minimum(x, 1.0, out=x)
    return x
