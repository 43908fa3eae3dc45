"""Data-parallel training: configs and presets, per-replica steps (shard_map / pmap),
optax, orbax checkpoints with exact resume, early stopping, metrics, plots, the CLI.

```python
from cxrjax.train import TrainConfig, PRESETS, train_and_evaluate

config = PRESETS["s4_exp4_phantoms"].replace(epochs=3)     # or TrainConfig(...)
results = train_and_evaluate(config, "runs/exp4")          # dict, as in results.json
```

Modules: ``config`` (TrainConfig), ``presets`` (PRESETS), ``steps`` (per-replica
train/eval step), ``parallel`` (shard_map and pmap wrappers), ``optim``, ``state``,
``early_stopping``, ``checkpointing``, ``evaluation`` (``predict_split``, the one
prediction function), ``tensorboard``, ``workdir`` (run-folder files), ``trainer``
(``train_and_evaluate``), ``cli``. A finished run is loaded with
``cxrjax.inference.load_run``; metrics and plots are ``cxrjax.reporting``'s.

The heavy parts (JAX, orbax, matplotlib) are imported on first use of the names below,
so ``python -m cxrjax.train --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

from cxrjax.train.config import TrainConfig
from cxrjax.train.presets import PRESETS

_LAZY = {
    "train_and_evaluate": "cxrjax.train.trainer",
    "NonFiniteError": "cxrjax.train.trainer",
    "TooManySkippedStepsError": "cxrjax.train.trainer",
    "ConfigMismatchError": "cxrjax.train.workdir",
    "WorkdirError": "cxrjax.train.workdir",
    "WorkdirLockedError": "cxrjax.train.workdir",
    "enable_compilation_cache": "cxrjax.train.compile_cache",
    "disable_compilation_cache": "cxrjax.train.compile_cache",
}

__all__ = ["PRESETS", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrjax.train' has no attribute {name!r}")
