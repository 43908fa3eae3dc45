"""Input-pipeline throughput: can grain feed the train step, and the device-resident path.

    python -m benchmarks.input_pipeline [--models lenet5 s4_exp4@224 ...] [--workers 0,1,2]
        [--batch-size 32] [--batches 20] [--data-dir DIR] [--num-train 512] [--stored-size 256]
        [--throughput-json FILE] [--resident auto|always|never] [--json FILE] [--markdown FILE]

For every model at its study's input size (the throughput benchmark's cases) it times
cxrjax.data's grain train pipeline (with the study's augmentation and normalisation) and
eval pipeline with 0, 1 and 2 worker processes: images/s in steady state (after the
first batch, whose latency is reported as ``startup_s``), and whether the pipeline keeps
up with the train step on this machine. The train step's rate is read from a
``benchmarks.throughput`` JSON (the fastest float32 configuration of that model and
size), or measured here with a short run at ``--batch-size``.

Where no worker count keeps up (small models on a CPU), it also times the trainer's
device-resident input (cxrjax.train.resident, data_placement="device"): the split as uint8
on the devices, shuffling, batching and augmentation inside the compiled train step, and
reports its images/s next to the plain train step's. (benchmarks.device_resident times
whole training runs with each placement and steps per dispatch.)

The dataset is ``cxr_phantoms`` prepared into a temporary directory (or ``--data-dir``,
reused across runs), stored at 256 px like the real data is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "cxrjax.benchmarks.input_pipeline/1"
# Batches consumed untimed after the first one: more than the data layer's prefetch
# buffers hold (4 per process + 2 per worker process, cxrjax/data/pipeline.py).
SKIP_BATCHES = 10

# The studies' input settings (cxrjax/train/presets.py): S3 normalises to [-1, 1] and
# augments with flips and rotations up to 10 degrees; S0 and S4 use [0, 1], no augmentation.
STUDY_INPUT: dict[str, dict[str, Any]] = {
    "lenet5": dict(normalization="half", hflip=True, rotate_degrees=10.0),
    "vgg16": dict(normalization="half", hflip=True, rotate_degrees=10.0),
    "vgg16_bn": dict(normalization="half", hflip=True, rotate_degrees=10.0),
}
DEFAULT_INPUT: dict[str, Any] = dict(normalization="unit", hflip=False, rotate_degrees=0.0)


@dataclass
class PipelineOptions:
    """What to measure; the CLI fills it, tests build it directly."""

    cases: list[Any] = field(default_factory=list)  # benchmarks.throughput.BenchCase
    workers: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 32
    batches: int = 20
    data_dir: Path | None = None
    dataset_options: dict[str, Any] = field(
        default_factory=lambda: {"num_train": 512, "num_validation": 0, "num_test": 0}
    )
    throughput_json: Path | None = None
    resident: str = "auto"  # "auto": only where no worker count keeps up
    resident_steps: int = 5
    train_steps: int = 5  # when the train step is measured here
    overrides: dict[str, Any] = field(default_factory=dict)  # model options (tiny test variants)
    progress: bool = True


def data_api() -> Any:
    """cxrjax.data's contract names (docs/ARCHITECTURE.md), from the package or its pipeline module."""
    from cxrjax import data
    from cxrjax.data import pipeline

    names = ("load", "InputConfig", "train_batches", "eval_batches", "make_iterator")
    return argparse.Namespace(**{n: getattr(data, n, None) or getattr(pipeline, n) for n in names})


def input_config(api: Any, model: str, image_size: int, channels: int, workers: int) -> Any:
    settings = STUDY_INPUT.get(model, DEFAULT_INPUT)
    return api.InputConfig(image_size=image_size, channels=channels, num_workers=workers, **settings)


def time_pipeline(api: Any, batches: Any, workers: int, max_batches: int, skip: int = SKIP_BATCHES) -> dict[str, Any]:
    """First-batch latency, then steady-state images/s over `max_batches` batches.

    The epoch is repeated as often as needed, and `skip` batches after the first are
    consumed untimed: worker processes and read threads fill their prefetch buffers
    while the first batch is made, and timing those buffered batches would overstate
    the rate the pipeline can sustain.
    """
    import math

    per_epoch = len(batches)
    if per_epoch < 1:
        raise ValueError("the pipeline has no batches; use a larger --num-train or a smaller --batch-size")
    repeated = batches.repeat(math.ceil((1 + skip + max_batches) / per_epoch))
    it = api.make_iterator(repeated, num_workers=workers)
    try:
        t0 = time.perf_counter()
        first = next(it)
        startup = time.perf_counter() - t0
        batch = int(first["image"].shape[0])
        for _ in range(skip):
            next(it)
        t0 = time.perf_counter()
        for _ in range(max_batches):
            next(it)
        elapsed = time.perf_counter() - t0
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return {
        "startup_s": startup,
        "batches_skipped": skip,
        "batches_timed": max_batches,
        "images_per_s": max_batches * batch / elapsed,
    }


