"""cxrjax.data: datasets as TFDS builders -> array_record -> grain pipelines.

    from cxrjax import data
    ds = data.load("cxr_phantoms", data_dir="data")           # prepares once, then opens
    two = data.load("cxr_phantoms", data_dir="data", classes=("COVID", "Normal"))  # subset
    ds.class_names, ds.num_classes, ds.splits["train"][0], ds.report
    cfg = data.InputConfig(image_size=128)
    batches = data.train_batches(ds, "train", cfg, seed=0, epoch=0, global_batch_size=32)

Datasets (DATASETS): covid19_radiography (D4/D3), covid19_image_dataset (DP),
image_folder (any class-folder tree), cxr_phantoms (synthetic, the default).
Command line: `python -m cxrjax.data prepare|show|info ...` (see __main__.py).

Every name is loaded on first use: `cxrjax.data.pipeline` imports grain and JAX, which
preparation (and its worker processes) never needs, and the builders import TFDS, which
`cxrjax.train.config` (via `cxrjax.data.input_options`) never needs.
"""

from __future__ import annotations

import importlib

# name -> module it lives in. Loaded on first use: the builders import TFDS, the pipeline
# grain and JAX; light modules (e.g. `cxrjax.data.input_options`, which
# `cxrjax.train.config` uses) can then be imported without either.
_NAMES = {
    "DATASETS": "cxrjax.data.builders",
    **dict.fromkeys(
        ("CarveOptions", "PhantomDatasetOptions", "PreparationOptions", "SplitOptions"), "cxrjax.data.builders.options"
    ),
    **dict.fromkeys(
        ("PreparedDataset", "RecordSource", "get_builder", "load", "load_prepared", "prepare"), "cxrjax.data.dataset"
    ),
    **dict.fromkeys(("DecodeError", "decode_grayscale", "read_grayscale"), "cxrjax.data.decode"),
    "LayoutError": "cxrjax.data.layouts",
    "DataError": "cxrjax.data.errors",
    "SourceChangedError": "cxrjax.data.fingerprint",
    "select_classes": "cxrjax.data.subset",
    **dict.fromkeys(
        (
            "InputConfig",
            "train_batches",
            "epoch_order",
            "eval_batches",
            "make_iterator",
            "class_weights",
            "dataset_statistics",
            "set_dataset_statistics",
        ),
        "cxrjax.data.pipeline",
    ),
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrjax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
