"""Train-step and eval-step throughput of cxrjax's models, side by side with PyTorch.

    python -m benchmarks.throughput [--models lenet5 s4_exp4@224 ...] [--batch-sizes 8,32]
        [--dtypes float32,bfloat16] [--parallel shard_map,pmap] [--steps N] [--warmup N]
        [--rounds R] [--json FILE] [--markdown FILE] [--no-torch] [--torch-compile auto|always|never]
        [--cpu-devices N] [--device-counts 1,2] [--num-devices N] [--devices 1,4]

For every (model@size, dtype, batch, parallel mode, device count) it reports: compile
time; median and spread of N individually timed train steps after warm-up; images/s;
FLOPs per step from XLA's cost analysis of the compiled step; achieved TFLOP/s and, on
a known GPU, MFU against its dense peak (see benchmarks/peaks.py); XLA's memory
estimate and the backend's peak memory where reported; eval images/s; and the same
train/eval steps in PyTorch (benchmarks/torch_reference.py) on the same inputs. The
train steps are timed in ``--rounds`` rounds (default 3 on CPU) that alternate JAX and
PyTorch, pooled, with the ratio of each round kept: on a shared CPU either framework's
speed drifts by tens of percent between minutes.

What is compared differs by platform, so that each side uses the hardware it is given:

* CPU (``"comparison": "whole_host"``): XLA:CPU runs one device's convolutions on about
  one core while PyTorch uses every core through its intra-op threads; JAX reaches
  the other cores by data parallelism over host devices, one per core
  (``--cpu-devices``, default ``os.cpu_count()``, set through ``XLA_FLAGS`` before JAX
  starts). So the batches swept are GLOBAL batches, each timed on 1 device and on all
  host devices (less dispatch can make 1 device faster for tiny models), and
  ``jax_over_torch`` = JAX images/s / PyTorch images/s at the same global batch.
* GPU (``"comparison": "per_device"``): the batches are per-device batches on all
  devices (or ``--num-devices``), and ``jax_over_torch`` = JAX images/s per device /
  PyTorch images/s on one device at the per-device batch.

``--devices 1,4`` measures data-parallel overhead instead: it re-runs itself in
subprocesses with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and compares
the step time on N devices with 1 device at the same per-device batch (and with 1
device running the whole N x batch); there ``--batch-sizes`` are per-device batches.

The JAX train step is the training engine's own per-replica step (cxrjax.train.steps:
forward, CE, grads, pmean, non-finite guard, Adam, BatchNorm statistics), wrapped and
compiled ahead of time in benchmarks/jax_step.py; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, MutableMapping

HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"
CPU_DEFAULT_STEPS, CPU_DEFAULT_WARMUP, CPU_DEFAULT_ROUNDS = 10, 2, 3
GPU_DEFAULT_STEPS, GPU_DEFAULT_WARMUP, GPU_DEFAULT_ROUNDS = 50, 5, 1


@dataclass(frozen=True)
class BenchCase:
    """A model at one input size, with the batches swept on CPU (global) and GPU (per device).

    ``cpu_steps``/``cpu_warmup`` cap the step counts on CPU for models whose step takes
    seconds there (VGG16), so the default CPU run stays around ten minutes.
    """

    model: str
    image_size: int
    cpu_batches: tuple[int, ...]
    gpu_batches: tuple[int, ...]
    cpu_steps: int | None = None
    cpu_warmup: int | None = None

    @property
    def label(self) -> str:
        return f"{self.model}@{self.image_size}"


# The studies' models at their sizes (issue 6).
DEFAULT_CASES: tuple[BenchCase, ...] = (
    BenchCase("lenet5", 32, (32, 128), (256, 1024, 4096)),
    BenchCase("s0_a", 150, (8, 32), (64, 128, 256)),
    BenchCase("s4_exp4", 128, (8, 32), (64, 128, 256)),
    BenchCase("s4_exp4", 224, (8, 32), (32, 64, 128), cpu_steps=5, cpu_warmup=1),
    BenchCase("vgg16", 224, (4,), (32, 64, 128), cpu_steps=3, cpu_warmup=1),
    BenchCase("vgg16_bn", 224, (4,), (32, 64, 128), cpu_steps=3, cpu_warmup=1),
)


@dataclass
class BenchOptions:
    """Everything one run needs; the CLI fills it, tests build it directly."""

    cases: list[BenchCase] = field(default_factory=lambda: list(DEFAULT_CASES))
    batch_sizes: tuple[int, ...] | None = None  # None -> each case's sweep for the platform
    dtypes: tuple[str, ...] | None = None  # None -> float32 on CPU, float32+bfloat16 on GPU
    parallel: tuple[str, ...] = ("shard_map",)
    steps: int | None = None  # None -> platform default (capped per case on CPU)
    warmup: int | None = None
    # Rounds of `steps` timed train steps per configuration, alternating JAX and PyTorch
    # (one build each); None -> 3 on CPU (where speed drifts run to run), 1 on GPU.
    rounds: int | None = None
    torch: bool = True
    torch_compile: str = "auto"
    num_devices: int | None = None  # fixes the device count (as device_counts=(N,) would)
    # Device counts each batch is timed with; None -> (1, all) on CPU, all on GPU.
    device_counts: tuple[int, ...] | None = None
    num_classes: int = 4
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    # Called with the records so far after every configuration (the CLI rewrites its
    # JSON, so a long sweep that is interrupted keeps what it measured).
    on_record: Callable[[list[dict[str, Any]]], None] | None = None


def parse_case(text: str) -> BenchCase:
    """ "name" (its default cases, or the registry size) or "name@size"."""
    from cxrjax import models

    name, _, size = text.partition("@")
    if name not in models.MODELS:
        raise SystemExit(f"benchmarks.throughput: unknown model {name!r}; registered: {sorted(models.MODELS)}")
    for case in DEFAULT_CASES:
        if case.model == name and (not size or case.image_size == int(size)):
            return case
    image_size = int(size) if size else models.MODELS[name].image_size
    return BenchCase(name, image_size, (8, 32), (64, 128, 256))


def expand_cases(texts: list[str]) -> list[BenchCase]:
    """CLI model list -> cases; a bare name that has several default sizes gets all of them."""
    cases: list[BenchCase] = []
    for text in texts:
        if "@" not in text:
            matching = [c for c in DEFAULT_CASES if c.model == text]
            if matching:
                cases += matching
                continue
        cases.append(parse_case(text))
    return cases


def _stats_json(times: Any) -> dict[str, float]:
    return times.to_json()


def _torch_json(result: Any, batch: int) -> dict[str, Any]:
    out = {
        "setup": result.setup,
        "batch": batch,
        "rounds": 1,
        "eval_images_per_s": batch / result.eval.median_s,
        "eval_step_s": _stats_json(result.eval),
        "compile_s": result.compile_s,
        "parameters": result.parameters,
        "peak_memory_bytes": result.peak_memory_bytes,
        "alternatives_median_s": result.alternatives,
        "notes": result.notes,
    }
    set_torch_train_times(out, result.train)
    return out


def set_torch_train_times(torch_json: dict[str, Any], times: Any) -> None:
    """Write PyTorch's train-step time and images/s from `times`."""
    torch_json["train_step_s"] = _stats_json(times)
    torch_json["images_per_s"] = torch_json["batch"] / times.median_s


