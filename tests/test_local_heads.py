"""Aux heads: shapes for any width, the reference's widths, the contrast loss, lambda schedule."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpff_dist.local.heads import (
    AUX_NET_CONFIGS,
    ClassifierAuxHead,
    InfoProHead,
    NetHead,
    ReconstructionHead,
    aux_conv_width,
    lambda_schedule,
    parse_aux_net,
)
from hpff_dist.local.losses import supervised_contrastive_loss


def test_reference_widths_are_reproduced():
    assert aux_conv_width(16) == (32, 2)
    assert aux_conv_width(32) == (64, 2)
    assert aux_conv_width(64) == (64, 1)
    assert aux_conv_width(256) == (256, 1)
    assert aux_conv_width(48) == (64, 2)
    assert aux_conv_width(16, widen=2) == (64, 2)


def _shapes(head):
    return [tuple(m.weight.shape) for m in head.net if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_2c2f_and_1c3f_match_reference_layers():
    assert _shapes(ClassifierAuxHead(16, "2c2f", 10)) == [
        (32, 16, 3, 3),
        (32, 32, 3, 3),
        (128, 32),
        (10, 128),
    ]
    assert _shapes(ClassifierAuxHead(64, "1c3f", 10)) == [
        (64, 64, 3, 3),
        (128, 64),
        (128, 128),
        (10, 128),
    ]
    assert _shapes(ClassifierAuxHead(32, "0c1f", 10)) == [(10, 32)]
    assert _shapes(ClassifierAuxHead(32, "0c2f", 10, widen=2)) == [(256, 32), (10, 256)]


@pytest.mark.parametrize("config", AUX_NET_CONFIGS)
@pytest.mark.parametrize("width", [3, 16, 40, 64, 128])
@pytest.mark.parametrize("loss", ["cross_entropy", "contrast"])
def test_classifier_head_any_width(config, width, loss):
    head = ClassifierAuxHead(width, config, num_classes=7, loss=loss, feature_dim=12)
    x = torch.randn(6, width, 6, 6)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    out = head(x, targets)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    if loss == "cross_entropy":
        assert out.logits.shape == (6, 7)
    else:
        assert out.logits is None and head.net(x).shape == (6, 12)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="c<fcs>f"):
        parse_aux_net("2c0f")
    with pytest.raises(ValueError, match="c<fcs>f"):
        ClassifierAuxHead(16, "conv", 10)
    with pytest.raises(ValueError, match="local loss"):
        ClassifierAuxHead(16, "1c2f", 10, loss="mse")


def _supcon_loop(emb, labels, t=0.07):
    z = F.normalize(emb, dim=1)
    n = len(z)
    total = 0.0
    for i in range(n):
        others = [a for a in range(n) if a != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / t for a in others]), 0)
        pos = [p for p in others if labels[p] == labels[i]]
        if pos:
            total = total - sum(z[i] @ z[p] / t - denom for p in pos) / len(pos)
    return total / n


def test_supervised_contrastive_loss_matches_definition():
    torch.manual_seed(0)
    emb = torch.randn(7, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3 have no positives
    assert torch.allclose(supervised_contrastive_loss(emb, labels), _supcon_loop(emb, labels))


def test_reconstruction_head_is_sigmoid_bce():
    torch.manual_seed(0)
    head = ReconstructionHead(8, image_channels=1).double()
    feat = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    image = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    up = F.interpolate(feat, size=(12, 12), mode="bilinear", align_corners=True)
    expected = F.binary_cross_entropy(torch.sigmoid(head.body(up)), image)
    assert torch.allclose(head(feat, None, image).loss, expected)
    with pytest.raises(ValueError, match="restored input image"):
        head(feat, None, None)


def test_infopro_head_combines_and_skips_zero_parts():
    torch.manual_seed(0)
    rec, cls = ReconstructionHead(8), ClassifierAuxHead(8, "0c1f", 3)
    feat, image, t = torch.randn(2, 8, 4, 4), torch.rand(2, 3, 8, 8), torch.tensor([0, 2])
    head = InfoProHead(rec, cls, ixx=2.0, ixy=0.5)
    expected = 2.0 * rec(feat, t, image).loss + 0.5 * cls(feat, t).loss
    assert torch.allclose(head(feat, t, image).loss, expected)
    only_cls = InfoProHead(rec, cls, ixx=0.0, ixy=0.5)
    assert only_cls.reconstruction is None
    with pytest.raises(ValueError):
        InfoProHead(rec, cls, 0.0, 0.0)


def test_net_head_does_not_register_the_classifier_twice():
    fc = nn.Linear(4, 3)
    holder = nn.ModuleDict({"net_head": fc, "local": NetHead(fc)})
    assert len(list(holder.parameters())) == 2
    assert len(holder.state_dict()) == 2
    assert NetHead(fc).classifier is fc


def test_lambda_schedule():
    assert lambda_schedule(0, 16, 5, 0.5, 0, 0) == (5, 0.5)
    assert lambda_schedule(7, 16, 5, 0.5, 0, 0) == pytest.approx((2.5, 0.25))
    assert lambda_schedule(13, 16, 5, 0.5, 1, 1) == pytest.approx(
        (5 / 14 + 13 / 14, 0.5 / 14 + 13 / 14)
    )
    assert lambda_schedule(1, 2, 5, 0.5, 0, 0) == (5, 0.5)  # K <= 2: ratio 0
