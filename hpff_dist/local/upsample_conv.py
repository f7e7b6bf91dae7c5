"""Bilinear upsampling (``align_corners=True``) followed by a 3x3 conv, computed at low resolution.

InfoPro's decoder upsamples a feature map to the image size and then applies a 3x3 conv. Both
steps are linear, so they can be reordered exactly:

* bilinear interpolation is separable: per (sample, channel), ``up = A_h @ x @ A_w.T`` with
  small (out x in) interpolation matrices (``interpolation_matrix``);
* a zero-padded 3x3 conv of ``up`` is the sum over taps (dy, dx) of the shifted image times the
  tap's (out x in) channel matrix, and shifting ``A_h @ x @ A_w.T`` by (dy, dx) is
  ``(S_dy A_h) @ x @ (S_dx A_w).T`` with S a zero-filling row shift;
* channel mixing commutes with interpolation.

So ``upsample_conv3x3`` mixes channels at the *input* resolution into all 9 taps at once (a
1x1 conv to ``9 * out`` channels), then contracts the width with the 3 stacked column
operators ``[S_0 A_w, S_1 A_w, S_2 A_w]`` and the height with the 3 stacked row operators.
The expensive C-channel conv runs on ``h * w`` instead of ``H * W`` pixels and there is no
``upsample_bilinear2d`` backward (slow on CPU, especially in NCHW). The dense interpolation
matrices waste work when the input is almost as large as the output, so the plain
interpolate + conv is kept and chosen per call by a cost estimate (``prefers_low_resolution``).
Plain matmuls and convs, so autograd is the built-in one.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# Cost model of ``prefers_low_resolution``, fitted to fwd + bwd timings (batch 128, 2 threads,
# C in 16..128, 2..24 -> 16 and 32 pixels): a multiply-add of the two small interpolation
# matmuls costs ~2.5x one of the 1x1 mix (oneDNN conv), and interpolate + 3x3 conv costs ~1.7x
# more per multiply-add in NCHW than in channels_last (upsample backward, conv kernels).
INTERPOLATION_MATMUL_COST = 2.5
NCHW_PLAIN_COST = 1.7


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype torch's CPU upsample kernel computes source positions and weights in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def interpolation_matrix(
    n_in: int,
    n_out: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n_out, n_in) matrix ``A`` with ``A @ v`` = 1-D linear interpolation of ``v`` to length
    ``n_out``, ``align_corners=True``, bit for bit as torch's CPU ``upsample_bilinear2d``
    weights: scale ``(n_in - 1) / (n_out - 1)`` and source ``scale * r`` in the kernel's
    float type (float32 for every dtype but float64), ``i0 = min(floorf(src), n_in - 1)``,
    weight ``1 - l`` at ``i0`` and ``l = src - i0`` at ``min(i0 + 1, n_in - 1)``."""
    op = _opmath(dtype)
    if n_out > 1:
        scale = torch.tensor(n_in - 1, dtype=op) / torch.tensor(n_out - 1, dtype=op)
    else:
        scale = torch.zeros((), dtype=op)
    src = scale * torch.arange(n_out, dtype=op)
    # The kernel floors with C's floorf, i.e. in float32 even for float64: a float64 source a
    # hair below an integer is rounded up to it (weights (0, 1) at the next pixel, not (ulp,
    # 1 - ulp)).
    i0 = src.float().floor().to(op).clamp(max=n_in - 1)
    lam = (src - i0).clamp(0, 1)
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    rows = torch.arange(n_out)
    a = torch.zeros(n_out, n_in, dtype=op)
    a.index_put_((rows, i0), 1 - lam, accumulate=True)
    a.index_put_((rows, i1), lam, accumulate=True)
    return a.to(dtype=dtype, device=device)


def _shifted_stack(a: Tensor) -> Tensor:
    """``[S_0 A, S_1 A, S_2 A]`` side by side, (n_out, 3 n_in): tap d reads row ``r + d - 1``
    of the upsampled map (zero outside), as a padding-1 3x3 conv does."""
    zero = a.new_zeros(1, a.shape[1])
    return torch.cat([torch.cat([zero, a[:-1]]), a, torch.cat([a[1:], zero])], dim=1)


