"""Known dense peak throughputs of accelerators, for model-FLOPs utilisation (MFU).

MFU = achieved FLOP/s (from XLA's cost analysis of the compiled step) / the device's dense
peak for the dtype the step computes in. Figures are NVIDIA's datasheet numbers *without*
2:4 sparsity (the "with sparsity" numbers on the datasheets are exactly twice these).

Which peak a dtype maps to, and why:
- ``bfloat16`` -> the BF16 tensor-core peak (models run with ``dtype=bfloat16`` do their
  convolutions and matmuls in bf16 with float32 accumulation).
- ``float32`` -> the **TF32** tensor-core peak. JAX's default matmul/conv precision on
  Ampere and later lets cuDNN/cuBLAS use TF32 for float32 inputs, so that is the ceiling
  the step actually runs against; the plain FP32 (CUDA-core) peak is kept in the table
  and written into every record (``peak_fp32_cuda_tflops``) for readers who want it.

No CPU peaks are listed: a CPU's peak depends on its SIMD width, core count and clocks,
and the shared machines this suite runs on in CI make any figure meaningless, so CPU
records carry ``mfu: null``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePeaks:
    """Dense peak TFLOP/s of one accelerator model (datasheet, no sparsity)."""

    name: str
    fp32_cuda: float  # FP32 on CUDA cores (no tensor cores)
    tf32: float  # TF32 tensor cores, dense
    bf16: float  # BF16 tensor cores, dense (FP16 is the same on these parts)
    source: str


# Matched against `jax.Device.device_kind` (case-insensitive substring, first match wins,
# so more specific names come first). Device kinds seen in the wild:
# "NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
# "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB",
# "NVIDIA A100 80GB PCIe".
KNOWN_PEAKS: tuple[tuple[str, DevicePeaks], ...] = (
    ("h200 nvl", DevicePeaks("H200 NVL", 60.0, 417.5, 835.5, "NVIDIA H200 datasheet (NVL column), dense")),
    ("h200", DevicePeaks("H200 SXM", 67.0, 494.7, 989.4, "NVIDIA H200 datasheet (SXM column), dense")),
    ("h100 pcie", DevicePeaks("H100 PCIe", 51.0, 378.0, 756.5, "NVIDIA H100 datasheet (PCIe column), dense")),
    ("h100 nvl", DevicePeaks("H100 NVL", 60.0, 417.5, 835.5, "NVIDIA H100 datasheet (NVL column, per GPU), dense")),
    ("h100", DevicePeaks("H100 SXM", 67.0, 494.7, 989.4, "NVIDIA H100 datasheet (SXM5 column), dense")),
    ("a100", DevicePeaks("A100", 19.5, 156.0, 312.0, "NVIDIA A100 datasheet (SXM4 and PCIe share these), dense")),
)


def lookup_peaks(device_kind: str) -> DevicePeaks | None:
    """The peak table entry for a `jax.Device.device_kind` string, or None if unknown."""
    kind = device_kind.lower()
    for key, peaks in KNOWN_PEAKS:
        if key in kind:
            return peaks
    return None


def peak_tflops(device_kind: str, dtype: str) -> tuple[float | None, str]:
    """(dense peak TFLOP/s for `dtype` on this device, which figure it is).

    Returns (None, reason) for CPUs and unknown accelerators, so callers write
    ``mfu: null`` instead of a made-up number.
    """
    peaks = lookup_peaks(device_kind)
    if peaks is None:
        return None, f"no known peak for device kind {device_kind!r}"
    if dtype in ("bfloat16", "float16"):
        return peaks.bf16, f"{peaks.name} BF16 tensor dense ({peaks.source})"
    if dtype == "float32":
        return peaks.tf32, f"{peaks.name} TF32 tensor dense ({peaks.source})"
    return None, f"no peak listed for dtype {dtype!r}"


def mfu(achieved_tflops: float | None, peak: float | None) -> float | None:
    """Model-FLOPs utilisation, or None when either number is unknown."""
    if achieved_tflops is None or peak is None or peak <= 0:
        return None
    return achieved_tflops / peak
