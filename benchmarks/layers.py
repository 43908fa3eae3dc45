"""Per-layer forward / backward profile of a registered model on the current backend.

    python -m benchmarks.layers --model s4_exp4 [--image-size 128] [--batch-size 32]
        [--repeats 5] [--formulations xla,pad_valid,im2col,im2col_dw] [--layers conv3,pool3]
        [--json FILE]

For every convolution, dense layer and max-pooling of the model (found by intercepting
``cxrjax.models.layers.Conv`` / ``Dense`` / ``MaxPool`` while tracing the model, so the
shapes are the real ones), it compiles and times, in isolation:
- ``fwd``: the layer's output;
- ``dx``: the input gradient (vjp with respect to the input; for a pooling whose
  gradient needs the forward output, that forward is included, as in training);
- ``dw``: the weight gradient (vjp with respect to kernel and bias; not for poolings).
Each is timed ``--repeats`` times after a warm-up (``block_until_ready``) and the median
is printed in milliseconds. Convolutions are timed once per formulation of
``cxrjax.models.layers.conv2d`` ("xla": padding inside the conv, the reference;
"pad_valid": explicit pad + VALID conv, only for padded convs; "im2col_dw": forward and
input gradient by lax, weight gradient by cache-sized im2col row blocks; "im2col": the
same with the forward pass as im2col row blocks too), poolings once per formulation of
``layers.max_pool`` ("xla": reduce_window / select-and-scatter, the reference; "mask");
``*`` marks the formulation the models use on this backend ("auto"). That is how the
CPU cliffs of issue 6 were found: a formulation whose ``dw`` or ``dx`` is many times
slower than another's for the same layer. Timings are wall-clock medians: on a shared
machine, compare ratios taken in the same run rather than absolute numbers.

Cliffs found on the 2-core development CPU (shared, load 7-12 while measuring, so
absolute numbers are noisy; before = "xla", after = the formulation the models use):

| model (batch) | layer | input | before fwd/dx/dw ms | after fwd/dx/dw ms | dw speed-up |
|---|---|---|---|---|---:|
| s4_exp4 (32) | conv3 k3/p2 | 59x59x32 | 117 / 454 / 90,319 | 116 / 128 / 1,046 | 86x |
| s4_exp4 (32) | conv4 k3/p2 | 30x30x64 | 94 / 224 / 43,824 | 87 / 157 / 513 | 86x |
| s4_exp1 (8) | conv2 k4/p2 | 62x62x128 | 149 / 132 / 79,516 | 236 / 222 / 649 | 122x |
| s4_exp1 (8) | conv3 k3/p2 | 31x31x64 | 8.7 / 7.7 / 257 | 5.9 / 5.0 / 11.5 | 22x |
| s4_exp1 (8) | conv4 k3/p2 | 16x16x32 | 3.7 / 1.3 / 43 | 1.3 / 2.8 / 2.1 | 20x |

| model (batch) | pooling input | before fwd / dx ms | after fwd / dx ms | dx speed-up |
|---|---|---|---|---:|
| s4_exp4 (32) | 118x118x32 | 48 / 918 | 24 / 182 | 5.0x |
| s4_exp4 (32) | 32x32x128 | 2.9 / 166 | 3.2 / 10.7 | 15x |
| s0_a (32) | 148x148x32 | 48 / 1,256 | 37 / 297 | 4.2x |
| vgg16 (2) | 224x224x64 | 3.0 / 302 | 13.7 / 69 | 4.4x |
| lenet5 (32) | 28x28x6 | 0.47 / 5.6 | 0.38 / 2.1 | 2.6x |

Weight-gradient cliff (``layers.dw_cliff``): every XLA:CPU weight gradient is an Eigen
convolution whose kernel is the whole output map, 2-10x slower than its forward pass.
Whole-batch im2col (hundreds of MB of patches) and shifted matmuls are slower still, but
a loop over blocks of output rows, one matmul of k column shifts of x by k row shifts of
dy per block (``conv_cpu.conv_valid_rows_dw``), is 2-5x faster wherever the output map
is 24x24 or larger ("auto" = "im2col_dw" there). Its forward pass also avoids a
VALID-conv slow path: XLA:CPU runs an unpadded conv over 8+ channels 2.5-5x slower than
the same conv with padding, so it pads one zero row and column at the far end and crops
(bit-identical). Batch 8 (VGG 4), load 1-4, median of 5 (3 for VGG); before = the
previous "auto" ("xla", or "pad_valid" for S4's k3/p2); after = "im2col_dw":

| model | layer | input | k/p | before fwd/dx/dw ms | after fwd/dx/dw ms |
|---|---|---|---|---|---|
| s4_exp4@128 | conv2 | 119x119x16 | 6/2 | 46 / 41 / 167 | 45 / 46 / 81 |
| s4_exp4@128 | conv3 | 59x59x32 | 3/2 | 7.3 / 10.4 / 73 | 9.7 / 10.6 / 17.9 |
| s4_exp4@128 | conv4 | 30x30x64 | 3/2 | 12.8 / 21 / 60 | 9.3 / 11.3 / 15.7 |
| s0_a@150 | conv1 | 150x150x3 | 3/0 | 28 / 43 / 52 | 39 / 46 / 30 |
| s0_a@150 | conv2 | 74x74x32 | 3/0 | 46 / 19 / 89 | 16 / 20 / 50 |
| s0_a@150 | conv3 | 36x36x64 | 3/0 | 26 / 24 / 85 | 18 / 25 / 19 |
| vgg16@224 | conv2 | 224x224x64 | 3/1 | 145 / 136 / 1,493 | 123 / 119 / 288 |
| vgg16@224 | conv3 | 112x112x64 | 3/1 | 106 / 99 / 1,000 | 62 / 62 / 101 |
| vgg16@224 | conv5 | 56x56x128 | 3/1 | 95 / 96 / 389 | 59 / 43 / 79 |
| vgg16@224 | conv8 | 28x28x256 | 3/1 | 99 / 106 / 407 | 48 / 67 / 56 |

(S0 rows: measured with the earlier P^T-dy weight gradient, ~1.2-1.5x slower than now.)

Batch cliff (``layers.batch_dw_cliff``): the weight gradient of the convs left to XLA
jumps 5-15x once a device's batch passes 16 (S4's 10x10 conv1 over RGB at 128 px:
23 / 46 / 483 / 638 ms at batch 8 / 16 / 24 / 32; LeNet's conv2 at batch 128: 6.7 ms).
"chunked_dw" sums XLA's weight gradients of static chunks of 16 examples: S4 conv1 at
batch 32 638 -> 101 ms (224 px: 2,227 -> 341), LeNet conv2 at 128 6.7 -> 1.0, VGG's
14x14 512->512 conv at 32 358 -> 218. Whole train step, 1 device: s4_exp4@128 batch
32 1.9-2.7 s -> 1.35 s, batch 128 8.8-10.9 s -> 4.8 s; lenet5 batch 128 36-39 -> 21 ms.
A ``fori_loop`` over the chunks is ~30x slower (XLA:CPU leaves its fast conv path inside
loops), and chunking the forward pass or the input gradient did not help.
A forward pass of one-channel convs as k*k shifted multiply-adds was 4-6x faster per
layer (LeNet conv1 at 128: 5.0 -> 1.2 ms) but made the whole LeNet step 1.6-2x slower
(also behind an optimization barrier); not used.
Left on XLA (im2col measured slower or equal, or not clearly faster): VGG's 14x14 block
(dw 55 vs 43 ms with the current loop, 73 vs 122 with the earlier one; not switched),
LeNet (10x10 and 28x28x1 maps: loop overhead), single-channel first convs (VGG: 50 vs
51 ms), and S4's 10x10 conv over RGB (dw 24 vs 30 ms). The im2col forward ("im2col") wins
only while another process holds a core; an im2col input gradient was 1-2.5x slower than
XLA's; neither is used. XLA flags
(--xla_cpu_use_onednn, --xla_cpu_use_xnnpack, --xla_cpu_experimental_{xnn,ynn}_fusion_type
=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION) changed S4 conv1/conv2 by less than the noise
and did not remove the weight-gradient cliff.

Which library runs a conv (jaxlib 0.10.2): XLA:CPU hands every float32 conv with more
than 16 input or output channels, and every dot, to YNNPACK ("__ynn_fusion" in the
compiled HLO), the rest to Eigen; --xla_cpu_experimental_onednn_custom_call=true adds no
oneDNN call. With YNNPACK off (--xla_cpu_experimental_ynn_fusion_type=) single convs of
S4 at batch 8 get faster (conv2 "xla" fwd/dx/dw 36/36/169 -> 29/34/58 ms, conv3 dx 58 ->
7 ms) but whole steps do not, because the im2col weight gradients' dots lose YNNPACK
(one device, ms, default -> YNNPACK off -> YNNPACK for dots only): s4_exp4@128 b8 359 ->
418 -> 360, b32 1,247 -> 1,934 -> 1,713; s0_a b8 190 -> 169 -> 171, b32 745 -> 666 -> 635;
lenet5 b8 2.1 -> 2.8 -> 1.8, b32 6.3 -> 4.9 -> 6.0 (one run each, noisy). No setting wins
for every model, and the flag is process-wide, so cxrjax leaves it alone. Sending
LeNet's small convs to YNNPACK per conv, by zero-padding the kernel's output channels
to 17 or 32 and slicing, made the forward a little faster (conv1 at batch 128: 7.0 ->
5.3-5.9 ms) and the weight gradients 1.3-5x slower (13.5 -> 34-67 ms); not used.
PyTorch's conv1 there: 1.6 ms forward, 2.3 ms weight gradient.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax import models
from cxrjax.models import layers


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One conv / dense layer of a model as it is called: path, config, input shape."""

    path: str
    kind: str  # "conv" | "dense" | "pool"
    in_shape: tuple[int, ...]
    features: int
    kernel_size: int = 0
    padding: int = 0
    dtype: Any = jnp.float32


