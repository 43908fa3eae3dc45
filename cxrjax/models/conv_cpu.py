"""Row-chunked im2col convolution: XLA:CPU's fast path for cxrjax's convolutions (issue 6).

XLA:CPU lowers a convolution and its two gradients to library convolutions (YNNPACK for
float32 convs with more than 16 channels, Eigen otherwise; see benchmarks/layers.py).
For the weight gradient that is a convolution whose "kernel" is the whole output map
(e.g. 118x118 for S4's conv2), which runs at a small fraction of the machine's matmul
speed; the forward pass is only middling too. Materialising the whole im2col patch
matrix instead (batch * H_out * W_out rows of k*k*C_in) does not help: hundreds of MB
written and read back, page-faulted in every step.

This module computes the same convolution as a loop over blocks of ``rows`` output rows
of one image: each iteration builds the block's shifted copies with static slices and
hands them to one matmul:
- forward ("im2col" formulation only): y[block] = P[block] @ W, with the block's patch
  matrix P [rows * W_out, k*k*C_in] (a few hundred KB, so it stays in cache);
- weight gradient: one matmul per block of k column shifts of x by k row shifts of dy
  (:func:`conv_valid_rows_dw`), 1.2-1.5x faster than dW += P[block]^T @ dy[block].
The forward pass (unless ``fwd_im2col``) and the input gradient stay ``lax``
convolutions, with a workaround for XLA:CPU's slow unpadded-conv path (``_lax_conv``);
an im2col "full correlation" input gradient was measured 1-2.5x slower than XLA's.
Sums are accumulated in float32. :func:`conv2d_im2col` is a ``jax.custom_vjp`` (reverse mode only); tests compare
its values and gradients with ``lax.conv_general_dilated``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")
# Bytes of one block's patch matrix to aim for (cache-sized; measured on the 2-core
# AVX-512 development CPU: 256 KB-1 MB blocks within 10% of each other, whole-image or
# whole-batch patch matrices 2-5x slower).
BLOCK_BYTES = 512 * 1024


def block_rows(out_width: int, patch_features: int, itemsize: int = 4) -> int:
    """Output rows per loop iteration: about :data:`BLOCK_BYTES` of patch matrix, >= 1."""
    return max(1, round(BLOCK_BYTES / (out_width * patch_features * itemsize)))


def _pad_rows(a: Array, rows: int) -> Array:
    return jnp.pad(a, ((0, 0), (0, rows), (0, 0), (0, 0))) if rows else a


def conv_valid_rows(x: Array, kernel: Array, rows: int | None = None) -> Array:
    """VALID stride-1 conv of NHWC ``x`` with HWIO ``kernel``, one block of rows at a time."""
    k, _, cin, cout = kernel.shape
    n, height, width, _ = x.shape
    ho, wo = height - k + 1, width - k + 1
    rows = rows or block_rows(wo, k * k * cin, x.dtype.itemsize)
    rows = min(rows, ho)
    blocks = -(-ho // rows)
    x = _pad_rows(x, blocks * rows - ho)
    wm = kernel.reshape(k * k * cin, cout)

    def body(i, y):
        b, r = i // blocks, (i % blocks) * rows
        xc = lax.dynamic_slice(x, (b, r, 0, 0), (1, rows + k - 1, width, cin))[0]
        p = jnp.concatenate([xc[di : di + rows, dj : dj + wo] for di in range(k) for dj in range(k)], -1)
        yc = jnp.dot(p.reshape(rows * wo, k * k * cin), wm, preferred_element_type=jnp.float32)
        return lax.dynamic_update_slice(y, yc.astype(y.dtype).reshape(1, rows, wo, cout), (b, r, 0, 0))

    y = lax.fori_loop(0, n * blocks, body, jnp.zeros((n, blocks * rows, wo, cout), x.dtype))
    return y[:, :ho]


# Bytes of one weight-gradient block's two operands (see conv_valid_rows_dw): measured
# best at a whole image for S0's and S4's maps (16 MB for S4's conv2), 1.2-1.5x slower
# for the whole batch at once.
DW_BLOCK_BYTES = 16 * 1024 * 1024


def conv_valid_rows_dw(x: Array, dy: Array, k: int, rows: int | None = None) -> Array:
    """Weight gradient (HWIO, float32) of the VALID conv of ``x`` whose output gradient is ``dy``.

    dW[i, j, c, o] = sum over (b, r, w) of x[b, r + i, w + j, c] * dy[b, r, w, o]. Per block
    of ``rows`` output rows of one image (the input block has rows + k - 1 rows), with
    Q[r, w, (j, c)] = x[r, w + j, c] (k column shifts of x) and
    D[r, w, (i, o)] = dy[r - i, w, o] (k row shifts of dy, zero outside the block), one
    matmul Q^T D [(j, c), (i, o)] holds every (i, j) term: k + k shifted copies instead
    of the k * k of a full patch matrix, and a [k*C_in, k*C_out] product whose inner
    dimension is the block's pixels (a better-shaped matmul than [k*k*C_in, C_out]).
    """
    n, height, width, cin = x.shape
    _, ho, wo, cout = dy.shape
    if rows is None:
        row_bytes = wo * k * (cin + cout) * x.dtype.itemsize
        blocks_per_image = max(1, -(-(ho + k - 1) * row_bytes // DW_BLOCK_BYTES))
        rows = -(-ho // blocks_per_image)
    rows = min(rows, ho)
    blocks = -(-ho // rows)
    x = _pad_rows(x, blocks * rows - ho)
    dy = _pad_rows(dy, blocks * rows - ho)  # zero rows: contribute nothing
    span = rows + k - 1

    def body(i, acc):
        b, r = i // blocks, (i % blocks) * rows
        xc = lax.dynamic_slice(x, (b, r, 0, 0), (1, span, width, cin))[0]
        dc = lax.dynamic_slice(dy, (b, r, 0, 0), (1, rows, wo, cout))[0]
        q = jnp.concatenate([xc[:, dj : dj + wo] for dj in range(k)], -1).reshape(span * wo, k * cin)
        d = jnp.concatenate([jnp.pad(dc, ((di, k - 1 - di), (0, 0), (0, 0))) for di in range(k)], -1)
        d = d.reshape(span * wo, k * cout)
        return acc + lax.dot_general(q, d, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, n * blocks, body, jnp.zeros((k * cin, k * cout), jnp.float32))
    return acc.reshape(k, cin, k, cout).transpose(2, 0, 1, 3)


def _pad_hw(x: Array, p: int) -> Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x


# XLA:CPU runs an unpadded (VALID) conv over 8+ input channels on a path 2.5-5x slower
# than the same conv with any padding (S4's 6x6 conv2 as pad + VALID: 195 ms, with
# padding inside: 40 ms; S0's 3x3 32->64: 54 vs 20 ms; bit-identical results). Padding
# one zero row and column at the far end and cropping the extra output row and column
# computes exactly the VALID conv on the fast path (1-3% more work). Not for 1-3
# channels (S0's/S4's first convs): there the VALID path is as fast or faster.
VALID_PATH_MIN_CHANNELS = 8


def _lax_conv(x: Array, kernel: Array, padding: int, pad_first: bool) -> Array:
    if pad_first:  # explicit pad + VALID conv (see layers.conv_cliff)
        x, padding = _pad_hw(x, padding), 0
    if padding == 0 and x.shape[-1] >= VALID_PATH_MIN_CHANNELS:
        y = lax.conv_general_dilated(x, kernel, (1, 1), [(0, 1), (0, 1)], dimension_numbers=_DIMS)
        return y[:, :-1, :-1]
    pad = [(padding, padding), (padding, padding)]
    return lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=_DIMS)


def _lax_input_grad(x: Array, kernel: Array, dy: Array, padding: int, pad_first: bool) -> Array:
    """Input gradient of :func:`_lax_conv` (the transposed conv, whole batch)."""
    return jax.vjp(lambda x: _lax_conv(x, kernel, padding, pad_first), x)[1](dy)[0]


def _forward(x: Array, kernel: Array, padding: int, pad_first: bool, fwd_im2col: bool) -> Array:
    if fwd_im2col:
        return conv_valid_rows(_pad_hw(x, padding), kernel)
    return _lax_conv(x, kernel, padding, pad_first)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_im2col(x: Array, kernel: Array, padding: int, pad_first: bool = False, fwd_im2col: bool = True) -> Array:
    """Stride-1 conv of NHWC ``x`` with HWIO ``kernel``, symmetric zero ``padding``.

    Weight gradient: im2col row blocks (:func:`conv_valid_rows_dw`). Forward: im2col row
    blocks if ``fwd_im2col``, else ``lax``. Input gradient: always ``lax`` (the
    transposed conv; the im2col "full correlation" was measured slower), with the
    padding inside the conv, or as explicit pad + VALID conv if ``pad_first``.
    """
    return _forward(x, kernel, padding, pad_first, fwd_im2col)


def _fwd(x, kernel, padding, pad_first, fwd_im2col):
    return _forward(x, kernel, padding, pad_first, fwd_im2col), (x, kernel)


def _bwd(padding, pad_first, fwd_im2col, res, dy):
    x, kernel = res
    dy = dy.astype(x.dtype)
    dx = _lax_input_grad(x, kernel, dy, padding, pad_first)
    dw = conv_valid_rows_dw(_pad_hw(x, padding), dy, kernel.shape[0]).astype(kernel.dtype)
    return dx, dw


conv2d_im2col.defvjp(_fwd, _bwd)


# XLA:CPU's weight gradient of a conv it keeps (not im2col_dw) jumps 5-15x in time once
# the batch passes 16: S4's 10x10 conv1 over RGB at 128 px takes 23 / 46 / 483 / 638 ms
# at batch 8 / 16 / 24 / 32, the same at 224 px 157 ms at 16 and 2,227 ms at 32;
# LeNet's conv1 at batch 128 15 ms. Summing the weight gradients of static batch chunks
# of 16 stays on the fast side (101, 341 and 2.3 ms; VGG's 14x14 512->512 conv at batch
# 32: 358 -> 218 ms). Chunking the forward pass or the input gradient the same way
# was measured no faster or slower, so only the weight gradient is split.
# (A ``fori_loop`` over the chunks is 30x slower: XLA:CPU leaves its fast convolution
# path inside loops, hence the static Python loop.)
DW_BATCH_CHUNK = 16


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_chunked_dw(x: Array, kernel: Array, padding: int, pad_first: bool = False) -> Array:
    """Stride-1 ``lax`` conv whose weight gradient is summed over batch chunks of 16.

    Forward pass and input gradient as ``im2col_dw``'s (``_lax_conv``, whole batch); the
    weight gradient is accumulated in float32 over static slices of
    :data:`DW_BATCH_CHUNK` examples.
    """
    return _lax_conv(x, kernel, padding, pad_first)


def _chunked_fwd(x, kernel, padding, pad_first):
    return _lax_conv(x, kernel, padding, pad_first), (x, kernel)


def _chunked_bwd(padding, pad_first, res, dy):
    x, kernel = res
    dy = dy.astype(x.dtype)
    dx = _lax_input_grad(x, kernel, dy, padding, pad_first)
    dw = jnp.zeros(kernel.shape, jnp.float32)
    for start in range(0, x.shape[0], DW_BATCH_CHUNK):
        rows = slice(start, start + DW_BATCH_CHUNK)
        chunk_dw = jax.vjp(lambda k: _lax_conv(x[rows], k, padding, pad_first), kernel)[1](dy[rows])[0]
        dw = dw + chunk_dw.astype(jnp.float32)
    return dx, dw.astype(kernel.dtype)


conv2d_chunked_dw.defvjp(_chunked_fwd, _chunked_bwd)
