"""The ImageNet backbones: train-step throughput (frozen and fine-tuned) and parity with Keras.

    python -m benchmarks.backbones [--models mobilenet resnet50 ...] [--size 224] [--batch 8]
        [--steps 3] [--warmup 1] [--modes frozen,finetuned] [--cpu-devices N] [--num-devices N]
        [--out DIR | --json FILE --markdown FILE]
    python -m benchmarks.backbones --parity [--models ...] [--parity-size N] [--out DIR]
    python -m benchmarks.backbones --from-json FILE [--markdown FILE]

Throughput: for every backbone of ``cxrjax.models`` (``transfer.backbones()``), the train
step of a transfer-learning run, timed as training runs it: S2's TrainConfig (the
``s2_*_ec`` preset's head ``s2``, SGD with Nesterov momentum and Keras decay,
preprocessing ``none``, 3 channels, 3 classes) with ``model`` set to the backbone and
``freeze`` ``backbone`` (``frozen``: the backbone runs with ``train=False``, no weight
gradients, only the head is updated) or ``none`` (``finetuned``), float32. The engine is
the trainer's own (``cxrjax.train.run_setup.build_engine``: the model, the optimiser
with its frozen-parameter masking, ``bind_steps`` and ``make_engine``), compiled ahead
of time (``benchmarks/jax_step.py``); parameters are drawn on the host, as the
throughput benchmark does. Compilation and the warm-up steps are timed and reported
apart from the timed steps (``benchmarks/timing.py``: median, spread, images/s).

The batch is GLOBAL, split over the local devices; on CPU ``--cpu-devices`` (default
``os.cpu_count()``) host devices are forced before JAX starts, as in
``benchmarks.throughput`` (XLA:CPU runs one device's convolutions on about one core).
``os.getloadavg()`` is recorded before and after the run and around every
configuration: on a shared machine a load above the core count means the numbers are
indicative only.

Parity (``--parity``): for every backbone, the ``keras.applications`` model with seeded
random weights (benchmarks/keras_reference.py, the backbone tests' reference), written
as a Keras HDF5 weight file, imported with ``cxrjax.models.load_pretrained`` and run on
the same input, with its top (ImageNet logits) and headless (average pooled): our
parameter count, Keras' ``count_params()``, and the max abs output difference relative
to the output scale (max abs of Keras' output), at each model's smallest Keras input
(32 px; InceptionV3 75, Xception 71) unless ``--parity-size``. Needs keras (the ``dev``
extra); without it, one ``error:`` line.

Results: ``<date>-<machine>-backbones.{json,md}`` / ``-backbone-parity.{json,md}`` in
``--out`` (default benchmarks/results/; an existing result is never overwritten: ``-2``,
``-3``, ...), rewritten after every configuration so an interrupted run keeps what it
measured. The JSON keys are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.gpu_check import free_stem
from benchmarks.throughput import force_host_devices

SCHEMA = "cxrjax.benchmarks.backbones/1"
PARITY_SCHEMA = "cxrjax.benchmarks.backbone_parity/1"
RESULTS = Path(__file__).resolve().parent / "results"
# mode -> TrainConfig.freeze
MODES = {"frozen": "backbone", "finetuned": "none"}
NUM_CLASSES = 3  # S2's (COVID, Normal, Viral Pneumonia)
# S2-EC's TrainConfig: its head, optimiser and preprocessing, with another backbone.
BASE_PRESET = "s2_densenet121_ec"
DEFAULT_SIZE, DEFAULT_BATCH, DEFAULT_STEPS, DEFAULT_WARMUP = 224, 8, 3, 1
# Smallest first, so an interrupted run has measured the most backbones.
DEFAULT_MODELS = (
    "mobilenet",
    "mobilenet_v2",
    "efficientnet_b0",
    "resnet50",
    "densenet121",
    "inception_v3",
    "xception",
    "densenet201",
    "vgg16_imagenet",
    "efficientnet_b7",
)


def loadavg() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 minutes), None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_name(env: dict[str, Any]) -> str:
    """The machine part of a result's name: ``cpu-<N>core`` on CPU (as the other CPU
    results), else the device kind (e.g. ``nvidia-h200``)."""
    if env.get("platform") == "cpu":
        return f"cpu-{env.get('host_cpus')}core"
    return re.sub(r"[^a-z0-9]+", "-", str(env.get("device_kind", "unknown")).lower()).strip("-") or "unknown"


def train_config(model: str, mode: str, image_size: int, per_device_batch: int) -> Any:
    """The TrainConfig timed: S2's (``BASE_PRESET``) with ``model`` frozen or fine-tuned."""
    from cxrjax.train.presets import PRESETS

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
    return PRESETS[BASE_PRESET].replace(
        model=model,
        freeze=MODES[mode],
        image_size=image_size,
        per_device_batch_size=per_device_batch,
        dtype="float32",
    )


