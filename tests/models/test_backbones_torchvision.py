"""torchvision state dicts load into the backbones that torchvision has (``variant="torchvision"``
where the architectures differ; chosen automatically for a torchvision file) and give
torchvision's outputs: logits and the last feature map, to 1e-4 of the output scale.
DenseNet121, ResNet50 (torchvision's v1.5), MobileNetV2, InceptionV3 (its training-only
AuxLogits skipped) with their classifiers; VGG16's convolutions (its classifier alone is
120 M parameters: a 500 MB file for one test).
"""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from keras_reference import assert_close, random_input, run_compiled, torch_apply, torchvision_model

from cxrjax import models
from cxrjax.models.weights import count_parameters

SIZE = 32


def _features(name, model):
    """The torchvision network up to its last feature map (before pooling)."""
    if name == "resnet50":
        return torch.nn.Sequential(*list(model.children())[:-2])
    if name == "densenet121":
        return torch.nn.Sequential(model.features, torch.nn.ReLU())
    return model.features


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "mobilenet_v2"])
def test_matches_torchvision(name, tmp_path):
    reference = torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    x = random_input(SIZE)
    module, variables = models.load_pretrained(name, path)
    assert module.variant == "torchvision"
    n_torch = sum(p.numel() for p in reference.parameters()) + sum(
        b.numel() for k, b in reference.named_buffers() if not k.endswith("num_batches_tracked")
    )
    assert count_parameters(variables) == n_torch
    headless, hvars = models.load_pretrained(name, path, include_top=False, strict=False)[:2]
    logits, features = run_compiled(
        lambda v, h, x: (module.apply(v, x, train=False), headless.apply(h, x, train=False)), variables, hvars, x
    )
    assert_close(logits, torch_apply(reference, x), what=f"{name} logits")
    assert_close(features, torch_apply(_features(name, reference), x), what="features")


