"""Host vs device data placement and the steps-per-dispatch sweep, on the trainer's real path.

    python -m benchmarks.device_resident [--models lenet5@32 s4_exp2@32 s4_exp4@128]
        [--placements host,device] [--steps-per-dispatch 1,4,16] [--epochs 3]
        [--per-device-batch-size 32] [--num-train 2048] [--stored-size 256]
        [--num-workers 0] [--num-devices N] [--data-dir DIR] [--json FILE]

Every combination is one ``cxrjax.train.train_and_evaluate`` run on ``cxr_phantoms``
(in a temporary workdir) with ``data_placement`` and ``steps_per_dispatch`` set, the
study's input settings of :data:`benchmarks.input_pipeline.STUDY_INPUT` (LeNet-5: flips and
rotations, [-1, 1]; S4: none), and the metrics fetch cadence of the trainer's default.
Reported: the run's ``train_images_per_second`` (the median over its epochs after the
first, whose time includes compilation: so ``--epochs`` >= 2), i.e. what training
achieves end to end, host input pipeline or in-step batches included, evaluation and
checkpoints excluded. Prints one table line per run and, with ``--json``, writes the
records.

The device-resident input itself is ``cxrjax.train.resident`` (the one implementation);
:func:`build_resident` wraps it around a benchmark engine for
``benchmarks.input_pipeline``'s in-step rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = "cxrjax.benchmarks.device_resident/1"
DEFAULT_MODELS = ("lenet5@32", "s4_exp2@32", "s4_exp4@128")


@dataclass
class ResidentBench:
    """A ResidentInput on a benchmark engine (Adam, host-initialised state), ready to time."""

    resident: Any  # cxrjax.train.resident.ResidentInput
    state: Any  # the engine's TrainState, placed
    num_devices: int
    global_batch: int
    compile_s: float


def build_resident(
    model_name: str,
    ds: Any,
    input_config: Any,
    *,
    per_device_batch: int,
    overrides: dict | None = None,
    num_devices: int | None = None,
) -> ResidentBench:
    """The trainer's device-resident input (train split only) around the benchmarks' engine
    (benchmarks/jax_step.py), its one-step program compiled by a first call (timed)."""
    import jax

    from benchmarks import jax_step
    from cxrjax.train.parallel import ShardMapEngine
    from cxrjax.train.resident import ResidentInput

    devices = jax_step.local_devices(num_devices)
    model = jax_step.bench_model(
        model_name, num_classes=ds.num_classes, channels=input_config.channels, overrides=overrides
    )
    tx, train_fn, eval_fn = jax_step.adam_steps(model, ds.num_classes)
    engine = ShardMapEngine(train_fn, eval_fn, devices)
    global_batch = per_device_batch * len(devices)
    spe = len(ds.splits["train"]) // global_batch
    if spe < 1:
        raise ValueError(
            f"train split of {len(ds.splits['train'])} examples is smaller than one batch of {global_batch}"
        )
    resident = ResidentInput(
        engine,
        ds,
        input_config,
        global_batch=global_batch,
        eval_global_batch=global_batch,
        steps_per_epoch=spe,
        splits=("train",),
    )
    resident.start_epoch(0, 0)
    state = engine.put_state(jax_step.host_initialized_state(model, tx, input_config.image_shape))
    t0 = time.perf_counter()
    state, _ = resident.train_steps(state, 1)
    jax.block_until_ready(state)
    return ResidentBench(resident, state, len(devices), global_batch, time.perf_counter() - t0)


# ------------------------------------------------------------------------------ the sweep
def run_config(
    model: str,
    image_size: int,
    placement: str,
    steps_per_dispatch: int,
    args: argparse.Namespace,
    data_dir: Path,
    workdir: Path,
) -> dict[str, Any]:
    """One training run; its record (images/s, or the error)."""
    from benchmarks.input_pipeline import DEFAULT_INPUT, STUDY_INPUT
    from cxrjax import models
    from cxrjax.train import TrainConfig, train_and_evaluate
    from cxrjax.train.workdir import read_history

    record: dict[str, Any] = {
        "model": model,
        "image_size": image_size,
        "data_placement": placement,
        "steps_per_dispatch": steps_per_dispatch,
    }
    try:
        config = TrainConfig(
            model=model,
            image_size=image_size,
            channels=models.MODELS[model].channels,
            dataset="cxr_phantoms",
            data_dir=str(data_dir),
            dataset_options={
                "num_train": args.num_train,
                "num_validation": args.num_eval,
                "num_test": args.num_eval,
                "image_size": args.stored_size,
            },
            epochs=args.epochs,
            per_device_batch_size=args.per_device_batch_size,
            num_devices=args.num_devices,
            num_workers=args.num_workers,
            data_placement=placement,
            steps_per_dispatch=steps_per_dispatch,
            progress=False,
            **STUDY_INPUT.get(model, DEFAULT_INPUT),
        )
        t0 = time.perf_counter()
        results = train_and_evaluate(config, workdir)
        record.update(
            images_per_second=results["train_images_per_second"],
            per_epoch_images_per_second=[h["images_per_second"] for h in read_history(workdir)],
            global_batch_size=results["global_batch_size"],
            num_devices=results["num_devices"],
            steps_per_epoch=results["steps_per_epoch"],
            wall_s=time.perf_counter() - t0,
            error=None,
        )
    except Exception as err:  # one failed configuration does not end the sweep
        record.update(
            images_per_second=None, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.device_resident", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME@SIZE")
    p.add_argument("--placements", default="host,device", help="comma-separated: host, device, auto")
    p.add_argument("--steps-per-dispatch", default="1,4,16", help="comma-separated K values")
    p.add_argument("--epochs", type=int, default=3, help="at least 2: the first epoch's rate includes compilation")
    p.add_argument("--per-device-batch-size", type=int, default=32)
    p.add_argument("--num-train", type=int, default=2048)
    p.add_argument("--num-eval", type=int, default=64, help="validation and test images each")
    p.add_argument("--stored-size", type=int, default=256, help="phantoms are stored at this size, like real data")
    p.add_argument("--num-workers", type=int, default=0, help="grain workers of the host placement")
    p.add_argument("--num-devices", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=None, help="prepared phantoms (reused); default: a temporary one")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch includes compilation)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.report import environment

    args = parse_args(argv)
    placements = [s.strip() for s in args.placements.split(",") if s.strip()]
    ks = [int(k) for k in args.steps_per_dispatch.split(",") if k.strip()]
    records = []
    with tempfile.TemporaryDirectory(prefix="cxrjax-bench-resident-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        print("| model | size | placement | K | img/s | per epoch |", flush=True)
        print("|---|---|---|---|---|---|", flush=True)
        for text in args.models:
            model, _, size = text.partition("@")
            from cxrjax import models

            if model not in models.MODELS:
                raise SystemExit(
                    f"benchmarks.device_resident: unknown model {model!r}; registered: {sorted(models.MODELS)}"
                )
            image_size = int(size) if size else models.MODELS[model].image_size
            for placement in placements:
                for k in ks:
                    workdir = Path(tmp) / f"{model}-{image_size}-{placement}-{k}"
                    r = run_config(model, image_size, placement, k, args, data_dir, workdir)
                    records.append(r)
                    rate = f"{r['images_per_second']:.0f}" if r.get("images_per_second") else r.get("error")
                    epochs = ", ".join(f"{v:.0f}" for v in r.get("per_epoch_images_per_second") or [])
                    print(f"| {model} | {image_size} | {placement} | {k} | {rate} | {epochs} |", flush=True)
    result = {"schema": SCHEMA, **environment(), "records": records}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
