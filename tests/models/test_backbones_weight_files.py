"""Weight files that do not fit are clear errors naming the file and what did not match;
preprocessing is Keras' ``preprocess_input``; ``import-weights`` converts a file once.

Small, fast models only (MobileNet / MobileNetV2 at 32 px), each forward pass one compiled
program (``run_compiled``: op by op, every distinct operation compiles on its own): the
full comparisons are in test_backbones_keras.py.
"""

import json

import h5py
import jax
import numpy as np
import pytest
from keras_reference import (
    assert_close,
    keras,
    keras_apply,
    keras_model,
    random_input,
    run_compiled,
    write_keras_h5,
)

from cxrjax import models
from cxrjax.models import __main__ as cli
from cxrjax.models.weights import WeightFileError, count_parameters


@pytest.fixture(scope="module")
def mnv2_file(tmp_path_factory):
    reference = keras_model("MobileNetV2", 32, include_top=True)
    path = write_keras_h5(reference, tmp_path_factory.mktemp("w") / "mobilenet_v2.h5")
    return reference, path


def test_truncated_and_corrupt_files(tmp_path, mnv2_file):
    _, path = mnv2_file
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"truncated\.h5: .*(truncated|corrupt)"):
        models.load_pretrained("mobilenet_v2", truncated)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(WeightFileError, match=r"garbage\.h5: not a readable HDF5 file"):
        models.load_pretrained("mobilenet_v2", garbage)
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"\x80\x04garbage")
    with pytest.raises(WeightFileError, match=r"bad\.pth: not a readable torch state dict"):
        models.load_pretrained("resnet50", bad_pth)
    with pytest.raises(WeightFileError, match="no such file"):
        models.load_pretrained("resnet50", tmp_path / "missing.h5")
    npz = tmp_path / "w.npz"
    npz.write_bytes(b"x")
    with pytest.raises(WeightFileError, match="unknown weight-file type .npz"):
        models.load_pretrained("resnet50", npz)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("x")
    with pytest.raises(WeightFileError, match="without Keras' 'layer_names'"):
        models.load_pretrained("resnet50", empty)


def test_wrong_architecture_lists_what_did_not_match(mnv2_file):
    _, path = mnv2_file
    with pytest.raises(WeightFileError) as e:
        models.load_pretrained("mobilenet", path)
    message = str(e.value)
    assert "mobilenet_v2.h5 does not match mobilenet" in message
    assert "missing: conv1/kernel" in message and "conv_dw_1/depthwise_kernel" in message
    assert "unexpected: Conv1 (Conv1/kernel)" in message
    assert "The file's layers: input_layer" in message and "bn_Conv1" in message
    assert "_notop" not in message and "variant" not in message  # neither is the fix here


def test_headless_file_with_top_and_strict_false(tmp_path):
    notop = keras_model("MobileNetV2", 32, include_top=False)
    path = write_keras_h5(notop, tmp_path / "notop.h5")
    with pytest.raises(WeightFileError, match=r"2 missing: predictions/kernel, predictions/bias.*include_top=False"):
        models.load_pretrained("mobilenet_v2", path)
    with pytest.raises(WeightFileError) as e:  # a Keras file: the Keras variant, and its _notop hint
        models.load_pretrained("mobilenet_v2", path, variant="torchvision")
    assert str(e.value).endswith(
        "A Keras file needs the Keras variant of mobilenet_v2 (not 'torchvision'): pass variant=\"keras\" "
        "(import-weights: no --variant). For a _notop file pass include_top=False (import-weights: --no-top)"
    )
    module, variables, unmatched = models.load_pretrained("mobilenet_v2", path, strict=False, image_size=32)
    assert unmatched.missing == ("predictions/kernel", "predictions/bias") and not unmatched.unexpected
    assert variables["params"]["predictions"]["kernel"].shape == (1280, 1000)  # random init
    w = {n.split("/")[-1]: v for n, v in [(w.path, w.numpy()) for w in notop.get_layer("Conv1").weights]}
    np.testing.assert_array_equal(variables["params"]["Conv1"]["kernel"], w["kernel"])
    assert run_compiled(lambda v, x: module.apply(v, x, train=False), variables, random_input(32)).shape == (2, 1000)


def test_mis_shaped_tensor_is_named(tmp_path, mnv2_file):
    _, path = mnv2_file
    bad = tmp_path / "bad.h5"
    bad.write_bytes(open(path, "rb").read())
    with h5py.File(bad, "r+") as f:
        group = f["predictions"]
        name = [n.decode() if hasattr(n, "decode") else n for n in group.attrs["weight_names"]][0]
        del group[name]
        group.create_dataset(name, data=np.zeros((1280, 10), np.float32))
    with pytest.raises(
        WeightFileError, match=r"1 mis-shaped: predictions/kernel: file \(1280, 10\) .* model \(1280, 1000\)"
    ):
        models.load_pretrained("mobilenet_v2", bad)