def model_layers(
    name: str,
    *,
    image_size: int | None = None,
    batch_size: int = 32,
    channels: int | None = None,
    num_classes: int = 4,
    dtype: Any = jnp.float32,
) -> list[LayerCall]:
    """Every Conv/Dense call of ``name`` at this input, in call order (traced, not run)."""
    spec = models.MODELS[name]
    model = models.create(name, num_classes=num_classes, channels=channels, dtype=dtype)
    size = image_size or spec.image_size
    x = jax.ShapeDtypeStruct((batch_size, size, size, model.channels), jnp.float32)
    calls: list[LayerCall] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (layers.Conv, layers.Dense, layers.MaxPool)):
            path = "/".join(module.path) if module.path else module.name
            if path not in {c.path for c in calls}:
                shape = tuple(args[0].shape)
                if isinstance(module, layers.Conv):
                    calls.append(
                        LayerCall(
                            path, "conv", shape, module.features, module.kernel_size, module.padding, module.dtype
                        )
                    )
                elif isinstance(module, layers.Dense):
                    calls.append(LayerCall(path, "dense", shape, module.features, dtype=module.dtype))
                else:
                    calls.append(LayerCall(path, "pool", shape, shape[-1], dtype=dtype))
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(interceptor):
            return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)

    jax.eval_shape(init, x)
    return calls


