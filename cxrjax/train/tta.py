"""Test-time augmentation (TTA): a :class:`Predictor` whose probabilities are the mean of
another predictor's softmax probabilities over a small fixed set of deterministic views.

``TTAPredictor(base, mode)`` is passed to ``cxrjax.train.evaluation.predict_split`` like
any predictor, so TTA sees exactly the preprocessing, order and alignment of the plain
evaluation; it is reported BESIDE it (results.json ``<split>["tta"]``, evaluate's second
table, predict's ``--tta`` columns), never instead of it. The modes
(:data:`cxrjax.train.config.TTA_MODES`), each including the identity:

- ``"none"``: the identity alone (equals the plain prediction);
- ``"flip"``: identity and the horizontal mirror. A mirrored chest X-ray has its heart
  on the other side (situs inversus look-alike) and the side markers reversed: a model
  trained without ``hflip`` has never seen such images, so ``shift`` is the safer choice;
- ``"shift"``: identity and four translations by :func:`shift_pixels` (about 3% of the
  side: up, down, left, right), edges replicated (no black borders the training
  pipeline never produced);
- ``"flip_shift"``: the union (6 views).

The views are computed on the host from the predictor's already preprocessed batch
(normalisation is per image or per dataset, so it commutes with flips and, apart from
the replicated edge, with shifts), and each view is one dispatch of the base predictor:
TTA costs ``len(views)`` evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cxrjax.train.config import TTA_MODES

View = Callable[[np.ndarray], np.ndarray]  # [B, S, S, C] -> [B, S, S, C]


def shift_pixels(image_size: int) -> int:
    """The translation of the ``shift`` views: max(1, round(image_size / 32)) pixels."""
    return max(1, round(image_size / 32))


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``images`` [B, H, W, C] moved by (dy, dx) pixels (down, right), edges replicated."""
    h, w = images.shape[1:3]
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return images[:, rows][:, :, cols]


def flipped(images: np.ndarray) -> np.ndarray:
    """``images`` [B, H, W, C] mirrored left-right."""
    return images[:, :, ::-1]


def views(mode: str, image_size: int) -> list[tuple[str, View]]:
    """(name, transform) of every view of ``mode``, the identity first."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r}: choose one of {TTA_MODES}")
    out: list[tuple[str, View]] = [("identity", lambda x: x)]
    if mode in ("flip", "flip_shift"):
        out.append(("hflip", flipped))
    if mode in ("shift", "flip_shift"):
        d = shift_pixels(image_size)
        for name, (dy, dx) in (("up", (-d, 0)), ("down", (d, 0)), ("left", (0, -d)), ("right", (0, d))):
            out.append((f"shift_{name}_{d}px", lambda x, dy=dy, dx=dx: shifted(x, dy, dx)))
    return out


@dataclass
class TTAPredictor:
    """``base``'s probabilities averaged over the views of ``mode`` (a ``Predictor``)."""

    base: Any  # a cxrjax.train.evaluation.Predictor
    mode: str
    _views: list[tuple[str, View]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._views = views(self.mode, int(self.base.input_config.image_size))

    @property
    def input_config(self) -> Any:
        return self.base.input_config

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def view_names(self) -> list[str]:
        return [name for name, _ in self._views]

    def probabilities(self, images: np.ndarray) -> Any:
        images = np.asarray(images, np.float32)
        return [self.base.probabilities(np.ascontiguousarray(view(images))) for _, view in self._views]

    def to_host(self, outputs: Any) -> np.ndarray:
        probs = [np.asarray(self.base.to_host(o), np.float64) for o in outputs]
        return np.mean(probs, axis=0).astype(np.float32)


def describe(mode: str, image_size: int) -> dict[str, Any]:
    """What results.json says about the TTA of a report: the mode and its views."""
    return {"mode": mode, "views": [name for name, _ in views(mode, image_size)]}


def tta_report(
    predictor: Any, dataset: Any, split: str, batch_size: int, mode: str, *, progress: bool = False
) -> tuple[dict[str, Any], Any]:
    """(classification report of ``split`` under TTA, with ``mode`` and ``views``, its
    predictions): what goes beside the plain report as ``report["tta"]``."""
    from cxrjax.train.evaluation import evaluate_split

    tta = TTAPredictor(predictor, mode)
    report, preds = evaluate_split(tta, dataset, split, batch_size, progress=progress)
    return {**describe(mode, int(predictor.input_config.image_size)), **report}, preds
