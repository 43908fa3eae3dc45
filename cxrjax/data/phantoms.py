"""Deterministic synthetic chest radiographs: the built-in default dataset.

Why phantoms: the real datasets are manual downloads, yet `make ablation`, the tests and
every tutorial must run from a fresh clone. The phantoms are drawn so that the studies'
questions still make sense on them: the class evidence is a *finding inside the lungs*
(as in the real data), its severity varies so classes overlap (no model is perfect), and
an optional *shortcut* (a corner text marker correlated with the class, like the
hospital-specific labels of the COVID-19 Radiography Database) lets later work show how a
model can score well for the wrong reason. Every image comes with its ground-truth lung
mask and lesion mask, so saliency maps can be checked against where the evidence is.

Anatomy (posterior-anterior view, the patient's right lung on the image's left):
thorax and shoulders with a soft-tissue thickness profile, neck and trachea, two lung
fields with rounded apices and sharp costophrenic angles, mediastinum, heart shadow
bulging into the left lung, aortic knob, hila with branching vessel markings, posterior
and anterior ribs, clavicles, spine, diaphragm domes with a gastric air bubble, quantum
arms, quantum noise, a random global tone curve (brightness, contrast) and a random
patient build and position (scale, shift; no in-plane rotation, which the training
augmentation adds).

Findings (only inside the lung mask; severity ~ U(options.severity_range)):
  Normal           none.
  COVID            bilateral, peripheral, lower-zone ground-glass opacities (faint haze).
  Viral Pneumonia  diffuse bilateral perihilar reticular (fine net-like) pattern.
  Lung_Opacity     one focal, dense, irregular consolidation in one lung.

Everything is computed on coordinate grids at the requested size (no oversized canvas
that is then downsized), mostly as sums and products of 1-D row and column profiles;
smooth random fields are drawn on small grids and B-spline upsampled. One 256 px image
costs about 100 image-sized numpy operations (a few milliseconds on one core).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The D4 (COVID-19 Radiography Database v4+) class folder names, in sorted order, so a
# model trained on phantoms shares the real dataset's class list and label ids.
CLASS_NAMES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
COVID, LUNG_OPACITY, NORMAL, VIRAL_PNEUMONIA = range(4)

# Corner of the shortcut marker that "belongs" to each class (row, col): 0 = top/left.
_MARKER_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True)
class PhantomOptions:
    """How phantoms are drawn. Every field is part of the identity of an image.

    image_size: side of the square output in pixels (any size >= 16).
    shortcut_marker: draw a text-like marker in a corner of every image. The corner
        encodes a class: with probability `shortcut_strength` it is the image's own
        class, otherwise one of the three other classes chosen uniformly. So 1.0 makes
        the marker a perfect label leak and 0.25 makes it uninformative.
        The marker uses its own random stream: turning it on changes only the marker
        pixels, never the anatomy or the finding.
    shortcut_strength: see above; in [0, 1].
    severity_range: severity of the finding is drawn uniformly from this range (0 = no
        visible finding, 1 = florid). The low end reaching 0 is what makes some diseased
        images indistinguishable from Normal, so accuracy cannot reach 100%. Values
        above 1 are allowed and draw findings denser than florid: a clearer signal for
        short runs (what that does to the ablation's claims:
        docs/measurements.md#ablation-choosing-the-10-seed-default).
    noise_std: standard deviation of the per-pixel quantum noise on the [0, 1] scale.
    """

    image_size: int = 256
    shortcut_marker: bool = False
    shortcut_strength: float = 0.9
    severity_range: tuple[float, float] = (0.0, 1.0)
    noise_std: float = 0.02

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"PhantomOptions.image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.shortcut_strength <= 1.0:
            raise ValueError(f"PhantomOptions.shortcut_strength must be in [0, 1], got {self.shortcut_strength}")
        lo, hi = self.severity_range
        if not 0.0 <= lo <= hi:
            raise ValueError(f"PhantomOptions.severity_range must satisfy 0 <= lo <= hi, got {self.severity_range}")
        # Lists from JSON configs become tuples so the options stay hashable.
        object.__setattr__(self, "severity_range", (float(lo), float(hi)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def phantom_label(seed: int, index: int) -> int:
    """Class id of phantom `index`: a seeded permutation of the 4 classes per block of 4.

    So every consecutive block of 4 indices holds each class exactly once (balanced at
    any multiple of 4) while the order within a block is not predictable from the index.
    """
    block = np.random.default_rng([int(seed), int(index) // 4, 0x1ABE1]).permutation(4)
    return int(block[int(index) % 4])


def phantom_file_name(seed: int, index: int) -> str:
    return f"phantom-{int(seed)}-{int(index):06d}.png"


def parse_phantom_file_name(file_name: str) -> tuple[int, int]:
    """(seed, index) of a :func:`phantom_file_name` (a path or bare name)."""
    stem = Path(str(file_name)).stem
    try:
        _, seed, index = stem.rsplit("-", 2)
        return int(seed), int(index)
    except ValueError:
        raise ValueError(f"{file_name!r} is not a cxr_phantoms file name (phantom-<seed>-<index>.png)") from None


def _marker_rng(seed: int, index: int) -> np.random.Generator:
    """The shortcut marker's own random stream, apart from the image's."""
    return np.random.default_rng([int(seed), int(index), 0x3A4C])


def marker_box_mask(seed: int, index: int, label: int, size: int, shortcut_strength: float) -> np.ndarray:
    """bool [size, size]: where phantom (seed, index) with this label has (or would have)
    its shortcut marker's label box, drawn exactly as :func:`phantom_example` draws it."""
    canvas = np.full((size, size), 128, np.uint8)
    options = PhantomOptions(image_size=max(size, 16), shortcut_marker=True, shortcut_strength=shortcut_strength)
    _draw_marker(canvas, int(label), options, _marker_rng(seed, index))
    return canvas != 128  # every box pixel (dark background, white glyphs) differs from 128


def phantom_example(seed: int, index: int, options: PhantomOptions = PhantomOptions()) -> dict:
    """One phantom, a pure function of (seed, index, options), independent of call order.

    Returns {"image": uint8[S, S, 1], "label": int, "lung_mask": uint8[S, S, 1] (0/255),
    "lesion_mask": uint8[S, S, 1] (0/255, empty for Normal), "file_name": str,
    "severity": float (0 for Normal), "marker_class": int (the class whose corner holds
    the shortcut marker; -1 when options.shortcut_marker is off)}.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"phantom_example needs seed >= 0 and index >= 0, got {seed}, {index}")
    label = phantom_label(seed, index)
    rng = np.random.default_rng([int(seed), int(index)])
    image, lung, lesion, severity = _render(rng, label, options)
    marker_class = -1
    if options.shortcut_marker:
        marker_class = _draw_marker(image, label, options, _marker_rng(seed, index))
    return {
        "image": image[..., None],
        "label": label,
        "lung_mask": (lung.astype(np.uint8) * 255)[..., None],
        "lesion_mask": (lesion.astype(np.uint8) * 255)[..., None],
        "file_name": phantom_file_name(seed, index),
        "severity": float(severity),
        "marker_class": marker_class,
    }


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)
def _upsampler(grid: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic B-spline interpolation from `grid` nodes to `size` pixels.

    Returns the 4 node indices (size, 4) and weights (size, 4) of every pixel and the
    same as a dense (size, grid) matrix. Weights are scaled to unit L2 norm per pixel,
    so upsampled white noise is exactly unit-variance everywhere.
    """
    pos = (np.arange(size) + 0.5) * (grid / size) - 0.5  # pixel centres in grid units
    idx = np.floor(pos).astype(np.intp)[:, None] + np.arange(-1, 3)[None, :]
    d = np.abs(pos[:, None] - idx)
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    w[(idx < 0) | (idx >= grid)] = 0.0
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    idx = np.clip(idx, 0, grid - 1)
    dense = np.zeros((size, grid), dtype=np.float32)
    np.add.at(dense, (np.arange(size)[:, None], idx), w)
    return idx, w.astype(np.float32), dense


def _smooth_noise(rng: np.random.Generator, grid: int, size: int) -> np.ndarray:
    """Unit-variance smooth Gaussian field: grid x grid white noise, B-spline upsampled.

    `grid` sets the feature size (about size / grid pixels). The x pass is a 4-tap
    gather on the small grid; the y pass is a matrix product done in column blocks small
    enough (< 2**18 multiply-adds) that OpenBLAS stays single-threaded: one big product
    wakes its thread pool, which costs 30-100x more on a busy machine.
    """
    idx, w, dense = _upsampler(grid, size)
    noise = rng.standard_normal((grid, grid), dtype=np.float32)
    rows = (noise[:, idx] * w).sum(axis=-1)  # (grid, size)
    block = max(1, 200_000 // (size * grid))
    out = np.empty((size, size), dtype=np.float32)
    for j in range(0, size, block):
        out[:, j : j + block] = dense @ rows[:, j : j + block]
    return out


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-std per-pixel noise (triangular; sum of two uniform bytes).

    Drawn from raw random bytes because float32 normals cost ~20x more at 256 px.
    """
    a = np.frombuffer(rng.bytes(size * size * 2), dtype=np.uint8).reshape(2, size, size)
    n = a[0].astype(np.float32)
    n += a[1]
    n -= 255.0
    n *= 1.0 / 104.5
    return n


def _ramp(d: np.ndarray, eps: float) -> np.ndarray:
    """Soft inside-indicator of an implicit shape: 1 where d << 0, 0 where d >> 0."""
    r = d * (-0.5 / eps)
    r += 0.5
    return np.clip(r, 0.0, 1.0, out=r)


def _clip01(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0, out=x)


def _rows(v: np.ndarray, lo: float, hi: float) -> slice:
    """Index range of the (increasing) 1-D coordinate v that falls in [lo, hi]."""
    return slice(int(np.searchsorted(v, lo)), int(np.searchsorted(v, hi, side="right")))


def _cols(u: np.ndarray, lo: float, hi: float) -> slice:
    """Index range of the columns whose (increasing) coordinate u falls in [lo, hi]."""
    return slice(int(np.searchsorted(u, lo)), int(np.searchsorted(u, hi, side="right")))


@dataclass(frozen=True)
class _Anatomy:
    """One patient's build, in normalised coordinates: u right (image), v down, both
    in [-1, 1] across the image; t = |u| is the distance from the midline."""

    body_w: float
    lung_c0: float  # lung centre line t at v = 0
    lung_w0: float  # lung half-width
    apex: float  # v of the lung apices
    dome_r: float  # v of the right (image left) hemidiaphragm dome top
    dome_l: float
    dome_c: float  # dome curvature
    heart: tuple[float, float, float, float]  # centre u, v and radii

    @staticmethod
    def draw(rng: np.random.Generator) -> "_Anatomy":
        uni = lambda lo, hi: float(rng.uniform(lo, hi))
        dome_r = uni(0.36, 0.46)
        return _Anatomy(
            body_w=uni(0.82, 0.93),
            lung_c0=uni(0.40, 0.44),
            lung_w0=uni(0.25, 0.29),
            apex=uni(-0.76, -0.68),
            dome_r=dome_r,
            dome_l=dome_r + uni(0.02, 0.08),  # the left hemidiaphragm sits lower
            dome_c=uni(1.4, 2.2),
            heart=(uni(0.06, 0.11), uni(0.30, 0.36), uni(0.29, 0.35), uni(0.24, 0.29)),
        )

    def lung_centre(self, v):
        return self.lung_c0 + 0.07 * v

    def lung_half_width(self, v):
        return self.lung_w0 * np.sqrt(np.clip((v - self.apex) * 2.0, 0.0, 1.0)) + 0.03 * v

    def dome(self, t, left):
        return np.where(left, self.dome_l, self.dome_r) + self.dome_c * (t - 0.36) ** 2


def _render(rng: np.random.Generator, label: int, opts: PhantomOptions):
    """Draw one radiograph. The patient is axis-aligned (no in-plane rotation), which
    makes most terms sums/products of 1-D profiles: ~100 image-sized numpy operations.
    """
    S = opts.image_size
    f32 = np.float32
    uni = lambda lo, hi: float(rng.uniform(lo, hi))  # Python floats keep arrays float32

    A = _Anatomy.draw(rng)
    sx, sy = uni(0.92, 1.05), uni(0.93, 1.06)
    du, dv = uni(-0.05, 0.05), uni(-0.05, 0.04)
    lung_dark = uni(0.36, 0.44)
    soft_lower = uni(0.0, 0.12)  # breast / pectoral soft tissue over the lower zones
    rib_sp = uni(0.105, 0.125)
    rib_b0 = uni(-0.82, -0.76)

    x = (np.arange(S, dtype=np.float64) + 0.5) * (2.0 / S) - 1.0
    u = ((x - du) / sx).astype(f32)  # per column
    v = ((x - dv) / sy).astype(f32)  # per row
    t = np.abs(u)
    left = u > 0  # the patient's left lung is on the image's right
    eps = max(2.0 / S / min(sx, sy), 0.004)  # one pixel in normalised units
    V = v[:, None]

    # --- body: trunk + sloping shoulders + neck; brighter where the chest is thicker.
    # The trunk is barrel-shaped: narrower at the axillae and towards the waist.
    tb2 = (t / A.body_w) ** 2
    width = A.body_w * (1.0 - 0.10 * (v - 0.05) ** 2)
    d_body = np.maximum(t[None, :] - width[:, None], (-0.88 + 0.22 * tb2)[None, :] - V)
    np.minimum(d_body, (t - 0.2)[None, :], out=d_body)  # the neck
    dens = _ramp(d_body, 0.05)
    dens *= (0.30 + 0.30 * np.sqrt(np.clip(1.0 - 0.85 * tb2, 0.0, 1.0)))[None, :]
    # the arms hang beside the trunk, rounded at the shoulder joint
    arm_in, arm_w = A.body_w + uni(0.0, 0.08), uni(0.08, 0.12)
    arm_top = uni(-0.80, -0.70)
    cap = np.minimum(v - (arm_top + arm_w), 0.0)  # rounded top: the shoulder joint
    for cs in (_cols(u, -9.0, 0.02 - arm_in), _cols(u, arm_in - 0.02, 9.0)):
        ta = t[cs] - (arm_in + arm_w)
        d_arm = np.sqrt((ta * ta)[None, :] + (cap * cap)[:, None]) - arm_w
        thickness = np.sqrt(np.clip(1.0 - (ta / arm_w) ** 2, 0.05, 1.0))
        dens[:, cs] += 0.26 * _ramp(d_arm, 0.03) * thickness[None, :]

    # --- lungs: a centre line and a half-width opening from the apex, floored by the
    #     diaphragm dome; the heart and the aortic knob are cut out.
    hw = A.lung_half_width(v)
    off = t[None, :] - A.lung_centre(v)[:, None]
    below = V - A.dome(t, left)[None, :]  # > 0 under the diaphragm
    d_lung = np.abs(off)
    d_lung -= hw[:, None]
    np.maximum(d_lung, below, out=d_lung)
    hu, hv, hrx, hry = A.heart
    # the heart: an ellipse above its centre line, a column below it, so that it sits
    # on the diaphragm with no lung underneath
    d_heart = (((u - hu) / hrx) ** 2 * (0.5 * hry) - 0.5 * hry)[None, :] + (np.minimum(v - hv, 0.0) ** 2 * (0.5 / hry))[
        :, None
    ]
    rs = _rows(v, -0.42, -0.24)
    q = ((u - 0.10) / 0.08) ** 2 + (((v[rs] + 0.33) / 0.07) ** 2)[:, None]
    np.minimum(d_heart[rs], (q - 1.0) * 0.035, out=d_heart[rs])  # aortic knob
    lung_mask = (d_lung < 0) & (d_heart > 0)
    lung_soft = _ramp(d_lung, 1.5 * eps)
    lung_soft *= _ramp(-d_heart, 3.0 * eps)
    # darkest in the mid zones; lighter at the apex (muscle, bone) and over the lower
    # lateral zones (breasts, pectorals); plus a little patchy thickness variation.
    coarse = _smooth_noise(rng, 4, S)  # reused below: each field costs as much as 10 ops
    depth = 0.06 * coarse
    depth += (0.8 + 0.2 * np.clip(1.0 - (1.5 * v) ** 2, 0.0, 1.0))[:, None]
    depth -= (
        (soft_lower / lung_dark)
        * np.clip((v - 0.0) * 3.0, 0.0, 1.0)[:, None]
        * np.clip((t - 0.25) * 3.0, 0.0, 1.0)[None, :]
    )
    depth *= lung_soft
    dens -= lung_dark * depth

    # --- trachea (air column) and a gastric bubble under the left dome.
    rs, cs = _rows(v, -1.0, -0.12), _cols(u, -0.07, 0.07)
    dens[rs, cs] -= 0.15 * _ramp(v[rs] + 0.20, 0.05)[:, None] * _ramp(t[cs] - 0.04, 0.015)[None, :]
    vg = A.dome_l + 0.13
    rs, cs = _rows(v, vg - 0.06, vg + 0.06), _cols(u, 0.28, 0.52)
    q = (((u[cs] - 0.40) / 0.09) ** 2)[None, :] + (((v[rs] - vg) / 0.05) ** 2)[:, None]
    dens[rs, cs] -= 0.14 * _ramp(q - 1.0, 0.3)

    # --- hila and vessel markings: worm-like ridges of smooth noise fading outward.
    hil = 1.0 - (((t - 0.20) / 0.45) ** 2)[None, :] - (((v + 0.02) / 0.45) ** 2)[:, None]
    _clip01(hil)
    hil *= hil
    hil *= lung_soft
    vessels = np.abs(_smooth_noise(rng, 18, S))
    vessels *= -3.5
    vessels += 1.0
    _clip01(vessels)
    vessels += hil  # = 0.1 * (vessels + hilum) * hilum below
    vessels *= hil
    dens += 0.10 * vessels

    # --- the finding, scaled by severity.
    lo, hi = opts.severity_range
    severity = uni(lo, hi) if label != NORMAL else 0.0
    lesion_mask = np.zeros((S, S), dtype=bool)
    if label == COVID:
        # patches where smooth noise is high, weighted to the peripheral lower zones,
        # normalised per lung so that both lungs are always involved
        rel = off * (1.0 / (hw + 1e-3))[:, None]  # -1 medial wall .. +1 lateral wall
        field = _smooth_noise(rng, 7, S)
        field += 1.5
        field *= _clip01((rel + 0.1) * 1.4)
        field *= np.clip((v + 0.15) * 2.2, 0.0, 1.0)[:, None]
        inside = np.where(lung_mask, field, 0.0)
        peak = np.where(left, inside[:, left].max(initial=1e-3), inside[:, ~left].max(initial=1e-3))
        field *= (1.8 / np.maximum(peak, 1e-3))[None, :]
        field -= 0.7
        ggo = _clip01(field)
        lesion_mask = lung_mask & (ggo > 0.25)
        ggo *= 0.75 + 0.25 * _smooth_noise(rng, 40, S)
        ggo *= lung_soft
        dens += (0.45 * severity) * ggo
    elif label == VIRAL_PNEUMONIA:
        peri = 1.0 - (((t - 0.24) / 0.36) ** 2)[None, :] - (((v + 0.02) * 0.8 / 0.36) ** 2)[:, None]
        _clip01(peri)
        lesion_mask = lung_mask & (peri > 0.3)
        net = _clip01(1.0 - np.abs(_smooth_noise(rng, 36, S)) * 3.0)
        net *= 0.65
        net += 0.35
        net *= peri
        net *= lung_soft
        dens += (0.38 * severity) * net
    elif label == LUNG_OPACITY:
        side = int(rng.integers(2))
        cu, cv, R = _pick_consolidation_site(rng, side, A)
        rho2 = (((u - cu) / R) ** 2)[None, :] + (((v - cv) * 0.9 / R) ** 2)[:, None]
        rho2 -= 1.0
        rho2 -= 0.7 * _smooth_noise(rng, 10, S)  # irregular, ill-defined outline
        blob = _ramp(rho2, 1.2)
        lesion_mask = lung_mask & (blob > 0.5)
        blob *= 0.85 + 0.15 * _smooth_noise(rng, 30, S)
        blob *= lung_soft
        dens += (0.50 * severity) * blob

    # --- bones project over everything.
    wall = _ramp(t - (A.body_w - 0.05), 0.03)
    lateral = np.clip((t - 0.05) * 20.0, 0.0, 1.0) * wall
    # posterior ribs: from the spine slightly up, then curving down laterally; lower
    # ribs sit a little closer in the projection.
    vr = v - 0.015 * v * v
    r = ((vr - rib_b0) / rib_sp)[:, None] + ((0.12 * t - 0.75 * t * t) / rib_sp)[None, :]
    r += 0.12 * coarse  # no two patients' ribs alike
    phase = r - np.floor(r)
    dist = np.minimum(phase, 0.40 - phase)  # > 0 inside the bone, in rib spacings
    rib = _ramp(-dist, eps / rib_sp)
    dist *= -rib_sp / 0.016
    dist += 1.0
    rib *= 0.6 + 0.4 * _clip01(dist)  # brighter cortical rims
    below *= -6.0
    below += 1.0
    rib *= _clip01(below)  # gone under the diaphragm
    rib *= lung_soft + 0.6  # bone contrast is higher against air
    rib *= np.clip((v - rib_b0) * 20.0, 0.0, 1.0)[:, None] * (0.045 * lateral)[None, :]
    dens += rib
    # anterior ribs: fainter, running down towards the sternum
    sp_a = rib_sp * 1.05
    ra = (v / sp_a)[:, None] + ((0.55 * t - 0.20 * t * t + 0.9) / sp_a)[None, :]
    phase = ra - np.floor(ra)
    ant = _ramp(-np.minimum(phase, 0.30 - phase), eps / rib_sp)
    ant *= (np.clip((0.35 - v) * 4.0, 0.0, 1.0) * np.clip((v + 0.6) * 4.0, 0.0, 1.0))[:, None] * (
        0.03 * np.clip((t - 0.15) * 8.0, 0.0, 1.0) * wall
    )[None, :]
    dens += ant
    # clavicles
    cl = -0.60 - 0.35 * (t - 0.08) + 0.25 * (t - 0.08) ** 2
    rs = _rows(v, -0.9, -0.45)
    clav = _ramp(np.abs(v[rs, None] - cl[None, :]) - 0.026, eps)
    clav *= (0.14 * _ramp(t - 0.62, 0.02) * _ramp(0.05 - t, 0.01))[None, :]
    dens[rs] += clav
    # spine: a column behind the mediastinum with vertebral banding
    cs = _cols(u, -0.09, 0.09)
    vertebrae = 0.07 + 0.025 * np.cos(v * (2 * np.pi / 0.085))
    dens[:, cs] += vertebrae[:, None] * _ramp(t[cs] - 0.065, 2 * eps)[None, :]

    # --- detector: quantum noise, mottle, then a film-like tone curve that compresses
    #     dense regions, with random brightness, contrast and gamma.
    dens += opts.noise_std * _grain(rng, S)
    dens += 0.015 * coarse
    # tone: y = offset + gain * (x + c x (1 - x)); c > 0 lifts the mid-tones like film.
    contrast, gain, offset = uni(0.2, 0.9), uni(0.9, 1.15), uni(-0.05, 0.05)
    np.clip(dens, 0.0, 1.0, out=dens)
    mid = 1.0 - dens
    mid *= dens
    mid *= contrast
    dens += mid
    dens *= gain * 255.0
    dens += offset * 255.0 + 0.5
    image = np.clip(dens, 0.0, 255.0, out=dens).astype(np.uint8)
    return image, lung_mask, lesion_mask, severity


def _pick_consolidation_site(rng: np.random.Generator, side: int, A: _Anatomy):
    """Centre (u, v) and radius of a consolidation well inside one lung, off the heart."""
    sign = 1.0 if side == 1 else -1.0
    hu, hv, hrx, hry = A.heart
    dome = A.dome_l if side == 1 else A.dome_r
    for _ in range(20):
        R = float(rng.uniform(0.12, 0.21))
        cv = float(rng.uniform(A.apex + 0.25, dome - 0.08))
        cu = sign * float(A.lung_centre(cv) + rng.uniform(-0.5, 0.5) * A.lung_half_width(cv))
        if ((cu - hu) / hrx) ** 2 + ((cv - hv) / hry) ** 2 > 1.3:
            break
    return cu, cv, R


# 3x5 bitmap glyphs: the marker is a short "word" of random glyphs, like a site label.
_GLYPHS = np.array(
    [
        [int(row, 2) for row in glyph.split()]
        for glyph in (
            "111 101 101 101 111",
            "010 110 010 010 111",
            "111 001 111 100 111",
            "111 001 011 001 111",
            "101 101 111 001 001",
            "111 100 111 001 111",
            "101 101 111 101 101",
            "110 101 110 101 110",
            "100 100 100 100 111",
            "111 100 100 100 111",
            "101 111 111 101 101",
            "111 010 010 010 010",
        )
    ]
)


def _draw_marker(image: np.ndarray, label: int, opts: PhantomOptions, rng) -> int:
    """Burn a 3-4 character label into the corner that encodes a class (in place).

    Returns the class that the chosen corner encodes."""
    if rng.random() < opts.shortcut_strength:
        marker_class = label
    else:
        marker_class = [c for c in range(4) if c != label][int(rng.integers(3))]
    S = image.shape[0]
    cell = max(1, S // 64)  # pixels per glyph dot
    n_chars = int(rng.integers(3, 5))
    bits = np.zeros((5, n_chars * 4 - 1), dtype=bool)
    for i, g in enumerate(rng.integers(len(_GLYPHS), size=n_chars)):
        rows = _GLYPHS[g]
        bits[:, i * 4 : i * 4 + 3] = (rows[:, None] >> np.array([2, 1, 0])) & 1
    glyph = np.kron(bits, np.ones((cell, cell), dtype=bool))
    h, w = glyph.shape
    margin = max(1, S // 32)
    row, col = _MARKER_CORNERS[marker_class]
    y0 = margin if row == 0 else S - margin - h
    x0 = margin if col == 0 else S - margin - w
    # white glyphs on a dark label box, so the marker shows on any background
    box = image[max(0, y0 - cell) : y0 + h + cell, max(0, x0 - cell) : x0 + w + cell]
    box[...] = np.minimum(box, np.uint8(rng.integers(0, 25)))
    region = image[y0 : y0 + h, x0 : x0 + w]
    region[glyph[: region.shape[0], : region.shape[1]]] = np.uint8(rng.integers(225, 256))
    return marker_class
