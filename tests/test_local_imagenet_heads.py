"""ImageNet-style heads: progressive decoder and bottleneck aux classifier.

Shapes for several feature/image sizes, PFF patch-at-a-time gradients equal to all-at-once
(float64), the one-forward schedule against the three-path reference with these heads, and the
memory they save against the CIFAR-style decoder.
"""

import copy

import pytest
import torch
from test_local_schedule import (
    assert_same_grads,
    batch,
    compare,
    grads,
    make,
    reference_hilo,
    reference_independent,
)

from hpff_dist.local import upsample_conv
from hpff_dist.local.backward import PlainBackward, ScaledBackward
from hpff_dist.local.heads import ClassifierAuxHead, ReconstructionHead
from hpff_dist.local.imagenet_heads import (
    BottleneckAuxHead,
    ProgressiveReconstructionHead,
    bottleneck_widths,
    upsampling_steps,
)
from hpff_dist.local.learner import build_local_learner
from hpff_dist.local.memory import SavedTensorMeter
from hpff_dist.local.pff import OfficialPatchDecoder, PatchFusedClassifier, PatchwiseReconstruction
from hpff_dist.local.spec import build_spec, with_overrides
from hpff_dist.models.cifar_resnet import CifarResNet

TARGETS = torch.tensor([0, 1, 2, 0])


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    "feature,image,steps,widths",
    [
        ((56, 56), (224, 224), 2, [16]),
        ((7, 7), (224, 224), 5, [128, 64, 32, 16]),
        ((14, 14), (112, 112), 3, [32, 16]),
        ((7, 7), (200, 200), 5, [128, 64, 32, 16]),  # non-power-of-two ratio
        ((7, 7), (96, 160), 5, [128, 64, 32, 16]),  # non-square image
        ((8, 8), (8, 8), 0, []),  # feature at image resolution
    ],
)
def test_progressive_decoder_shapes(feature, image, steps, widths):
    assert upsampling_steps(feature, image) == steps
    head = ProgressiveReconstructionHead(8, feature, image)
    assert head.steps == steps
    assert [stage[0].out_channels for stage in head.stages] == widths
    assert head.reduce[0].kernel_size == (1, 1) and head.reduce[0].out_channels == 128
    feat = torch.randn(2, 8, *feature)
    img = torch.rand(2, 3, *image)
    assert head.reconstruct_logits(feat, image).shape == img.shape
    out = head(feat, TARGETS[:2], img)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.logits is None
    with pytest.raises(ValueError, match="restored input image"):
        head(feat, TARGETS[:2])


def test_progressive_decoder_widths_follow_width_and_widen():
    head = ProgressiveReconstructionHead(8, 14, 224, width=64, min_width=8, widen=2.0)
    assert head.reduce[0].out_channels == 128
    assert [s[0].out_channels for s in head.stages] == [64, 32, 16]
    assert head.out.out_channels == 3


@pytest.mark.parametrize("size", [56, 14, 7, 4])
@pytest.mark.parametrize("loss", ["cross_entropy", "contrast"])
def test_bottleneck_head_shapes(size, loss):
    head = BottleneckAuxHead(32, num_classes=7, loss=loss, expand=48, feature_dim=12)
    convs = [m for m in head.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (1, 1)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (1, 1)]
    assert [c.out_channels for c in convs] == [*bottleneck_widths(32), 48]
    feat = torch.randn(4, 32, size, size)
    out = head(feat, TARGETS)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    if loss == "cross_entropy":
        assert out.logits.shape == (4, 7)
    else:
        assert out.logits is None and head.net(feat).shape == (4, 12)


def test_bottleneck_widths_reproduce_the_reference_and_stay_narrow_on_cifar():
    assert bottleneck_widths(256) == (128, 256, 512)
    assert bottleneck_widths(512) == (128, 256, 512)
    assert bottleneck_widths(1024) == (256, 256, 512)
    assert bottleneck_widths(2048) == (512, 512, 1024)
    assert bottleneck_widths(16) == (16, 32, 64)
    head = BottleneckAuxHead(16, widths=(8, 12, 20), expand=24)
    convs = [m for m in head.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 12, 20, 24]
    with pytest.raises(ValueError, match="local loss"):
        BottleneckAuxHead(16, loss="mse")


# ------------------------------------------------------------------ PFF: patchwise == at once
def _grads(head, leaf):
    out = {n: p.grad.clone() for n, p in head.named_parameters()}
    out["<feature>"] = leaf.grad.clone()
    return out


