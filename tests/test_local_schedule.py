"""The one-forward schedule against a plainly written three-path reference, in float64.

The reference below is written independently of ``hpff_dist.local.schedule``: it runs the
modules the way the HPFF reference code does (x, y, z paths, one backward per module) and
uses only the net, the split plan and the heads' all-at-once ``forward``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hpff_dist.local import PlainBackward, ScaledBackward, build_local_learner
from hpff_dist.local.learner import LocalLearner
from hpff_dist.local.spec import with_overrides
from hpff_dist.models.cifar_resnet import CifarResNet

BATCH, SIZE, CLASSES = 4, 16, 5


def make(spec, depth=14, arch=None, seed=0, size=SIZE) -> LocalLearner:
    torch.manual_seed(seed)
    net = CifarResNet(depth, num_classes=CLASSES)
    learner = build_local_learner(net, arch, CLASSES, spec, image_size=size).double()
    return learner.train()


def batch(seed=1, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, size, size, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 0, 1])
    restored = torch.rand(BATCH, 3, size, size, generator=g, dtype=torch.float64)
    return images, targets, restored


def grads(model):
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def assert_same_grads(ours, ref, tol=1e-10):
    scale = max(g.norm().item() for g in ref.values())
    assert scale > 0
    nonzero = 0
    for name, g_ref in ref.items():
        diff = (ours[name] - g_ref).norm().item()
        denom = max(g_ref.norm().item(), 1e-8 * scale)
        assert diff / denom < tol, f"{name}: relative error {diff / denom:.3e}"
        nonzero += g_ref.norm().item() > 0
    assert nonzero > len(ref) // 2


# ------------------------------------------------------------------ plain references
def _run(learner, m, x):
    net, plan = learner.net, learner.plan
    if m == 0:
        x = net.stem(x)
    for b in plan.modules[m]:
        x = net.blocks[b](x)
    return x


def reference_hilo(learner, images, targets, restored, w_ind, w_cas):
    """HiLo like the reference code: module 0 has no own loss, the last uses the net head twice."""
    net, heads, last = learner.net, learner.heads, learner.plan.num_modules - 1
    x = _run(learner, 0, images).detach()  # x path of module 0 (no loss)
    y = images  # y path input
    for i in range(1, last):
        x_out = _run(learner, i, x)
        y_mid = _run(learner, i - 1, y)
        z = _run(learner, i, y_mid)
        loss = w_ind * heads[f"ind{i}"](x_out, targets, restored).loss
        if f"cas{i}" in heads:
            loss = loss + w_cas * heads[f"cas{i}"](z, targets, restored).loss
        loss.backward()
        x, y = x_out.detach(), y_mid.detach()
    x_out = _run(learner, last, x)
    z = _run(learner, last, _run(learner, last - 1, y))
    loss = w_ind * F.cross_entropy(net.head(x_out), targets) + w_cas * F.cross_entropy(
        net.head(z), targets
    )
    loss.backward()


def reference_independent(learner, images, targets, restored):
    """DGL / InfoPro: every module on its detached input; the last trained by the net head."""
    last = learner.plan.num_modules - 1
    x = images
    for i in range(last + 1):
        out = _run(learner, i, x)
        if i < last:
            loss = learner.heads[f"ind{i}"](out, targets, restored).loss
        else:
            loss = F.cross_entropy(learner.net.head(out), targets)
        loss.backward()
        x = out.detach()


def compare(spec, reference, depth=14, arch=None, size=SIZE):
    images, targets, restored = batch(size=size)
    learner = make(spec, depth, arch, size=size)
    learner.train_step_losses(images, targets, restored)
    ours = grads(learner)
    learner.zero_grad(set_to_none=True)
    reference(learner, images, targets, restored)
    assert_same_grads(ours, grads(learner))
    return learner


# ------------------------------------------------------------------ HiLo vs reference
HILO_CASES = [
    ("dgl_hpff", dict(aux_net="1c2f"), None),
    ("dgl_hpff", dict(aux_net="2c2f", pff=dict(n=2)), None),
    ("dgl_hpff", dict(aux_net="0c2f", local_loss="contrast", pff=dict(n=2)), None),
    ("infopro_hpff", dict(aux_net="1c2f"), None),
    ("infopro_hpff", dict(aux_net="2c2f", pff=dict(n=2)), None),
    ("infopro_hpff", dict(aux_net="1c1f", pff=dict(n=2, variant="official")), None),
    ("infopro_hpff", dict(aux_net="1c2f", local_loss="contrast", ixx_2=1.0, ixy_2=0.25), None),
]


@pytest.mark.parametrize("k", [2, 4, 6])
@pytest.mark.parametrize("method,extra,_", HILO_CASES)
def test_one_forward_matches_three_path_reference(method, extra, _, k):
    spec = dict(method=method, k=k, **extra)
    w_ind, w_cas = 0.001, 0.999
    compare(spec, lambda *a: reference_hilo(*a, w_ind, w_cas))


def test_one_forward_matches_reference_with_published_table():
    spec = dict(method="infopro_hpff", k=16, aux_net="1c2f", pff=dict(n=2))
    learner = compare(
        spec, lambda *a: reference_hilo(*a, 0.001, 0.999), depth=32, arch="resnet32", size=8
    )
    assert learner.plan.num_modules == 15


def test_one_forward_matches_reference_with_other_level_weights():
    spec = dict(method="dgl_hpff", k=4, aux_net="0c2f", w_ind=0.3, w_cas=0.7, pff=None)
    compare(spec, lambda *a: reference_hilo(*a, 0.3, 0.7), depth=20)


@pytest.mark.parametrize("method", ["dgl_hpff", "infopro_hpff"])
def test_packaged_reference_schedule_matches_test_reference(method):
    spec = dict(method=method, k=4, aux_net="1c2f", schedule="reference")
    compare(spec, lambda *a: reference_hilo(*a, 0.001, 0.999))


# ------------------------------------------------------------------ independent methods
@pytest.mark.parametrize("schedule", ["one_forward", "reference"])
@pytest.mark.parametrize("k", [2, 6])
@pytest.mark.parametrize(
    "method,extra",
    [
        ("dgl", dict(aux_net="1c2f")),
        ("dgl", dict(aux_net="2c2f", pff=dict(n=2))),
        ("infopro", dict(aux_net="1c2f", local_loss="contrast", ixx_2=1.0, ixy_2=0.1)),
        ("infopro", dict(aux_net="1c2f", pff=dict(n=2), ixy_2=0.1)),
    ],
)
def test_independent_methods_match_reference(method, extra, k, schedule):
    compare(dict(method=method, k=k, schedule=schedule, **extra), reference_independent)


# ------------------------------------------------------------------ K = 1 is E2E
def reference_e2e(learner, images, targets, restored):
    F.cross_entropy(learner.net(images), targets).backward()


@pytest.mark.parametrize("method", ["e2e", "dgl", "infopro", "dgl_hpff", "infopro_hpff"])
def test_k1_is_end_to_end(method):
    learner = compare(dict(method=method, k=1), reference_e2e)
    assert len(learner.heads) == 0 and learner.local_modules == []


# ------------------------------------------------------------------ gradient isolation
def _only(learner, module, level):
    for mod in learner.local_modules:
        for lv in mod.levels:
            lv.weight = lv.weight if (mod.index == module and lv.name == level) else 0.0


def _touched(learner):
    return {id(p) for p in learner.parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("module", [1, 2, 4, 5])
def test_independent_loss_stays_in_its_module(module):
    learner = make(dict(method="infopro_hpff", k=6, aux_net="1c2f", pff=dict(n=2)))
    images, targets, restored = batch()
    _only(learner, module, "ind")
    learner.train_step_losses(images, targets, restored)
    mod = learner.local_modules[module]
    head = mod.ind_head.classifier if module == 5 else mod.ind_head
    allowed = _ids(mod.parameters()) | _ids(head.parameters())
    touched = _touched(learner)
    assert touched <= allowed
    assert _ids(mod.parameters()) <= touched


@pytest.mark.parametrize("module", [1, 3, 5])
def test_cascade_loss_reaches_exactly_two_modules(module):
    learner = make(dict(method="infopro_hpff", k=6, aux_net="1c2f", pff=dict(n=2)))
    images, targets, restored = batch()
    _only(learner, module, "cas")
    learner.train_step_losses(images, targets, restored)
    mods = learner.local_modules
    head = mods[module].cas_head.classifier if module == 5 else mods[module].cas_head
    both = _ids(mods[module].parameters()) | _ids(mods[module - 1].parameters())
    touched = _touched(learner)
    assert touched <= both | _ids(head.parameters())
    assert _ids(mods[module].parameters()) <= touched
    assert _ids(mods[module - 1].parameters()) <= touched


def test_first_module_learns_only_through_cascade_one():
    learner = make(dict(method="dgl_hpff", k=3, aux_net="1c2f"))
    first = learner.local_modules[0]
    assert first.ind_head is None and first.cas_head is None
    assert "ind0" not in learner.heads and "cas0" not in learner.heads
    last = learner.local_modules[-1]
    assert last.ind_head.classifier is learner.net.head is last.cas_head.classifier


# ------------------------------------------------------------------ the backward contract
@pytest.mark.parametrize(
    "method,extra",
    [
        ("infopro_hpff", dict(pff=dict(n=2))),
        ("dgl_hpff", dict(aux_net="2c2f")),
        ("infopro", dict(ixy_2=0.1)),
    ],
)
def test_scaled_backward_scales_every_gradient(method, extra):
    images, targets, restored = batch()
    learner = make(dict(method=method, k=4, **extra))
    learner.train_step_losses(images, targets, restored, PlainBackward())
    plain = grads(learner)
    learner.zero_grad(set_to_none=True)
    learner.train_step_losses(images, targets, restored, ScaledBackward(0.25))
    scaled = grads(learner)
    assert_same_grads({n: g / 0.25 for n, g in scaled.items()}, plain, tol=1e-12)


def test_schedule_backpropagates_only_through_the_given_backward(monkeypatch):
    real = torch.Tensor.backward
    inside = [False]

    def guarded(self, *args, **kwargs):
        assert inside[0], "Tensor.backward called outside the engine's backward"
        return real(self, *args, **kwargs)

    class Counting:
        scale = 1.0
        calls = 0

        def __call__(self, loss):
            assert loss.dim() == 0
            self.calls += 1
            inside[0] = True
            try:
                loss.backward()
            finally:
                inside[0] = False

    monkeypatch.setattr(torch.Tensor, "backward", guarded)
    learner = make(dict(method="infopro_hpff", k=4, pff=dict(n=2)))
    backward = Counting()
    learner.train_step_losses(*batch(), backward=backward)
    assert backward.calls > 0


def test_step_output_and_eval_forward():
    learner = make(dict(method="infopro_hpff", k=4))
    images, targets, restored = batch()
    out = learner.train_step_losses(images, targets, restored)
    assert set(out.losses) == {"loss_ind", "loss_cas", "ce_last"}
    dgl_out = make(dict(method="dgl", k=4)).train_step_losses(images, targets, restored)
    assert set(dgl_out.losses) == {"loss_ind", "ce_last"}  # no cascade level: not logged
    assert all(not v.requires_grad for v in out.losses.values())
    assert out.logits.shape == (BATCH, CLASSES) and not out.logits.requires_grad
    learner.eval()
    with torch.no_grad():
        assert learner(images).shape == (BATCH, CLASSES)
    with pytest.raises(ValueError, match="image_restored"):
        learner.train()
        learner.train_step_losses(images, targets)


def test_one_forward_runs_each_module_once():
    learner = make(dict(method="infopro_hpff", k=6))
    counts = {}
    for i, block in enumerate(learner.net.blocks):
        block.register_forward_hook(lambda *a, i=i: counts.__setitem__(i, counts.get(i, 0) + 1))
    learner.train_step_losses(*batch())
    assert set(counts.values()) == {1}
    counts.clear()
    learner.spec = with_overrides(learner.spec, schedule="reference")
    learner.train_step_losses(*batch())
    assert max(counts.values()) == 3


@pytest.mark.parametrize("schedule", ["one_forward", "reference"])
@pytest.mark.parametrize("backward", ["scaled_surrogate", "plain_vjp"])
def test_runs_under_autocast_with_a_loss_scale(schedule, backward):
    torch.manual_seed(0)
    learner = build_local_learner(
        CifarResNet(14, num_classes=CLASSES),
        None,
        CLASSES,
        dict(method="infopro_hpff", k=4, pff=dict(n=2), schedule=schedule),
    )
    images, targets, restored = (t.float() if t.is_floating_point() else t for t in batch())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine = ScaledBackward(1024.0) if backward == "scaled_surrogate" else PlainBackward()
        out = learner.train_step_losses(images, targets, restored, engine)
    assert torch.isfinite(out.losses["loss_cas"])
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in learner.net.parameters()
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(first_module="independent"),
        dict(first_module="both"),
        dict(last_module="independent"),
        dict(last_module="cascade", first_module="both"),
        dict(w_ind=0.0, w_cas=1.0),  # the reference's ImageNet setting: independent level off
        dict(pff=dict(n=2, levels="cascade"), local_loss="contrast"),
    ],
)
def test_options_agree_between_one_forward_and_packaged_reference(options):
    images, targets, restored = batch()
    spec = dict(method="infopro_hpff", k=4, aux_net="1c2f", ixy_2=0.2, **options)
    learner = make(spec)
    learner.train_step_losses(images, targets, restored)
    ours = grads(learner)
    learner.zero_grad(set_to_none=True)
    learner.spec = with_overrides(learner.spec, schedule="reference")
    learner.train_step_losses(images, targets, restored)
    assert_same_grads(ours, grads(learner))


def test_first_and_last_module_options_build_the_expected_heads():
    both = make(dict(method="dgl_hpff", k=4, first_module="both", last_module="cascade"))
    first, last = both.local_modules[0], both.local_modules[-1]
    assert first.ind_head is both.heads["ind0"] and first.cas_head is both.heads["cas0"]
    assert last.ind_head is None and last.cas_head is not None
    off = make(dict(method="dgl_hpff", k=4, w_ind=0.0, w_cas=1.0))
    assert not any(name.startswith("ind") for name in off.heads)


def test_deepcopy_keeps_modules_pointing_at_the_copied_layers():
    import copy

    learner = make(dict(method="dgl_hpff", k=4))
    clone = copy.deepcopy(learner)
    assert clone.local_modules[1].layers[0] is clone.net.blocks[clone.plan.modules[1][0]]
    assert clone.local_modules[-1].ind_head.classifier is clone.net.head
    assert clone.local_modules[1].ind_head is clone.heads["ind1"]


class _CountInputGradients(TorchDispatchMode):
    """Counts convolution backward calls that compute an input gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.input_grads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution_backward.default:
            self.input_grads += bool(args[-1][0])  # output_mask = (input, weight, bias)
        return func(*args, **kwargs)


