"""Dense (segmentation) local heads, PFF for per-pixel heads, HiLo over them (float64).

PFF for a per-pixel head is defined in ``hpff_dist.local.dense_pff``: each feature patch's
logits cover the pixels of the matching label patch, the loss is the sum of patch CE sums over
all labelled pixels. Checked here: that definition by hand, patch-at-a-time gradients equal to
the all-patches-in-one-graph ones, the activation memory it saves, and the one-forward HiLo
schedule over a tiny conv stack with these heads against a plainly written three-path
reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpff_dist.local import (
    HEADS,
    DGLSegHead,
    FeatureInfo,
    HeadContext,
    InfoProSegHead,
    PatchFusedDense,
    SavedTensorMeter,
    SegClassifierHead,
    build_local_learner,
    dense_levels,
    seg_cross_entropy,
)
from hpff_dist.local.backward import PlainBackward, ScaledBackward
from hpff_dist.local.dense import scaled_bounds, split_like_feature
from hpff_dist.local.dense_pff import DensePatchwiseReconstruction
from hpff_dist.local.features import split_patches
from hpff_dist.local.heads import ReconstructionHead

CLASSES = 4


def _labels(n, h, w, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < ignore_frac] = 255
    return labels


def _feature(n=3, c=6, h=6, w=8, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=dtype)


def _grads(head, leaf):
    out = {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}
    out["<feature>"] = leaf.grad.clone()
    return out


def _at_once(head, feat, labels, image, weight):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    (head(leaf, labels, image).loss * weight).backward()
    return _grads(head, leaf)


def _one_patch_at_a_time(head, feat, labels, image, weight, backward=None):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    out = head.accumulate(leaf, labels, image, weight, backward or PlainBackward())
    return _grads(head, leaf), out


def _assert_close(a, b, scale=1.0, tol=1e-12):
    assert a.keys() == b.keys()
    for name in b:
        diff = (a[name] / scale - b[name]).norm()
        assert diff <= tol * max(b[name].norm(), 1e-12), name


# ------------------------------------------------------------------ labels and boundaries
def test_seg_cross_entropy_is_the_ignoring_pixel_mean():
    logits = torch.randn(2, CLASSES, 5, 6, dtype=torch.float64)
    labels = _labels(2, 20, 24)
    up = F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, labels, ignore_index=255)
    assert torch.allclose(seg_cross_entropy(logits, labels), expected, rtol=1e-14)
    assert torch.allclose(seg_cross_entropy(logits, labels[:, None]), expected, rtol=1e-14)
    all_void = torch.full_like(labels, 255)
    assert seg_cross_entropy(logits, all_void).item() == 0.0  # not NaN
    with pytest.raises(ValueError, match="label maps"):
        seg_cross_entropy(logits, labels[:, 0, 0])


def test_label_patches_use_the_feature_boundaries():
    # divisible: every label patch is exactly 8x its feature patch (D8 at 512x1024 / 16).
    assert scaled_bounds(8, 2, 64) == [0, 32, 64]
    # not divisible: the feature's tensor_split boundaries, scaled with floor.
    assert scaled_bounds(5, 2, 20) == [0, 12, 20]  # feature rows [0, 3) [3, 5)
    assert scaled_bounds(97, 2, 769) == [0, 49 * 769 // 97, 769]
    labels = torch.arange(2 * 20 * 27).view(2, 20, 27)
    patches = split_like_feature(labels, (5, 7), 2)
    assert [tuple(p.shape[-2:]) for p in patches] == [(12, 15), (12, 12), (8, 15), (8, 12)]
    rows = [torch.cat(patches[0:2], -1), torch.cat(patches[2:4], -1)]
    assert torch.equal(torch.cat(rows, -2), labels)  # they tile the map
    with pytest.raises(ValueError, match="empty"):
        split_like_feature(torch.zeros(1, 3, 3), (8, 8), 4)


# ------------------------------------------------------------------ the heads
def _ctx(channels=6, module_index=1, k=4, image_size=None):
    return HeadContext(FeatureInfo(channels, 4), module_index, k, CLASSES, 3, image_size)


def test_dense_heads_are_registered_and_give_the_pixel_mean_loss():
    for name in ("DGLSegHead", "SegClassifierHead"):
        head = HEADS.build(dict(type=name, dropout=0.0), _ctx()).double()
        feat, labels = _feature(), _labels(3, 24, 32)
        out = head(feat, labels)
        assert out.logits.shape == (3, CLASSES, 24, 32)
        assert torch.allclose(out.loss, seg_cross_entropy(head.net(feat), labels), rtol=1e-14)
    assert HEADS.build(dict(type="DGLSegHead"), _ctx(1024)).net[0].out_channels == 256
    assert HEADS.build(dict(type="SegClassifierHead"), _ctx(1024)).net[0].out_channels == 512
    nlc = HeadContext(FeatureInfo(6, 4, "NLC"), 1, 4, CLASSES)
    with pytest.raises(ValueError, match="NLC"):
        HEADS.build(dict(type="DGLSegHead"), nlc)


def test_patch_fused_dense_is_each_patch_on_its_own_pixels():
    torch.manual_seed(0)
    inner = DGLSegHead(6, CLASSES, width=8, dropout=0.0).double()
    head = PatchFusedDense(inner, 2)
    feat, labels = _feature(h=5, w=7), _labels(3, 20, 27)  # uneven patches
    out = head(feat, labels)
    # By hand: patch p's logits at label patch p's size, CE summed, over all labelled pixels.
    total = 0.0
    label_patches = split_like_feature(labels, (5, 7), 2)
    for patch, lab in zip(split_patches(feat, 2), label_patches, strict=True):
        logits = inner.pixel_logits(patch, tuple(lab.shape[-2:]))
        total = total + F.cross_entropy(logits, lab, ignore_index=255, reduction="sum")
    assert torch.allclose(out.loss, total / (labels != 255).sum(), rtol=1e-14)
    # ... which is the per-pixel mean of the stitched logit map.
    assert out.logits.shape == (3, CLASSES, 20, 27)
    expected = F.cross_entropy(out.logits, labels, ignore_index=255)
    assert torch.allclose(out.loss, expected, rtol=1e-13)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("size,label_size", [((6, 9), (24, 36)), ((5, 7), (19, 30))])
def test_patch_fused_dense_gradients_equal_all_at_once(n, size, label_size):
    torch.manual_seed(0)
    head = PatchFusedDense(SegClassifierHead(6, CLASSES, width=8, dropout=0.0), n).double()
    feat, labels = _feature(h=size[0], w=size[1]), _labels(3, *label_size)
    ref = _at_once(head, feat, labels, None, 0.7)
    ours, out = _one_patch_at_a_time(head, feat, labels, None, 0.7)
    _assert_close(ours, ref)
    assert torch.allclose(out.loss, head(feat, labels).loss, rtol=1e-13)
    scaled, _ = _one_patch_at_a_time(head, feat, labels, None, 0.7, ScaledBackward(8.0))
    _assert_close(scaled, ref, scale=8.0)


def test_patch_fused_dense_with_n1_is_the_plain_head():
    torch.manual_seed(0)
    inner = DGLSegHead(6, CLASSES, width=8, dropout=0.0).double()
    feat, labels = _feature(), _labels(3, 24, 32)
    plain = _at_once(inner, feat, labels, None, 1.0)
    fused = _at_once(PatchFusedDense(inner, 1), feat, labels, None, 1.0)
    _assert_close({f"inner.{k}" if k != "<feature>" else k: v for k, v in plain.items()}, fused)


def test_patch_fused_dense_with_dropout_matches_under_the_same_seed():
    torch.manual_seed(0)
    head = PatchFusedDense(DGLSegHead(6, CLASSES, width=8, dropout=0.3), 2).double()
    feat, labels = _feature(), _labels(3, 24, 32)
    torch.manual_seed(5)
    ref = _at_once(head, feat, labels, None, 1.0)
    torch.manual_seed(5)
    ours, _ = _one_patch_at_a_time(head, feat, labels, None, 1.0)
    _assert_close(ours, ref)


def test_patch_fused_dense_refuses_a_head_without_pixel_logits():
    with pytest.raises(TypeError, match="pixel_logits"):
        PatchFusedDense(ReconstructionHead(6), 2)
    with pytest.raises(ValueError, match="pff.n"):
        HEADS.build(
            dict(type="PatchFusedDense", n=5, head=dict(type="DGLSegHead")),
            _ctx(image_size=(16, 16)),
        )


def _peak(head, feat, labels, all_at_once):
    """Peak saved bytes of the head, not counting its parameters or its inputs (patches are
    views of the feature and label map, alive anyway, whose storages autograd saves whole)."""
    leaf = feat.clone().requires_grad_()
    with SavedTensorMeter(ignore=[*head.parameters(), leaf, labels]) as meter:
        if all_at_once:
            head(leaf, labels).loss.backward()
        else:
            head.accumulate(leaf, labels, None, 1.0, PlainBackward())
    return meter.peak_bytes


def test_patch_fused_dense_cuts_saved_activation_memory():
    torch.manual_seed(0)
    inner = DGLSegHead(16, CLASSES, width=16, dropout=0.1)
    feat, labels = _feature(4, 16, 16, 16, dtype=torch.float32), _labels(4, 64, 64)
    plain = _peak(inner, feat, labels, all_at_once=False)
    for n in (2, 4):
        head = PatchFusedDense(inner, n)
        one_graph = _peak(head, feat, labels, all_at_once=True)
        patched = _peak(head, feat, labels, all_at_once=False)
        assert one_graph > 0.9 * plain  # holding every patch's graph saves nothing
        assert patched * 0.9 * n * n < plain  # one patch in flight: about n^2 less


# ------------------------------------------------------------------ InfoPro for segmentation
def test_infopro_seg_head_weights_and_loss():
    torch.manual_seed(0)
    cfg = dict(type="InfoProSegHead", classifier=dict(type="SegClassifierHead", dropout=0.0))
    head = HEADS.build(cfg, _ctx()).double()
    assert (head.ixx, head.ixy) == (1.5, 1.0)
    assert (HEADS.build(cfg, _ctx(module_index=2, k=8)).ixx, head.ixy) == (1.5, 1.0)
    scheduled = HEADS.build({**cfg, "ixx_2": 0.5, "ixy_2": 2.0}, _ctx(module_index=1, k=4))
    assert (scheduled.ixx, scheduled.ixy) == (1.0, 1.5)  # ratio 1 / (K - 2) = 1/2
    feat, labels = _feature(), _labels(3, 24, 32)
    image = torch.rand(3, 3, 24, 32, dtype=torch.float64)
    out = head(feat, labels, image)
    rec = head.reconstruction(feat, labels, image).loss
    seg = seg_cross_entropy(head.classifier.net(feat), labels)
    assert torch.allclose(out.loss, 1.5 * rec + 1.0 * seg, rtol=1e-14)
    assert out.logits.shape == (3, CLASSES, 24, 32)
    assert head.needs == frozenset({"image"})


@pytest.mark.parametrize("size,image_size", [((6, 8), (24, 32)), ((5, 7), (19, 27))])
def test_infopro_seg_head_with_pff_gradients_equal_all_at_once(size, image_size):
    torch.manual_seed(0)
    cfg = dict(type="InfoProSegHead", n=2, classifier=dict(type="SegClassifierHead", dropout=0.0))
    head = HEADS.build(cfg, _ctx()).double()
    assert isinstance(head, InfoProSegHead)
    assert isinstance(head.reconstruction, DensePatchwiseReconstruction)
    assert isinstance(head.classifier, PatchFusedDense)
    feat, labels = _feature(h=size[0], w=size[1]), _labels(3, *image_size)
    image = torch.rand(3, 3, *image_size, dtype=torch.float64)
    ours, _ = _one_patch_at_a_time(head, feat, labels, image, 0.999)
    _assert_close(ours, _at_once(head, feat, labels, image, 0.999))


def test_dense_patchwise_reconstruction_cuts_the_image_like_the_labels():
    torch.manual_seed(0)
    inner = ReconstructionHead(6).double()
    head = DensePatchwiseReconstruction(inner, 2, patch_loss="mean")
    feat, image = _feature(h=5, w=7), torch.rand(3, 3, 20, 27, dtype=torch.float64)
    pairs = zip(split_patches(feat, 2), split_like_feature(image, (5, 7), 2), strict=True)
    expected = sum(inner(f, None, img).loss for f, img in pairs) / 4
    assert torch.allclose(head(feat, None, image).loss, expected, rtol=1e-14)


# ------------------------------------------------------------------ HiLo over dense heads
class TinySegNet(nn.Module):
    """stem + conv-BN-ReLU blocks (NCHW) + 1x1 per-pixel classifier: a BlockNetwork."""

    WIDTHS = (6, 6, 8, 8, 10, 10)
    STRIDES = (1, 2, 1, 2, 1, 1)

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, 1, 1, bias=False), nn.BatchNorm2d(6))
        blocks, cin, reduction, info = [], 6, 1, []
        for width, stride in zip(self.WIDTHS, self.STRIDES, strict=True):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, width, 3, stride, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                )
            )
            cin, reduction = width, reduction * stride
            info.append(FeatureInfo(width, reduction))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, classes, 1)
        self.feature_info = info
        self.block_ids = [(1, i) for i in range(len(blocks))]
        self.block_channels = list(self.WIDTHS)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


SIZE = 20  # 20 -> 10 -> 5: the last modules' maps cut into uneven 3 + 2 patches
NO_DROPOUT = dict(
    dgl_head=dict(type="DGLSegHead", width=6, dropout=0.0),
    infopro_head=dict(
        type="InfoProSegHead", classifier=dict(type="SegClassifierHead", width=6, dropout=0.0)
    ),
)


def _learner(method, n=2, k=4, schedule="one_forward"):
    torch.manual_seed(0)
    spec = dict(method=method, k=k, schedule=schedule, levels=dense_levels(method, n, **NO_DROPOUT))
    net = TinySegNet()
    return (
        build_local_learner(net, None, CLASSES, spec, image_size=SIZE, task_loss=seg_cross_entropy)
        .double()
        .train()
    )


def _batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    restored = torch.rand(3, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    return images, _labels(3, SIZE, SIZE, seed), restored


def _all_grads(model):
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def _run(learner, m, x):
    if m == 0:
        x = learner.net.stem(x)
    for b in learner.plan.modules[m]:
        x = learner.net.blocks[b](x)
    return x


def reference_hilo(learner, images, labels, restored, w_ind=0.001, w_cas=0.999):
    """Three paths per module, as the reference code: x (independent), y + z (cascade)."""
    heads, last = learner.heads, learner.plan.num_modules - 1
    x, y = _run(learner, 0, images).detach(), images
    for i in range(1, last):
        x_out = _run(learner, i, x)
        y_mid = _run(learner, i - 1, y)
        z = _run(learner, i, y_mid)
        loss = w_ind * heads[f"ind{i}"](x_out, labels, restored).loss
        loss = loss + w_cas * heads[f"cas{i}"](z, labels, restored).loss
        loss.backward()
        x, y = x_out.detach(), y_mid.detach()
    head = learner.net.head
    x_out = _run(learner, last, x)
    z = _run(learner, last, _run(learner, last - 1, y))
    loss = w_ind * seg_cross_entropy(head(x_out), labels)
    (loss + w_cas * seg_cross_entropy(head(z), labels)).backward()


def reference_independent(learner, images, labels, restored):
    last, x = learner.plan.num_modules - 1, images
    for i in range(last + 1):
        out = _run(learner, i, x)
        if i < last:
            loss = learner.heads[f"ind{i}"](out, labels, restored).loss
        else:
            loss = seg_cross_entropy(learner.net.head(out), labels)
        loss.backward()
        x = out.detach()


def _assert_same_grads(ours, ref, tol=1e-10):
    scale = max(g.norm().item() for g in ref.values())
    nonzero = 0
    for name, g in ref.items():
        denom = max(g.norm().item(), 1e-8 * scale)
        assert (ours[name] - g).norm().item() / denom < tol, name
        nonzero += g.norm().item() > 0
    assert nonzero == len(ref)  # every parameter of net and heads learns


@pytest.mark.parametrize("schedule", ["one_forward", "reference"])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("method", ["dgl_hpff", "infopro_hpff"])
def test_hilo_over_dense_heads_matches_three_path_reference(method, n, schedule):
    learner = _learner(method, n, schedule=schedule)
    assert "ind0" not in learner.heads and "cas0" not in learner.heads
    images, labels, restored = _batch()
    learner.train_step_losses(images, labels, restored)
    ours = _all_grads(learner)
    learner.zero_grad(set_to_none=True)
    reference_hilo(learner, images, labels, restored)
    _assert_same_grads(ours, _all_grads(learner))


@pytest.mark.parametrize("method", ["dgl", "infopro"])
def test_independent_dense_methods_match_reference(method):
    learner = _learner(method)
    images, labels, restored = _batch()
    out = learner.train_step_losses(images, labels, restored)
    assert out.logits.shape == (3, CLASSES, 5, 5)  # the net's own per-pixel logits
    ours = _all_grads(learner)
    learner.zero_grad(set_to_none=True)
    reference_independent(learner, images, labels, restored)
    _assert_same_grads(ours, _all_grads(learner))


def _only(learner, module, level):
    for mod in learner.local_modules:
        for lv in mod.levels:
            lv.weight = lv.weight if (mod.index == module and lv.name == level) else 0.0


def _touched(learner):
    return {id(p) for p in learner.parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("method", ["dgl_hpff", "infopro_hpff"])
@pytest.mark.parametrize("module", [1, 2, 3])
def test_dense_gradient_isolation(method, module):
    for level in ("ind", "cas"):
        learner = _learner(method)
        _only(learner, module, level)
        learner.train_step_losses(*_batch())
        mods = learner.local_modules
        head = mods[module].level(level).head
        head_params = _ids(head.classifier.parameters() if module == 3 else head.parameters())
        reached = _ids(mods[module].parameters())
        if level == "cas":
            reached |= _ids(mods[module - 1].parameters())
        touched = _touched(learner)
        assert touched <= reached | head_params
        assert reached <= touched


def test_dense_levels_shapes_the_presets():
    ind, cas = dense_levels("infopro_hpff", n=2)
    assert (ind["weight"], cas["weight"], ind["first_module"]) == (0.001, 0.999, False)
    assert ind["head"] == dict(type="PatchFusedDense", n=2, head=dict(type="DGLSegHead"))
    assert cas["head"] == dict(type="InfoProSegHead", n=2)
    assert dense_levels("dgl", n=2) == [
        dict(name="ind", span=1, weight=1.0, head=dict(type="DGLSegHead"))
    ]
    with pytest.raises(ValueError, match="dense methods"):
        dense_levels("e2e")
