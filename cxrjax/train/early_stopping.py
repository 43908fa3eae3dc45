"""Epoch-level decisions made on the host from validation metrics.

- :class:`ImprovementTracker`: "is this epoch better than the best so far?" with Keras
  semantics: an improvement must beat the best by more than ``min_delta``; NaN never
  improves; ties do not improve (the earlier epoch stays best).
- :class:`EarlyStopping`: stop after ``patience`` consecutive epochs without improvement
  (S3: val loss, patience 3, min_delta 0.001; S0-E / S4: val accuracy).
- :class:`PlateauScaler`: Keras ``ReduceLROnPlateau`` (S1) on a validation metric; it
  returns the learning-rate multiplier the train step applies.

The best checkpoint is the tracker's best epoch, so the checkpoint restored for the test
evaluation is exactly the epoch early stopping considered best (min_delta included).
All three are plain dataclasses whose state round-trips through JSON for exact resume.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class ImprovementTracker:
    mode: str  # "min" | "max"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None  # 1-based epoch of ``best``
    wait: int = 0  # epochs since the last improvement

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")

    def is_improvement(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for 1-based ``epoch``; return whether it improved."""
        if self.is_improvement(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        return False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ImprovementTracker":
        return cls(**values)


@dataclass
class EarlyStopping:
    tracker: ImprovementTracker
    patience: int | None = None  # None: never stop early

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.tracker.wait >= self.patience

    def update(self, value: float, epoch: int) -> bool:
        return self.tracker.update(value, epoch)

    def to_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.to_dict(), "patience": self.patience}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EarlyStopping":
        return cls(ImprovementTracker.from_dict(values["tracker"]), values["patience"])


@dataclass
class PlateauScaler:
    """Keras ReduceLROnPlateau: after ``patience`` epochs without improvement, lr *= factor.

    ``scale`` multiplies the schedule's learning rate; it never takes the lr below
    ``min_lr`` (given as an absolute rate, like Keras, hence ``base_lr``).
    """

    tracker: ImprovementTracker
    factor: float
    patience: int
    base_lr: float
    min_lr: float = 0.0
    scale: float = 1.0

    def update(self, value: float, epoch: int) -> float:
        self.tracker.update(value, epoch)
        if self.tracker.wait >= self.patience:
            floor = self.min_lr / self.base_lr
            self.scale = max(self.scale * self.factor, floor)
            self.tracker.wait = 0
        return self.scale

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tracker"] = self.tracker.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PlateauScaler":
        values = dict(values)
        values["tracker"] = ImprovementTracker.from_dict(values["tracker"])
        return cls(**values)