def run_jax_config(
    cfg: Any, *, warmup: int, steps: int, env: dict[str, Any], keep: bool = False
) -> tuple[dict[str, Any], Any, Any]:
    """Compile and time one JAX configuration.

    Returns (record without torch, host batch, retimer): with `keep`, a
    :class:`benchmarks.timing.Retimer` that times more train steps of the compiled step
    (else None).
    """
    import jax
    import numpy as np

    from benchmarks import jax_step, peaks
    from benchmarks.timing import Retimer, time_steps

    compiled = jax_step.build_steps(cfg)
    n = compiled.num_devices
    global_batch = cfg.per_device_batch * n
    batch = compiled.batch
    train_times, state = time_steps(
        lambda s: compiled.train(s, batch)[0],  # noqa: F821 - runs before the del below
        compiled.state,
        warmup=warmup,
        steps=steps,
        sync=jax.block_until_ready,
    )
    eval_times, _ = time_steps(
        lambda _: compiled.eval(state, batch),  # noqa: F821 - runs before the del below
        None,
        warmup=max(1, warmup),
        steps=steps,
        sync=jax.block_until_ready,
    )
    flops_dev = compiled.train_flops_per_device
    peak, basis = peaks.peak_tflops(env["device_kind"], cfg.dtype)
    params = sum(int(a.size) for a in jax.tree.leaves(state.params)) // (n if cfg.parallel == "pmap" else 1)
    record = {
        **env,
        "model": cfg.model,
        "image_size": cfg.image_size,
        "dtype": cfg.dtype,
        "parallel": cfg.parallel,
        "num_devices": n,
        "per_device_batch": cfg.per_device_batch,
        "global_batch": global_batch,
        "num_classes": cfg.num_classes,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.overrides.items()},
        "parameters": params,
        "warmup": warmup,
        "rounds": 1,
        "compile_s": compiled.train_compile_s,
        "eval_compile_s": compiled.eval_compile_s,
        "flops_per_step": flops_dev * n if flops_dev else None,
        "flops_per_step_per_device": flops_dev,
        "flops_source": "xla_cost_analysis" if flops_dev else None,
        "peak_tflops": peak,
        "peak_basis": basis,
        "xla_memory_bytes_per_device": compiled.train_memory_bytes,
        "peak_device_memory_bytes": jax_step.peak_device_memory_bytes(),
        "eval_step_s": _stats_json(eval_times),
        "eval_images_per_s": global_batch / eval_times.median_s,
        "eval_flops_per_step_per_device": compiled.eval_flops_per_device,
        "torch": None,
        "jax_over_torch": None,
        "jax_over_torch_rounds": None,
        "eval_jax_over_torch": None,
        "error": None,
    }
    set_train_times(record, train_times)
    retimer = (
        Retimer(_state_only(compiled.train, batch), state, jax.block_until_ready, rounds=[train_times])
        if keep
        else None
    )
    host_images = np.asarray(jax.device_get(batch["image"])).reshape(global_batch, *batch["image"].shape[-3:])
    host_labels = np.asarray(jax.device_get(batch["label"])).reshape(global_batch)
    del compiled, state, batch  # frees the device buffers (the lambdas above have run)
    return record, (host_images, host_labels), retimer


