"""The saved-tensor memory meter: exact on a hand-computed graph; PFF and HiLo save memory."""

import pytest
import torch
from torch import nn

from hpff_dist.local import (
    SavedTensorMeter,
    aux_peak_saved_bytes,
    build_local_learner,
    memory_region,
)
from hpff_dist.models.cifar_resnet import CifarResNet


def test_hand_computed_graph():
    x = torch.randn(10, requires_grad=True)  # float32: 40 bytes per tensor
    with SavedTensorMeter() as meter:
        y = x.exp()  # saves its result y: 40
        assert meter.live_bytes == 40
        z = y.sin()  # saves its input y: same storage, still 40
        assert meter.live_bytes == 40
        w = z.exp()  # saves w: 80
        with memory_region("aux"):
            v = (w * 3.0).cos()  # mul by a constant saves nothing; cos saves its input: 120
        loss = v.sum()
    assert meter.live_bytes == 120 and meter.peak_bytes == 120
    assert meter.region_peak_bytes == {"other": 80, "aux": 40}
    loss.backward()
    assert meter.live_bytes == 0 and meter.peak_bytes == 120


def test_dropping_the_graph_releases_and_parameters_can_be_ignored():
    lin = nn.Linear(8, 8, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorMeter() as counted:
        out = lin(x).relu()
    with SavedTensorMeter(ignore=lin) as ignored:
        out2 = lin(x).relu()
    # linear saves x (128 B) and, as x needs a gradient, the weight (256 B); relu its result
    assert counted.peak_bytes == 128 + 256 + 128
    assert ignored.peak_bytes == 128 + 128
    del out, out2
    assert counted.live_bytes == 0 and ignored.live_bytes == 0


def _learner(method, pff, aux_net="2c2f", k=6):
    torch.manual_seed(0)
    return build_local_learner(
        CifarResNet(14, num_classes=5), None, 5, dict(method=method, k=k, aux_net=aux_net, pff=pff)
    )


def _batch(n=16, size=16):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, 3, size, size, generator=g),
        torch.randint(0, 5, (n,), generator=g),
        torch.rand(n, 3, size, size, generator=g),
    )


@pytest.mark.parametrize("method", ["dgl_hpff", "infopro_hpff"])
def test_pff_cuts_aux_peak_saved_bytes(method):
    plain = aux_peak_saved_bytes(_learner(method, None), *_batch())
    patched = aux_peak_saved_bytes(_learner(method, dict(n=2)), *_batch())
    assert plain > 0 and patched * 3 < plain


def test_local_training_saves_less_than_e2e():
    """ResNet-32, K=16: one forward per module keeps at most two module graphs alive."""

    def peak(spec):
        torch.manual_seed(0)
        learner = build_local_learner(CifarResNet(32, num_classes=5), "resnet32", 5, spec)
        with SavedTensorMeter(ignore=learner) as meter:
            learner.train_step_losses(*_batch(n=8))
        return meter.peak_bytes

    e2e = peak(dict(method="e2e"))
    hilo = peak(dict(method="dgl_hpff", k=16, aux_net="0c1f", pff=None))
    reference = peak(dict(method="dgl_hpff", k=16, aux_net="0c1f", pff=None, schedule="reference"))
    dgl = peak(dict(method="dgl", k=16, aux_net="0c1f"))
    assert dgl < hilo < 0.35 * e2e
    assert hilo < reference


def test_meter_does_not_change_gradients():
    def step(meter):
        learner = _learner("infopro_hpff", dict(n=2))
        if meter:
            with SavedTensorMeter(ignore=learner):
                learner.train_step_losses(*_batch())
        else:
            learner.train_step_losses(*_batch())
        return [p.grad.clone() for p in learner.parameters() if p.grad is not None]

    for a, b in zip(step(True), step(False), strict=True):
        assert torch.equal(a, b)
