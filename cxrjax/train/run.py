"""``load_run(workdir)``: a finished (or running) run's model, weights and data settings.

What ``cxrjax.evaluate`` / ``predict`` / ``explain`` need to use a trained model: the
TrainConfig, the Flax module (built for single-device use, ``axis_name=None``), the
variables of one checkpoint, the class names in label order, and the input settings
(size, channels, normalisation) the model was trained with.

Which checkpoint: ``"evaluated"`` (default) is the one the run's own test evaluation
used (results.json's ``evaluated.step``): the best by the monitored validation metric,
or the last epoch when the run was configured with ``restore_best=False``; before the
run has finished it is the best so far. ``"best"`` and ``"latest"`` pick those.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cxrjax.train import workdir as files
from cxrjax.train.checkpointing import CheckpointStore
from cxrjax.train.config import TrainConfig

CHECKPOINT_CHOICES = ("evaluated", "best", "latest")


@dataclass
class LoadedRun:
    workdir: Path
    config: TrainConfig
    model: Any  # flax.linen.Module, axis_name=None
    variables: dict[str, Any]  # {"params": ..., ["batch_stats": ...]}, numpy arrays
    class_names: list[str]
    dataset_info: dict[str, Any]  # name, options, class_names, split sizes, image_size, channels
    input_config_fields: dict[str, Any]  # cxrjax.data.InputConfig fields used in training
    step: int
    epoch: int  # completed epochs at that checkpoint
    checkpoint: str  # "best" | "latest" | "evaluated"
    results: dict[str, Any] | None  # results.json, None while the run is unfinished
    _apply: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_config(self) -> Any:
        """The ``cxrjax.data.InputConfig`` for evaluation (augmentation is ignored there)."""
        from cxrjax.train.data_api import data_api

        data = data_api()
        names = {f.name for f in dataclasses.fields(data.InputConfig)}
        return data.InputConfig(**{k: v for k, v in self.input_config_fields.items() if k in names})

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, K] for preprocessed float images [N, H, W, C] (one device)."""
        if self._apply is None:
            model = self.model
            self._apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))
        apply = self._apply
        images = np.asarray(images, np.float32)
        out = [np.asarray(apply(self.variables, images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def load_run(workdir: str | Path, checkpoint: str = "evaluated") -> LoadedRun:
    """Load a run folder written by ``train_and_evaluate`` / ``python -m cxrjax.train``."""
    from cxrjax.train.run_setup import build_model

    workdir = Path(workdir)
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(f"checkpoint={checkpoint!r}: choose one of {CHECKPOINT_CHOICES}")
    config_path = workdir / files.CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: {workdir} is not a cxrjax run folder "
            "(create one with python -m cxrjax.train --workdir ...)"
        )
    config = TrainConfig.from_json_file(config_path)
    results_path = workdir / files.RESULTS_FILE
    results = files.read_json(results_path) if results_path.exists() else None
    store = CheckpointStore(workdir / files.CHECKPOINT_DIR, read_only=True)
    try:
        if checkpoint == "latest":
            step = store.latest_step()
        elif checkpoint == "evaluated" and results is not None:
            step = int(results["evaluated"]["step"])
        else:
            step = store.best_step()
            if step is None:
                step = store.latest_step()
        if step is None:
            raise FileNotFoundError(f"{workdir / files.CHECKPOINT_DIR} holds no complete checkpoint yet")
        if step not in store.steps():
            raise FileNotFoundError(
                f"{workdir}: checkpoint step {step} ({checkpoint}) is missing; available steps {store.steps()}"
            )
        tree, meta = store.restore(step)
    finally:
        store.close()
    variables = {"params": tree["params"]}
    if tree.get("batch_stats"):
        variables["batch_stats"] = tree["batch_stats"]
    class_names = list(meta["class_names"])
    fields = dict(meta["input_config"])
    model = build_model(config, len(class_names), fields["channels"], axis_name=None)
    return LoadedRun(
        workdir=workdir,
        config=config,
        model=model,
        variables=variables,
        class_names=class_names,
        dataset_info=dict(meta["dataset"]),
        input_config_fields=fields,
        step=int(step),
        epoch=int(meta["epoch"]),
        checkpoint=checkpoint,
        results=results,
    )
