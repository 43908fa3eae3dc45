"""The part of ``cxrjax.data`` the training engine uses (docs/ARCHITECTURE.md contract):
``load``, ``InputConfig``, ``train_batches``, ``epoch_order``, ``eval_batches``,
``make_iterator``, ``class_weights``, ``dataset_statistics``.

Resolved lazily (``cxrjax.data``'s pipeline imports grain and JAX) and in one place, so
the engine's whole dependency on the data layer is this list of names (and tests can
substitute a pipeline, e.g. to inject a NaN batch).
"""

from __future__ import annotations

import types

NAMES = (
    "load",
    "InputConfig",
    "train_batches",
    "epoch_order",
    "eval_batches",
    "make_iterator",
    "class_weights",
    "dataset_statistics",
)


def data_api() -> types.SimpleNamespace:
    from cxrjax import data

    return types.SimpleNamespace(**{name: getattr(data, name) for name in NAMES})