def _normal(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> jax.Array:
    # Host-side: jax.random would compile an RNG kernel per shape, for nothing.
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), jnp.float32)


def layer_functions(call: LayerCall, formulation: str) -> tuple[Callable, tuple]:
    """(f(x, kernel, bias) -> y, example (x, kernel, bias)) for one layer."""
    x = _normal(call.in_shape, 0)
    cin = call.in_shape[-1]
    if call.kind == "conv":
        kernel = _normal((call.kernel_size, call.kernel_size, cin, call.features), 1, 0.05)
        dt, pad = call.dtype, call.padding

        def f(x, kernel, bias):
            y = layers.conv2d(x.astype(dt), kernel.astype(dt), pad, formulation)
            return y + bias.astype(dt)
    else:
        kernel = _normal((cin, call.features), 1, 0.05)
        dt = call.dtype

        def f(x, kernel, bias):
            return x.astype(dt) @ kernel.astype(dt) + bias.astype(dt)

    bias = _normal((call.features,), 2, 0.05)
    return f, (x, kernel, bias)


def pool_function(call: LayerCall, formulation: str) -> tuple[Callable, jax.Array]:
    """(f(x) -> y, example x) for one max-pooling; x is post-ReLU-like (many zeros, ties)."""
    x = jnp.maximum(_normal(call.in_shape, 0), 0).astype(call.dtype)
    return (lambda x: layers.max_pool(x, formulation)), x


def _median_ms(fn: Callable, args: tuple, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_layer(call: LayerCall, formulation: str, repeats: int) -> dict[str, float]:
    """Median ms of forward, input gradient and weight gradient (NaN: none) of one layer."""
    if call.kind == "pool":
        f, x = pool_function(call, formulation)
        dy = jnp.ones(jax.eval_shape(f, x).shape, x.dtype)
        dx = jax.jit(lambda x, dy: jax.vjp(f, x)[1](dy)[0])
        return {
            "fwd_ms": _median_ms(jax.jit(f), (x,), repeats),
            "dx_ms": _median_ms(dx, (x, dy), repeats),
            "dw_ms": float("nan"),
        }
    f, (x, kernel, bias) = layer_functions(call, formulation)
    dy = jnp.ones(jax.eval_shape(f, x, kernel, bias).shape, call.dtype)
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, k, b, dy: jax.vjp(lambda x: f(x, k, b), x)[1](dy)[0])
    dw = jax.jit(lambda x, k, b, dy: jax.vjp(lambda k, b: f(x, k, b), k, b)[1](dy))
    return {
        "fwd_ms": _median_ms(fwd, (x, kernel, bias), repeats),
        "dx_ms": _median_ms(dx, (x, kernel, bias, dy), repeats),
        "dw_ms": _median_ms(dw, (x, kernel, bias, dy), repeats),
    }


