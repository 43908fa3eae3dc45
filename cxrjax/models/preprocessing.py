"""The input preprocessing each ImageNet backbone's published weights expect.

Exactly ``keras.applications.<app>.preprocess_input`` (``imagenet_utils``, channels last),
on RGB pixel values in [0, 255]:

- "caffe" (VGG16, ResNet50): RGB -> BGR, minus the ImageNet BGR mean
  (103.939, 116.779, 123.68), no scaling;
- "tf" (MobileNet, MobileNetV2, InceptionV3, Xception): x / 127.5 - 1, i.e. [-1, 1];
- "torch" (DenseNet; torchvision's weights): x / 255, minus mean (0.485, 0.456, 0.406),
  divided by std (0.229, 0.224, 0.225);
- "pixels" (EfficientNet: rescaling and normalisation are layers of the model, which
  takes the [0, 255] pixels as they are; Keras' ``preprocess_input`` is the identity);
- "none": no preprocessing (the identity here too; in a TransferModel, "none" also skips
  the scaling of the pipeline's [0, 1] images to [0, 255], where "pixels" does it).

Each backbone class names its mode (``Backbone.preprocessing``; :func:`preprocessing_mode`
resolves a registered name, with the torchvision variant's "torch", or the class's
``torchvision_preprocessing``: InceptionV3's "tf"). Grayscale images
(1 channel) are replicated to 3 channels first (:func:`to_rgb`), as the X-ray datasets
are grayscale and the ImageNet weights expect RGB. Works on numpy and JAX arrays.
"""

from __future__ import annotations

from typing import Any

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
MODES = ("caffe", "tf", "torch", "pixels", "none")


def to_rgb(x: Any) -> Any:
    """[..., H, W, 1] -> [..., H, W, 3] (the gray value in every channel); 3 channels as is."""
    if x.shape[-1] == 3:
        return x
    if x.shape[-1] != 1:
        raise ValueError(f"expected 1 (grayscale) or 3 (RGB) channels last, got shape {tuple(x.shape)}")
    return x[..., [0, 0, 0]]


def preprocess_input(x: Any, mode: str) -> Any:
    """Keras' ``preprocess_input(x)`` for ``mode``, on float RGB (or grayscale) in [0, 255]."""
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {MODES}")
    x = to_rgb(x)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - _like(x, TORCH_MEAN_RGB)) / _like(x, TORCH_STD_RGB)
    if mode == "caffe":
        return x[..., ::-1] - _like(x, CAFFE_MEAN_BGR)
    return x


def _like(x: Any, values) -> Any:
    """``values`` as an array of x's kind and float dtype (numpy or jax)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return np.asarray(values, x.dtype)
    import jax.numpy as jnp

    return jnp.asarray(values, x.dtype)


def preprocessing_mode(name: str, variant: str = "keras") -> str:
    """The mode the weights of registered backbone ``name`` (and ``variant``) expect."""
    from cxrjax.models.registry import MODELS

    build = MODELS[name].build
    cls = getattr(build, "func", build)
    if not hasattr(cls, "preprocessing"):
        raise ValueError(f"{name!r} is not an ImageNet backbone; it has no preprocessing mode")
    if variant == "torchvision":  # InceptionV3's: "tf" (torchvision's transform_input=True; inception.py)
        return getattr(cls, "torchvision_preprocessing", "torch")
    return cls.preprocessing