def _at_once(head, feat, image, weight):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    (head(leaf, TARGETS, image).loss * weight).backward()
    return _grads(head, leaf)


def _patchwise(head, feat, image, weight, backward):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    head.accumulate(leaf, TARGETS, image, weight, backward)
    return _grads(head, leaf)


def _assert_close(ours, ref, scale=1.0):
    for name, g in ref.items():
        assert (ours[name] / scale - g).norm() <= 1e-12 * max(g.norm(), 1e-12), name


def _inputs(feature, image, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(4, channels, feature, feature, generator=g, dtype=torch.float64)
    img = torch.rand(4, 3, image, image, generator=g, dtype=torch.float64)
    return feat, img


@pytest.mark.parametrize("feature,image", [(8, 32), (7, 56), (5, 20)])
@pytest.mark.parametrize("backward", [PlainBackward(), ScaledBackward(0.5)])
def test_pff_progressive_decoder_patchwise_equals_at_once(feature, image, backward):
    torch.manual_seed(0)
    head = PatchwiseReconstruction(
        ProgressiveReconstructionHead(8, feature, image, width=16, min_width=4), n=2
    ).double()
    feat, img = _inputs(feature, image)
    ref = _at_once(head, feat, img, 0.7)
    ours = _patchwise(head, feat, img, 0.7, backward)
    _assert_close(ours, ref, backward.scale)


@pytest.mark.parametrize("feature", [8, 7, 14])
@pytest.mark.parametrize("loss", ["cross_entropy", "contrast"])
def test_pff_bottleneck_patchwise_equals_at_once(feature, loss):
    torch.manual_seed(0)
    inner = BottleneckAuxHead(8, num_classes=3, loss=loss, widths=(6, 10, 12), expand=16)
    head = PatchFusedClassifier(inner, n=2).double()
    assert not head._batchable([torch.zeros(1, 8, 4, 4)] * 4)
    feat, _ = _inputs(feature, 4 * feature)
    ref = _at_once(head, feat, None, 1.3)
    before = copy.deepcopy(head)
    ours = _patchwise(head, feat, None, 1.3, PlainBackward())
    _assert_close(ours, ref)
    # the no-graph pass leaves BN statistics alone: one update per patch, as at once
    before(feat, TARGETS)
    for a, b in zip(head.buffers(), before.buffers()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ learner + schedules
IMAGENET_STYLE = dict(aux_net="bottleneck", decoder="progressive", decoder_width=16)


@pytest.mark.parametrize(
    "extra",
    [
        dict(),
        dict(pff=dict(n=2)),
        dict(pff=dict(n=2), local_loss="contrast", ixx_2=1.0, ixy_2=0.25),
        dict(pff=dict(n=2, variant="official")),
    ],
)
def test_one_forward_matches_three_path_reference(extra):
    spec = dict(method="infopro_hpff", k=4, **{**IMAGENET_STYLE, **extra})
    w_ind, w_cas = build_spec(spec).w_ind, build_spec(spec).w_cas
    learner = compare(spec, lambda *a: reference_hilo(*a, w_ind, w_cas), size=32)
    assert any(isinstance(m, ProgressiveReconstructionHead) for m in learner.heads.modules())
    assert any(isinstance(m, BottleneckAuxHead) for m in learner.heads.modules())
    assert learner.needs_image


def test_imagenet_config_settings_agree_with_packaged_reference():
    """The ImageNet configs' HiLo settings (independent level off, cascade-only last module),
    which the plain test reference does not cover: one-forward vs the three-path schedule."""
    spec = dict(
        method="infopro_hpff",
        k=4,
        w_ind=0.0,
        w_cas=1.0,
        last_module="cascade",
        ixx_1=5.0,
        ixy_1=0.75,
        ixx_2=5.0,
        ixy_2=0.75,
        pff=dict(n=2),
        **IMAGENET_STYLE,
    )
    images, targets, restored = batch(size=32)
    learner = make(spec, size=32)
    learner.train_step_losses(images, targets, restored)
    ours = grads(learner)
    learner.zero_grad(set_to_none=True)
    learner.spec = with_overrides(learner.spec, schedule="reference")
    learner.train_step_losses(images, targets, restored)
    assert_same_grads(ours, grads(learner))


@pytest.mark.parametrize("schedule", ["one_forward", "reference"])
def test_independent_infopro_matches_reference(schedule):
    spec = dict(
        method="infopro", k=4, ixy_2=0.1, pff=dict(n=2), schedule=schedule, **IMAGENET_STYLE
    )
    compare(spec, reference_independent, size=32)


def test_learner_sizes_each_decoder_from_its_module_and_keeps_bn_stats():
    spec = dict(method="infopro", k=6, ixx_2=1.0, ixy_2=0.1, **IMAGENET_STYLE)
    learner = make(spec, depth=14, size=32)
    # CifarResNet-14 at 32x32: stages at 32, 16, 8 -> 0, 1, 2 upsampling steps
    steps = {name: head.reconstruction.steps for name, head in learner.heads.items()}
    for name, n in steps.items():
        m = int(name[3:])
        size = {16: 32, 32: 16, 64: 8}[learner.net.block_channels[learner.plan.modules[m][-1]]]
        assert n == upsampling_steps(size, 32)
    assert sorted(steps.values()) == [0, 0, 1, 1, 2]
    for mod in learner.net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert mod.num_batches_tracked.item() == 0
    assert learner.training


def test_spec_defaults_unchanged_and_errors():
    spec = build_spec(dict(method="infopro_hpff"))
    assert (spec.aux_net, spec.decoder, spec.decoder_width) == ("2c2f", "interpolate", 128)
    torch.manual_seed(0)
    old = build_local_learner(
        CifarResNet(14, num_classes=5),
        None,
        5,
        dict(method="infopro", k=4, ixy_2=0.1),
        image_size=16,
    )
    kinds = {type(m) for m in old.heads.modules()}
    assert ReconstructionHead in kinds and ClassifierAuxHead in kinds
    assert ProgressiveReconstructionHead not in kinds and BottleneckAuxHead not in kinds
    assert build_spec(build_spec(dict(method="dgl", **IMAGENET_STYLE)).to_dict()).decoder == (
        "progressive"
    )
    with pytest.raises(ValueError, match=r"decoder must be one of \('interpolate', 'progressive'"):
        build_spec(dict(method="infopro", decoder="upsample"))
    with pytest.raises(ValueError, match="bottleneck"):
        build_spec(dict(method="dgl", aux_net="bottle"))
    with pytest.raises(ValueError, match="decoder_width"):
        build_spec(dict(method="infopro", decoder_width=0))
    with pytest.raises(ValueError, match="needs image_size"):
        build_local_learner(
            CifarResNet(14, num_classes=5),
            None,
            5,
            dict(method="infopro", k=4, ixy_2=0.1, decoder="progressive"),
        )


def test_official_variant_uses_the_chosen_decoder():
    learner = make(
        dict(method="infopro_hpff", k=4, pff=dict(n=2, variant="official"), **IMAGENET_STYLE),
        size=32,
    )
    officials = [m for m in learner.heads.modules() if isinstance(m, OfficialPatchDecoder)]
    assert officials and all(
        isinstance(d, ProgressiveReconstructionHead) for o in officials for d in o.decoders
    )


# ------------------------------------------------------------------ memory
def _saved_peak(head, feat, image):
    """Peak saved bytes of one forward + backward, the input feature (shared) not counted."""
    leaf = feat.clone().requires_grad_()
    with SavedTensorMeter(ignore=[*head.parameters(), *head.buffers(), leaf]) as meter:
        head(leaf, TARGETS[:2], image).loss.backward()
    return meter.peak_bytes


def test_progressive_and_fused_decoders_save_far_less_than_interpolate(monkeypatch):
    torch.manual_seed(0)
    # a wide, coarse feature (ResNet stage 3/4-like) reconstructing an image 8x its size
    feat = torch.randn(2, 1024, 7, 7)
    image = torch.rand(2, 3, 56, 56)
    head = ReconstructionHead(1024)
    fused = _saved_peak(head, feat, image)  # upsample + first conv at the feature's resolution
    progressive = _saved_peak(ProgressiveReconstructionHead(1024, 7, 56), feat, image)
    monkeypatch.setattr(upsample_conv, "prefers_low_resolution", lambda *args, **kwargs: False)
    interp = _saved_peak(head, feat, image)
    assert interp > 2 * 1024 * 56 * 56 * 4  # the upsampled full-width feature
    assert progressive * 10 < interp and fused * 10 < interp
    feat = torch.randn(2, 1024, 14, 14)
    classic = _saved_peak(ClassifierAuxHead(1024, "1c2f", 3, feature_dim=2048), feat, None)
    bottleneck = _saved_peak(BottleneckAuxHead(1024, 3, expand=2048), feat, None)
    assert bottleneck * 1.5 < classic
