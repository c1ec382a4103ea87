"""Depthwise convolution for the JAX backend, written around XLA:CPU.

XLA's CPU backend runs a depthwise convolution
(`lax.conv_general_dilated(..., feature_group_count=C)`) slowly, and its
kernel gradient far worse: the gradient is a convolution with
`batch_group_count=C`, which XLA:CPU rewrites into a dense `C x C`
convolution followed by a diagonal mask (C times the needed arithmetic; for
Lite0's 1152-channel blocks, 1152 times). See `README.md` ("Training speed
under JAX") for the profile.

`depthwise_conv2d` computes the same function as a sum of `k * k` shifted
slices of the (padded) input times per-channel weights, with a hand-written
gradient in the same form: plain elementwise work that XLA fuses well. It is
exact up to float32 summation order. Only `kertransfer.layers` imports this
module, and only under the JAX backend.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["depthwise_conv2d", "output_geometry"]


def output_geometry(size, kernel, stride, padding):
    """Returns `(output_size, pad_before, pad_after)` along one axis.

    `"same"` follows TensorFlow (and Keras): the extra pixel of an odd total
    padding goes after; `"valid"` pads nothing.
    """
    if padding == "valid":
        return (size - kernel) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def _shifted_sum(padded, kernel, strides, out_h, out_w):
    """`sum_ij padded[:, i + s*h, j + s*w, :] * kernel[i, j]`."""
    batch, channels = padded.shape[0], padded.shape[-1]
    (sh, sw), out = strides, None
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            tap = lax.slice(
                padded,
                (0, i, j, 0),
                (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels),
                (1, sh, sw, 1),
            )
            out = tap * kernel[i, j] if out is None else out + tap * kernel[i, j]
    return out


def _overlap(tap, size, out_size, stride, before):
    """Output rows `o` whose input row `o * stride + tap - before` exists.

    Returns `(o_start, o_stop, in_start, in_stop)`; the input rows step by
    `stride`. Padding rows contribute zeros, so the kernel gradient can skip
    them and slice the unpadded input.
    """
    o_start = max(0, -(-(before - tap) // stride))
    o_stop = min(out_size, (size - 1 - tap + before) // stride + 1)
    in_start = o_start * stride + tap - before
    in_stop = (o_stop - 1) * stride + tap - before + 1
    return o_start, o_stop, in_start, in_stop


def _geometry(shape, kernel_shape, strides, padding):
    (_, height, width, _), (kh, kw) = shape, kernel_shape[:2]
    return (
        output_geometry(height, kh, strides[0], padding),
        output_geometry(width, kw, strides[1], padding),
    )


def _forward(inputs, kernel, strides, padding):
    (out_h, top, bottom), (out_w, left, right) = _geometry(
        inputs.shape, kernel.shape, strides, padding
    )
    padded = jnp.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return _shifted_sum(padded, kernel, strides, out_h, out_w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv2d(inputs, kernel, strides, padding):
    """Depthwise 2-D convolution, channels last, depth multiplier 1.

    Args:
        inputs: `(batch, height, width, channels)`.
        kernel: `(kernel_h, kernel_w, channels)`.
        strides: `(stride_h, stride_w)`, ints.
        padding: `"same"` (TensorFlow's) or `"valid"`.

    Returns:
        `(batch, out_h, out_w, channels)`, equal to
        `keras.ops.depthwise_conv(inputs, kernel[..., None], strides,
        padding)` up to float32 rounding.
    """
    return _forward(inputs, kernel, strides, padding)


def _depthwise_fwd(inputs, kernel, strides, padding):
    return _forward(inputs, kernel, strides, padding), (inputs, kernel)


def _depthwise_bwd(strides, padding, residuals, grad):
    inputs, kernel = residuals
    batch, height, width, channels = inputs.shape
    kh, kw = kernel.shape[:2]
    (sh, sw) = strides
    (out_h, top, bottom), (out_w, left, right) = _geometry(
        inputs.shape, kernel.shape, strides, padding
    )
    # Kernel: one reduction per tap over the rows/columns it touched.
    taps = []
    for i in range(kh):
        oh0, oh1, ih0, ih1 = _overlap(i, height, out_h, sh, top)
        for j in range(kw):
            ow0, ow1, iw0, iw1 = _overlap(j, width, out_w, sw, left)
            x = lax.slice(inputs, (0, ih0, iw0, 0), (batch, ih1, iw1, channels), (1, sh, sw, 1))
            g = lax.slice(grad, (0, oh0, ow0, 0), (batch, oh1, ow1, channels))
            taps.append(jnp.sum(x * g, axis=(0, 1, 2)))
    d_kernel = jnp.stack(taps).reshape(kernel.shape)
    # Inputs: a stride-1 "full" correlation of the stride-dilated gradient
    # with the flipped kernel, over the padded frame, then the padding cut.
    padded_h, padded_w = height + top + bottom, width + left + right
    zero = jnp.zeros((), grad.dtype)
    dilated = lax.pad(
        grad,
        zero,
        (
            (0, 0, 0),
            (kh - 1, padded_h - (out_h - 1) * sh - 1, sh - 1),
            (kw - 1, padded_w - (out_w - 1) * sw - 1, sw - 1),
            (0, 0, 0),
        ),
    )
    d_padded = _shifted_sum(dilated, kernel[::-1, ::-1], (1, 1), padded_h, padded_w)
    d_inputs = d_padded[:, top : top + height, left : left + width, :]
    return d_inputs, d_kernel


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)
