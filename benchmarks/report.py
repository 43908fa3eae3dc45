"""Environment metadata and the markdown rendering of throughput records.

Kept apart from the runner so the JSON schema and its human-readable form live in one
small file: the markdown is generated from the JSON records only (``python -m
benchmarks.throughput --from-json FILE --markdown OUT`` re-renders a saved run, also one
of schema /1, whose records lack ``comparison`` (they were all per-device) and, when
failed, ``global_batch``, or of schema /2, whose records lack ``rounds`` (one round each)).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

SCHEMA = "cxrjax.benchmarks.throughput/3"


def environment() -> dict[str, Any]:
    """Where and with what a run happened: written into every record."""
    import jax

    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    devices = jax.local_devices()
    return {
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": jax.device_count(),
        "local_device_count": len(devices),
        "jax_version": jax.__version__,
        "torch_version": torch_version,
        "host_cpus": os.cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt(value: Any, spec: str = ".3g", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _global_batch(r: dict[str, Any]) -> int | None:
    """The record's global batch; schema /1 error records only had the per-device one."""
    if "global_batch" in r:
        return r["global_batch"]
    return r["per_device_batch"] * r["num_devices"] if r.get("per_device_batch") else None


def ratio_text(r: dict[str, Any]) -> str:
    """jax/torch, with the range of the per-round ratios when there were several rounds."""
    text = _fmt(r.get("jax_over_torch"), ".2f")
    per_round = r.get("jax_over_torch_rounds") or []
    if len(per_round) > 1:
        text += f" ({min(per_round):.2f}-{max(per_round):.2f})"
    return text


def _comparison(r: dict[str, Any]) -> str:
    """ "whole_host" (CPU) or "per_device" (GPU, and every schema /1 record)."""
    return r.get("comparison") or "per_device"


