"""cxrjax: chest X-ray classification with CNNs trained from scratch, in pure JAX.

Sub-packages: ``cxrjax.data`` (TFDS builders, grain pipelines, phantoms),
``cxrjax.models`` (Flax linen modules and their registry), ``cxrjax.train``
(data-parallel training, checkpoints, metrics).
"""

__version__ = "0.1.0"