def test_vgg16_features_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    reference = torchvision_model("vgg16")
    features = {k: v.contiguous() for k, v in reference.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg16_features.safetensors"
    save_file(features, str(path))
    module, variables = models.load_pretrained("vgg16_imagenet", path, include_top=False)
    x = random_input(SIZE)
    actual = run_compiled(lambda v, x: module.apply(v, x, train=False), variables, x)
    assert_close(actual, torch_apply(reference.features, x), what="vgg16 features")


def test_headless_load_of_a_full_state_dict_lists_the_classifier(tmp_path):
    reference = torchvision_model("mobilenet_v2")
    path = tmp_path / "m.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(models.WeightFileError, match=r"2 unexpected: classifier\.1\.weight, classifier\.1\.bias"):
        models.load_pretrained("mobilenet_v2", path, include_top=False)
    _, _, unmatched = models.load_pretrained("mobilenet_v2", path, include_top=False, strict=False)
    assert unmatched.unexpected == ("classifier.1.weight", "classifier.1.bias") and not unmatched.missing
    assert np.isfinite(count_parameters(_))


def test_torchvision_mismatch_names_the_fix_that_applies(tmp_path, capsys):
    """A torchvision state dict that does not fit: the Keras variant is told to use the
    torchvision one, a state dict without its classifier to pass include_top=False, and
    never the Keras-only "_notop" hint; the Keras variant loading one that fits says so."""
    from safetensors.numpy import save_file

    state = {k: v.numpy() for k, v in torchvision_model("mobilenet_v2").state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    headless = tmp_path / "headless.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("classifier.")}, str(headless))
    with pytest.raises(models.WeightFileError) as e:
        models.load_pretrained("mobilenet_v2", headless, image_size=32)
    message = str(e.value)
    assert "2 missing: predictions/kernel (classifier.1.weight), predictions/bias" in message
    assert message.endswith(
        ". The state dict has no classifier (classifier.*): pass include_top=False (import-weights: --no-top)"
    )
    assert "_notop" not in message and "variant" not in message
    with pytest.raises(models.WeightFileError) as e:
        models.load_pretrained("mobilenet_v2", headless, image_size=32, variant="keras")
    message = str(e.value)
    assert (
        ". A torchvision state dict needs the torchvision variant of mobilenet_v2: pass "
        'variant="torchvision" (import-weights: --variant torchvision, or no --variant). '
        "The state dict has no classifier (classifier.*)"
    ) in message
    assert "_notop" not in message
    # A file that fits the Keras variant's shapes loads, with a note (and none for the torchvision variant).
    full = tmp_path / "full.safetensors"
    save_file(state, str(full))
    capsys.readouterr()
    models.load_pretrained("mobilenet_v2", full, image_size=32)
    assert "note:" not in capsys.readouterr().err
    models.load_pretrained("mobilenet_v2", full, image_size=32, variant="keras")
    assert "loaded into the 'keras' variant of mobilenet_v2" in capsys.readouterr().err
    # A file of another architecture: no hint (neither the variant nor the top is the fix).
    partial = tmp_path / "partial.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(partial))
    with pytest.raises(models.WeightFileError) as e:
        models.load_pretrained("mobilenet_v2", partial, image_size=32)
    assert str(e.value).endswith("The file's layers: conv1.weight")


def test_import_weights_cli_names_the_variant_option(tmp_path, capsys):
    from safetensors.numpy import save_file

    from cxrjax.models import __main__ as cli

    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(path))
    out = tmp_path / "out"
    assert cli.main(["import-weights", "resnet50", str(path), "--variant", "keras", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "conv1_conv/bias (conv1.bias)" in err and "--variant torchvision" in err and "_notop" not in err
    assert not out.exists()


INCEPTION_SIZE = 75  # the smallest input torchvision's and Keras' InceptionV3 accept
# torchvision's auxiliary classifier (training only): the tensors a full state dict has
# that our inception_v3 skips (num_batches_tracked is never read).
AUX_LOGITS = sorted(
    [f"AuxLogits.{conv}.conv.weight" for conv in ("conv0", "conv1")]
    + [
        f"AuxLogits.{conv}.bn.{v}"
        for conv in ("conv0", "conv1")
        for v in ("weight", "bias", "running_mean", "running_var")
    ]
    + ["AuxLogits.fc.weight", "AuxLogits.fc.bias"]
)


def test_inception_v3_matches_torchvision(tmp_path, capsys):
    """A full torchvision state dict (with AuxLogits) loads from .pth and .safetensors, the
    auxiliary classifier's tensors reported as skipped; logits and the last feature map
    (Mixed_7c, 1x1 at 75 px: the classifier's input) are torchvision's (eval mode,
    transform_input=False); "tf" preprocessing of pixels gives torchvision's pretrained
    pipeline ("torch" normalisation + transform_input=True). One jitted forward pass."""
    from safetensors.torch import save_file

    # init_weights=False: PyTorch's default init (torchvision's truncated normal, std 0.1,
    # grows the activations by orders of magnitude over 94 convs)
    reference = torchvision_model("inception_v3", init_weights=False)
    state = reference.state_dict()
    pth, st = tmp_path / "inception_v3.pth", tmp_path / "inception_v3.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))

    module, variables = models.load_pretrained("inception_v3", pth)
    note = capsys.readouterr().err
    assert f"note: {pth}: skipped 12 tensor(s) under AuxLogits.*" in note
    _, st_variables, unmatched = models.load_pretrained("inception_v3", st, strict=False)
    assert not unmatched and sorted(unmatched.skipped) == AUX_LOGITS
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, variables, st_variables))

    assert module.variant == "torchvision"
    assert models.preprocessing_mode("inception_v3", module.variant) == "tf"
    kept = {k: v for k, v in state.items() if not k.startswith("AuxLogits.") and not k.endswith("num_batches_tracked")}
    assert count_parameters(variables) == sum(v.numel() for v in kept.values())
    trainable = sum(p.numel() for k, p in reference.named_parameters() if not k.startswith("AuxLogits."))
    assert count_parameters(variables["params"]) == trainable
    # torchvision's Inception_V3_Weights meta "num_params" 27161264, less AuxLogits' 3326696
    # (conv0 768*128 + BN 2*128, conv1 128*768*5*5 + BN 2*768, fc 768*1000 + 1000)
    assert trainable == 27_161_264 - (768 * 128 + 256 + 128 * 768 * 25 + 1536 + 768 * 1000 + 1000)

    @jax.jit
    def forward(variables, x):  # logits and the classifier's input (the pooled Mixed_7c)
        seen = {}

        def record(next_fun, args, kwargs, context):
            if context.module.name == "predictions":
                seen["features"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            logits = module.apply(variables, x, train=False)
        return logits, seen["features"]

    x = random_input(INCEPTION_SIZE)
    pixels = np.random.default_rng(2).uniform(0.0, 255.0, x.shape).astype(np.float32)
    logits, features = forward(variables, np.concatenate([x, models.preprocess_input(pixels, "tf")]))

    mixed_7c = []
    reference.Mixed_7c.register_forward_hook(lambda m, inputs, out: mixed_7c.append(out))
    assert_close(logits[:2], torch_apply(reference, x), what="inception_v3 logits")
    assert mixed_7c[0].shape == (2, 2048, 1, 1)
    assert_close(features[:2], mixed_7c[0].numpy().reshape(2, 2048), what="inception_v3 Mixed_7c")
    reference.transform_input = True  # what torchvision's inception_v3(weights=...) sets
    expected = torch_apply(reference, models.preprocess_input(pixels, "torch"))
    assert_close(logits[2:], expected, what="inception_v3, transform_input=True")


def test_inception_v3_state_dict_that_does_not_fit(tmp_path, capsys):
    """Only AuxLogits.* is skipped: any other extra tensor, a missing one, or an inception
    file given to another architecture is an error naming them."""
    from safetensors.numpy import save_file

    path = tmp_path / "partial.safetensors"
    tensors = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "AuxLogits.fc.bias": (1000,), "conv1.weight": (64, 3, 7, 7)}
    save_file({k: np.zeros(shape, np.float32) for k, shape in tensors.items()}, str(path))
    with pytest.raises(models.WeightFileError) as e:
        models.load_pretrained("inception_v3", path)
    message = str(e.value)
    assert "partial.safetensors does not match inception_v3" in message
    # 94 convs (kernel) and BatchNorms (scale, bias, mean, var), fc: 472 tensors, one in the file
    assert "471 missing: batch_normalization/scale (Conv2d_1a_3x3.bn.weight)" in message
    assert "conv2d_1/kernel (Conv2d_2a_3x3.conv.weight)" in message
    assert "1 unexpected: conv1.weight. The file's layers" in message  # AuxLogits.fc.bias: skipped
    assert "skipped 1 tensor(s) under AuxLogits.*, which InceptionV3 leaves out" in capsys.readouterr().err
    with pytest.raises(
        models.WeightFileError,
        match=r"does not match resnet50 .*; 2 unexpected: AuxLogits\.fc\.bias, Conv2d_1a_3x3\.conv\.weight\.",
    ):
        models.load_pretrained("resnet50", path)