@functools.lru_cache(maxsize=64)
def _tap_operators(
    h: int, w: int, out_h: int, out_w: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(rows (H, 3h), columns transposed (3w, W)); built once per shape, dtype and device.

    Built outside inference mode: a cached inference tensor could not be saved for backward
    by a later training call."""
    with torch.inference_mode(False):
        rows = _shifted_stack(interpolation_matrix(h, out_h, dtype))
        cols = _shifted_stack(interpolation_matrix(w, out_w, dtype)).t().contiguous()
        return rows.to(device), cols.to(device)


def prefers_low_resolution(
    in_channels: int,
    out_channels: int,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    channels_last: bool = False,
) -> bool:
    """Whether ``upsample_conv3x3`` should take the low-resolution path.

    Estimated per-sample cost, in 1x1-mix multiply-adds: the plain conv at the output size
    (x ``NCHW_PLAIN_COST`` unless channels_last) against the 1x1 mix to 9 taps at the input
    size plus the two contractions (x ``INTERPOLATION_MATMUL_COST``). The dense interpolation
    matrices make the contractions grow like ``h * w * W``, so large inputs stay plain.
    """
    (h, w), (out_h, out_w) = in_size, out_size
    taps = 9 * out_channels
    plain = out_h * out_w * in_channels * taps * (1.0 if channels_last else NCHW_PLAIN_COST)
    contractions = out_channels * (9 * h * w * out_w + 3 * h * out_h * out_w)
    low = h * w * in_channels * taps + INTERPOLATION_MATMUL_COST * contractions
    return plain > low


def _low_resolution(
    x: Tensor, size: tuple[int, int], weight: Tensor, bias: Tensor | None
) -> Tensor:
    b, c, h, w = x.shape
    out_h, out_w = size
    o = weight.shape[0]
    # All 9 taps at the input resolution; channel order (o, dy, dx).
    y = F.conv2d(x, weight.permute(0, 2, 3, 1).reshape(o * 9, c, 1, 1))
    out_dtype = y.dtype
    op = _opmath(out_dtype)
    rows, cols = _tap_operators(h, w, out_h, out_w, op, y.device)
    # (b, o, dy, i, dx, j): one copy, then both contractions are plain matmuls.
    y = y.unflatten(1, (o, 3, 3)).permute(0, 1, 2, 4, 3, 5).reshape(b * o * 3 * h, 3 * w)
    autocast = torch.is_autocast_enabled(y.device.type)
    with torch.autocast(y.device.type, enabled=False) if autocast else contextlib.nullcontext():
        # Under autocast the 1x1 mix ran in reduced precision like the plain conv would;
        # the interpolation itself stays in float32, as upsample_bilinear2d does there.
        z = (y.to(op) @ cols).view(b * o, 3 * h, out_w)
        out = torch.matmul(rows, z).view(b, o, out_h, out_w)
        if bias is not None:
            out = out + bias.to(op).view(1, o, 1, 1)
    return out.to(out_dtype)


def upsample_conv3x3(
    x: Tensor,
    size: tuple[int, int],
    weight: Tensor,
    bias: Tensor | None = None,
    low_resolution: bool | None = None,
) -> Tensor:
    """``F.conv2d(F.interpolate(x, size, mode="bilinear", align_corners=True), weight, bias,
    padding=1)`` for a (out, in, 3, 3) ``weight``, up to float rounding, usually much faster.

    ``low_resolution=None`` chooses: same size means interpolation is the identity, so only
    the conv runs; otherwise the low-resolution path when ``prefers_low_resolution`` says it is
    cheaper, else interpolate + conv. True / False force a path (tests, benchmarks).
    The low-resolution path returns NCHW-contiguous output whatever ``x``'s memory format: in
    a channels_last ReconstructionHead that measured ~1.4x faster than converting it back.
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected a (out, in, 3, 3) weight, got {tuple(weight.shape)}")
    size = (int(size[0]), int(size[1]))
    in_size = (x.shape[-2], x.shape[-1])
    if low_resolution is None:
        if in_size == size:
            return F.conv2d(x, weight, bias, padding=1)
        channels_last = x.stride(1) < x.stride(3)  # NHWC strides, also for patch views
        low_resolution = prefers_low_resolution(
            x.shape[1], weight.shape[0], in_size, size, channels_last
        )
    if low_resolution:
        return _low_resolution(x, size, weight, bias)
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.conv2d(up, weight, bias, padding=1)
