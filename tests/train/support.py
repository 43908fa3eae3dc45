"""Helpers of the engine tests that train the ``base_config`` run (tests/train/conftest.py)."""

import json
import types

import flax.linen as nn
import numpy as np

from cxrjax.train import trainer as trainer_module

TIMING_KEYS = {"train_seconds", "images_per_second", "eval_seconds", "cumulative_train_seconds", "time"}


def inject_nan(monkeypatch, batches_by_epoch):
    """NaN into batch i of epoch e (0-based) for every (e, i) in ``batches_by_epoch``
    ({epoch: {batch index, ...}}), through the trainer's data API -- the host path's
    batches, so the run is made to take the host path (a config asking for "device" is a
    mistake of the test)."""
    from cxrjax.train import resident

    def host_placement(config, *args, **kwargs):
        assert config.data_placement != "device", "inject_nan poisons the host path's batches"
        return "host"

    monkeypatch.setattr(resident, "choose_placement", host_placement)
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


def phantom_run_config(root, dataset_options, **changes):
    """The tiny s4_exp4-on-phantoms TrainConfig (one device, one epoch, data under
    ``root / "data"``) of :func:`train_phantom_run`; ``changes`` any other fields."""
    from cxrjax.train import TrainConfig

    return TrainConfig(
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


def train_phantom_run(root, dataset_options, *, name="run", **changes):
    """Train a tiny s4_exp4 on phantoms (one device) into ``root / name``; returns that path.

    The run the inference tools' tests read (tests/explain): ``dataset_options`` are the
    phantoms' (size, counts, marker), ``changes`` any other TrainConfig fields.
    """
    from cxrjax.train import train_and_evaluate

    config = phantom_run_config(root, dataset_options, **changes)
    train_and_evaluate(config, str(root / name))
    return root / name


# A multi-process run's worker (tests/train/test_train_multiprocess.py): argv = config
# JSON, workdir, address, process count, process id; CXRJAX_TEST_KILL_AT_STEP makes the
# process SIGKILL itself once the checkpoint of that step is written (a real kill -9,
# mid-epoch when the step is).
_WORKER = """
import json, os, signal, sys
from cxrjax.train import TrainConfig, train_and_evaluate
config, workdir, address, count, index = sys.argv[1:]
config = TrainConfig.from_dict(json.loads(config)).replace(
    coordinator_address=address, num_processes=int(count), process_id=int(index)
)
kill_at = int(os.environ.get("CXRJAX_TEST_KILL_AT_STEP", "-1"))

def on_checkpoint(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

train_and_evaluate(config, workdir, on_checkpoint=on_checkpoint)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(config, workdir, *, count=2, devices=2, timeout=420, kill=None):
    """Train ``config`` in ``workdir`` as ``count`` real processes of ``devices`` forced CPU
    devices each, on a free localhost port; ``kill``: (process id, step) to SIGKILL that
    process after that step's checkpoint. Returns [(returncode, output, seconds after the
    first exit)] per process; every process is killed at ``timeout`` (then rc -9)."""
    import os
    import subprocess
    import sys
    import time

    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    procs = []
    for index in range(count):
        penv = dict(env)
        if kill is not None and kill[0] == index:
            penv["CXRJAX_TEST_KILL_AT_STEP"] = str(kill[1])
        args = [sys.executable, "-c", _WORKER, json.dumps(config.to_dict()), str(workdir), address, str(count)]
        log = open(f"{workdir}.process{index}.log", "w")  # a file: a full pipe would block the process
        procs.append(subprocess.Popen([*args, str(index)], env=penv, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline, first_exit, ended = time.monotonic() + timeout, None, {}
    while len(ended) < count:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                now = time.monotonic()
                first_exit = now if first_exit is None else first_exit
                ended[i] = now - first_exit
        if time.monotonic() > deadline:
            for i, p in enumerate(procs):
                if i not in ended:
                    p.kill()
                    p.wait()
                    ended[i] = float("inf")
        time.sleep(0.2)
    return [(p.returncode, open(f"{workdir}.process{i}.log").read(), ended[i]) for i, p in enumerate(procs)]


def run_script_processes(script, *, count=2, timeout=120):
    """Run the Python ``script`` as ``count`` real processes (one CPU device each), argv =
    a free localhost address and the process id; returns [(returncode, output)] per
    process (every process is killed at ``timeout``, then rc -9)."""
    import os
    import subprocess
    import sys

    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, address, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(count)
    ]
    outcome = []
    for p in procs:
        try:
            output, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            output, _ = p.communicate()
        outcome.append((p.returncode, output))
    return outcome


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


def write_torchvision_state_dict(name, path, *, options=None, extra=None):
    """The headless backbone ``name``'s variables in torchvision's state-dict layout (keys
    from its ``torchvision_layer``, conv kernels OIHW; zeros: the shapes are the test) as a
    .safetensors file; ``extra`` ({key: array}) added, e.g. InceptionV3's AuxLogits.*.
    Test-only, no torch needed."""
    import jax
    import jax.numpy as jnp
    from safetensors.numpy import save_file

    from cxrjax.models import transfer
    from cxrjax.models.weights import abstract_variables

    module = transfer.backbone_module(name, options)
    size = max(module.min_image_size(), 32)
    abstract, _ = abstract_variables(module, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    tensors = {}
    for layers in abstract.values():
        for layer, leaves in layers.items():
            for var, value in leaves.items():
                shape = value.shape
                if var == "kernel" and len(shape) == 4:  # HWIO -> OIHW
                    shape = (shape[3], shape[2], shape[0], shape[1])
                tensors[f"{module.torchvision_layer(layer)}.{leaf[var]}"] = np.zeros(shape, np.float32)
    save_file({**tensors, **(extra or {})}, str(path))
    return path


class TinyBN(nn.Module):
    """Conv -> BatchNorm (cross-replica) -> ReLU -> global mean -> Dense."""

    num_classes: int = 3
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name, momentum=0.9)(x)
        return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))
