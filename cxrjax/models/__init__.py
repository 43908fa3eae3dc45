"""Flax linen modules for every from-scratch network of the studies, and their registry.

```python
from cxrjax import models
model = models.create("s4_exp4", num_classes=4)          # see models.MODELS for names
variables = model.init({"params": k1, "dropout": k2}, x, train=False)
logits = model.apply(variables, x, train=False)           # x: float [B, H, W, C]
logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": k})
model.feature_names                                       # Grad-CAM layers, last = default
```

Families (one file each): ``s0`` (SimpleCNN), ``s4`` (S4CNN), ``lenet`` (LeNet5),
``vgg`` (VGG); shared layers in ``layers``; tiny test-only variants in ``testing``;
``python -m cxrjax.models summary NAME`` prints a per-layer table.

ImageNet backbones as ``keras.applications`` builds them (``mobilenet``, ``mobilenet_v2``,
``resnet50``, ``vgg16_imagenet``, ``densenet121``, ``densenet201``, ``inception_v3``,
``xception``, ``efficientnet_b0``, ``efficientnet_b7``; Keras-equivalent layers in
``keras_layers``), with the weight files users bring:

```python
module, variables = models.load_pretrained("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
logits = module.apply(variables, models.preprocess_input(x, module.preprocessing), train=False)
```

``python -m cxrjax.models import-weights NAME FILE --out DIR`` converts a file once to an
orbax checkpoint (``weights``). Without weights they start from a random init.
"""

from cxrjax.models.preprocessing import preprocess_input, preprocessing_mode
from cxrjax.models.registry import MODELS, ModelSpec, create
from cxrjax.models.weights import WeightFileError, load_pretrained

__all__ = [
    "MODELS",
    "ModelSpec",
    "WeightFileError",
    "create",
    "load_pretrained",
    "preprocess_input",
    "preprocessing_mode",
]
