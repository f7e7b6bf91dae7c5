"""Fused bilinear upsample + 3x3 conv: the same function as interpolate-then-conv, both paths."""

import pytest
import torch
import torch.nn.functional as F

import hpff_dist.local.upsample_conv as uc
from hpff_dist.local.heads import ReconstructionHead
from hpff_dist.local.upsample_conv import (
    interpolation_matrix,
    prefers_low_resolution,
    upsample_conv3x3,
)

# (h, w, H, W): 1-pixel sides, identity, non-integer scales, non-square, downsampling.
SIZES = [
    (1, 1, 4, 4),
    (1, 4, 5, 9),
    (4, 1, 16, 1),
    (4, 4, 4, 4),
    (4, 4, 16, 16),
    (8, 8, 16, 16),
    (5, 5, 16, 16),
    (3, 7, 7, 3),
    (16, 16, 5, 5),
    (6, 4, 1, 7),
]


def _rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-300) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


def _reference(x, size, weight, bias):
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.conv2d(up, weight, bias, padding=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolation_matrix_is_torchs_weights_bit_for_bit(dtype):
    # Interpolating the identity yields torch's weights exactly (w * 1 + w' * 0 = w); this
    # catches e.g. the kernel's float32 floor of float64 source positions.
    for n_in in range(1, 18):
        eye = torch.eye(n_in, dtype=dtype).view(n_in, 1, n_in, 1)
        for n_out in range(1, 60):
            torch_a = F.interpolate(eye, (n_out, 1), mode="bilinear", align_corners=True)
            assert torch.equal(interpolation_matrix(n_in, n_out, dtype), torch_a[:, 0, :, 0].t())


@pytest.mark.parametrize(("h", "w", "H", "W"), SIZES)
def test_separable_matrices_reproduce_interpolate(h, w, H, W):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    a_h, a_w = interpolation_matrix(h, H), interpolation_matrix(w, W)
    ref = F.interpolate(x, (H, W), mode="bilinear", align_corners=True)
    assert _rel_err(a_h @ x @ a_w.t(), ref) < 1e-12


def _inputs(layout: str, c: int, h: int, w: int):
    """(leaf to differentiate, conv input): a patch is a tensor_split view of a bigger map."""
    if layout == "patch":
        big = torch.randn(3, c, 2 * h + 1, 2 * w + 1, dtype=torch.float64, requires_grad=True)
        row = torch.tensor_split(big, 2, dim=-2)[1]
        x = torch.tensor_split(row, 2, dim=-1)[1]
        assert x.shape[-2:] == (h, w) and not x.is_contiguous()
        return big, x
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    return x, x


@pytest.mark.parametrize("low_resolution", [True, False, None])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "patch"])
@pytest.mark.parametrize(("h", "w", "H", "W"), SIZES)
def test_upsample_conv3x3_equals_interpolate_then_conv(h, w, H, W, layout, low_resolution):
    leaf, x = _inputs(layout, 5, h, w)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    if layout == "channels_last":
        weight = weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    params = (leaf, weight, bias)

    ref = _reference(x, (H, W), weight, bias)
    out = upsample_conv3x3(x, (H, W), weight, bias, low_resolution=low_resolution)
    assert out.shape == ref.shape
    assert _rel_err(out, ref) < 1e-10
    cotangent = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, params, cotangent)
    grads = torch.autograd.grad(out, params, cotangent)
    for g, r in zip(grads, ref_grads, strict=True):
        assert _rel_err(g, r) < 1e-10


def test_no_bias_and_float32():
    x = torch.randn(4, 6, 5, 3)
    weight = torch.randn(12, 6, 3, 3)
    ref = _reference(x, (16, 7), weight, None)
    out = upsample_conv3x3(x, (16, 7), weight, None, low_resolution=True)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < 1e-5