def profile(
    name: str,
    *,
    image_size: int | None,
    batch_size: int,
    repeats: int,
    formulations: tuple[str, ...],
    dtype: Any = jnp.float32,
    progress: bool = True,
    only: tuple[str, ...] | None = None,
) -> list[dict]:
    """One record per (layer, formulation): shapes, the auto choice, and median ms.

    ``only``: restrict to these layer paths (e.g. ("conv3", "pool3")).
    """
    records = []
    calls = model_layers(name, image_size=image_size, batch_size=batch_size, dtype=dtype)
    if only:
        unknown = sorted(set(only) - {c.path for c in calls})
        if unknown:
            raise ValueError(f"{name} has no layer(s) {unknown}; its layers: {[c.path for c in calls]}")
        calls = [c for c in calls if c.path in only]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None

    def candidates(c: LayerCall) -> tuple[str, ...]:
        if c.kind == "conv":  # pad_valid is xla when there is no padding
            return tuple(f for f in formulations if c.padding or f != "pad_valid") or ("xla",)
        return layers.POOL_FORMULATIONS[1:] if c.kind == "pool" else ("xla",)

    work = [(c, fm) for c in calls for fm in candidates(c)]
    bar = tqdm(work, desc=f"{name} layers", file=sys.stderr, disable=not progress) if tqdm else work
    for call, formulation in bar:
        auto = ""
        if call.kind == "conv":
            out = min(call.in_shape[1:3]) + 2 * call.padding - call.kernel_size + 1
            auto = layers.resolve_conv_formulation(
                call.kernel_size, call.padding, call.in_shape[-1], out, batch=call.in_shape[0]
            )
        elif call.kind == "pool":
            auto = "mask" if layers.pool_cliff() else "xla"
        records.append(
            {
                "model": name,
                "layer": call.path,
                "kind": call.kind,
                "in_shape": list(call.in_shape),
                "features": call.features,
                "kernel_size": call.kernel_size,
                "padding": call.padding,
                "formulation": formulation,
                "auto": auto,
                "backend": jax.default_backend(),
                **time_layer(call, formulation, repeats),
            }
        )
    return records


def format_table(records: list[dict]) -> str:
    """Markdown table: one row per (layer, formulation), '*' marks the auto choice."""
    head = "| layer | input | k/p | formulation | fwd ms | dx ms | dw ms |\n|---|---|---|---|---:|---:|---:|"
    rows = []
    for r in records:
        kp = {"conv": f"{r['kernel_size']}/{r['padding']}", "dense": "dense", "pool": "pool 2"}[r["kind"]]
        mark = "*" if r["auto"] and r["formulation"] == r["auto"] else ""
        shape = "x".join(str(d) for d in r["in_shape"])
        dw = "-" if r["dw_ms"] != r["dw_ms"] else f"{r['dw_ms']:.2f}"  # NaN: no weights
        rows.append(
            f"| {r['layer']} | {shape} | {kp} | {r['formulation']}{mark} | "
            f"{r['fwd_ms']:.2f} | {r['dx_ms']:.2f} | {dw} |"
        )
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.layers", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--model", required=True, choices=sorted(models.MODELS))
    p.add_argument("--image-size", type=int, default=None, help="default: the model's study size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--formulations",
        default="xla,pad_valid,im2col,im2col_dw",
        help=f"comma-separated, timed for every padded conv; of {layers.FORMULATIONS[1:]}",
    )
    p.add_argument("--layers", default="", help="comma-separated layer names to profile (default: all)")
    p.add_argument("--json", default=None, help="also write the records to this file")
    args = p.parse_args(argv)
    formulations = tuple(f for f in args.formulations.split(",") if f)
    bad = [f for f in formulations if f not in layers.FORMULATIONS[1:]]
    if bad:
        p.error(f"unknown formulation(s) {bad}; choose from {layers.FORMULATIONS[1:]}")
    records = profile(
        args.model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        repeats=args.repeats,
        formulations=formulations,
        dtype=jnp.dtype(args.dtype),
        only=tuple(n for n in args.layers.split(",") if n) or None,
    )
    print(
        f"{args.model} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"batch {args.batch_size}, median of {args.repeats}; * = the formulation the model uses"
    )
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
