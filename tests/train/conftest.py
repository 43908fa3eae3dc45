"""The tiny phantom run most engine tests train (their helpers: ``tests/train/support.py``).

``base_config``: S4's BatchNorm + Dropout network shrunk, 64 phantoms, 4 steps per epoch
on the 4 forced devices, with a per-module JAX compilation cache (reset afterwards).
A module that needs more (augmentation, TensorBoard) overrides the fixture from it.
"""

import pytest

from cxrjax.train.compile_cache import disable_compilation_cache
from cxrjax.train.config import TrainConfig


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, request):
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    config = TrainConfig(
        model="s4_exp8",  # BatchNorm on every layer + Dropout 0.25: exercises batch_stats and rng
        model_options={"features": [4, 4, 8, 8], "head_width": 16},
        dataset="cxr_phantoms",
        data_dir=str(root / "data"),
        dataset_options={"num_train": 64, "num_validation": 12, "num_test": 12, "image_size": 32},
        image_size=32,
        channels=1,
        epochs=1,
        per_device_batch_size=4,  # x 4 devices = 16 -> 4 steps per epoch
        per_device_eval_batch_size=2,  # 8 per eval batch: 12 examples -> one padded batch
        lr=3e-3,
        progress=False,
        compilation_cache_dir=str(root / "jax_cache"),
    )
    yield config
    disable_compilation_cache()
