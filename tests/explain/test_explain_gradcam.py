"""Grad-CAM against a hand computation, and on models whose logit depends on one region."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cxrjax.explain.gradcam import gradcam, make_gradcam_fn
from cxrjax.explain.overlay import Tile, overlay_heatmap, save_grid_png, save_overlay_png


class TwoStage(nn.Module):
    """conv -> ReLU -> perturb(feat0) -> avg-pool -> conv -> ReLU -> perturb(feat1) -> GAP -> dense."""

    num_classes: int = 3
    feature_names = ("feat0", "feat1")

    @nn.compact
    def __call__(self, x, *, train):
        x = self.perturb("feat0", nn.relu(nn.Conv(4, (3, 3), name="conv0")(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = self.perturb("feat1", nn.relu(nn.Conv(5, (3, 3), name="conv1")(x)))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def conv(x, p):
    return (
        lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
    )


@pytest.fixture(scope="module")
def two_stage():
    model = TwoStage()
    x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 1))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)  # one compile, not per op
    return model, variables, np.asarray(x)


def test_gradcam_matches_hand_computation(two_stage):
    model, variables, x = two_stage
    p = variables["params"]
    a1 = jax.nn.relu(conv(x, p["conv0"]))
    a2 = np.asarray(jax.nn.relu(conv(nn.avg_pool(a1, (2, 2), (2, 2)), p["conv1"])))  # [3, 6, 6, 5]
    logits = a2.mean(axis=(1, 2)) @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])
    targets = np.array([2, 0, -1])
    out = gradcam(model, variables, x, targets)
    chosen = np.where(targets < 0, logits.argmax(-1), targets)
    # d logit_c / d A2[i, j, k] = W[k, c] / (6 * 6) everywhere, so alpha_k = W[k, c] / 36.
    w = np.asarray(p["head"]["kernel"])[:, chosen].T / 36.0  # [3, 5]
    expected = np.maximum(np.einsum("bhwk,bk->bhw", a2, w), 0.0)
    assert out.layer == "feat1"
    np.testing.assert_array_equal(out.targets, chosen)
    np.testing.assert_allclose(out.cams, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.probs, jax.nn.softmax(logits), rtol=1e-5)
    assert out.heatmaps.shape == (3, 12, 12)
    assert out.heatmaps.min() >= 0.0 and out.heatmaps.max() <= 1.0 + 1e-6
    for cam, heat in zip(out.cams, out.heatmaps):
        assert heat.max() == pytest.approx(1.0 if cam.max() > 0 else 0.0, abs=1e-6)
    # LayerCAM weights each location by ReLU(gradient): here ReLU(W[k, c]) / 36 everywhere.
    layercam = gradcam(model, variables, x, targets, method="layercam")
    expected = np.maximum(np.einsum("bhwk,bk->bhw", a2, np.maximum(w, 0.0)), 0.0)
    np.testing.assert_allclose(layercam.cams, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="layercam"):
        gradcam(model, variables, x, method="saliency")


def test_gradcam_layer_can_be_named(two_stage):
    model, variables, x = two_stage
    out = gradcam(model, variables, x, layer="feat0")
    assert out.layer == "feat0" and out.cams.shape == (3, 12, 12)
    with pytest.raises(ValueError, match=r"feat0.*feat1"):
        gradcam(model, variables, x, layer="conv9")


class RegionModel(nn.Module):
    """Logits computed from the pixels where the "gate" parameter is 1 only.

    Positive weights make class 0 the evidence class; class 1's logit is its negative.
    The region is a parameter (not a field) so every region shares one compiled function.
    """

    feature_names = ("feat0", "feat1")

    @nn.compact
    def __call__(self, x, *, train):
        gate = self.param("gate", nn.initializers.ones, x.shape[1:3])
        const = nn.initializers.constant
        x = x * gate[None, :, :, None]
        x = self.perturb("feat0", nn.relu(nn.Conv(3, (3, 3), kernel_init=const(0.1))(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = self.perturb("feat1", nn.relu(nn.Conv(3, (3, 3), kernel_init=const(0.1))(x)))
        s = x.mean(axis=(1, 2, 3))
        return jnp.stack([s, -s], axis=-1)


def test_gradcam_maximum_lies_in_the_region_the_logit_depends_on():
    model = RegionModel()
    x = np.asarray(jax.random.uniform(jax.random.key(2), (6, 16, 16, 1)))
    base = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x[:1])
    for region in [(0, 8, 0, 8), (10, 16, 6, 14)]:
        y0, y1, x0, x1 = region
        gate = np.zeros((16, 16), np.float32)
        gate[y0:y1, x0:x1] = 1.0
        variables = {"params": {**base["params"], "gate": gate}}
        fn = make_gradcam_fn(model, variables, x.shape[1:])
        out = fn(x)
        for heat in out.heatmaps:
            r, c = np.unravel_index(np.argmax(heat), heat.shape)
            assert y0 <= r < y1 and x0 <= c < x1, (region, (r, c))
            # and the heatmap is cold far from the region
            far = np.ones_like(heat, bool)
            far[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6] = False  # receptive field + upsampling
            assert heat[far].max(initial=0.0) < 1e-6
        np.testing.assert_array_equal(out.targets, 0)
        # Explaining the counter-class (whose logit falls with the evidence) gives an empty map.
        against = fn(x, np.ones(6, np.int32))
        assert against.heatmaps.max() == 0.0 and (against.targets == 1).all()


def test_overlay_and_grid_png(tmp_path):
    image = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8, 1)
    heat = np.zeros((8, 8), np.float32)
    heat[2, 5] = 1.0
    rgb = overlay_heatmap(image, heat)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    # cold pixels show the gray image unchanged; the hot pixel is coloured
    gray = np.round((image[..., 0] + 1) / 2 * 255)
    np.testing.assert_allclose(rgb[0, 0], [gray[0, 0]] * 3, atol=1)
    assert len(set(rgb[2, 5].tolist())) > 1
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(image, np.zeros((4, 4)))
    from PIL import Image

    png = save_overlay_png(tmp_path / "a" / "one.png", image, heat)
    assert Image.open(png).size == (8, 8)
    tiles = [Tile(image, heat, f"t{i}", outline=heat > 0.5) for i in range(3)]
    grid = save_grid_png(tmp_path / "grid.png", [("correct", tiles), ("wrong", [])], title="x", columns=2)
    assert Image.open(grid).size[0] > 0


def test_every_registered_model_exposes_its_gradcam_layers():
    """Each registered model's perturb points (found by tracing, nothing compiled) are its
    ``feature_names`` in call order, so the default layer is its last conv stage."""
    from cxrjax.explain.gradcam import perturbation_paths, resolve_layer
    from cxrjax.models import MODELS
    from cxrjax.models.testing import create_tiny, tiny_image_size

    for name, spec in MODELS.items():
        model = create_tiny(name, num_classes=3)
        shape = (1, tiny_image_size(name), tiny_image_size(name), spec.channels)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
        paths = perturbation_paths(model, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
        assert ["/".join(p) for p in paths] == list(model.feature_names), name
        assert resolve_layer(paths, None, model) == paths[-1]


class PlannedRegionModel(RegionModel):
    """RegionModel with a spatial plan (3x3 SAME convs = padding 1, 2x2 pooling), so
    Grad-CAM upsamples with the aligned geometry instead of a plain resize."""

    def spatial_plan(self):
        return [("conv", 3, 1), ("pool",), ("conv", 3, 1)]


def test_aligned_upsampling_keeps_the_maximum_in_the_region():
    model = PlannedRegionModel()
    x = np.asarray(jax.random.uniform(jax.random.key(3), (4, 16, 16, 1)))
    base = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x[:1])
    from cxrjax.explain.gradcam import feature_geometry

    assert feature_geometry(model, 8, 16) == (1.0, 2.0)  # after the pool: stride 2
    for y0, y1, x0, x1 in [(0, 8, 0, 8), (10, 16, 6, 14)]:
        gate = np.zeros((16, 16), np.float32)
        gate[y0:y1, x0:x1] = 1.0
        out = make_gradcam_fn(model, {"params": {**base["params"], "gate": gate}}, x.shape[1:])(x)
        for heat in out.heatmaps:
            r, c = np.unravel_index(np.argmax(heat), heat.shape)
            assert y0 <= r < y1 and x0 <= c < x1, ((y0, y1, x0, x1), (r, c))


def test_feature_geometry_of_s4_and_vgg():
    """Receptive-field centres of the perturbed conv outputs (pixel i spans [i, i + 1))."""
    from cxrjax.explain.gradcam import feature_geometry, interpolation_matrix
    from cxrjax.models import create

    s4 = create("s4_exp4", num_classes=4)
    # 64 -k10p0-> 55 -k6p2-> 54 -pool-> 27 -k3p2-> 29 -pool-> 14 -k3p2-> 16
    assert feature_geometry(s4, 55, 64) == (5.0, 1.0)
    assert feature_geometry(s4, 29, 64) == (4.0, 2.0)  # third stage: stride 2, starts at 4
    assert feature_geometry(s4, 16, 64) == (1.0, 4.0)  # last stage: cell j centred at 1 + 4j
    assert feature_geometry(s4, 15, 64) is None  # no conv output of that size
    vgg = create("vgg16", num_classes=4)
    assert feature_geometry(vgg, 64, 64) == (0.5, 1.0)  # 3x3 padding-1 convs keep the centres
    assert feature_geometry(vgg, 32, 64) == (1.0, 2.0)  # after one 2x2 pooling
    assert feature_geometry(vgg, 16, 64) == (2.0, 4.0)
    m = interpolation_matrix(64, 16, 1.0, 4.0)
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
    # linear in the cell index, clamped to the outermost cells
    np.testing.assert_allclose(m @ np.arange(16), np.clip((np.arange(64) + 0.5 - 1.0) / 4.0, 0, 15), atol=1e-5)
    np.testing.assert_allclose(interpolation_matrix(8, 8, 0.5, 1.0), np.eye(8), atol=1e-7)


def test_feature_fn_equals_a_manual_forward_pass_of_s0():
    from cxrjax import models
    from cxrjax.explain.gradcam import make_feature_fn

    model = models.create("s0_c", num_classes=2, channels=1, filters=(3, 4), dense=5)
    x = np.asarray(jax.random.uniform(jax.random.key(3), (2, 20, 20, 1)))
    variables = jax.jit(lambda x: model.init({"params": jax.random.key(0)}, x, train=False))(x)
    feats = make_feature_fn(model, variables, x.shape[1:])(x)
    assert list(feats) == list(model.feature_names) == ["feat1", "feat2"]

    def valid_conv(a, p):  # Keras "valid" 3x3 conv, by hand
        return (
            lax.conv_general_dilated(a, p["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            + p["bias"]
        )

    p = variables["params"]
    a1 = jax.nn.relu(valid_conv(x, p["conv1"]))  # [2, 18, 18, 3]
    pooled = lax.reduce_window(a1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    a2 = jax.nn.relu(valid_conv(pooled, p["conv2"]))  # [2, 7, 7, 4]
    np.testing.assert_allclose(feats["feat1"], a1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["feat2"], a2, rtol=1e-5, atol=1e-6)
    only = make_feature_fn(model, variables, x.shape[1:], layer="feat2")(x)
    assert list(only) == ["feat2"]
    np.testing.assert_array_equal(only["feat2"], feats["feat2"])
    with pytest.raises(ValueError, match=r"feat1.*feat2"):
        make_feature_fn(model, variables, x.shape[1:], layer="conv9")
