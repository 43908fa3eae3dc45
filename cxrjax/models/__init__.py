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
"""

from cxrjax.models.registry import MODELS, ModelSpec, create

__all__ = ["MODELS", "ModelSpec", "create"]