@pytest.mark.parametrize("method,skipped", [("dgl_hpff", 3), ("infopro_hpff", 3), ("dgl", 0)])
def test_tensor_vjp_skips_discarded_input_gradients_with_equal_results(method, skipped):
    """With an engine that takes ``gradient=``/``inputs=`` (PlainBackward.vjp), a module's full
    backward skips its first layer's input gradient; the surrogate-loss fallback (no ``vjp``)
    computes it. Both give the same parameter gradients. (Without a cascade level a module's
    input is not a gradient leaf at all, so DGL has nothing to skip.)"""
    images, targets, restored = batch()
    learner = make(dict(method=method, k=4, aux_net="1c2f"))
    counts = {}
    results = {}
    for name, backward in (("vjp", PlainBackward()), ("surrogate", ScaledBackward(1.0))):
        learner.zero_grad(set_to_none=True)
        with _CountInputGradients() as mode:
            learner.train_step_losses(images, targets, restored, backward)
        counts[name], results[name] = mode.input_grads, grads(learner)
    assert_same_grads(results["vjp"], results["surrogate"], tol=1e-12)
    # modules 1..3 each start with a conv (two at a downsampling shortcut) reading the input
    saved = counts["surrogate"] - counts["vjp"]
    assert saved >= skipped and (saved > 0) == (skipped > 0), counts
