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


def train_phantom_run(root, dataset_options, *, name="run", **changes):
    """Train a tiny s4_exp4 on phantoms (one device) into ``root / name``; returns that path.

    The run the inference tools' tests read (tests/explain): ``dataset_options`` are the
    phantoms' (size, counts, marker), ``changes`` any other TrainConfig fields.
    """
    from cxrjax.train import TrainConfig, train_and_evaluate

    config = TrainConfig(
        model="s4_exp4",
        dataset="cxr_phantoms",
        data_dir=str(root / "data"),
        dataset_options=dataset_options,
        model_options={"features": [3, 4, 5, 6], "head_width": 7},
        image_size=20,
        channels=1,
        epochs=1,
        per_device_batch_size=8,
        num_devices=1,
        progress=False,
    ).replace(**changes)
    train_and_evaluate(config, str(root / name))
    return root / name


def write_keras_weight_file(variables, layers, path, *, extra_layers=None):
    """``variables`` of a headless backbone (``{"params", "batch_stats"}``) written as a Keras
    legacy-HDF5 weight file (the published files' layout, Keras 2 weight names), its
    ``layers`` in order; ``extra_layers`` ({name: [(weight name, array)]}) appended, e.g.
    the ImageNet top of a full (not _notop) file. Test-only, no Keras needed."""
    import h5py

    from cxrjax.models.keras_layers import KERAS_ORDER

    rank = {}
    for i, (keras_name, collection, var) in enumerate(KERAS_ORDER):
        rank.setdefault((collection, var), (i, keras_name))
    groups = {}
    for layer in layers:
        entries = []
        for collection in ("params", "batch_stats"):
            for var, value in variables.get(collection, {}).get(layer, {}).items():
                i, keras_name = rank[(collection, var)]
                if var == "bias" and "scale" not in variables["params"].get(layer, {}):
                    i, keras_name = rank[("params", "bias")][0] + 1, "bias"
                entries.append((i, f"{layer}/{keras_name}:0", np.asarray(value)))
        groups[layer] = [(n, a) for _, n, a in sorted(entries, key=lambda e: e[0])]
    groups.update(extra_layers or {})
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in groups]
        for name, weights in groups.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = [n.encode() for n, _ in weights]
            for n, a in weights:
                g.create_dataset(n, data=a)
    return str(path)
