"""Helpers of the experiment tests (tests/experiments), shared by several test modules."""

import contextlib


def tiny_args(tmp, workdir="exp", recipe="none,cxr"):
    """The command line of a tiny cross-validation (experiments.cross_validate; the base of
    experiments.recipe_ablation's): s4_exp2 on 16 px phantoms, 2 folds, 1 epoch, one job,
    under ``tmp``."""
    return [
        "--model",
        "s4_exp2",
        "--recipe",
        recipe,
        "--folds",
        "2",
        "--workdir",
        str(tmp / workdir),
        "--data-dir",
        str(tmp / "data"),
        "--compilation-cache",
        "",
        "--epochs",
        "1",
        "--no-progress",
        "--jobs",
        "1",
        "--dataset-option",
        "num_train=24",
        "--dataset-option",
        "num_validation=8",
        "--dataset-option",
        "num_test=8",
        "--dataset-option",
        "image_size=16",
        "--image-size",
        "16",
        "--global-batch-size",
        "8",
        "--model-option",
        "features=[3,4,5,6]",
        "--model-option",
        "head_width=7",
    ]


@contextlib.contextmanager
def compilation_cache(path):
    """``path`` for ``--compilation-cache`` while the block runs (a module's runs: a
    program several cells share, such as the init every recipe has, compiles once; the
    engine memo of cxrjax/train/run_setup.py is per recipe), then JAX's persistent
    cache switched off again: it is process-wide (cxrjax/train/compile_cache.py) and
    would otherwise outlive the module."""
    try:
        yield str(path)
    finally:
        from cxrjax.train.compile_cache import disable_compilation_cache

        disable_compilation_cache()