def _state_only(train: Callable, batch: Any) -> Callable[[Any], Any]:
    """state -> state of a compiled (state, batch) -> (state, metrics) step (binds `batch`
    now: `run_jax_config` deletes its names, which would empty a closure's cells)."""
    return lambda state: train(state, batch)[0]


def set_train_times(record: dict[str, Any], times: Any) -> None:
    """Write a JAX record's train-step figures (time, images/s, TFLOP/s, MFU) from `times`."""
    from benchmarks import peaks

    flops_dev = record["flops_per_step_per_device"]
    achieved_dev = flops_dev / times.median_s / 1e12 if flops_dev else None
    record["train_step_s"] = _stats_json(times)
    record["images_per_s"] = record["global_batch"] / times.median_s
    record["achieved_tflops"] = achieved_dev * record["num_devices"] if achieved_dev else None
    record["achieved_tflops_per_device"] = achieved_dev
    record["mfu"] = peaks.mfu(achieved_dev, record["peak_tflops"])


def attach_torch(record: dict[str, Any], torch_result: dict[str, Any] | None) -> None:
    """Put PyTorch's numbers and the ratios into a JAX record.

    "whole_host" (CPU): JAX's global images/s over PyTorch's at the same global batch,
    each framework using the whole host. "per_device" (GPU): JAX's images/s per device
    over PyTorch's on one device at the per-device batch.
    """
    record["torch"] = torch_result
    if not torch_result or record.get("error"):
        return
    record["jax_over_torch"] = jax_over_torch(record, record["images_per_s"], torch_result["images_per_s"])
    record["eval_jax_over_torch"] = jax_over_torch(
        record, record["eval_images_per_s"], torch_result["eval_images_per_s"]
    )


def jax_over_torch(record: dict[str, Any], jax_images_per_s: float, torch_images_per_s: float) -> float:
    """JAX's images/s (global, as in the record) over PyTorch's, compared as the record's
    ``comparison`` says: whole host against whole host, or per device against one device."""
    n = 1 if record["comparison"] == "whole_host" else record["num_devices"]
    return jax_images_per_s / n / torch_images_per_s


def device_counts(options: BenchOptions, on_cpu: bool, local: int) -> tuple[int, ...]:
    """The device counts every batch is timed with.

    On CPU both 1 device (least dispatch, best for tiny models) and all `local` host
    devices (every core busy, best for convolutions); on GPU all devices, as training
    runs. ``device_counts``, then ``num_devices``, fix them instead.
    """
    if options.device_counts:
        return tuple(options.device_counts)
    if options.num_devices:
        return (options.num_devices,)
    return tuple(dict.fromkeys((1, local))) if on_cpu else (local,)