RATIO_NOTES = {
    "whole_host": "jax/torch: JAX img/s on `dev` host devices (one per core when dev > 1) / PyTorch img/s "
    "using all cores, same global batch.",
    "per_device": "jax/torch: JAX img/s per device / PyTorch img/s on one device at the same per-device batch.",
}


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per configuration; failed configurations show their error."""
    if not records:
        return "(no records)\n"
    env = records[0]
    head = [
        f"Device: **{env['device_kind']}** ({env['platform']}) x{env['local_device_count']}, "
        f"jax {env['jax_version']}, torch {env.get('torch_version') or 'not installed'}, "
        f"{env['date']}, host CPUs {env.get('host_cpus')}.",
        "",
        "| model | px | dtype | parallel | dev | batch/dev | global batch | compile s | step ms (p10-p90) "
        "| img/s | GFLOP/step | TFLOP/s | MFU | XLA MiB/dev | peak MiB | eval img/s "
        "| torch img/s | torch setup | jax/torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for r in records:
        prefix = (
            f"| {r['model']} | {r['image_size']} | {r['dtype']} | {r['parallel']} | {r['num_devices']} "
            f"| {_fmt(r.get('per_device_batch'))} | {_fmt(_global_batch(r))} "
        )
        if r.get("error"):
            rows.append(prefix + f"| failed: {r['error'][:80]} |" + " |" * 11)
            continue
        step = r["train_step_s"]
        torch = r.get("torch") or {}
        rows.append(
            prefix
            + f"| {r['compile_s']:.1f} "
            + f"| {1e3 * step['median_s']:.1f} ({1e3 * step['p10_s']:.1f}-{1e3 * step['p90_s']:.1f}) "
            + f"| {r['images_per_s']:.1f} "
            + f"| {_fmt(r['flops_per_step'] / 1e9 if r.get('flops_per_step') else None)} "
            + f"| {_fmt(r.get('achieved_tflops'))} "
            + f"| {_fmt(r['mfu'] * 100 if r.get('mfu') is not None else None, '.1f')}"
            + f"{'%' if r.get('mfu') is not None else ''} "
            + f"| {_mib(r.get('xla_memory_bytes_per_device'))} | {_mib(r.get('peak_device_memory_bytes'))} "
            + f"| {r['eval_images_per_s']:.1f} "
            + f"| {_fmt(torch.get('images_per_s'), '.1f')} | {torch.get('setup', '-')} "
            + f"| {ratio_text(r)} |"
        )
    peaks = sorted({r["peak_basis"] for r in records if r.get("peak_basis") and r.get("peak_tflops")})
    notes = [
        "",
        "step ms: median over the timed steps (10th-90th percentile); img/s = global batch / median.",
        *(
            [
                "Rounds: each configuration was timed in several rounds alternating JAX and PyTorch; step times "
                "are pooled over the rounds, and jax/torch is followed by the range of the ratios within each "
                "round (a drift of the machine's speed moves both frameworks within a round)."
            ]
            if any((r.get("rounds") or 1) > 1 for r in records)
            else []
        ),
        "GFLOP/step and TFLOP/s: XLA cost analysis of the compiled train step, all devices.",
        *(note for c, note in RATIO_NOTES.items() if any(_comparison(r) == c for r in records)),
        "XLA MiB/dev: compiled executable's arguments + outputs + temporaries (memory analysis); "
        "peak MiB: backend's process-wide high-water mark so far (GPU only).",
    ]
    if peaks:
        notes.append("MFU peaks used: " + "; ".join(peaks) + ".")
    return "\n".join(head + rows + notes) + "\n" + best_setup_table(records)


def best_setup_table(records: list[dict[str, Any]]) -> str:
    """The fastest JAX device count (and parallel mode) per model and global batch on CPU.

    Only whole-host records are compared (the same global batch on 1 or N host devices
    is the same work); empty unless some global batch was timed with several counts.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if _comparison(r) == "whole_host" and not r.get("error"):
            groups.setdefault((r["model"], r["image_size"], r["dtype"], r["global_batch"]), []).append(r)
    if not any(len({r["num_devices"] for r in rs}) > 1 for rs in groups.values()):
        return ""
    lines = [
        "",
        "### Best JAX setup per model and global batch",
        "",
        "| model | px | dtype | global batch | best dev | parallel | img/s | torch img/s | jax/torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, size, dtype, batch), rs in groups.items():
        best = max(rs, key=lambda r: r["images_per_s"])
        torch = best.get("torch") or {}
        lines.append(
            f"| {model} | {size} | {dtype} | {batch} | {best['num_devices']} | {best['parallel']} "
            f"| {best['images_per_s']:.1f} | {_fmt(torch.get('images_per_s'), '.1f')} "
            f"| {ratio_text(best)} |"
        )
    return "\n".join(lines) + "\n"


def overhead_table(rows: list[dict[str, Any]]) -> str:
    """Markdown for the data-parallel overhead comparison (``--devices``)."""
    if not rows:
        return ""
    lines = [
        "",
        "### Data-parallel overhead (forced host devices)",
        "",
        "| model | px | dtype | parallel | batch/dev | N | step ms, 1 dev | step ms, N dev "
        "| N dev / 1 dev | step ms, 1 dev x N batch | N dev / (1 dev, N batch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['dtype']} | {r['parallel']} | {r['per_device_batch']} "
            f"| {r['num_devices']} | {_fmt(r['step_ms_1'], '.1f')} | {_fmt(r['step_ms_n'], '.1f')} "
            f"| {_fmt(r['ratio_same_per_device_batch'], '.2f')} | {_fmt(r['step_ms_1_same_total'], '.1f')} "
            f"| {_fmt(r['ratio_same_total_batch'], '.2f')} |"
        )
    lines += [
        "",
        "N forced CPU devices share the host's cores, and N devices at the same per-device batch do N "
        "times the work of 1 device: without overhead the first ratio is ~1 while each device has a "
        "core of its own and grows towards N as they contend for cores. The last column compares "
        "equal total work (1 device running the whole global batch): below 1.0 the split put more "
        "cores to work; above 1.0 the cost of splitting the batch, dispatching N programs and the "
        "gradient all-reduce dominates.",
    ]
    return "\n".join(lines) + "\n"
