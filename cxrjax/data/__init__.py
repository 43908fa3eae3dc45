"""cxrjax.data: datasets as TFDS builders -> array_record -> grain pipelines.

    from cxrjax import data
    ds = data.load("cxr_phantoms", data_dir="data")           # prepares once, then opens
    ds.class_names, ds.num_classes, ds.splits["train"][0], ds.report
    cfg = data.InputConfig(image_size=128)
    batches = data.train_batches(ds, "train", cfg, seed=0, epoch=0, global_batch_size=32)

Datasets (DATASETS): covid19_radiography (D4/D3), covid19_image_dataset (DP),
image_folder (any class-folder tree), cxr_phantoms (synthetic, the default).
Command line: `python -m cxrjax.data prepare|show|info ...` (see __main__.py).

The grain pipeline names (InputConfig, train_batches, ...) are loaded on first use:
`cxrjax.data.pipeline` imports grain and JAX, which preparation (and its worker processes)
never needs.
"""
from cxrjax.data.builders import DATASETS
from cxrjax.data.builders.options import (CarveOptions, PhantomDatasetOptions,
                                          PreparationOptions, SplitOptions)
from cxrjax.data.dataset import (PreparedDataset, RecordSource, get_builder, load,
                                 load_prepared, prepare)
from cxrjax.data.decode import DecodeError, decode_grayscale, read_grayscale
from cxrjax.data.layouts import LayoutError

_PIPELINE = ("InputConfig", "train_batches", "eval_batches", "make_iterator",
             "class_weights", "dataset_statistics")

__all__ = [
    "DATASETS", "CarveOptions", "DecodeError", "LayoutError", "PhantomDatasetOptions",
    "PreparationOptions", "PreparedDataset", "RecordSource", "SplitOptions",
    "decode_grayscale", "get_builder", "load", "load_prepared", "prepare", "read_grayscale",
    *_PIPELINE,
]


def __getattr__(name: str):
    if name in _PIPELINE:
        from cxrjax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'cxrjax.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PIPELINE))
