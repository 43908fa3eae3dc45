"""Helpers of the engine tests that train the ``base_config`` run (tests/train/conftest.py)."""

import json
import types

import numpy as np

from cxrjax.train import trainer as trainer_module

TIMING_KEYS = {"train_seconds", "images_per_second", "eval_seconds", "cumulative_train_seconds", "time"}


def inject_nan(monkeypatch, batches_by_epoch):
    """NaN into batch i of epoch e (0-based) for every (e, i) in ``batches_by_epoch``
    ({epoch: {batch index, ...}}), through the trainer's data API."""
    real = trainer_module.data_api()

    def train_batches(*args, **kwargs):
        batches = real.train_batches(*args, **kwargs)
        poisoned = batches_by_epoch.get(kwargs["epoch"], ())

        def poison(i, batch):
            if i in poisoned:
                batch = dict(batch, image=np.array(batch["image"], copy=True))
                batch["image"][0, 0, 0, 0] = np.nan
            return batch

        return batches.map_with_index(poison)

    fake = types.SimpleNamespace(**{**vars(real), "train_batches": train_batches})
    monkeypatch.setattr(trainer_module, "data_api", lambda: fake)


def history(workdir, *, timing=True):
    """metrics.jsonl's records; ``timing=False`` drops the wall-clock fields (TIMING_KEYS)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return records if timing else [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