def _count(tree: Any) -> int:
    import jax
    import numpy as np

    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def time_backbone(
    model: str,
    mode: str,
    *,
    image_size: int,
    batch: int,
    steps: int,
    warmup: int,
    num_devices: int | None = None,
) -> dict[str, Any]:
    """Compile and time one backbone's train step in one mode; the record (without env)."""
    import jax
    import numpy as np

    from benchmarks import jax_step
    from benchmarks.timing import time_steps
    from cxrjax.models.transfer import TRAINABLE, param_labels
    from cxrjax.train import run_setup

    devices = jax_step.local_devices(num_devices)
    n = len(devices)
    if batch % n:
        raise ValueError(f"batch {batch} does not split over {n} devices; use a multiple of {n} or --num-devices")
    config = train_config(model, mode, image_size, batch // n)
    image_shape = (image_size, image_size, config.channels)
    module, tx, engine, _ = run_setup.build_engine(config, NUM_CLASSES, image_shape, 1, None, devices)
    host_state = jax_step.host_initialized_state(module, tx, image_shape)
    labels_tree = param_labels(host_state.params, module.frozen_layers)
    trainable = sum(
        int(np.size(p))
        for p, label in zip(jax.tree_util.tree_leaves(host_state.params), jax.tree_util.tree_leaves(labels_tree))
        if label == TRAINABLE
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, (batch, *image_shape)).astype(np.float32)  # the pipeline's [0, 1]
    labels = rng.integers(0, NUM_CLASSES, size=(batch,), dtype=np.int32)
    state = engine.put_state(host_state)
    placed = engine.put_batch({"image": images, "label": labels}, on_device=True)
    compiled, compile_s = jax_step.compile_step(engine, "train", state, placed)

    def step(s: Any) -> Any:
        return compiled(s, placed)[0]

    warmup_s = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        state = jax.block_until_ready(step(state))
        warmup_s.append(time.perf_counter() - t0)
    times, state = time_steps(step, state, warmup=0, steps=steps, sync=jax.block_until_ready)
    flops = jax_step.flops_from_cost_analysis(compiled.cost_analysis())
    return {
        "model": model,
        "mode": mode,
        "freeze": config.freeze,
        "head": config.head,
        "optimizer": config.optimizer,
        "preset": BASE_PRESET,
        "image_size": image_size,
        "channels": config.channels,
        "num_classes": NUM_CLASSES,
        "dtype": config.dtype,
        "parallel": config.parallel,
        "num_devices": n,
        "per_device_batch": batch // n,
        "global_batch": batch,
        "parameters": _count(host_state.params),
        "trainable_parameters": trainable,
        "batch_stats": _count(host_state.batch_stats),
        "compile_s": compile_s,
        "warmup_s": warmup_s,
        "train_step_s": times.to_json(),
        "images_per_s": batch / times.median_s,
        "flops_per_step": flops * n if flops else None,
        "achieved_tflops": (flops * n / times.median_s / 1e12) if flops else None,
        "xla_memory_bytes_per_device": jax_step.memory_bytes(compiled),
        "skipped_steps": int(np.asarray(jax.device_get(state.skipped_steps)).reshape(-1)[0]),
        "error": None,
    }


def run_throughput(
    models: list[str],
    modes: list[str],
    *,
    image_size: int,
    batch: int,
    steps: int,
    warmup: int,
    num_devices: int | None = None,
    on_record: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (model, mode), in order; a failing configuration gives an error record and the
    sweep goes on."""
    records = []
    for model in models:
        for mode in modes:
            before = loadavg()
            t0 = time.perf_counter()
            try:
                record = time_backbone(
                    model,
                    mode,
                    image_size=image_size,
                    batch=batch,
                    steps=steps,
                    warmup=warmup,
                    num_devices=num_devices,
                )
            except Exception as err:  # noqa: BLE001 - recorded, the sweep goes on
                record = {"model": model, "mode": mode, "image_size": image_size, "global_batch": batch}
                record["error"] = f"{type(err).__name__}: {err}"
            record.update(loadavg_before=before, loadavg_after=loadavg(), wall_s=time.perf_counter() - t0)
            records.append(record)
            print(_record_line(record), flush=True)
            if on_record is not None:
                on_record(records)
    return records


def _record_line(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['model']} {r['mode']}: error: {r['error']}"
    return (
        f"{r['model']} {r['mode']}: {r['images_per_s']:.2f} img/s (median step {r['train_step_s']['median_s']:.3f} s, "
        f"compile {r['compile_s']:.1f} s, load {r['loadavg_after']})"
    )


# --------------------------------------------------------------------------------------
# Parity with keras.applications
# --------------------------------------------------------------------------------------


def parity_records(
    models: list[str],
    *,
    image_size: int | None = None,
    on_record: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Per backbone, with its top and headless (avg pooled): parameter counts and the max
    abs output difference against Keras. Raises KerasMissingError without keras."""
    from benchmarks import keras_reference as kr

    kr.keras()  # fail before any work without keras
    from cxrjax import models as cxr_models
    from cxrjax.models.weights import count_parameters

    records = []
    for name in models:
        app, smallest = kr.KERAS_CASES[name]
        size = max(image_size or smallest, smallest)
        for include_top in (True, False):
            pooling = None if include_top else "avg"
            record: dict[str, Any] = {
                "model": name,
                "keras_application": app,
                "image_size": size,
                "include_top": include_top,
                "pooling": pooling,
                "error": None,
            }
            t0 = time.perf_counter()
            try:
                reference = kr.keras_model(app, size, include_top=include_top, pooling=pooling)
                with tempfile.TemporaryDirectory(prefix="cxrjax-parity-") as tmp:
                    path = kr.write_keras_h5(reference, Path(tmp) / f"{name}.h5", keras2_names=not include_top)
                    module, variables = cxr_models.load_pretrained(
                        name, path, include_top=include_top, pooling=pooling, image_size=size
                    )
                x = kr.pixel_input(size)
                expected = kr.keras_apply(reference, x)
                actual = module.apply(variables, x, train=False)
                diff, scale = kr.relative_difference(actual, expected)
                ours, theirs = count_parameters(variables), int(reference.count_params())
                record.update(
                    parameters=ours,
                    keras_parameters=theirs,
                    parameters_equal=ours == theirs,
                    output_shape=list(expected.shape),
                    max_abs_difference=diff,
                    output_scale=scale,
                    relative_difference=diff / scale,
                )
            except Exception as err:  # noqa: BLE001 - recorded, the others still run
                record["error"] = f"{type(err).__name__}: {err}"
            record["wall_s"] = time.perf_counter() - t0
            records.append(record)
            print(_parity_line(record), flush=True)
            if on_record is not None:
                on_record(records)
    return records


def _parity_line(r: dict[str, Any]) -> str:
    what = f"{r['model']} {'top' if r['include_top'] else 'headless'} @{r['image_size']}"
    if r["error"]:
        return f"{what}: error: {r['error']}"
    return (
        f"{what}: params {r['parameters']:,} vs Keras {r['keras_parameters']:,}, "
        f"max abs difference {r['max_abs_difference']:.3g} ({r['relative_difference']:.2e} of the output scale)"
    )


# --------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def load_note(result: dict[str, Any]) -> str:
    """Whether the machine was quiet: the load averages against the core count."""
    cpus = result["environment"].get("host_cpus") or 1
    before, after = result.get("loadavg_before"), result.get("loadavg_after")
    stopped = ""
    if after is None and result["records"] and not result.get("complete", True):
        after = result["records"][-1].get("loadavg_after")  # stopped early: after its last record
        stopped = " (the run was stopped after its last record)"
    if before is None or after is None:
        return "Load average: not available on this OS."
    peak = max(
        [before[0], after[0]]
        + [v for r in result["records"] for key in ("loadavg_before", "loadavg_after") for v in (r.get(key) or [])[:1]]
    )
    verdict = (
        "quiet machine"
        if peak <= 1.0
        else f"the machine was shared (1-minute load up to {peak:.1f} on {cpus} cores): the numbers are indicative"
    )
    return f"Load average (1, 5, 15 min) before {before}, after {after}{stopped}; {verdict}."


def throughput_markdown(result: dict[str, Any]) -> str:
    env, opts = result["environment"], result["options"]
    devices = next((r["num_devices"] for r in result["records"] if not r.get("error")), "?")
    lines = [
        f"# Backbone train-step throughput ({env['date']}, {env['host']}, {env['device_kind']})",
        "",
        "`" + " ".join(["python -m benchmarks.backbones", *result["argv"]]) + "`",
        "",
        f"{opts['image_size']} px, global batch {opts['batch']} on {devices} "
        f"{env['platform']} device(s), float32, S2's head and optimiser ({BASE_PRESET} with the backbone "
        f"replaced), {opts['warmup']} warm-up + {opts['steps']} timed steps; JAX {env['jax_version']}. "
        f"Wall time {result['wall_s']:.0f} s.",
        "",
        load_note(result),
        "",
        "| backbone | parameters | trainable (frozen) | frozen img/s | fine-tuned img/s | fine-tuned / frozen |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by = {(r["model"], r["mode"]): r for r in result["records"]}
    for model in dict.fromkeys(r["model"] for r in result["records"]):
        fr, ft = by.get((model, "frozen")), by.get((model, "finetuned"))
        ok = [r for r in (fr, ft) if r and not r.get("error")]
        params = ok[0]["parameters"] if ok else None
        fr_ips = fr["images_per_s"] if fr and not fr.get("error") else None
        ft_ips = ft["images_per_s"] if ft and not ft.get("error") else None
        lines.append(
            f"| {model} | {_f(params, ',')} | {_f(fr and fr.get('trainable_parameters'), ',')} | {_f(fr_ips, '.2f')} "
            f"| {_f(ft_ips, '.2f')} | {_f(ft_ips / fr_ips if fr_ips and ft_ips else None, '.2f')} |"
        )
    lines += [
        "",
        "| backbone | mode | compile s | warm-up s | median step s | spread | img/s | TFLOP/s | XLA MiB/device "
        "| load before -> after | error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["records"]:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['mode']} | - | - | - | - | - | - | - | - | {r['error'][:120]} |")
            continue
        t = r["train_step_s"]
        mem = r["xla_memory_bytes_per_device"]
        load = f"{(r['loadavg_before'] or ['-'])[0]} -> {(r['loadavg_after'] or ['-'])[0]}"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['compile_s']:.1f} | {', '.join(f'{w:.2f}' for w in r['warmup_s'])} "
            f"| {t['median_s']:.3f} | {t['spread']:.2f} | {r['images_per_s']:.2f} | {_f(r['achieved_tflops'], '.3f')} "
            f"| {_f(mem / 2**20 if mem else None, '.0f')} | {load} | |"
        )
    return "\n".join(lines) + "\n"


def parity_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"# Backbone parity with keras.applications ({env['date']}, keras {result.get('keras_version')})",
        "",
        "Seeded random weights (random BatchNorm statistics) written as a Keras HDF5 file, imported with "
        "`cxrjax.models.load_pretrained`, both run on the same N(120, 60) input (batch 2); relative = max abs "
        "difference / max abs of Keras' output.",
        "",
        "| backbone | Keras | size | output | parameters (ours) | Keras count_params() | equal | max abs difference "
        "| output scale | relative |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in result["records"]:
        out = "top (logits)" if r["include_top"] else "headless (avg)"
        if r["error"]:
            lines.append(
                f"| {r['model']} | {r['keras_application']} | {r['image_size']} | {out} | error: "
                f"{r['error'][:120]} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['keras_application']} | {r['image_size']} | {out} | {r['parameters']:,} "
            f"| {r['keras_parameters']:,} | {'yes' if r['parameters_equal'] else '**no**'} "
            f"| {r['max_abs_difference']:.2e} | {r['output_scale']:.3g} | {r['relative_difference']:.2e} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.backbones", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--models", nargs="+", default=None, help="backbones (default: all, smallest first)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"input side in px (default {DEFAULT_SIZE})")
    p.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help=f"global batch, over the devices (default {DEFAULT_BATCH})"
    )
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"timed train steps (default {DEFAULT_STEPS})")
    p.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed warm-up steps, reported (default {DEFAULT_WARMUP})"
    )
    p.add_argument("--modes", default="frozen,finetuned", help="frozen,finetuned (default: both)")
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=os.cpu_count() or 1,
        help="host devices for XLA:CPU, set in XLA_FLAGS unless it sets a count already (default: os.cpu_count())",
    )
    p.add_argument("--num-devices", type=int, default=None, help="use the first N local devices (default: all)")
    p.add_argument("--parity", action="store_true", help="the Keras parity report instead of throughput")
    p.add_argument(
        "--parity-size",
        type=int,
        default=None,
        help="parity input side (default: each model's smallest Keras input, 32 / 75 / 71 px)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results/)")
    p.add_argument("--json", type=Path, default=None, help="write the JSON here instead of --out/<name>.json")
    p.add_argument("--markdown", type=Path, default=None, help="write the markdown here instead of --out/<name>.md")
    p.add_argument("--from-json", type=Path, default=None, help="print (or --markdown) the tables of a saved JSON")
    return p


