"""One GPU check: does cxrjax's accelerator path work, and how fast is it against PyTorch?

    bash benchmarks/gpu_check.sh --wheels DIR [--quick] [--out DIR]   # on the GPU machine
    bash benchmarks/gpu_check.sh --cpu-smoke [--out DIR]              # same steps, tiny, on CPU

``benchmarks/gpu_check.sh`` installs what the GPU machine lacks (grain, tensorflow-datasets,
array-record and their dependencies, from a folder of wheels) and then runs this driver,
``python -m benchmarks.gpu_check``, with the seconds left of its budget. The driver runs
every step as its own subprocess under a timeout, so a crash, a hang or an out-of-memory
in one step is recorded and the others still run:

1. ``environment``: the device JAX and PyTorch see (``nvidia-smi`` where there is one);
   off CPU mode, a JAX without a GPU backend fails this step.
2. ``tests``: the model and engine tests that matter on an accelerator (output shapes of
   every model, train/eval invariants, bfloat16 within tolerance of float32, the
   data-parallel step on N devices equal to 1 device), run by pytest with
   ``JAX_PLATFORMS=cuda`` so tests/conftest.py does not force the CPU. (The training loop's
   tests count steps for 4 forced CPU devices; the ablation step trains on the GPU instead.)
3. ``device_resident``: ``benchmarks.device_resident``, real training runs with
   ``data_placement`` host and device (the split as uint8 on the device, batches made
   in-step, several steps per dispatch), where ``cxrjax/train/resident.py`` exists.
4. ``ablation``: one cell of ``experiments.ablation_bn_dropout`` (S4's Exp4, BatchNorm on
   every layer) at S4's settings (128 px, global batch 32) on phantoms, one seed.
5. ``throughput:<model>@<size>``: ``benchmarks.throughput`` per model, float32 and bfloat16,
   against PyTorch's best setup (channels_last, autocast, cuDNN autotuning; eager and
   torch.compile, the faster kept). One subprocess per model, smallest first, each given
   the seconds left divided by the models left, so a slow compilation costs only its own
   model (the throughput JSON is rewritten after every configuration, so a timed-out model
   keeps what it measured).

The result is one JSON (schema ``cxrjax.benchmarks.gpu_check/1``) and one markdown file,
named ``<date>-<device>-gpu-check[-quick|-cpu-smoke]`` in ``--out`` (default
``benchmarks/results/``; ``--cpu-smoke`` defaults to a new temporary folder), plus a
``.log`` with every step's output. An existing file is never overwritten: the name gets
``-2``, ``-3``, ... . Modes, budgets and the JSON keys: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks.throughput import DEFAULT_CASES  # imports no JAX

SCHEMA = "cxrjax.benchmarks.gpu_check/1"
ROOT = Path(__file__).resolve().parent.parent
MODES = ("full", "quick", "cpu_smoke")
# Seconds for the whole driver (gpu_check.sh passes what its 8-minute budget has left).
DEFAULT_BUDGET_S = {"full": 450.0, "quick": 240.0, "cpu_smoke": 170.0}
RESERVE_S = 5.0  # kept back from the last step for writing the results
MIN_STEP_S = 10.0  # a step that would get less is skipped, not started
LOG_TAIL_CHARS = 3000

# The tests that matter on an accelerator (see the module docstring), by file and -k; each
# runs with as many devices as there are (tests/models/test_models_crossreplica_bn.py and
# tests/train/test_train_loop_runs.py need 4, so they are not among them).
TESTS = {
    "full": [
        "tests/train/test_train_step_parallel.py",
        "tests/models/test_models_invariants.py",
        "tests/models/test_models_shapes.py",
    ],
    "quick": [
        "tests/train/test_train_step_parallel.py",
        "tests/models/test_models_invariants.py",
    ],
    "cpu_smoke": [
        "tests/train/test_train_step_parallel.py",
        "tests/models/test_models_invariants.py",
        "-k",
        "test_train_step_parallel or (bfloat16 and lenet5)",
    ],
}

# (model@size, GPU per-device batch): every model of benchmarks.throughput's DEFAULT_CASES
# (the studies' models at their sizes, smallest step first) at the middle batch of its GPU
# sweep: lenet5@32 1024, s0_a@150 and s4_exp4@128 128, s4_exp4@224 and the VGGs 64.
THROUGHPUT_CASES = {
    "full": [(c.label, c.gpu_batches[len(c.gpu_batches) // 2]) for c in DEFAULT_CASES],
    "quick": [("lenet5@32", 1024), ("s4_exp4@128", 128), ("vgg16@224", 64)],
    # Tiny: global batch 8 on CPU; one case runs the step once (every case runs the same code).
    "cpu_smoke": [("lenet5@32", 8)],
}
# mode -> model@size -> model options (--overrides) for a cheaper variant; none at present.
THROUGHPUT_OVERRIDES: dict[str, dict[str, dict]] = {}
THROUGHPUT_STEPS = {"full": ("20", "3"), "quick": ("10", "2"), "cpu_smoke": ("1", "1")}  # (timed, warm-up)

# Per-step timeouts (seconds), capped by what the budget has left.
TIMEOUTS = {
    "full": {"environment": 60, "tests": 100, "device_resident": 70, "ablation": 110, "throughput": 300},
    "quick": {"environment": 60, "tests": 60, "device_resident": 50, "ablation": 60, "throughput": 150},
    "cpu_smoke": {"environment": 40, "tests": 60, "device_resident": 50, "ablation": 60, "throughput": 80},
}

ABLATION_CELL = "exp2_bn-all_do-0_es-off"  # S4's Exp4: BatchNorm on every layer, no dropout, no ES
ABLATION = {
    # S4's settings: 128 px input, global batch 32; phantoms stored at 128 px.
    "full": {"size": 128, "batch": 32, "epochs": 2, "train": 1024, "validation": 256, "test": 256},
    "quick": {"size": 128, "batch": 32, "epochs": 1, "train": 512, "validation": 128, "test": 128},
    "cpu_smoke": {"size": 20, "batch": 8, "epochs": 1, "train": 32, "validation": 8, "test": 8},
}
ABLATION_TINY_MODEL = ("features=[3,4,5,6]", "head_width=7")  # cpu_smoke only


@dataclass
class Step:
    """One subprocess of the check: its command, timeout and how to read its output."""

    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    # Reads the step's files after it ran: a summary for the JSON (may raise: recorded).
    collect: Callable[[], dict[str, Any]] | None = None
    # A step that gets the seconds left divided by the steps left in its group.
    share_group: str | None = None
    skip_reason: str | None = None


def _python() -> str:
    return sys.executable


def probe() -> dict[str, Any]:
    """What this process's JAX and PyTorch see (``--probe``; run as the environment step)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "host": platform.node(),
        "host_cpus": os.cpu_count(),
    }
    import jax

    info["jax_version"] = jax.__version__
    try:
        devices = jax.devices()
        info.update(
            jax_backend=jax.default_backend(),
            device_kind=devices[0].device_kind,
            device_platform=devices[0].platform,
            device_count=len(devices),
        )
    except Exception as e:  # e.g. JAX_PLATFORMS=cuda with a CPU-only jaxlib
        info.update(jax_backend=None, jax_error=f"{type(e).__name__}: {e}".strip())
    try:
        import torch

        info["torch_version"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
        info["torch_device"] = torch.cuda.get_device_name(0) if info["torch_cuda"] else None
    except ImportError:
        info["torch_version"] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    for name in ("grain", "tensorflow_datasets", "array_record", "flax", "optax", "orbax.checkpoint"):
        try:
            module = __import__(name, fromlist=["__version__"])
            info.setdefault("versions", {})[name] = getattr(module, "__version__", "?")
        except ImportError as e:
            info.setdefault("missing", []).append(f"{name}: {e}")
    return info


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts and failed test ids from pytest's ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def throughput_summary(path: Path) -> dict[str, Any]:
    """The compact view of a benchmarks.throughput JSON: one row per configuration."""
    records = _read_json(path)["records"]
    rows = []
    for r in records:
        torch_side = r.get("torch") or {}
        rows.append(
            {
                "model": r.get("model"),
                "image_size": r.get("image_size"),
                "dtype": r.get("dtype"),
                "per_device_batch": r.get("per_device_batch"),
                "num_devices": r.get("num_devices"),
                "images_per_s": r.get("images_per_s"),
                "mfu": r.get("mfu"),
                "torch_images_per_s": torch_side.get("images_per_s"),
                "torch_setup": torch_side.get("setup"),
                "jax_over_torch": r.get("jax_over_torch"),
                "compile_s": r.get("compile_s"),
                "error": r.get("error"),
            }
        )
    return {"rows": rows, "records": records}


def resident_summary(path: Path) -> dict[str, Any]:
    """The runs of a benchmarks.device_resident JSON (one per placement and K); any error fails."""
    records = _read_json(path)["records"]
    keep = ("model", "image_size", "data_placement", "steps_per_dispatch", "num_devices", "images_per_second", "error")
    rows = [{k: r.get(k) for k in keep} for r in records]
    bad = [r for r in rows if r["error"]]
    if not rows or bad:
        raise RuntimeError(f"benchmarks.device_resident runs failed: {bad or 'no records'}")
    return {"rows": rows}


def ablation_summary(workdir: Path) -> dict[str, Any]:
    """The cell's rows of results.csv (status, test accuracy, epochs)."""
    import csv

    with (workdir / "results.csv").open() as f:
        rows = [
            {k: row.get(k) for k in ("cell", "seed", "status", "test_accuracy", "epochs_run")}
            for row in csv.DictReader(f)
        ]
    bad = [r for r in rows if r["status"] != "ok"]
    if not rows or bad:
        raise RuntimeError(f"ablation runs not ok: {bad or 'no rows in results.csv'}")
    return {"rows": rows}


def plan(mode: str, work: Path, timeout_scale: float = 1.0) -> list[Step]:
    """Every step of a mode, with its command line; files go to ``work``.

    ``timeout_scale`` multiplies the per-step timeouts (a loaded machine: the smoke test).
    """
    py = _python()
    timeouts = {name: seconds * timeout_scale for name, seconds in TIMEOUTS[mode].items()}
    on_gpu = mode != "cpu_smoke"
    # On the accelerator: JAX on CUDA (tests/conftest.py only sets JAX_PLATFORMS when unset)
    # and no preallocation, so PyTorch in the same throughput process gets memory too.
    # CPU smoke: the CPU even where there is a GPU.
    gpu_env = (
        {"JAX_PLATFORMS": "cuda", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if on_gpu else {"JAX_PLATFORMS": "cpu"}
    )
    steps = [
        Step(
            "environment",
            [py, "-m", "benchmarks.gpu_check", "--probe", "--require-gpu" if on_gpu else "--no-require-gpu"],
            timeouts["environment"],
            env=gpu_env,
        )
    ]

    junit = work / "junit.xml"
    # The tests' float32 references are exact float32 (as on the CPU), not the TF32 that
    # JAX's default precision lets cuDNN/cuBLAS use on a GPU; the throughput keeps TF32.
    test_env = {**gpu_env, "JAX_DEFAULT_MATMUL_PRECISION": "highest"} if on_gpu else gpu_env
    steps.append(
        Step(
            "tests",
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *TESTS[mode]],
            timeouts["tests"],
            env=test_env,
            collect=lambda: junit_summary(junit),
        )
    )

    resident_json = work / "resident.json"
    small = mode == "cpu_smoke"
    resident = Step(
        "device_resident",
        [
            py,
            "-m",
            "benchmarks.device_resident",
            "--models",
            *(["lenet5@32"] if small else ["lenet5@32", "s4_exp4@128"]),
            "--placements",
            "host,device",
            "--steps-per-dispatch",
            "2" if small else "8",
            "--epochs",
            "2",
            "--per-device-batch-size",
            "8" if small else "32",
            "--num-train",
            "32" if small else "1024",
            "--num-eval",
            "8" if small else "64",
            "--stored-size",
            "32" if small else "128",
            "--data-dir",
            str(work / "resident-data"),
            "--json",
            str(resident_json),
            *(["--num-devices", "1"] if small else []),
        ],
        timeouts["device_resident"],
        env=gpu_env,
        collect=lambda: resident_summary(resident_json),
    )
    if not (ROOT / "cxrjax" / "train" / "resident.py").exists():
        resident.skip_reason = "cxrjax/train/resident.py (data_placement) does not exist"
    steps.append(resident)

    a = ABLATION[mode]
    ablation_dir = work / "ablation"
    argv = [
        py,
        "-m",
        "experiments.ablation_bn_dropout",
        "--cells",
        ABLATION_CELL,
        "--seeds",
        "1",
        "--epochs",
        str(a["epochs"]),
        "--image-size",
        str(a["size"]),
        "--global-batch-size",
        str(a["batch"]),
        "--workdir",
        str(ablation_dir),
        "--data-dir",
        str(work / "data"),
        "--compilation-cache",
        "",
        "--jobs",
        "1",
        "--no-progress",
    ]
    for key, value in (
        ("image_size", a["size"]),
        ("num_train", a["train"]),
        ("num_validation", a["validation"]),
        ("num_test", a["test"]),
    ):
        argv += ["--dataset-option", f"{key}={value}"]
    if small:
        for option in ABLATION_TINY_MODEL:
            argv += ["--model-option", option]
    steps.append(
        Step("ablation", argv, timeouts["ablation"], env=gpu_env, collect=lambda: ablation_summary(ablation_dir))
    )

    timed, warmup = THROUGHPUT_STEPS[mode]
    for case, batch in THROUGHPUT_CASES[mode]:
        out = work / f"throughput-{case.replace('@', '-')}.json"
        argv = [
            py,
            "-m",
            "benchmarks.throughput",
            "--models",
            case,
            "--batch-sizes",
            str(batch),
            "--dtypes",
            "float32,bfloat16",
            "--steps",
            timed,
            "--warmup",
            warmup,
            "--rounds",
            "1",
            "--json",
            str(out),
            "--no-progress",
        ]
        overrides = THROUGHPUT_OVERRIDES.get(mode, {}).get(case)
        if overrides:
            argv += ["--overrides", json.dumps(overrides)]
        if small:
            # torch.compile takes tens of seconds per shape on CPU (the GPU run times both),
            # and one device count halves the compilations.
            argv += ["--torch-compile", "never", "--num-devices", "1"]
        steps.append(
            Step(
                f"throughput:{case}",
                argv,
                timeouts["throughput"],
                env=gpu_env,
                collect=(lambda p=out: throughput_summary(p)),
                share_group="throughput",
            )
        )
    return steps


def _tail(text: str, n: int = LOG_TAIL_CHARS) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def run_steps(steps: list[Step], budget_s: float, log: Any, cwd: Path = ROOT) -> list[dict[str, Any]]:
    """Runs each step under min(its timeout, its share of what the budget has left).

    Never raises for a step: a non-zero exit, a timeout, a collect error or a skip is the
    step's ``status`` (``ok``, ``failed``, ``timeout``, ``skipped`` where it does not apply,
    ``out_of_budget`` where too few seconds were left to start it) with its ``error``.
    """
    deadline = time.monotonic() + budget_s
    results = []
    for i, step in enumerate(steps):
        left = deadline - time.monotonic() - RESERVE_S
        if step.share_group:
            group_left = sum(1 for s in steps[i:] if s.share_group == step.share_group)
            # Its share, but at least MIN_STEP_S while that much is left in all.
            left = max(left / group_left, min(left, MIN_STEP_S))
        timeout = min(step.timeout_s, left)
        result: dict[str, Any] = {
            "name": step.name,
            "status": "skipped",
            "seconds": 0.0,
            "timeout_s": round(timeout, 1),
            "command": " ".join(step.argv[1:]) if step.argv and step.argv[0] == _python() else " ".join(step.argv),
            "returncode": None,
            "error": None,
            "summary": None,
            "log_tail": "",
        }
        results.append(result)
        if step.skip_reason:
            result["error"] = step.skip_reason
            continue
        if left < MIN_STEP_S:
            result["status"] = "out_of_budget"
            result["error"] = f"budget: {max(left, 0):.0f} s left for this step (< {MIN_STEP_S:.0f} s)"
            continue
        # No progress bars (tfds' preparation, tqdm) in the log.
        env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        start = time.monotonic()
        log.write(f"\n===== {step.name}: {result['command']} (timeout {timeout:.0f} s)\n")
        log.flush()
        output, result["returncode"] = _run(step.argv, cwd, env, timeout)
        if result["returncode"] is None:
            result["status"] = "timeout"
            result["error"] = f"killed after {timeout:.0f} s"
        elif result["returncode"] == 0:
            result["status"] = "ok"
        else:
            result["status"] = "failed"
            result["error"] = f"exit status {result['returncode']}"
        result["seconds"] = round(time.monotonic() - start, 1)
        log.write(output)
        log.flush()
        result["log_tail"] = _tail(output) if result["status"] != "ok" else _tail(output, 600)
        if step.collect is not None:
            try:
                result["summary"] = step.collect()
            except Exception as e:  # the step's own output says more; keep going
                if result["status"] == "ok":
                    result["status"] = "failed"
                    result["error"] = f"its output could not be read: {type(e).__name__}: {e}"
        if step.name == "environment":  # its probe prints its JSON before failing on a missing GPU
            result["summary"] = _last_json_line(output)
    return results


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[str, int | None]:
    """(output, exit status), or (output so far, None) after killing it at ``timeout``.

    The step runs in a session of its own and a timeout kills the whole process group:
    a step's own workers (grain, the ablation's jobs, pytest's subprocesses) must not
    outlive it and keep holding the GPU's memory while the next step runs.
    """
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        return output, proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = proc.communicate()
        return output or "", None


def _last_json_line(output: str) -> dict[str, Any] | None:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def free_stem(out: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... : the first with no .json/.md/.log in ``out``."""
    candidate, n = stem, 1
    while any((out / f"{candidate}{ext}").exists() for ext in (".json", ".md", ".log")):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def markdown(report: dict[str, Any]) -> str:
    """The human-readable page of a gpu_check JSON."""
    from benchmarks.report import markdown_table

    env = report.get("device") or {}
    lines = [
        f"# GPU check ({report['mode']}): {env.get('device_kind', '?')}, {report['date']}",
        "",
        f"- device: {env.get('device_kind', '?')} x {env.get('device_count', '?')} "
        f"({env.get('jax_backend', '?')}; nvidia-smi: {env.get('nvidia_smi', '-')})",
        f"- JAX {env.get('jax_version', '?')}, PyTorch {env.get('torch_version', '-')}, "
        f"Python {env.get('python', '?')}, host {env.get('host', '?')} ({env.get('host_cpus', '?')} CPUs)",
        f"- wall time: {report['wall_s']:.0f} s (set-up {report['setup'].get('seconds', 0):.0f} s, "
        f"budget {report['budget_s']:.0f} s for the steps); all ok: **{report['ok']}**",
        "",
        *(
            [
                "cpu_smoke: tiny sizes, one timed step: the figures show that each path runs; not measurements.",
                "",
            ]
            if report["mode"] == "cpu_smoke"
            else []
        ),
        "| step | status | seconds | timeout | note |",
        "|---|---|---|---|---|",
    ]
    setup = report["setup"]
    lines.append(f"| setup | {setup.get('status')} | {setup.get('seconds', 0):.0f} | - | {setup.get('note') or ''} |")
    for s in report["steps"]:
        lines.append(
            f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['timeout_s']:.0f} | {s['error'] or ''} |"
        )
    by_name = {s["name"]: s for s in report["steps"]}
    tests = (by_name.get("tests") or {}).get("summary")
    if tests:
        lines += [
            "",
            "## Tests",
            "",
            f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped of {tests['tests']}.",
        ]
        lines += [f"- failed: `{t}`" for t in tests["failed"]]
    records = [
        r
        for s in report["steps"]
        if s["name"].startswith("throughput:")
        for r in (s["summary"] or {}).get("records", [])
    ]
    if records:
        lines += ["", "## Throughput (benchmarks.throughput)", "", markdown_table(records).rstrip()]
    resident = (by_name.get("device_resident") or {}).get("summary")
    if resident:
        lines += ["", "## Data placement (benchmarks.device_resident: training runs, img/s after epoch 1)", ""]
        lines += ["| model | size | placement | steps/dispatch | devices | img/s |", "|---|---|---|---|---|---|"]
        for r in resident["rows"]:
            lines.append(
                f"| {r['model']} | {r['image_size']} | {r['data_placement']} | {r['steps_per_dispatch']} | "
                f"{r['num_devices']} | {r['images_per_second']:.0f} |"
            )
    ablation = (by_name.get("ablation") or {}).get("summary")
    if ablation:
        lines += ["", f"## Ablation cell ({ABLATION_CELL}, S4's Exp4)", ""]
        lines += ["| cell | seed | status | test accuracy | epochs |", "|---|---|---|---|---|"]
        for r in ablation["rows"]:
            lines.append(f"| {r['cell']} | {r['seed']} | {r['status']} | {r['test_accuracy']} | {r['epochs_run']} |")
    failed = [s for s in report["steps"] if s["status"] in ("failed", "timeout")]
    for s in failed:
        lines += ["", f"## {s['name']}: {s['status']} ({s['error']})", "", "```", s["log_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="Run by benchmarks/gpu_check.sh: the GPU check's steps, each in a subprocess under a timeout.",
        allow_abbrev=False,
    )
    p.add_argument("--mode", choices=MODES, default="full", help="full (GPU), quick (GPU, fewer), cpu_smoke")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON/markdown/log (see module doc)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for all steps (default: per mode)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout (a loaded machine)")
    p.add_argument("--setup-json", type=Path, default=None, help="gpu_check.sh's set-up record")
    p.add_argument("--only", default=None, help="comma-separated step names (prefixes) to run, e.g. tests,throughput")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary folder of the steps' own files")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--require-gpu", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    if args.probe:
        info = probe()
        print(json.dumps(info))
        if args.require_gpu and info["jax_backend"] != "gpu":
            why = info.get("jax_error") or f"backend {info['jax_backend']!r}"
            return _error(f"JAX sees no GPU ({why}); is the CUDA build of jax installed (jax[cuda12/13])?")
        return 0 if not info.get("missing") else _error("missing packages: " + "; ".join(info["missing"]))
    if args.timeout_scale <= 0:
        return _error(f"--timeout-scale must be positive, got {args.timeout_scale}")
    if args.budget_s is not None and args.budget_s <= 0:
        return _error(f"--budget-s must be positive, got {args.budget_s} (set-up used the whole budget?)")
    out = args.out
    if out is None:
        out = (
            Path(tempfile.mkdtemp(prefix="cxrjax-gpu-check-"))
            if args.mode == "cpu_smoke"
            else ROOT / "benchmarks" / "results"
        )
    if out.exists() and not out.is_dir():
        return _error(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    setup: dict[str, Any] = {"status": "not run", "seconds": 0.0}
    if args.setup_json:
        try:
            setup = _read_json(args.setup_json)
        except (OSError, ValueError) as e:
            return _error(f"--setup-json {args.setup_json}: {e}")
    budget = args.budget_s or DEFAULT_BUDGET_S[args.mode]
    work = Path(tempfile.mkdtemp(prefix="cxrjax-gpu-check-work-"))
    steps = plan(args.mode, work, args.timeout_scale)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        names = {s.name for s in steps}
        unknown = [w for w in wanted if not any(n.startswith(w) for n in names)]
        if unknown:
            return _error(f"--only {','.join(unknown)}: no such step; steps are {', '.join(sorted(names))}")
        steps = [s for s in steps if s.name == "environment" or any(s.name.startswith(w) for w in wanted)]
    date = _dt.datetime.now(_dt.timezone.utc)
    log_path = out / f"gpu-check-{os.getpid()}.log.partial"
    with log_path.open("w") as log:
        results = run_steps(steps, budget, log)
    device = results[0]["summary"] or {}
    suffix = {"full": "", "quick": "-quick", "cpu_smoke": "-cpu-smoke"}[args.mode]
    stem = free_stem(out, f"{date:%Y-%m-%d}-{_slug(device.get('device_kind', 'unknown'))}-gpu-check{suffix}")
    report = {
        "schema": SCHEMA,
        "mode": args.mode,
        "date": date.isoformat(timespec="seconds"),
        "device": device,
        "budget_s": budget,
        "timeout_scale": args.timeout_scale,
        "setup": setup,
        "wall_s": round(time.monotonic() - started + float(setup.get("seconds") or 0), 1),
        "ok": setup.get("status") in ("ok", "not run") and all(s["status"] in ("ok", "skipped") for s in results),
        "steps": results,
    }
    log_path.rename(out / f"{stem}.log")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"steps' files kept in {work}")
    for s in results:
        print(f"{s['name']:<28} {s['status']:<8} {s['seconds']:6.0f} s  {s['error'] or ''}")
    print(f"wrote {out / stem}.json, .md, .log (all ok: {report['ok']})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