def test_torchvision_file_for_a_keras_only_architecture(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "x.safetensors"
    save_file({"conv.weight": np.zeros((2, 3, 1, 1), np.float32)}, str(path))
    with pytest.raises(WeightFileError, match=r"x\.safetensors: a torchvision state dict, but Xception has no"):
        models.load_pretrained("xception", path)
    with pytest.raises(
        WeightFileError, match=r"does not match resnet50 .*missing: conv1_conv/kernel \(conv1\.weight\)"
    ):
        models.load_pretrained("resnet50", path)


@pytest.mark.parametrize(
    "app, mode",
    [("vgg16", "caffe"), ("resnet50", "caffe"), ("mobilenet_v2", "tf"), ("xception", "tf"), ("densenet", "torch")],
)
def test_preprocessing_is_keras_preprocess_input(app, mode):
    k = keras()
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    expected = np.asarray(getattr(k.applications, app).preprocess_input(x.copy()))
    np.testing.assert_allclose(models.preprocess_input(x, mode), expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(models.preprocess_input(jax.numpy.asarray(x), mode), expected, rtol=1e-6, atol=1e-5)
    gray = x[..., :1]
    np.testing.assert_allclose(
        models.preprocess_input(gray, mode),
        np.asarray(getattr(k.applications, app).preprocess_input(np.repeat(gray, 3, -1))),
        rtol=1e-6,
        atol=1e-5,
    )


def test_preprocessing_modes_of_the_backbones():
    expected = {
        "vgg16_imagenet": "caffe",
        "resnet50": "caffe",
        "mobilenet": "tf",
        "mobilenet_v2": "tf",
        "inception_v3": "tf",
        "xception": "tf",
        "densenet121": "torch",
        "densenet201": "torch",
        "efficientnet_b0": "pixels",
        "efficientnet_b7": "pixels",
    }
    assert {n: models.preprocessing_mode(n) for n in expected} == expected
    assert models.preprocessing_mode("resnet50", "torchvision") == "torch"
    for mode in ("none", "pixels"):  # EfficientNet's preprocess_input is the identity on [0, 255]
        assert np.array_equal(models.preprocess_input(np.full((1, 2, 2, 3), 7.0), mode), np.full((1, 2, 2, 3), 7.0))


def test_import_weights_cli(tmp_path, mnv2_file, capsys):
    reference, path = mnv2_file
    out = tmp_path / "ckpt"
    assert cli.main(["import-weights", "mobilenet_v2", str(path), "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["include_top"] is True and record["source_format"] == "keras_h5"
    assert record["parameters"] == reference.count_params() and record["preprocessing"] == "tf"
    assert record["sha256"] == __import__("hashlib").sha256(open(path, "rb").read()).hexdigest()
    assert json.loads((out / "meta.json").read_text()) == record
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore((out / "variables").absolute())
    module = models.create("mobilenet_v2", num_classes=1000)
    x = random_input(32)
    assert count_parameters(restored) == reference.count_params()
    actual = run_compiled(lambda v, x: module.apply(v, x, train=False), restored, x)
    assert_close(actual, keras_apply(reference, x), what="restored checkpoint")
    # never overwritten; user mistakes are one error line
    assert cli.main(["import-weights", "mobilenet_v2", str(path), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["import-weights", "mobilenet", str(path), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not match mobilenet" in err and "Traceback" not in err


def test_grad_cam_on_a_backbone(mnv2_file):
    """Grad-CAM runs on a backbone: its default layer is the last conv stage, and the
    heatmap is upsampled (plainly: backbones have no spatial plan) to the input size."""
    from cxrjax.explain.gradcam import gradcam

    _, path = mnv2_file
    module, variables = models.load_pretrained("mobilenet_v2", path)
    out = gradcam(module, variables, random_input(32, batch=2), targets=np.array([3, 7]))
    assert out.layer == "stage5" == module.feature_names[-1]
    assert out.heatmaps.shape == (2, 32, 32) and out.cams.shape == (2, 1, 1)
    assert np.all(np.isfinite(out.heatmaps)) and out.probs.shape == (2, 1000)


def test_tf_keras_slash_layer_names(tmp_path, mnv2_file):
    """tf.keras 2 named DenseNet's layers "conv1/conv": a "/" in a file's layer name matches
    Keras 3's "_" (here on MobileNetV2's "bn_Conv1" renamed "bn/Conv1")."""
    reference, path = mnv2_file
    renamed = tmp_path / "slash.h5"
    renamed.write_bytes(open(path, "rb").read())
    with h5py.File(renamed, "r+") as f:
        names = [n.decode() if hasattr(n, "decode") else n for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [("bn/Conv1" if n == "bn_Conv1" else n).encode() for n in names]
        f.move("bn_Conv1", "bn/Conv1")
    module, variables = models.load_pretrained("mobilenet_v2", renamed)
    x = random_input(32)
    actual = run_compiled(lambda v, x: module.apply(v, x, train=False), variables, x)
    assert_close(actual, keras_apply(reference, x), what="renamed")


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_keras_pooling_is_differentiable_under_jit_and_matches_tf_semantics(padding):
    """Fine-tuning through a backbone's pooling needs its gradient under jit (an array
    init value of lax.reduce_window broke linearisation); values as Keras/TF: max pads
    with -inf, average counts only the valid positions."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cxrjax.models.keras_layers import avg_pool, max_pool

    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 5, 2)), jnp.float32)
    for pool in (max_pool, avg_pool):
        grad = jax.jit(jax.grad(lambda v: pool(v, 3, 2, padding).sum()))(x)
        assert grad.shape == x.shape and bool(jnp.isfinite(grad).all())
    xs = np.asarray(x)
    if padding == "same":  # 5 -> 3 windows at rows/cols 0-1 (pad 1 before), 1-3, 3-4
        windows = [slice(0, 2), slice(1, 4), slice(3, 5)]
    else:
        windows = [slice(0, 3), slice(2, 5)]
    want_max = np.array([[xs[0, r, c].max(axis=(0, 1)) for c in windows] for r in windows])
    want_avg = np.array([[xs[0, r, c].mean(axis=(0, 1)) for c in windows] for r in windows])
    np.testing.assert_allclose(np.asarray(max_pool(x, 3, 2, padding))[0], want_max, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(avg_pool(x, 3, 2, padding))[0], want_avg, rtol=1e-6)
