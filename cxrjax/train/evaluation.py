"""Predictions for EVERY example of a split, aligned with its labels: the one prediction
function of cxrjax.

The trainer's validation and test evaluation, ``cxrjax.evaluate``, ``cxrjax.predict``,
``cxrjax.explain`` and the shortcut probes all call :func:`predict_split`; what differs
is only the :class:`Predictor` (the data-parallel engine during training, one device for
a loaded run), so every tool sees the same preprocessing and the same alignment.

``cxrjax.data.eval_batches`` yields the split in order, the last batch padded and marked
by ``mask``; the predictor's outputs are fetched once at the end (no host sync per
batch), and the padding is dropped with the mask. So ``labels[i]`` and ``probs[i]`` are
the i-th example of the split: no shuffling, no dropped remainder (S0's diagonal ROC
curves came from breaking exactly this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
from tqdm.auto import tqdm

from cxrjax.reporting.metrics import classification_report
from cxrjax.train.data_api import data_api


class Predictor(Protocol):
    """What :func:`predict_split` needs of a model."""

    input_config: Any  # cxrjax.data.InputConfig of the model's evaluation pipeline
    num_classes: int

    def probabilities(self, images: np.ndarray) -> Any:
        """Dispatch one batch [B, S, S, C]; may return an unfetched (device) value."""

    def to_host(self, outputs: Any) -> np.ndarray:
        """float32 [B, K] probabilities of one dispatched batch, on the host."""


class SplitNotFoundError(ValueError):
    """The dataset has no such split; the message lists the splits it has."""


@dataclass
class SplitPredictions:
    """Every example of a split, in order: labels (the model's class order), probabilities."""

    labels: np.ndarray  # int64 [N]
    probs: np.ndarray  # float32 [N, K]

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.labels) else np.zeros(0, np.int64)


def iterate_eval_batches(
    dataset: Any, split: str, input_config: Any, batch_size: int, *, desc: str = "", progress: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images float32 [B, S, S, C], labels [B], mask bool [B]) over a split, in order.

    ``batch_size`` is the global batch (all devices together). Worker processes, if the
    input config asks for them, are closed when the iteration ends or is abandoned.
    """
    if split not in dataset.splits:
        raise SplitNotFoundError(
            f"dataset {getattr(dataset, 'name', '?')!r} has no split {split!r}; its splits are {sorted(dataset.splits)}"
        )
    data = data_api()
    batches = data.eval_batches(dataset, split, input_config, global_batch_size=batch_size)
    iterator = data.make_iterator(batches, num_workers=getattr(input_config, "num_workers", 0))
    try:
        for batch in tqdm(
            iterator, total=len(batches), desc=desc or f"eval {split}", unit="batch", disable=not progress, leave=False
        ):
            yield (np.asarray(batch["image"], np.float32), np.asarray(batch["label"]), np.asarray(batch["mask"], bool))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def predict_split(
    predictor: Predictor,
    dataset: Any,
    split: str,
    batch_size: int,
    *,
    mapping: np.ndarray | None = None,
    desc: str = "",
    progress: bool = False,
) -> SplitPredictions:
    """Probabilities for every example of ``split`` through ``predictor``'s eval pipeline.

    ``mapping`` (``perm[data_label] = model_label``, from ``cxrjax.inference.label_mapping``)
    puts the dataset's labels in the model's class order.

    A predictor with a ``predict_split(dataset, split, batch_size)`` method (the trainer's
    device-resident input, cxrjax/train/resident.py, which holds the split on the devices)
    is asked first; it returns the same SplitPredictions, or None to use the host pipeline.
    """
    own = getattr(predictor, "predict_split", None)
    preds = own(dataset, split, batch_size) if own is not None else None
    if preds is not None:
        if mapping is not None:
            preds = SplitPredictions(labels=np.asarray(mapping)[preds.labels], probs=preds.probs)
        return preds
    outputs, labels, masks = [], [], []
    for images, batch_labels, mask in iterate_eval_batches(
        dataset, split, predictor.input_config, batch_size, desc=desc, progress=progress
    ):
        outputs.append(predictor.probabilities(images))
        labels.append(batch_labels)
        masks.append(mask)
    if not outputs:
        return SplitPredictions(np.zeros(0, np.int64), np.zeros((0, predictor.num_classes), np.float32))
    probs = np.concatenate([predictor.to_host(o) for o in outputs])
    if _process_count() > 1:
        # Several processes (the trainer's engine, or TTA over it): each read its rows of
        # every batch, the outputs come back for the whole global batch (the engine's
        # host_outputs); gather labels and masks alike, so every process sees every
        # example once, in the split's order.
        from cxrjax.train.distributed import allgather_rows

        labels = [allgather_rows(np.stack(labels)).transpose(1, 0, 2).reshape(-1)]
        masks = [allgather_rows(np.stack(masks)).transpose(1, 0, 2).reshape(-1)]
    mask = np.concatenate(masks).astype(bool)
    probs = probs[mask].astype(np.float32)
    labels = np.concatenate(labels)[mask].astype(np.int64)
    if mapping is not None:
        labels = np.asarray(mapping)[labels]
    return SplitPredictions(labels=labels, probs=probs)


def _process_count() -> int:
    import jax

    return jax.process_count()


@dataclass
class EnginePredictor:
    """The data-parallel engine's eval step as a :class:`Predictor` (training-time evaluation)."""

    engine: Any
    device_state: Any
    input_config: Any
    num_classes: int

    def probabilities(self, images: np.ndarray) -> Any:
        return self.engine.eval_step(self.device_state, self.engine.put_batch({"image": images}))

    def to_host(self, outputs: Any) -> np.ndarray:
        return np.exp(self.engine.host_outputs(outputs))  # the eval step returns log-probabilities


def evaluate_split(
    predictor: Predictor, dataset: Any, split: str, batch_size: int, *, progress: bool = False
) -> tuple[dict[str, Any], SplitPredictions]:
    """(classification report named by ``dataset.class_names``, predictions) of one split."""
    preds = predict_split(predictor, dataset, split, batch_size, progress=progress)
    return classification_report(preds.labels, preds.probs, dataset.class_names), preds