def render(path: Path, markdown: Path | None) -> int:
    """The markdown of a saved throughput or parity JSON, printed or written to ``markdown``."""
    try:
        result = json.loads(path.read_text())
        schema = result["schema"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return _error(f"--from-json {path}: not a benchmarks.backbones result ({err})")
    if schema not in (SCHEMA, PARITY_SCHEMA):
        return _error(f"--from-json {path}: schema {schema!r} is not {SCHEMA} or {PARITY_SCHEMA}")
    text = parity_markdown(result) if schema == PARITY_SCHEMA else throughput_markdown(result)
    if markdown is None:
        print(text)
    else:
        markdown.write_text(text)
    return 0


def _error(message: str) -> int:
    print(f"error: {message}")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for name in ("size", "batch", "steps", "cpu_devices"):
        if getattr(args, name) < 1:
            return _error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        return _error(f"--warmup must be at least 0, got {args.warmup}")
    modes = [m for m in args.modes.split(",") if m]
    unknown_modes = [m for m in modes if m not in MODES]
    if not modes or unknown_modes:
        return _error(f"--modes {args.modes!r}: choose from {','.join(MODES)}")
    if args.from_json:
        return render(args.from_json, args.markdown)
    force_host_devices(os.environ, args.cpu_devices)  # before JAX starts (nothing has yet)
    from benchmarks.report import environment
    from cxrjax.models.transfer import backbones

    known = backbones()
    models = _names(args.models) or list(DEFAULT_MODELS)
    unknown = [m for m in models if m not in known]
    if unknown:
        return _error(f"--models: {', '.join(unknown)} not an ImageNet backbone; choose from {', '.join(known)}")

    env = environment()
    kind = "backbone-parity" if args.parity else "backbones"
    stem = free_stem(args.out, f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}-{machine_name(env)}-{kind}")
    json_path = args.json or args.out / f"{stem}.json"
    md_path = args.markdown or args.out / f"{stem}.md"
    for path in (json_path, md_path):
        if path.exists():
            return _error(f"{path} exists; it is not overwritten: remove it or choose another --json / --markdown")
    result: dict[str, Any] = {
        "schema": PARITY_SCHEMA if args.parity else SCHEMA,
        "argv": argv,
        "environment": env,
        "loadavg_before": loadavg(),
        "records": [],
    }
    t0 = time.perf_counter()

    def write(records: list[dict[str, Any]], final: bool = False) -> None:
        result.update(records=records, wall_s=time.perf_counter() - t0, complete=final)
        if final:
            result["loadavg_after"] = loadavg()
        result.setdefault("loadavg_after", None)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
        if records:
            md_path.parent.mkdir(parents=True, exist_ok=True)
            md_path.write_text(parity_markdown(result) if args.parity else throughput_markdown(result))

    if args.parity:
        from benchmarks.keras_reference import KerasMissingError, keras

        try:
            result["keras_version"] = keras().__version__
        except KerasMissingError as err:
            return _error(str(err))
        result["options"] = {"image_size": args.parity_size}
        records = parity_records(models, image_size=args.parity_size, on_record=write)
    else:
        result["options"] = {
            "models": models,
            "modes": modes,
            "image_size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "num_devices": args.num_devices,
            "cpu_devices": args.cpu_devices,
        }
        records = run_throughput(
            models,
            modes,
            image_size=args.size,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            num_devices=args.num_devices,
            on_record=write,
        )
    write(records, final=True)
    print(parity_markdown(result) if args.parity else throughput_markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any(r.get("error") for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