def batch_split(batch: int, n: int, on_cpu: bool) -> tuple[int | None, int]:
    """(per-device, global) batch for a swept `batch` on `n` devices.

    CPU sweeps global batches (whole host vs whole host at the same work per step), GPU
    per-device batches; a global batch that `n` does not divide has no per-device batch.
    """
    if on_cpu:
        return (batch // n if batch % n == 0 else None), batch
    return batch, batch * n


def run(options: BenchOptions) -> list[dict[str, Any]]:
    """Run every configuration of `options`; one record per configuration.

    Configurations that share a PyTorch reference (same model, size, dtype and swept
    batch: the device counts and parallel modes) form a group. Each is compiled and
    timed once, PyTorch picks its best setup, and then, with ``rounds`` > 1, the group
    is timed ``rounds - 1`` more times in turn (JAX configurations, then PyTorch) so a
    drift of the machine's speed hits both frameworks alike.
    """
    import jax
    from tqdm import tqdm

    from benchmarks.report import environment

    env = environment()
    on_cpu = env["platform"] == "cpu"
    comparison = "whole_host" if on_cpu else "per_device"
    dtypes = options.dtypes or (("float32",) if on_cpu else ("float32", "bfloat16"))
    rounds = options.rounds or (CPU_DEFAULT_ROUNDS if on_cpu else GPU_DEFAULT_ROUNDS)
    counts = device_counts(options, on_cpu, jax.local_device_count())
    groups = []
    for case in options.cases:
        batches = options.batch_sizes or (case.cpu_batches if on_cpu else case.gpu_batches)
        steps = options.steps or (case.cpu_steps or CPU_DEFAULT_STEPS if on_cpu else GPU_DEFAULT_STEPS)
        warmup = (
            options.warmup
            if options.warmup is not None
            else (
                (case.cpu_warmup if case.cpu_warmup is not None else CPU_DEFAULT_WARMUP)
                if on_cpu
                else GPU_DEFAULT_WARMUP
            )
        )
        for dtype in dtypes:
            for batch in batches:
                members = [(parallel, n) for parallel in options.parallel for n in counts]
                groups.append((case, dtype, batch, members, steps, warmup))
    records: list[dict[str, Any]] = []
    eager_won: set[tuple] = set()  # (model, size, dtype) where eager beat compile on CPU
    bar = tqdm(total=sum(len(g[3]) for g in groups), desc="throughput", disable=not options.progress)
    for case, dtype, batch, members, steps, warmup in groups:
        torch_result, torch_retimer = None, None
        timed = []  # (record, retimer) of this group
        for parallel, n in members:
            bar.set_postfix_str(f"{case.label} {dtype} b{batch} {parallel} x{n}")
            per_device, global_batch = batch_split(batch, n, on_cpu)
            config = {
                "model": case.model,
                "image_size": case.image_size,
                "dtype": dtype,
                "parallel": parallel,
                "num_devices": n,
                "per_device_batch": per_device,
                "global_batch": global_batch,
                "comparison": comparison,
            }
            record, host, retimer = _time_jax(config, options, env, steps=steps, warmup=warmup, keep=rounds > 1)
            if host is not None and options.torch and torch_result is None:
                torch_batch = global_batch if on_cpu else per_device
                images, labels = host
                torch_result, torch_retimer = run_torch(
                    case,
                    dtype,
                    torch_batch,
                    images[:torch_batch],
                    labels[:torch_batch],
                    steps=steps,
                    warmup=warmup,
                    options=options,
                    on_cpu=on_cpu,
                    eager_won=eager_won,
                    keep=rounds > 1,
                )
            attach_torch(record, torch_result)
            timed.append((record, retimer))
            records.append(record)
            bar.update()
            if options.on_record:
                options.on_record(records)
        if rounds > 1 and any(r is not None for _, r in timed):
            bar.set_postfix_str(f"{case.label} {dtype} b{batch}: {rounds} rounds")
            time_rounds(timed, torch_result, torch_retimer, rounds=rounds, steps=steps)
            if options.on_record:
                options.on_record(records)
        del timed, torch_retimer
        gc.collect()
    bar.close()
    return records


def time_rounds(
    timed: list[tuple[dict[str, Any], Any]],
    torch_result: dict[str, Any] | None,
    torch_retimer: Any,
    *,
    rounds: int,
    steps: int,
) -> None:
    """Time `rounds - 1` more rounds of a group, JAX configurations then PyTorch each
    round, and rewrite the records with the pooled step times of all rounds.

    Each record also gets ``jax_over_torch_rounds``: the ratio within each round, whose
    range shows how much of a difference is drift rather than speed.
    """
    from benchmarks.timing import pooled

    for _ in range(rounds - 1):
        for _, retimer in timed:
            if retimer is not None:
                retimer(steps)
        if torch_retimer is not None:
            torch_retimer(steps)
    if torch_retimer is not None:
        set_torch_train_times(torch_result, pooled(torch_retimer.rounds))
        torch_result["rounds"] = len(torch_retimer.rounds)
    for rec, retimer in timed:
        if retimer is None:
            continue
        set_train_times(rec, pooled(retimer.rounds))
        rec["rounds"] = len(retimer.rounds)
        attach_torch(rec, torch_result)
        if torch_retimer is not None and rec["jax_over_torch"] is not None:
            rec["jax_over_torch_rounds"] = [
                jax_over_torch(rec, rec["global_batch"] / j.median_s, torch_result["batch"] / t.median_s)
                for j, t in zip(retimer.rounds, torch_retimer.rounds)
            ]


def _time_jax(
    config: dict[str, Any], options: BenchOptions, env: dict[str, Any], *, steps: int, warmup: int, keep: bool = False
) -> tuple[dict[str, Any], Any, Any]:
    """(record, host batch, retimer or None) of one JAX configuration; a failed record and
    no batch if it cannot run."""
    from benchmarks import jax_step

    n, per_device = config["num_devices"], config["per_device_batch"]
    if per_device is None:
        return (
            _failed(env, config, f"global batch {config['global_batch']} is not divisible by {n} devices"),
            None,
            None,
        )
    cfg = jax_step.JaxStepConfig(
        model=config["model"],
        image_size=config["image_size"],
        per_device_batch=per_device,
        dtype=config["dtype"],
        parallel=config["parallel"],
        num_devices=n,
        num_classes=options.num_classes,
        overrides=dict(options.overrides),
    )
    try:
        record, host, retimer = run_jax_config(cfg, warmup=warmup, steps=steps, env=env, keep=keep)
    except Exception as e:  # e.g. out of memory at a large batch: record it and go on
        return _failed(env, config, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"), None, None
    finally:
        gc.collect()
    record["comparison"] = config["comparison"]
    return record, host, retimer


def _failed(env: dict[str, Any], config: dict[str, Any], error: str) -> dict[str, Any]:
    """The record of a configuration that could not be timed; the sweep goes on."""
    return {**env, **config, "error": error, "torch": None, "jax_over_torch": None, "eval_jax_over_torch": None}


def run_torch(
    case: BenchCase,
    dtype: str,
    batch: int,
    images: Any,
    labels: Any,
    *,
    steps: int,
    warmup: int,
    options: BenchOptions,
    on_cpu: bool,
    eager_won: set[tuple],
    keep: bool = False,
) -> tuple[dict[str, Any] | None, Any]:
    """(PyTorch's numbers, retimer) at `batch` (CPU: the global batch, all cores; GPU: the
    per-device batch, one device); (None, None), with a message, without torch. With
    `keep`, the retimer times more train steps of the chosen setup.

    On CPU with ``--torch-compile auto``, compilation (tens of seconds per shape there) is
    only retried for a model's larger batches while it keeps beating eager.
    """
    try:
        from benchmarks import torch_reference
    except ImportError as e:
        print(
            f"benchmarks.throughput: PyTorch reference skipped ({e}); install the extra: pip install -e .[torch]",
            file=sys.stderr,
        )
        options.torch = False
        return None, None
    compile_mode = options.torch_compile
    group = (case.model, case.image_size, dtype)
    note = None
    if on_cpu and compile_mode == "auto" and group in eager_won:
        compile_mode, note = "never", "torch.compile not retried: eager was faster at a smaller batch"
    cfg = torch_reference.TorchConfig(
        model=case.model,
        image_size=case.image_size,
        batch=batch,
        dtype=dtype,
        num_classes=options.num_classes,
        compile=compile_mode,
        overrides=dict(options.overrides),
    )
    result = torch_reference.benchmark(cfg, images, labels, warmup=warmup, steps=steps, keep=keep)
    if "eager" in result.setup and len(result.alternatives) > 1:
        eager_won.add(group)
    out = _torch_json(result, batch)
    if note:
        out["notes"].append(note)
    gc.collect()
    return out, result.retime


# --------------------------------------------------------------------------------------
# Data-parallel overhead: re-run in subprocesses with N forced host devices
# --------------------------------------------------------------------------------------


def _forced_env(n: int) -> dict[str, str]:
    """The environment of a subprocess with exactly `n` host devices, on CPU.

    JAX_PLATFORMS is forced to cpu: the subprocess gets global batches, which only the
    CPU sweep reads as such.
    """
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(HOST_DEVICE_FLAG)]
    env["XLA_FLAGS"] = " ".join(flags + [f"{HOST_DEVICE_FLAG}={n}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_devices(argv: list[str], device_counts: list[int], options: BenchOptions) -> tuple[list[dict], list[dict]]:
    """Run this CLI once per device count (1 device also at N x batch); join the step times.

    ``options.batch_sizes`` are per-device batches here; a subprocess with n devices
    gets ``--device-counts n`` and the global batches per-device x n.
    """
    base = _strip_args(
        argv,
        ("--devices", "--json", "--markdown", "--num-devices", "--device-counts", "--batch-sizes", "--cpu-devices"),
    )
    batches = options.batch_sizes or (8,)
    counts = sorted(set(device_counts) | {1})
    runs: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            per_device = sorted({b * m for b in batches for m in counts}) if n == 1 else batches
            out = Path(tmp) / f"devices{n}.json"
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.throughput",
                *base,
                "--no-torch",
                "--device-counts",
                str(n),
                "--batch-sizes",
                ",".join(str(b * n) for b in per_device),
                "--json",
                str(out),
            ]
            print(f"[devices={n}] {' '.join(cmd[1:])}", file=sys.stderr)
            subprocess.run(cmd, env=_forced_env(n), check=True)
            runs[n] = json.loads(out.read_text())["records"]
    records = [r for n in sorted(runs) for r in runs[n]]
    return records, overhead_rows(runs, batches)


def overhead_rows(runs: dict[int, list[dict]], batches: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per (model, size, dtype, parallel, batch, N): 1-device vs N-device step times."""

    def index(recs: list[dict]) -> dict[tuple, dict]:
        return {
            (r["model"], r["image_size"], r["dtype"], r["parallel"], r["per_device_batch"]): r
            for r in recs
            if not r.get("error")
        }

    one = index(runs.get(1, []))
    rows = []
    for n, recs in sorted(runs.items()):
        if n == 1:
            continue
        for key, r in index(recs).items():
            if key[-1] not in batches or key not in one:
                continue
            t1 = one[key]["train_step_s"]["median_s"]
            tn = r["train_step_s"]["median_s"]
            total = one.get((*key[:-1], key[-1] * n))
            t1_total = total["train_step_s"]["median_s"] if total else None
            rows.append(
                {
                    "model": key[0],
                    "image_size": key[1],
                    "dtype": key[2],
                    "parallel": key[3],
                    "per_device_batch": key[4],
                    "num_devices": n,
                    "step_ms_1": 1e3 * t1,
                    "step_ms_n": 1e3 * tn,
                    "ratio_same_per_device_batch": tn / t1,
                    "step_ms_1_same_total": 1e3 * t1_total if t1_total else None,
                    "ratio_same_total_batch": tn / t1_total if t1_total else None,
                }
            )
    return rows


def _strip_args(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv without the named options (both "--x v" and "--x=v" forms)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def force_host_devices(env: MutableMapping[str, str], n: int) -> None:
    """Ask XLA:CPU for `n` host devices in `env`'s XLA_FLAGS, unless they already set a count.

    XLA:CPU runs one device's convolutions on about one core, so host devices, one per
    core, are how JAX's data parallelism puts the whole host to work. XLA reads
    XLA_FLAGS once, when JAX initialises its backends, so this has to run before any JAX
    computation (importing jax is fine; under pytest, whose conftest already started JAX
    with 4 devices, it changes nothing). GPU platforms ignore it.
    """
    flags = env.get("XLA_FLAGS", "")
    if HOST_DEVICE_FLAG not in flags:
        env["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={n}".strip()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t)


def _strs(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def _tuples(value: Any) -> Any:
    """JSON lists -> tuples, recursively (Flax module options must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def add_models_argument(p: argparse.ArgumentParser) -> None:
    """``--models name[@size] ...`` (read with :func:`expand_cases`; default DEFAULT_CASES),
    as every benchmark that times the study models takes it."""
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="names or name@size (default: " + " ".join(c.label for c in DEFAULT_CASES) + ")",
    )


# BenchOptions fields that are the command-line options of the same name, as given.
_PLAIN_OPTIONS = (
    "batch_sizes",
    "dtypes",
    "parallel",
    "steps",
    "warmup",
    "rounds",
    "torch_compile",
    "num_devices",
    "device_counts",
    "num_classes",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    add_models_argument(p)
    p.add_argument(
        "--batch-sizes",
        type=_ints,
        default=None,
        help="batches, e.g. 8,32: global on CPU, per device on GPU and with --devices (default: per model)",
    )
    p.add_argument("--dtypes", type=_strs, default=None, help="float32,bfloat16 (default: float32 on CPU, both on GPU)")
    p.add_argument("--parallel", type=_strs, default=("shard_map",), help="shard_map,pmap (default: shard_map)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed train steps per round (default: 10 on CPU, 5 for s4_exp4@224, 3 for VGG; 50 on GPU)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per configuration, alternating JAX and PyTorch; step times are pooled "
        "(default: 3 on CPU, 1 on GPU)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 on CPU, 5 on GPU)")
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=os.cpu_count() or 1,
        help="host devices for XLA:CPU, set in XLA_FLAGS unless it sets a count already; no effect "
        "once JAX has started (e.g. under pytest) or on GPU (default: os.cpu_count())",
    )
    p.add_argument(
        "--device-counts",
        type=_ints,
        default=None,
        help="time each batch with the first N local devices for each N, e.g. 1,2 "
        "(default: 1 and all on CPU, all on GPU)",
    )
    p.add_argument(
        "--num-devices",
        type=int,
        default=None,
        help="use the first N local devices only (default: see --device-counts)",
    )
    p.add_argument(
        "--devices",
        type=_ints,
        default=None,
        help="data-parallel overhead mode: e.g. 1,4 re-runs with N forced CPU devices each",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument(
        "--torch-compile",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: time eager and torch.compile, keep the faster (on CPU, compile is not "
        "retried for a model's larger batches once eager won)",
    )
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument(
        "--overrides",
        type=json.loads,
        default={},
        help="model options as JSON for both frameworks, e.g. '{\"features\": [4, 4, 4, 4]}'",
    )
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    p.add_argument("--markdown", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--from-json", type=Path, default=None, help="re-render a saved JSON instead of running")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.report import SCHEMA, markdown_table, overhead_table

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cpu_devices < 1:
        parser.error("--cpu-devices must be at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.num_devices and args.device_counts:
        parser.error("--num-devices and --device-counts both fix the device count; give one")
    # Before anything initialises JAX's backends (nothing imported so far does).
    force_host_devices(os.environ, args.cpu_devices)
    # JAX would otherwise reserve 75% of GPU memory at start-up and leave PyTorch, timed
    # in the same process, too little; on demand, each framework holds what it used.
    # (No effect when jax was imported before, e.g. under pytest, and none on CPU.)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        options = BenchOptions(
            cases=expand_cases(args.models) if args.models else list(DEFAULT_CASES),
            torch=not args.no_torch,
            overrides=_tuples(args.overrides),
            progress=not args.no_progress,
            **{name: getattr(args, name) for name in _PLAIN_OPTIONS},
        )
        result = {"schema": SCHEMA, "records": [], "data_parallel_overhead": []}
        if args.json:
            options.on_record = lambda records: _write(args.json, json.dumps({**result, "records": records}, indent=1))
        if args.devices:
            result["records"], result["data_parallel_overhead"] = run_devices(argv, list(args.devices), options)
        else:
            result["records"] = run(options)
    text = markdown_table(result["records"]) + overhead_table(result.get("data_parallel_overhead", []))
    if args.json:
        _write(args.json, json.dumps(result, indent=1))
    if args.markdown:
        _write(args.markdown, text)
    print(text)
    return result


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
