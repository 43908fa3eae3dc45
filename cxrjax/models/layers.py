"""The layers every cxrjax model is built from, with one place for backend workarounds.

Every convolution of every model goes through :class:`Conv` and every max-pooling
through :class:`MaxPool`, so that how they are lowered to XLA is chosen in exactly one
place: :func:`conv2d` and :func:`max_pool`. XLA's CPU backend has performance cliffs
(issue 6; found per layer with ``python -m benchmarks.layers``), each much slower
than an algebraically identical formulation: the weight gradient of a convolution
whose padding is at least half its kernel (S4's 3x3/p2, 4x4/p2; :func:`conv_cliff`:
explicit pad + VALID convolution instead); the weight gradient of a conv with a large
output map (:func:`dw_cliff`: a loop of im2col-style row blocks times the output
gradient, cxrjax/models/conv_cpu.py); the weight gradient of the convs left to XLA past
16 examples per device (:func:`batch_dw_cliff`: summed over batch chunks of 16);
max-pooling's gradient (select-and-scatter; an element-wise formulation instead); and
the gradients of depthwise convolutions (the ImageNet backbones' MobileNet, MobileNetV2,
EfficientNet, Xception; :func:`depthwise_cliff`: a sum of shifted element-wise products). How
much each costs: docs/measurements.md#cpu-convolution-cliffs. ``formulation="auto"``
routes those to the faster formulations on CPU; ``formulation="xla"`` keeps the plain
``lax`` calls as the reference that tests compare against (equal outputs and gradients:
tests/models/test_models_cpu_rewrites.py, tests/models/test_conv_im2col.py).

Parameters are always float32; ``dtype`` is the computation dtype (float32 or bfloat16).
Parameter names ("kernel" [kh, kw, cin, cout], "bias") match ``flax.linen.Conv`` /
``flax.linen.Dense`` so checkpoints and summaries read the same.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cxrjax.models import conv_cpu

Array = jax.Array
Initializer = Callable[..., Array]

# --------------------------------------------------------------------------------------
# Initialisation styles. Each study trained with its framework's defaults; reproducing a
# study means reproducing its initialisation too.
# --------------------------------------------------------------------------------------
INIT_STYLES = ("torch", "keras", "torchvision", "normal_0.05")


def _uniform(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def initializers(style: str, fan_in: int, kind: str) -> tuple[Initializer, Initializer]:
    """(kernel_init, bias_init) for a layer of ``kind`` "conv" or "dense".

    - "torch": PyTorch's nn.Conv2d / nn.Linear defaults (S3, S4): kernel and bias
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)).
    - "keras": Keras defaults (S0): Glorot-uniform kernel, zero bias.
    - "torchvision": torchvision's VGG init: He-normal (fan_out, ReLU) conv kernels,
      N(0, 0.01) dense kernels, zero biases.
    - "normal_0.05": S3's VGG16 init: every kernel N(0, 0.05), zero biases.
    """
    zeros = nn.initializers.zeros
    if style == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), _uniform(bound)
    if style == "keras":
        return nn.initializers.glorot_uniform(), zeros
    if style == "torchvision":
        if kind == "conv":
            return nn.initializers.variance_scaling(2.0, "fan_out", "normal"), zeros
        return nn.initializers.normal(0.01), zeros
    if style == "normal_0.05":
        return nn.initializers.normal(0.05), zeros
    raise ValueError(f"unknown init style {style!r}; choose one of {INIT_STYLES}")


# --------------------------------------------------------------------------------------
# Convolution: the one wrapper, and the formulations it can lower to.
# --------------------------------------------------------------------------------------
FORMULATIONS = ("auto", "xla", "pad_valid", "im2col", "im2col_dw", "chunked_dw")
_DIMS = ("NHWC", "HWIO", "NHWC")


def conv_cliff(kernel_size: int, padding: int, backend: str | None = None) -> bool:
    """Whether a stride-1 conv with this (kernel_size, padding) hits a slow path of XLA.

    Found with ``python -m benchmarks.layers`` (before/after tables in that module's
    docstring). On XLA:CPU, when the padding is at least half the kernel
    (``2 * padding >= kernel_size``: S4's 3x3/p2 and 4x4/p2 convs, whose output is larger
    than their input), the weight gradient of the padded convolution leaves Eigen's
    convolution for a generic loop and runs 20-120x slower (S4 Exp4's conv3 at batch 32:
    90 s instead of 1 s); the input gradient is slower too. Padding the input explicitly and running a VALID
    convolution keeps all three (forward, input and weight gradients) on Eigen. Smaller
    paddings (VGG's 3x3/p1, S4's 6x6/p2 and 8x8/p2) are faster as they are, and other
    backends are left alone.
    """
    backend = backend or jax.default_backend()
    return backend == "cpu" and padding > 0 and 2 * padding >= kernel_size


def dw_cliff(kernel_size: int, in_channels: int, out_size: int, backend: str | None = None) -> bool:
    """Whether XLA's weight gradient of this stride-1 conv is slower than im2col row blocks.

    On XLA:CPU the weight gradient of a conv is an Eigen convolution whose "kernel" is
    the whole output map, and it runs at a fraction of matmul speed once that map is
    large; computing it as a loop of cache-sized im2col blocks times the output gradient
    (``conv_cpu.conv_valid_rows_dw``) was 2-5x faster for S0's, S4's and VGG's convs
    with output maps of 28x28 and more, and 2.8x for S4's conv2 at the ablation's 32 px
    input (22x22 output: 42.5 -> 15.4 ms at batch 32) (``python -m benchmarks.layers``;
    table in its docstring). Not for: small maps (LeNet's 10x10: loop overhead; VGG's 14x14 was
    measured both ways), single-channel inputs (VGG's and LeNet's first convs: slower),
    and a wide kernel over few channels (S4's first conv, 10x10 over RGB: 1.25x
    slower). Hence: CPU, output at least 16x16, at least 3 input channels, and not
    (kernel >= 8 with < 8 channels).
    Other backends keep the plain conv.
    """
    backend = backend or jax.default_backend()
    wide_kernel_few_channels = kernel_size >= 8 and in_channels < 8
    return backend == "cpu" and out_size >= 16 and in_channels >= 3 and not wide_kernel_few_channels


def batch_dw_cliff(batch: int | None, backend: str | None = None) -> bool:
    """Whether XLA's weight gradient of a conv it keeps needs splitting over the batch.

    On XLA:CPU the weight gradient's time jumps 5-15x once the batch passes
    ``conv_cpu.DW_BATCH_CHUNK`` (16); see that constant for the measurements.
    """
    backend = backend or jax.default_backend()
    return backend == "cpu" and batch is not None and batch > conv_cpu.DW_BATCH_CHUNK


def resolve_conv_formulation(
    kernel_size: int,
    padding: int,
    in_channels: int,
    out_size: int,
    backend: str | None = None,
    batch: int | None = None,
) -> str:
    """The formulation "auto" means for this conv (square output ``out_size``, ``batch``
    examples per device) on this backend."""
    if dw_cliff(kernel_size, in_channels, out_size, backend):
        return "im2col_dw"  # its forward / input gradient use pad_valid where conv_cliff
    if batch_dw_cliff(batch, backend):
        return "chunked_dw"  # likewise
    return "pad_valid" if conv_cliff(kernel_size, padding, backend) else "xla"


def conv2d(x: Array, kernel: Array, padding: int, formulation: str = "auto") -> Array:
    """Stride-1 2-D convolution of NHWC ``x`` with HWIO ``kernel``, symmetric zero padding.

    All formulations compute the same function (same values, same gradients up to
    floating-point summation order); they differ only in how XLA lowers them:
    - "xla": one ``lax.conv_general_dilated`` with the padding inside the conv;
    - "pad_valid": ``jnp.pad`` then a VALID conv; the gradients of the pad are a slice;
    - "im2col_dw": forward and input gradient as "xla" (as "pad_valid" where
      :func:`conv_cliff`), weight gradient as im2col row blocks (``conv_cpu``);
    - "im2col": "im2col_dw" with the forward pass as im2col row blocks too;
    - "chunked_dw": forward and input gradient as "im2col_dw", weight gradient as XLA's
      summed over batch chunks of 16 (``conv_cpu.conv2d_chunked_dw``);
    - "auto": "im2col_dw" where :func:`dw_cliff`, else "chunked_dw" where
      :func:`batch_dw_cliff`, else "pad_valid" where :func:`conv_cliff`, else "xla"
      (:func:`resolve_conv_formulation`).
    """
    if formulation == "auto":
        out_size = min(x.shape[1], x.shape[2]) + 2 * padding - kernel.shape[0] + 1
        formulation = resolve_conv_formulation(kernel.shape[0], padding, kernel.shape[2], out_size, batch=x.shape[0])
    if formulation == "xla":
        pad = [(padding, padding), (padding, padding)]
        return lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=_DIMS)
    if formulation == "pad_valid":
        if padding:
            x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)
    if formulation in ("im2col", "im2col_dw", "chunked_dw"):
        pad_first = conv_cliff(kernel.shape[0], padding, "cpu")
        if formulation == "chunked_dw":
            return conv_cpu.conv2d_chunked_dw(x, kernel, padding, pad_first)
        return conv_cpu.conv2d_im2col(x, kernel, padding, pad_first, formulation == "im2col")
    raise ValueError(f"unknown conv formulation {formulation!r}; choose one of {FORMULATIONS}")


class Conv(nn.Module):
    """Square stride-1 convolution with symmetric zero padding (PyTorch's ``padding=p``).

    The only convolution used by cxrjax models; see the module docstring for why.
    """

    features: int
    kernel_size: int
    padding: int = 0
    init_style: str = "torch"
    dtype: Any = jnp.float32
    formulation: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel_init, bias_init = initializers(self.init_style, k * k * cin, "conv")
        kernel = self.param("kernel", kernel_init, (k, k, cin, self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.padding, self.formulation)
        return y + bias.astype(self.dtype)


class Dense(nn.Module):
    """Fully connected layer with float32 parameters and ``dtype`` computation."""

    features: int
    init_style: str = "torch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel_init, bias_init = initializers(self.init_style, x.shape[-1], "dense")
        kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str) -> nn.BatchNorm:
    """PyTorch-equivalent BatchNorm2d/1d (momentum 0.1 == flax momentum 0.9, eps 1e-5).

    ``axis_name`` makes the batch statistics cross-replica inside a data-parallel step
    (the mean over every device's examples, like pmap-era SyncBatchNorm). Running
    statistics are used, and ``batch_stats`` left untouched, when not training.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name,
        name=name,
    )


DEPTHWISE_FORMULATIONS = ("auto", "xla", "shifted")


def depthwise_cliff(backend: str | None = None) -> bool:
    """Whether a depthwise convolution's gradients are a slow path: on XLA:CPU.

    XLA:CPU runs ``feature_group_count = channels`` convolutions' weight and input
    gradients far below its dense-conv speed: a 3x3 depthwise layer's forward + both
    gradients at batch 8 took 3.4-11x as long as the same function written as nine shifted
    element-wise products (stride 1 and 2, 14x14 to 112x112 maps; docs/measurements.md,
    "Depthwise convolutions on XLA:CPU"). Other backends keep the grouped conv.
    """
    return (backend or jax.default_backend()) == "cpu"


def depthwise_conv2d(
    x: Array, kernel: Array, strides: tuple[int, int], padding: Any, formulation: str = "auto"
) -> Array:
    """Depthwise 2-D convolution of NHWC ``x`` with a Keras kernel [kh, kw, cin, m]: output
    channel ``c * m + j`` is input channel c convolved with ``kernel[:, :, c, j]``.

    ``padding``: "SAME" / "VALID" (XLA's rule: SAME pads the extra row/column at the
    bottom/right) or ((top, bottom), (left, right)). Formulations compute the same
    function (same values and gradients up to float summation order):
    - "xla": ``lax.conv_general_dilated`` with ``feature_group_count=cin``;
    - "shifted": the sum over the kh x kw taps of a strided slice of the padded input times
      that tap's weights: element-wise products whose gradients are element-wise too;
    - "auto": "shifted" where :func:`depthwise_cliff`, else "xla".
    """
    if formulation not in DEPTHWISE_FORMULATIONS:
        raise ValueError(f"unknown depthwise formulation {formulation!r}; choose one of {DEPTHWISE_FORMULATIONS}")
    kh, kw, cin, m = kernel.shape
    sh, sw = strides
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    else:
        pads = [tuple(p) for p in padding]
    if formulation == "auto":
        formulation = "shifted" if depthwise_cliff() else "xla"
    if formulation == "xla":
        return lax.conv_general_dilated(
            x, kernel.reshape(kh, kw, 1, cin * m), (sh, sw), pads, dimension_numbers=_DIMS, feature_group_count=cin
        )
    (pt, pb), (pl, pr) = pads
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    if m > 1:
        xp = jnp.repeat(xp, m, axis=-1)  # channel c * m + j reads input channel c
    out_h = (xp.shape[1] - kh) // sh + 1
    out_w = (xp.shape[2] - kw) // sw + 1
    taps = kernel.reshape(kh, kw, cin * m).astype(x.dtype)
    out = None
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(
                xp,
                (0, i, j, 0),
                (xp.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, xp.shape[3]),
                (1, sh, sw, 1),
            )
            term = window * taps[i, j]
            out = term if out is None else out + term
    return out


POOL_FORMULATIONS = ("auto", "xla", "mask")


def pool_cliff(backend: str | None = None) -> bool:
    """Whether max-pooling's gradient (select-and-scatter) is a slow path: on XLA:CPU."""
    return (backend or jax.default_backend()) == "cpu"


def _max_pool_xla(x: Array) -> Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@jax.custom_vjp
def _max_pool_mask(x: Array) -> Array:
    return _max_pool_xla(x)


def _max_pool_mask_fwd(x: Array):
    y = _max_pool_xla(x)
    return y, (x, y)


def _max_pool_mask_bwd(res, dy):
    """Route each output's gradient to the first maximum of its window (row-major), like
    XLA's select-and-scatter, with element-wise ops only (no scatter)."""
    x, y = res
    b, height, width, c = x.shape
    h, w = height // 2, width // 2
    xw = x[:, : 2 * h, : 2 * w].reshape(b, h, 2, w, 2, c)
    position = jnp.array([[0, 1], [2, 3]], jnp.int8).reshape(1, 1, 2, 1, 2, 1)
    candidate = jnp.where(xw == y[:, :, None, :, None, :], position, jnp.int8(4))
    first = jnp.minimum(
        jnp.minimum(candidate[:, :, 0:1, :, 0:1], candidate[:, :, 0:1, :, 1:2]),
        jnp.minimum(candidate[:, :, 1:2, :, 0:1], candidate[:, :, 1:2, :, 1:2]),
    )
    dx = jnp.where(position == first, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
    dx = dx.reshape(b, 2 * h, 2 * w, c).astype(x.dtype)
    if (height, width) != (2 * h, 2 * w):  # floor mode: the last odd row/column gets none
        dx = jnp.pad(dx, ((0, 0), (0, height - 2 * h), (0, width - 2 * w), (0, 0)))
    return (dx,)


_max_pool_mask.defvjp(_max_pool_mask_fwd, _max_pool_mask_bwd)


def max_pool(x: Array, formulation: str = "auto") -> Array:
    """2x2 max pooling, stride 2, floor mode (PyTorch / Keras default), NHWC.

    - "xla": ``lax.reduce_window``; its gradient is XLA's select-and-scatter, which on
      XLA:CPU runs 20-60x slower than the forward pass and 3-15x slower than "mask"
      (a cliff found with ``python -m benchmarks.layers``).
    - "mask": the same forward; a custom VJP that sends each gradient to the first
      maximum of its window, exactly select-and-scatter's choice (ties included: tests
      check bit-equality), computed with fusible element-wise ops. Reverse mode only
      (``jax.jvp`` through it is not defined), which is all training and Grad-CAM use.
    - "auto": "mask" on CPU, "xla" elsewhere.
    """
    if formulation == "auto":
        formulation = "mask" if pool_cliff() else "xla"
    if formulation == "xla":
        return _max_pool_xla(x)
    if formulation == "mask":
        return _max_pool_mask(x)
    raise ValueError(f"unknown max-pool formulation {formulation!r}; choose one of {POOL_FORMULATIONS}")


class MaxPool(nn.Module):
    """:func:`max_pool` as a (parameter-free) module, so summaries and the per-layer
    profiler see each pooling as a layer."""

    formulation: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return max_pool(x, self.formulation)


def flatten(x: Array) -> Array:
    """[B, H, W, C] -> [B, H*W*C] (NHWC order; PyTorch flattens CHW: same count)."""
    return x.reshape((x.shape[0], -1))


def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Row i averages input positions [floor(i*n/m), ceil((i+1)*n/m)) (PyTorch's bins)."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, size: int) -> Array:
    """PyTorch ``AdaptiveAvgPool2d(size)`` on NHWC: identity when H == W == size."""
    h, w = x.shape[1], x.shape[2]
    if h == size and w == size:
        return x
    mh = jnp.asarray(_adaptive_matrix(h, size), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, size), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw)


# --------------------------------------------------------------------------------------
# Input-size bookkeeping, so every model can name the smallest size its pooling allows.
# --------------------------------------------------------------------------------------
# A spatial plan is a sequence of ("conv", kernel, padding) and ("pool",) steps.
Plan = Sequence[tuple]


def plan_output_size(size: int, plan: Plan) -> int | None:
    """Spatial size after ``plan``, or None if some step would produce an empty map."""
    for step in plan:
        if step[0] == "conv":
            size = size + 2 * step[2] - step[1] + 1
        elif step[0] == "pool":
            size = size // 2
        else:
            raise ValueError(f"unknown plan step {step!r}")
        if size < 1:
            return None
    return size


def smallest_valid_size(plan: Plan) -> int:
    """Smallest square input size for which every step of ``plan`` is non-empty."""
    for size in range(1, 1 << 16):
        if plan_output_size(size, plan) is not None:
            return size
    raise ValueError(f"no input size up to 65535 is valid for plan {plan}")