def train_step_rate(case: Any, options: PipelineOptions, channels: int) -> tuple[float, str]:
    """(images/s of the train step, where the number comes from)."""
    if options.throughput_json:
        records = json.loads(Path(options.throughput_json).read_text())["records"]
        rates = [
            r["images_per_s"]
            for r in records
            if r["model"] == case.model
            and r["image_size"] == case.image_size
            and r.get("dtype") == "float32"
            and not r.get("error")
        ]
        if rates:
            return max(rates), f"{options.throughput_json} (fastest float32 configuration)"
        print(
            f"benchmarks.input_pipeline: no {case.label} float32 record in {options.throughput_json}; "
            "measuring the train step here",
            file=sys.stderr,
        )
    import jax

    from benchmarks import jax_step
    from benchmarks.report import environment
    from benchmarks.throughput import run_jax_config

    n = jax.local_device_count()
    per_device = max(1, options.batch_size // n)
    cfg = jax_step.JaxStepConfig(
        model=case.model,
        image_size=case.image_size,
        per_device_batch=per_device,
        channels=channels,
        overrides=dict(options.overrides),
    )
    record, _, _ = run_jax_config(cfg, warmup=1, steps=options.train_steps, env=environment())
    return record["images_per_s"], f"measured here (batch {per_device} x {n} devices, {options.train_steps} steps)"


def resident_rate(case: Any, ds: Any, channels: int, options: PipelineOptions) -> dict[str, Any]:
    """Images/s of the device-resident train step (cxrjax.train.resident, one step per
    call), and of its batch maker alone."""
    import jax

    from benchmarks.device_resident import build_resident
    from benchmarks.timing import time_steps
    from cxrjax.train.resident import resident_bytes

    api = data_api()
    cfg = input_config(api, case.model, case.image_size, channels, 0)
    n = jax.local_device_count()
    bench = build_resident(
        case.model, ds, cfg, per_device_batch=max(1, options.batch_size // n), overrides=dict(options.overrides)
    )
    r = bench.resident
    train_t, state = time_steps(
        lambda s: r.train_steps(s, 1)[0],
        bench.state,
        warmup=1,
        steps=options.resident_steps,
        sync=jax.block_until_ready,
    )
    batch_t, _ = time_steps(
        lambda _: r.device_batch(state), None, warmup=1, steps=options.resident_steps, sync=jax.block_until_ready
    )
    return {
        "resident_bytes": resident_bytes(ds, case.image_size, ("train",)),
        "compile_s": bench.compile_s,
        "global_batch": bench.global_batch,
        "train_step_s": train_t.to_json(),
        "images_per_s": bench.global_batch / train_t.median_s,
        "batch_only_images_per_s": bench.global_batch / batch_t.median_s,
    }


def run(options: PipelineOptions) -> dict[str, Any]:
    """All measurements of `options`, as the JSON document written by the CLI."""
    from tqdm import tqdm

    from benchmarks.report import environment
    from cxrjax import models

    api = data_api()
    env = environment()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cxrjax-bench-data-") as tmp:
        data_dir = options.data_dir or Path(tmp)
        ds = api.load("cxr_phantoms", data_dir=data_dir, options=dict(options.dataset_options))
        bar = tqdm(options.cases, desc="input pipeline", disable=not options.progress)
        for case in bar:
            bar.set_postfix_str(case.label)
            channels = models.MODELS[case.model].channels
            step_rate, step_source = train_step_rate(case, options, channels)
            best = 0.0
            for kind in ("train", "eval"):
                for workers in options.workers:
                    cfg = input_config(api, case.model, case.image_size, channels, workers)
                    if kind == "train":
                        batches = api.train_batches(
                            ds, "train", cfg, seed=0, epoch=0, global_batch_size=options.batch_size
                        )
                    else:  # the eval pipeline on the (larger) train split: same per-example work
                        batches = api.eval_batches(ds, "train", cfg, global_batch_size=options.batch_size)
                    try:
                        timed = time_pipeline(api, batches, workers, options.batches)
                    except Exception as e:  # e.g. a source that cannot be sent to workers
                        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        print(
                            f"benchmarks.input_pipeline: {case.label} {kind} pipeline with {workers} "
                            f"worker(s) failed: {message}",
                            file=sys.stderr,
                        )
                        timed = {
                            "startup_s": None,
                            "batches_skipped": 0,
                            "batches_timed": 0,
                            "images_per_s": None,
                            "error": message,
                        }
                    record = {
                        **env,
                        "model": case.model,
                        "image_size": case.image_size,
                        "channels": channels,
                        "pipeline": kind,
                        "workers": workers,
                        "batch_size": options.batch_size,
                        "augmentation": {
                            k: v for k, v in cfg.to_dict().items() if k in ("normalization", "hflip", "rotate_degrees")
                        },
                        **timed,
                        "train_step_images_per_s": step_rate,
                        "train_step_source": step_source,
                    }
                    if kind == "train" and timed["images_per_s"] is not None:
                        record["keeps_up"] = timed["images_per_s"] >= step_rate
                        best = max(best, timed["images_per_s"])
                    records.append(record)
            if options.resident == "always" or (options.resident == "auto" and best < step_rate):
                resident = resident_rate(case, ds, channels, options)
                records.append(
                    {
                        **env,
                        "model": case.model,
                        "image_size": case.image_size,
                        "channels": channels,
                        "pipeline": "device_resident",
                        "workers": None,
                        "batch_size": resident["global_batch"],
                        **resident,
                        "train_step_images_per_s": step_rate,
                        "train_step_source": step_source,
                        "resident_over_plain_step": resident["images_per_s"] / step_rate,
                        "resident_over_best_host_pipeline": resident["images_per_s"] / best if best else None,
                    }
                )
    return {
        "schema": SCHEMA,
        "dataset": "cxr_phantoms",
        "dataset_options": dict(options.dataset_options),
        "records": records,
    }


def markdown(result: dict[str, Any]) -> str:
    records = result["records"]
    if not records:
        return "(no records)\n"
    env = records[0]
    lines = [
        f"Device: **{env['device_kind']}** x{env['local_device_count']}, host CPUs {env['host_cpus']}, "
        f"{env['date']}; dataset {result['dataset']} {result['dataset_options']}.",
        "",
        "| model | px | pipeline | workers | batch | startup s | img/s | train step img/s | keeps up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["pipeline"] == "device_resident":
            lines.append(
                f"| {r['model']} | {r['image_size']} | device-resident (in-step) | - | {r['batch_size']} "
                f"| compile {r['compile_s']:.1f} | {r['images_per_s']:.0f} "
                f"(batch maker alone {r['batch_only_images_per_s']:.0f}) | {r['train_step_images_per_s']:.3g} "
                f"| {r['resident_over_plain_step']:.2f} x plain step |"
            )
            continue
        if r.get("error"):
            lines.append(
                f"| {r['model']} | {r['image_size']} | {r['pipeline']} | {r['workers']} | {r['batch_size']} "
                f"| failed: {r['error'][:100]} | - | {r['train_step_images_per_s']:.3g} | - |"
            )
            continue
        keeps = {True: "yes", False: "**no**"}.get(r.get("keeps_up"), "-")
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['pipeline']} | {r['workers']} | {r['batch_size']} "
            f"| {r['startup_s']:.2f} | {r['images_per_s']:.0f} | {r['train_step_images_per_s']:.3g} | {keeps} |"
        )
    lines += [
        "",
        f"img/s: steady state, timed after the first batch and {SKIP_BATCHES} more (startup s = first-batch "
        "latency, worker start-up included); eval is timed on the train split for enough batches. "
        "keeps up: train pipeline img/s >= train step img/s. Device-resident: the uint8 split "
        "on the device, shuffle + batch + augmentation inside the compiled train step; img/s of that step, "
        "and the ratio to the plain step on a fixed batch (1.0 = input is free).",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.throughput import _ints, add_models_argument

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.input_pipeline", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    add_models_argument(p)
    p.add_argument("--workers", type=_ints, default=(0, 1, 2), help="worker counts, e.g. 0,1,2")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (default 32, the studies')")
    p.add_argument("--batches", type=int, default=20, help="batches timed after the first (default 20)")
    p.add_argument("--data-dir", type=Path, default=None, help="prepare/reuse phantoms here (default: a temp dir)")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--stored-size", type=int, default=256, help="side of the stored phantoms (default 256)")
    p.add_argument(
        "--throughput-json",
        type=Path,
        default=None,
        help="read the train-step rate from a benchmarks.throughput JSON instead of measuring it",
    )
    p.add_argument(
        "--resident",
        choices=("auto", "always", "never"),
        default="auto",
        help="time the device-resident path: auto = where no worker count keeps up",
    )
    p.add_argument("--overrides", type=json.loads, default={}, help="model options as JSON (tiny test variants)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.throughput import DEFAULT_CASES, _tuples, expand_cases

    args = build_parser().parse_args(argv)
    cases = expand_cases(args.models) if args.models else list(DEFAULT_CASES)
    options = PipelineOptions(
        cases=cases,
        workers=args.workers,
        batch_size=args.batch_size,
        batches=args.batches,
        data_dir=args.data_dir,
        dataset_options={
            "num_train": args.num_train,
            "num_validation": 0,
            "num_test": 0,
            "image_size": args.stored_size,
        },
        throughput_json=args.throughput_json,
        resident=args.resident,
        overrides=_tuples(args.overrides),
        progress=not args.no_progress,
    )
    result = run(options)
    text = markdown(result)
    for path, content in ((args.json, json.dumps(result, indent=1)), (args.markdown, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    print(text)
    return result


if __name__ == "__main__":
    main()
