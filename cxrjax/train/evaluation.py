"""Predictions for EVERY example of a split, aligned with its labels.

``cxrjax.data.eval_batches`` yields the split in order, the last batch padded and marked
by ``mask``; the eval step runs on all devices, its outputs are fetched once at the end
(no host sync per batch), and the padding is dropped with the mask. So ``labels[i]`` and
``probs[i]`` are the i-th example of the split: no shuffling, no dropped remainder
(S0's diagonal ROC curves came from breaking exactly this).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cxrjax.train.metrics import classification_report


def predict_split(
    engine: Any,
    device_state: Any,
    dataset: Any,
    split: str,
    input_config: Any,
    global_batch_size: int,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], probabilities float32 [N, K]) for the whole split."""
    from cxrjax.train.data_api import data_api

    data = data_api()
    batches = data.eval_batches(dataset, split, input_config, global_batch_size=global_batch_size)
    iterator = data.make_iterator(batches, num_workers=getattr(input_config, "num_workers", 0))
    outputs, labels, masks = [], [], []
    for batch in tqdm(iterator, total=len(batches), desc=f"eval {split}", unit="batch", disable=not progress, leave=False):
        image = np.asarray(batch["image"])
        outputs.append(engine.eval_step(device_state, engine.put_batch({"image": image})))
        labels.append(np.asarray(batch["label"]))
        masks.append(np.asarray(batch["mask"], bool))
    close = getattr(iterator, "close", None)
    if close is not None:
        close()  # worker processes, if any
    if not outputs:
        return np.zeros(0, np.int64), np.zeros((0, dataset.num_classes), np.float32)
    log_probs = np.concatenate([engine.host_outputs(o) for o in outputs])
    mask = np.concatenate(masks)
    return np.concatenate(labels)[mask].astype(np.int64), np.exp(log_probs[mask]).astype(np.float32)


def evaluate_split(engine: Any, device_state: Any, dataset: Any, *args: Any,
                   **kwargs: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(classification report, labels, probabilities) of one split.

    Arguments as :func:`predict_split` (``split, input_config, global_batch_size, *,
    progress``); the report names the classes by ``dataset.class_names``.
    """
    labels, probs = predict_split(engine, device_state, dataset, *args, **kwargs)
    return classification_report(labels, probs, dataset.class_names), labels, probs