def test_autocast_runs_the_mix_in_reduced_precision_and_interpolates_in_float32():
    x = torch.randn(4, 16, 4, 4)
    weight, bias = torch.randn(12, 16, 3, 3), torch.randn(12)
    exact = _reference(x, (16, 16), weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(x, (16, 16), weight, bias)
        out = upsample_conv3x3(x, (16, 16), weight, bias, low_resolution=True)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert _rel_err(out.float(), exact) < 2e-2


def test_selection_rule():
    # The CIFAR InfoPro cases: 4x4 / 8x8 patches of stage-3 / stage-2 maps to 16x16, whole
    # 8x8 map to 32x32: low resolution. An almost full-size input stays plain.
    for cl in (False, True):
        assert prefers_low_resolution(64, 12, (4, 4), (16, 16), cl)
        assert prefers_low_resolution(64, 12, (8, 8), (16, 16), cl)
        assert prefers_low_resolution(32, 12, (8, 8), (16, 16), cl)
        assert prefers_low_resolution(64, 12, (8, 8), (32, 32), cl)
        assert not prefers_low_resolution(16, 12, (24, 24), (32, 32), cl)
        assert not prefers_low_resolution(32, 12, (12, 12), (16, 16), True)


def test_same_size_is_a_plain_conv(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("interpolation must be skipped at equal sizes")

    monkeypatch.setattr(uc, "_low_resolution", fail)
    monkeypatch.setattr(uc.F, "interpolate", fail)
    x, weight, bias = torch.randn(2, 4, 6, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
    out = upsample_conv3x3(x, (6, 5), weight, bias)
    assert torch.equal(out, F.conv2d(x, weight, bias, padding=1))


def test_rejects_non_3x3_weight():
    with pytest.raises(ValueError, match="3, 3"):
        upsample_conv3x3(torch.randn(1, 2, 4, 4), (8, 8), torch.randn(3, 2, 5, 5))


STATE_KEYS = [
    "body.0.weight",
    "body.0.bias",
    "body.1.weight",
    "body.1.bias",
    "body.1.running_mean",
    "body.1.running_var",
    "body.1.num_batches_tracked",
    "body.3.weight",
    "body.3.bias",
]


@pytest.mark.parametrize("path", [True, False])
@pytest.mark.parametrize(
    ("feature_size", "image_size"), [((4, 4), (16, 16)), ((16, 16), (16, 16)), ((5, 3), (16, 10))]
)
def test_reconstruction_head_equals_interpolate_then_body(
    monkeypatch, feature_size, image_size, path
):
    monkeypatch.setattr(uc, "prefers_low_resolution", lambda *args, **kwargs: path)
    torch.manual_seed(0)
    head = ReconstructionHead(8).double()
    assert list(head.state_dict()) == STATE_KEYS
    feature = torch.randn(4, 8, *feature_size, dtype=torch.float64, requires_grad=True)
    image = torch.rand(4, 3, *image_size, dtype=torch.float64)
    targets = torch.zeros(4, dtype=torch.long)
    inputs = [feature, *head.parameters()]

    up = F.interpolate(feature, size=image_size, mode="bilinear", align_corners=True)
    ref_logits = head.body(up)
    ref_loss = F.binary_cross_entropy_with_logits(ref_logits, image)
    ref_grads = torch.autograd.grad(ref_loss, inputs)

    logits = head.reconstruct_logits(feature, image_size)
    assert _rel_err(logits, ref_logits) < 1e-10
    loss = head(feature, targets, image).loss
    assert abs(loss.item() - ref_loss.item()) < 1e-12
    grads = torch.autograd.grad(loss, inputs)
    for g, r in zip(grads, ref_grads, strict=True):
        # BN right after it makes body[0]'s bias gradient zero up to rounding: absolute floor.
        assert _rel_err(g, r, floor=1e-6) < 1e-10


def test_inference_mode_call_does_not_poison_the_matrix_cache():
    uc._tap_operators.cache_clear()
    x = torch.randn(2, 4, 3, 5)
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    with torch.inference_mode():
        upsample_conv3x3(x, (11, 7), weight, None, low_resolution=True)
    out = upsample_conv3x3(x, (11, 7), weight, None, low_resolution=True)
    out.sum().backward()  # would fail if the cached matrices were inference tensors
    assert weight.grad is not None
