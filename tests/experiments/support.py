"""Helpers of the experiment tests (tests/experiments), shared by several test modules."""


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
