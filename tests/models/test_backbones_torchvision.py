"""torchvision state dicts load into the backbones that torchvision has (``variant="torchvision"``
where the architectures differ; chosen automatically for a torchvision file) and give
torchvision's outputs: logits and the last feature map, to 1e-4 of the output scale.
DenseNet121, ResNet50 (torchvision's v1.5), MobileNetV2 with their classifiers; VGG16's
convolutions (its classifier alone is 120 M parameters: a 500 MB file for one test).
"""

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
