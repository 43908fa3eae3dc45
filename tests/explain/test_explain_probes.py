"""Shortcut probes on constructed models whose behaviour is known by construction.

The data: tiny synthetic "radiographs" (16x16) with a fixed lung mask. Class "Sick" has
a bright lesion at a random place inside a lung AND a bright marker in the top-left
corner (outside the body); class "Normal" has neither. Two hand-made models (one module, two sets of parameters):
- the "corner" model looks only at the corner (a shortcut): it must keep its accuracy with
  the lungs blanked, lose it with only the lungs visible, and Grad-CAM must point
  outside the lungs, never at the lesion.
- the "lungs" model looks only inside the lungs: the opposite on every count.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.explain import probes
from cxrjax.explain.gradcam import make_gradcam_fn

SIZE = 16
LUNG_BOXES = ((4, 13, 2, 7), (4, 13, 9, 14))  # (y0, y1, x0, x1), end-exclusive
CORNER_BOX = ((0, 2, 0, 2),)
CLASS_NAMES = ("Normal", "Sick")
N_NORMAL, N_SICK = 24, 16


def box_mask(boxes, size=SIZE):
    mask = np.zeros((size, size), bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    lungs = box_mask(LUNG_BOXES)
    images, lesions, labels = [], [], []
    for label in [0] * N_NORMAL + [1] * N_SICK:
        img = np.zeros((SIZE, SIZE), np.float32)
        img[2:15, 2:15] = 60 + rng.uniform(-10, 10, (13, 13))
        img[lungs] = 30 + rng.uniform(-10, 10, lungs.sum())
        lesion = np.zeros((SIZE, SIZE), bool)
        if label == 1:
            y0, y1, x0, x1 = LUNG_BOXES[rng.integers(2)]
            y, x = rng.integers(y0, y1 - 2), rng.integers(x0, x1 - 2)
            lesion[y : y + 3, x : x + 3] = True
            img[lesion] = 200
            img[0:2, 0:2] = 255  # the class-correlated marker
        images.append(img)
        lesions.append(lesion)
        labels.append(label)
    images = np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)[..., None]
    lung_masks = np.repeat((lungs * 255).astype(np.uint8)[None, ..., None], len(labels), 0)
    lesion_masks = (np.stack(lesions) * 255).astype(np.uint8)[..., None]
    return images, lung_masks, lesion_masks, np.asarray(labels)


class GatedModel(nn.Module):
    """Sees the image only where the "gate" parameter is 1; says "Sick" when a 3x3 mean
    there exceeds the threshold (minus the conv bias). Gate and threshold are parameters,
    not fields, so both models below share one compiled function."""

    feature_names = ("feat0",)

    @nn.compact
    def __call__(self, x, *, train):
        gate = self.param("gate", nn.initializers.ones, x.shape[1:3])
        a = nn.Conv(1, (3, 3), kernel_init=nn.initializers.constant(1 / 9))(x * gate[None, :, :, None])
        a = self.perturb("feat0", nn.relu(a))
        m = a.mean(axis=(1, 2, 3))
        return jnp.stack([jnp.full_like(m, 1e-4), m], axis=-1)


MODEL = GatedModel()
# thresholds: a 3x3 mean above 0.3 (corner: the 255 marker gives 4/9; the fill, a dark
# lung mean, gives < 0.1) or above 0.4 (lungs: only the 200-valued lesion gets there)
GATES = {"corner": (CORNER_BOX, 0.3), "lungs": (LUNG_BOXES, 0.4)}
_apply = jax.jit(lambda v, x: MODEL.apply(v, x, train=False))


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def variables():
    x = jnp.zeros((1, SIZE, SIZE, 1))
    base = jax.jit(lambda x: MODEL.init(jax.random.key(0), x, train=False))(x)
    out = {}
    for name, (boxes, threshold) in GATES.items():
        params = dict(base["params"])
        params["gate"] = jnp.asarray(box_mask(boxes), jnp.float32)
        params["Conv_0"] = {**params["Conv_0"], "bias": jnp.full((1,), -threshold)}
        out[name] = {"params": params}
    return out


def predict(variables, images_uint8):
    return np.asarray(jnp.argmax(_apply(variables, jnp.asarray(images_uint8, jnp.float32) / 255.0), -1))


def masked(images, lung_masks, mode):
    return np.stack([probes.apply_lung_mask(im, m, mode) for im, m in zip(images, lung_masks)])


def test_apply_lung_mask_blanks_the_right_pixels_at_any_mask_size(data):
    images, lung_masks, _, _ = data
    lungs = box_mask(LUNG_BOXES)
    only = probes.apply_lung_mask(images[-1], lung_masks[-1], probes.LUNGS_ONLY)
    blanked = probes.apply_lung_mask(images[-1], lung_masks[-1], probes.LUNGS_BLANKED)
    image = images[-1][..., 0]
    assert only.dtype == np.uint8 and only.shape == images[-1].shape
    np.testing.assert_array_equal(only[..., 0][lungs], image[lungs])
    # blanked pixels get the mean of the kept ones: nothing of the removed region leaks
    assert (only[..., 0][~lungs] == np.round(image[lungs].mean())).all()
    np.testing.assert_array_equal(blanked[..., 0][~lungs], image[~lungs])
    assert (blanked[..., 0][lungs] == np.round(image[~lungs].mean())).all()
    # A mask stored at twice the image size (D4: 256 px masks, 299 px images) lines up.
    big = np.kron(lung_masks[-1][..., 0], np.ones((2, 2), np.uint8))
    np.testing.assert_array_equal(probes.apply_lung_mask(images[-1], big, probes.LUNGS_ONLY), only)
    with pytest.raises(ValueError, match="lungs_only"):
        probes.apply_lung_mask(images[0], lung_masks[0], "lungs")


def test_lung_masked_source_wraps_records(data):
    images, lung_masks, _, labels = data
    source = [{"image": im, "lung_mask": m, "label": int(y)} for im, m, y in zip(images, lung_masks, labels)]
    wrapped = probes.LungMaskedSource(source, probes.LUNGS_BLANKED)
    assert len(wrapped) == len(source)
    np.testing.assert_array_equal(wrapped[3]["image"], masked(images[3:4], lung_masks[3:4], probes.LUNGS_BLANKED)[0])
    assert wrapped[3]["label"] == labels[3]
    with pytest.raises(KeyError, match="lung_mask"):
        probes.LungMaskedSource([{"image": images[0]}], probes.LUNGS_ONLY)[0]


def probe(variables, data):
    images, lung_masks, _, labels = data
    normal = predict(variables, images)
    only = predict(variables, masked(images, lung_masks, probes.LUNGS_ONLY))
    blanked = predict(variables, masked(images, lung_masks, probes.LUNGS_BLANKED))
    return probes.shortcut_probe_report(labels, normal, only, blanked, CLASS_NAMES)


def test_probe_flags_the_model_that_only_looks_outside_the_lungs(data, variables):
    report = probe(variables["corner"], data)
    chance = N_NORMAL / (N_NORMAL + N_SICK)
    assert report["chance_accuracy"] == pytest.approx(chance)
    assert report["normal_accuracy"] == 1.0
    assert report["lungs_blanked_accuracy"] == 1.0  # marker still visible
    assert report["lungs_only_accuracy"] == pytest.approx(chance)  # marker gone: all "Normal"
    assert report["lungs_blanked_retained"] == pytest.approx(1.0)
    assert report["finding"] == "shortcut"
    assert "SHORTCUTS" in report["verdict"] and "100.0%" in report["verdict"]


def test_probe_clears_the_model_that_only_looks_inside_the_lungs(data, variables):
    report = probe(variables["lungs"], data)
    chance = N_NORMAL / (N_NORMAL + N_SICK)
    assert report["normal_accuracy"] == 1.0
    assert report["lungs_only_accuracy"] == 1.0
    assert report["lungs_blanked_accuracy"] == pytest.approx(chance)
    assert report["finding"] == "no_shortcut"
    assert "No sign of shortcuts" in report["verdict"] and "comes from the lung fields" in report["verdict"]


def test_probe_is_inconclusive_for_a_model_at_chance():
    labels = np.array([0, 0, 0, 1, 1, 1])
    zeros = np.zeros(6, int)
    report = probes.shortcut_probe_report(labels, zeros, zeros, zeros, CLASS_NAMES)
    assert report["finding"] == "inconclusive" and report["normal_accuracy"] == 0.5


def test_pointing_game_by_hand():
    # 3 "Sick" images with a lesion in the top-left 2x2 of a 4x4 map, 1 "Normal" image.
    lesion = np.zeros((4, 4), np.uint8)
    lesion[:2, :2] = 255
    blank = np.zeros((4, 4), np.uint8)
    heat = np.zeros((4, 4, 4), np.float32)
    heat[0, 0, 0] = 3.0
    heat[0, 3, 3] = 1.0  # peak inside, mass 3/4
    heat[1, 3, 3] = 2.0
    heat[1, 1, 1] = 2.0  # tie broken by argmax order -> (1,1) inside, mass 1/2
    heat[2, 2, 2] = 1.0  # peak outside, mass 0
    heat[3, 0, 0] = 1.0  # Normal: no lesion, not counted
    lungs = np.zeros((4, 4), np.uint8)
    lungs[:, :3] = 255  # (3,3) is outside the lungs

    # masks given at 8x8: they are resized to the heatmap size
    def up(m):
        return np.kron(m, np.ones((2, 2), np.uint8))

    result = probes.pointing_game(
        heat, [up(lesion)] * 3 + [up(blank)], [1, 1, 1, 0], CLASS_NAMES, lung_masks=[up(lungs)] * 4
    )
    sick, normal = result["per_class"]["Sick"], result["per_class"]["Normal"]
    assert sick["n"] == 3 and sick["n_with_lesion"] == 3
    assert sick["hit_rate"] == pytest.approx(2 / 3)
    assert sick["mean_mass_in_lesion"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert sick["mean_lesion_area"] == pytest.approx(0.25)
    assert sick["max_outside_lungs_rate"] == pytest.approx(0.0)
    assert normal["n"] == 1 and normal["n_with_lesion"] == 0 and normal["hit_rate"] is None
    assert result["overall"]["hit_rate"] == pytest.approx(2 / 3)
    assert "Sick" in probes.format_pointing_game(result)


def test_gradcam_pointing_game_separates_shortcut_from_lesion_model(data, variables):
    images, lung_masks, lesion_masks, labels = data
    x = images.astype(np.float32) / 255.0
    scores = {}
    for name in GATES:
        out = make_gradcam_fn(MODEL, variables[name], x.shape[1:])(x, labels)
        scores[name] = probes.pointing_game(out.heatmaps, lesion_masks, labels, CLASS_NAMES, lung_masks=lung_masks)[
            "per_class"
        ]["Sick"]
    assert scores["lungs"]["hit_rate"] == 1.0 and scores["lungs"]["max_outside_lungs_rate"] == 0.0
    assert scores["corner"]["hit_rate"] == 0.0 and scores["corner"]["max_outside_lungs_rate"] == 1.0
    assert scores["lungs"]["mean_mass_in_lesion"] > 0.5 > scores["corner"]["mean_mass_in_lesion"]


def test_phantom_marker_mask_is_where_the_generator_draws_the_marker():
    from cxrjax.data import phantoms

    size = 64
    on = phantoms.PhantomOptions(image_size=size, shortcut_marker=True)
    off = phantoms.PhantomOptions(image_size=size)
    corners = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}  # phantoms._MARKER_CORNERS
    for index in range(12):
        marked, clean = phantoms.phantom_example(3, index, on), phantoms.phantom_example(3, index, off)
        box = probes.phantom_marker_mask(marked)
        assert box.shape == (size, size) and 0 < box.mean() < 0.05
        changed = marked["image"][..., 0] != clean["image"][..., 0]
        assert changed.any() and not (changed & ~box).any()  # every marker pixel is in the box
        rows, cols = np.nonzero(box)
        corner = (int(rows.mean() > size / 2), int(cols.mean() > size / 2))
        assert corners[corner] == marked["marker_class"]
        # without the marker: the same box, where it would have been drawn
        np.testing.assert_array_equal(probes.phantom_marker_mask(clean), box)
    fn, drawn = probes.marker_masker("cxr_phantoms", {"image_size": 64, "shortcut_marker": True})
    assert drawn and fn(marked).sum() == box.sum()
    assert probes.marker_masker("covid19_radiography", None) == (None, False)


def test_pointing_game_scores_the_marker_by_hand():
    marker = np.zeros((16, 16), bool)
    marker[0:2, 0:3] = True  # label box in the top-left corner
    lesion = np.zeros((16, 16), bool)
    lesion[8:12, 8:12] = True
    heat = np.zeros((3, 16, 16), np.float32)
    heat[0, 1, 1] = 1.0  # on the marker
    heat[1, 2, 3] = 1.0
    heat[1, 10, 10] = 0.5  # next to it (within 16/16 = 1 px), 1/3 in the lesion
    heat[2, 10, 10] = 1.0  # on the lesion
    result = probes.pointing_game(heat, [lesion] * 3, [1, 1, 1], CLASS_NAMES, marker_masks=[marker] * 3)
    sick = result["per_class"]["Sick"]
    assert sick["max_on_marker_rate"] == pytest.approx(1 / 3)
    assert sick["max_near_marker_rate"] == pytest.approx(2 / 3)
    assert sick["mean_mass_on_marker"] == pytest.approx(1 / 3)
    assert sick["mean_marker_area"] == pytest.approx(6 / 256)
    assert sick["mean_marker_near_area"] == pytest.approx(12 / 256)  # rows 0-2, cols 0-3
    assert sick["hit_rate"] == pytest.approx(1 / 3)
    table = probes.format_pointing_game({**result, "marker_drawn": False})
    assert "on marker" in table and "NO marker" in table
