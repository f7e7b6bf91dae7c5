"""PFF: patch-at-a-time gradients equal the all-patches-at-once ones (float64)."""

import pytest
import torch

from hpff_dist.local.backward import PlainBackward, ScaledBackward
from hpff_dist.local.heads import ClassifierAuxHead, ReconstructionHead
from hpff_dist.local.pff import (
    OfficialPatchDecoder,
    PatchFusedClassifier,
    PatchwiseReconstruction,
    frozen_running_stats,
    split_patches,
)


def _inputs(channels=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(6, channels, size, size, generator=g, dtype=torch.float64)
    image = torch.rand(6, 3, 2 * size, 2 * size, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    return feat, targets, image


def _grads(head, feat_leaf):
    out = {n: p.grad.clone() for n, p in head.named_parameters()}
    out["<feature>"] = feat_leaf.grad.clone()
    return out


def _at_once(head, feat, targets, image, weight):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    (head(leaf, targets, image).loss * weight).backward()
    return _grads(head, leaf)


def _patchwise(head, feat, targets, image, weight, backward=None):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    head.accumulate(leaf, targets, image, weight, backward or PlainBackward())
    return _grads(head, leaf)


def _assert_close(a, b, scale=1.0):
    for name in b:
        diff = (a[name] / scale - b[name]).norm()
        assert diff <= 1e-12 * max(b[name].norm(), 1e-12), name


def test_split_patches():
    x = torch.arange(2 * 5 * 7, dtype=torch.float64).view(1, 2, 5, 7)
    patches = split_patches(x, 2)
    assert [tuple(p.shape[-2:]) for p in patches] == [(3, 4), (3, 3), (2, 4), (2, 3)]
    top = torch.cat([patches[0], patches[1]], -1)
    bottom = torch.cat([patches[2], patches[3]], -1)
    assert torch.equal(torch.cat([top, bottom], -2), x)
    with pytest.raises(ValueError):
        split_patches(x, 6)


@pytest.mark.parametrize("config", ["0c2f", "1c2f", "2c2f"])
@pytest.mark.parametrize("loss", ["cross_entropy", "contrast"])
@pytest.mark.parametrize("n", [2, 3])
def test_patch_fused_classifier_gradients(config, loss, n):
    torch.manual_seed(0)
    head = PatchFusedClassifier(ClassifierAuxHead(16, config, 3, loss, feature_dim=8), n).double()
    feat, targets, image = _inputs()
    _assert_close(
        _patchwise(head, feat, targets, image, 0.7), _at_once(head, feat, targets, image, 0.7)
    )


def test_patch_fused_classifier_is_the_mean_of_patch_outputs():
    torch.manual_seed(0)
    inner = ClassifierAuxHead(16, "1c2f", 3).double()
    head = PatchFusedClassifier(inner, 2)
    feat, targets, _ = _inputs()
    mean = sum(inner.net(p) for p in split_patches(feat, 2)) / 4
    out = head(feat, targets)
    assert torch.allclose(out.logits, mean)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(mean, targets))


@pytest.mark.parametrize("patch_loss, divisor", [("mean", 4), ("sum", 1)])
def test_patchwise_reconstruction_gradients(patch_loss, divisor):
    torch.manual_seed(0)
    head = PatchwiseReconstruction(ReconstructionHead(16), 2, patch_loss).double()
    feat, targets, image = _inputs()
    _assert_close(
        _patchwise(head, feat, targets, image, 5.0), _at_once(head, feat, targets, image, 5.0)
    )
    pairs = zip(split_patches(feat, 2), split_patches(image, 2))
    expected = sum(head.inner(f, targets, i).loss for f, i in pairs) / divisor
    assert torch.allclose(head(feat, targets, image).loss, expected)


def test_patchwise_sum_matches_the_reference_decoders_loss_scale():
    """Paper PFF with patch_loss='sum' = the reference's n*n decoders' summed BCE when the
    decoders share weights (the reference has one per patch: same scale, separate weights)."""
    torch.manual_seed(0)
    feat, targets, image = _inputs()
    official = OfficialPatchDecoder(16, n=2).double()
    for decoder in official.decoders[1:]:
        decoder.load_state_dict(official.decoders[0].state_dict())
    paper = PatchwiseReconstruction(official.decoders[0], 2, "sum")
    assert torch.allclose(paper(feat, targets, image).loss, official(feat, targets, image).loss)


def test_patch_accumulate_respects_backward_scale():
    torch.manual_seed(0)
    head = PatchFusedClassifier(ClassifierAuxHead(16, "2c2f", 3), 2).double()
    feat, targets, image = _inputs()
    _assert_close(
        _patchwise(head, feat, targets, image, 1.0, ScaledBackward(0.25)),
        _at_once(head, feat, targets, image, 1.0),
        scale=0.25,
    )


def test_running_stats_updated_once_per_patch():
    torch.manual_seed(0)
    feat, targets, image = _inputs()
    heads = [PatchFusedClassifier(ClassifierAuxHead(16, "2c2f", 3), 2).double() for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    heads[0](feat, targets)  # all at once
    heads[1].accumulate(feat.clone().requires_grad_(), targets, image, 1.0, PlainBackward())
    for (name, a), b in zip(heads[0].state_dict().items(), heads[1].state_dict().values()):
        assert torch.allclose(a.double(), b.double()), name
    bn = heads[1].inner.net[1]
    assert bn.num_batches_tracked.item() == 4


def test_frozen_running_stats_restores_tracking():
    bn = torch.nn.BatchNorm2d(3)
    with frozen_running_stats(bn):
        bn(torch.randn(4, 3, 2, 2))
    assert bn.track_running_stats and bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros(3))


def test_official_decoder_is_four_decoders_summed():
    torch.manual_seed(0)
    head = OfficialPatchDecoder(16, n=2).double()
    feat, targets, image = _inputs()
    assert len(head.decoders) == 4
    expected = sum(
        dec(f, targets, i).loss
        for dec, f, i in zip(head.decoders, split_patches(feat, 2), split_patches(image, 2))
    )
    assert torch.allclose(head(feat, targets, image).loss, expected)
    _assert_close(
        _patchwise(head, feat, targets, image, 2.0), _at_once(head, feat, targets, image, 2.0)
    )


@pytest.mark.parametrize(("size", "n"), [(8, 2), (9, 3), (7, 2)])  # pooled, pooled, patch-wise
def test_pool_first_heads_take_the_one_pass_path_exactly(size, n):
    torch.manual_seed(0)
    head = PatchFusedClassifier(ClassifierAuxHead(16, "0c2f", 3, feature_dim=8), n).double()
    feat = torch.randn(4, 16, size, size, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 1])
    assert head._batchable(feat) == (size % n == 0)
    _assert_close(
        _patchwise(head, feat, targets, None, 0.7), _at_once(head, feat, targets, None, 0.7)
    )


@pytest.mark.parametrize(("size", "n", "pool"), [(8, 2, 2), (12, 3, 2), (6, 2, 2), (9, 3, 3)])
def test_grid_pooled_heads_take_the_one_pass_path_exactly(size, n, pool):
    """A head pooling to p x p: each patch's grid is a block of an (n p) x (n p) pool."""
    torch.manual_seed(0)
    inner = ClassifierAuxHead(16, "0c2f", 3, feature_dim=8, pool=pool)
    assert inner.net[2].in_features == 16 * pool * pool
    head = PatchFusedClassifier(inner, n).double()
    feat = torch.randn(4, 16, size, size, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 1])
    assert head._batchable(feat) == (size % (n * pool) == 0)
    _assert_close(
        _patchwise(head, feat, targets, None, 0.7), _at_once(head, feat, targets, None, 0.7)
    )
