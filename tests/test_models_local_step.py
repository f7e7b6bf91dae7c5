"""``loss_backward``: which optimizer wrappers take a tensor cotangent, and that it is exact."""

import torch
from mmengine.optim import OptimWrapper
from torch import nn

from hpff_dist.local.backward import backward_vjp
from hpff_dist.models.local_step import loss_backward


def _net_and_wrapper(wrapper_type=OptimWrapper):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    return net, wrapper_type(torch.optim.SGD(net.parameters(), lr=0.1))


def _vjp_grads(wrapper_type):
    net, wrapper = _net_and_wrapper(wrapper_type)
    leaf = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaf.requires_grad_()
    cotangent = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    backward = loss_backward(wrapper)
    backward_vjp(backward, net(leaf), cotangent, list(net.parameters()))
    return backward, [p.grad.clone() for p in net.parameters()], leaf.grad


def test_plain_optim_wrapper_takes_tensor_cotangents_and_skips_other_leaves():
    backward, grads, leaf_grad = _vjp_grads(OptimWrapper)
    assert backward.tensor_backward
    assert leaf_grad is None  # ``inputs`` restricted the backward to the parameters
    _, surrogate, _ = _vjp_grads(_CustomBackwardWrapper)
    for ours, ref in zip(grads, surrogate):
        torch.testing.assert_close(ours, ref, rtol=1e-14, atol=0)


class _CustomBackwardWrapper(OptimWrapper):
    """A wrapper whose backward does something of its own: must get scalar losses only."""

    def backward(self, loss, **kwargs):
        assert loss.dim() == 0 and not kwargs
        super().backward(loss)


def test_unknown_wrapper_backward_gets_the_scalar_surrogate():
    backward, grads, leaf_grad = _vjp_grads(_CustomBackwardWrapper)
    assert not backward.tensor_backward
    assert leaf_grad is not None  # the fallback fills every leaf
    assert all(g.abs().sum() > 0 for g in grads)


def test_fp16_amp_tensor_backward_keeps_small_cotangents(monkeypatch):
    """AMP scales the output before autograd casts the cotangent to its dtype: a float16
    output must be scaled in float32, or true-size cotangents (~1e-8) underflow to zero."""
    from mmengine.optim import AmpOptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)
    torch.manual_seed(0)
    layer = nn.Linear(8, 8).half()
    wrapper = AmpOptimWrapper(
        optimizer=torch.optim.SGD(layer.parameters(), lr=0.1), dtype="float16"
    )
    wrapper.loss_scaler = torch.amp.GradScaler("cpu")  # scale 65536
    backward = loss_backward(wrapper)
    assert backward.tensor_backward and backward.scale == 65536.0
    x = torch.randn(4, 8).half()
    cotangent = torch.full((4, 8), 1e-8)  # float32 at true scale, as the schedule keeps it
    grads = {}
    for path in ("vjp", "surrogate"):
        out = layer(x)
        if path == "vjp":
            backward_vjp(backward, out, cotangent, list(layer.parameters()))
        else:
            backward((out * cotangent).sum())
        grads[path] = layer.weight.grad.float().clone()
        layer.zero_grad()
    assert grads["surrogate"].abs().max() > 0
    assert torch.equal(grads["vjp"], grads["surrogate"])


def test_vjp_with_no_trainable_inputs_does_nothing():
    net, wrapper = _net_and_wrapper()
    for p in net.parameters():
        p.requires_grad_(False)
    leaf = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    out = net(leaf)
    backward_vjp(loss_backward(wrapper), out, torch.ones_like(out), list(net.parameters()))
    backward_vjp(loss_backward(wrapper), out, torch.ones_like(out), [])
    assert leaf.grad is None and all(p.grad is None for p in net.parameters())
