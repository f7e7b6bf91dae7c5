"""The open core: heads from the registry, levels as data, the feature-layout contract, and
an extension (a new head and a new method) made entirely from this file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from torch import nn

from hpff_dist.local import (
    HEADS,
    FeatureInfo,
    HeadContext,
    Level,
    LocalHead,
    build_local_learner,
    build_spec,
    register_preset,
    split_patches,
)
from hpff_dist.local.heads import ClassifierAuxHead, HeadOutput, InfoProHead
from hpff_dist.local.pff import PatchFusedClassifier
from hpff_dist.models.cifar_resnet import CifarResNet

CTX = HeadContext(FeatureInfo(16, 1), module_index=2, k=8, num_classes=3, image_size=(8, 8))


def test_registry_builds_heads_from_config_and_names_typos():
    head = HEADS.build(dict(type="ClassifierAuxHead", config="1c2f", feature_dim=24), CTX)
    assert isinstance(head, ClassifierAuxHead) and head.config == "1c2f"
    assert head.net[0].in_channels == 16 and head.net[-1].out_features == 3
    with pytest.raises(KeyError, match="did you mean 'ClassifierAuxHead'"):
        HEADS.build(dict(type="ClassifierAuxHeat"), CTX)
    with pytest.raises(TypeError, match="'type'"):
        HEADS.build(dict(config="2c2f"), CTX)


def test_classifier_head_value_is_the_hand_computation():
    torch.manual_seed(0)
    head = HEADS.build(dict(type="ClassifierAuxHead", config="0c2f", feature_dim=5), CTX).double()
    x = torch.randn(4, 16, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    fc1, fc2 = head.net[2], head.net[4]
    pooled = x.mean(dim=(2, 3))
    logits = torch.relu(pooled @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
    expected = -torch.log_softmax(logits, 1)[torch.arange(4), y].mean()
    out = head(x, y)
    assert torch.allclose(out.logits, logits) and torch.allclose(out.loss, expected)


def test_infopro_head_weights_follow_the_lambda_schedule():
    torch.manual_seed(0)
    cfg = dict(
        type="InfoProHead",
        reconstruction=dict(type="ReconstructionHead"),
        classifier=dict(type="ClassifierAuxHead", config="0c1f"),
        ixx_1=5.0,
        ixy_1=0.5,
        ixx_2=1.0,
        ixy_2=1.5,
    )
    head = HEADS.build(cfg, CTX).double()  # module 2 of K=8: ratio 2/6
    assert isinstance(head, InfoProHead)
    assert head.ixx == pytest.approx(5.0 * 4 / 6 + 1.0 * 2 / 6)
    assert head.ixy == pytest.approx(0.5 * 4 / 6 + 1.5 * 2 / 6)
    assert head.needs == {"image"}
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    y, image = torch.tensor([1, 0]), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    recon = head.reconstruction.reconstruct_logits(x, (8, 8))
    bce = F.binary_cross_entropy_with_logits(recon, image)
    ce = F.cross_entropy(head.classifier.net(x), y)
    assert torch.allclose(head(x, y, image).loss, head.ixx * bce + head.ixy * ce)
    # Both lambdas 0 at this module: no head at all.
    zero = dict(cfg, ixx_1=0.0, ixy_1=0.0, ixx_2=0.0, ixy_2=0.0)
    assert HEADS.build(zero, CTX) is None


def test_heads_refuse_a_layout_they_cannot_take():
    tokens = HeadContext(FeatureInfo(16, 4, "NLC", prefix_tokens=1), 1, 4, 3, image_size=(16, 16))
    with pytest.raises(ValueError, match="accepts NCHW features, but this block emits NLC"):
        HEADS.build(dict(type="ClassifierAuxHead", config="0c2f"), tokens)


def test_pff_n_too_large_for_the_feature_is_a_build_error():
    small = HeadContext(FeatureInfo(16, 8), 3, 8, 3, image_size=(8, 8))  # 1x1 output
    with pytest.raises(ValueError, match=r"pff.n=2: local module 3's output is 1x1"):
        HEADS.build(
            dict(type="PatchFusedClassifier", n=2, head=dict(type="ClassifierAuxHead")), small
        )


def test_token_grid_patches_are_groups_of_grid_tokens():
    n, h, c = 2, 4, 3
    grid = torch.arange(2 * h * h * c, dtype=torch.float64).view(2, h, h, c)
    cls_token = torch.full((2, 1, c), -1.0, dtype=torch.float64)
    tokens = torch.cat([cls_token, grid.reshape(2, h * h, c)], 1)
    patches = split_patches(tokens, n, layout="NLC", prefix_tokens=1)
    assert len(patches) == 4
    # Patch (row 1, col 0) = grid rows 2..3, cols 0..1, row-major.
    expected = grid[:, 2:4, 0:2, :].reshape(2, 4, c)
    assert torch.equal(patches[2], expected)
    assert all((p >= 0).all() for p in patches)  # the class token is in no patch
    with pytest.raises(ValueError, match="square grid"):
        split_patches(tokens[:, :-1], n, layout="NLC", prefix_tokens=1)


# ---------------------------------------------------------------- an extension, from here
@HEADS.register()
class TokenMeanHead(LocalHead):
    """Mean over tokens, then a linear classifier: a token (NLC) head."""

    layouts = ("NLC",)

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs) -> TokenMeanHead:
        return cls(ctx.feature.channels, ctx.num_classes)

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_TokenMean(), nn.Linear(channels, num_classes))
        self.loss_mode = "cross_entropy"

    def criterion(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def forward(self, feature, targets, image=None) -> HeadOutput:
        logits = self.net(feature)
        return HeadOutput(self.criterion(logits, targets), logits)


class _TokenMean(nn.Module):
    def forward(self, x):
        return x.mean(1)


def test_pff_on_tokens_patch_at_a_time_equals_all_at_once():
    torch.manual_seed(0)
    ctx = HeadContext(FeatureInfo(6, 4, "NLC", prefix_tokens=1), 1, 4, 3, image_size=(16, 16))
    head = HEADS.build(dict(type="PatchFusedClassifier", n=2, head=dict(type="TokenMeanHead")), ctx)
    assert isinstance(head, PatchFusedClassifier)
    head = head.double()
    tokens = torch.randn(5, 1 + 16, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])

    def grads(run):
        head.zero_grad()
        leaf = tokens.clone().requires_grad_()
        run(leaf)
        return [leaf.grad] + [p.grad.clone() for p in head.parameters()]

    from hpff_dist.local.backward import PlainBackward

    at_once = grads(lambda t: (0.7 * head(t, y).loss).backward())
    one_by_one = grads(lambda t: head.accumulate(t, y, None, 0.7, PlainBackward()))
    for a, b in zip(at_once, one_by_one, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    # The average over the 4 patch groups of the per-group token means = mean of grid tokens.
    mean_logits = head.inner.net[1](tokens[:, 1:].mean(1))
    assert torch.allclose(head(tokens, y).logits, mean_logits)


@HEADS.register()
class LinearProbeHead(LocalHead):
    """Global pool + one linear layer: a new aux head, registered from the tests."""

    @classmethod
    def from_config(cls, ctx: HeadContext, scale: float = 1.0) -> LinearProbeHead:
        return cls(ctx.feature.channels, ctx.num_classes, scale)

    def __init__(self, channels: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)
        self.scale = scale

    def forward(self, feature, targets, image=None) -> HeadOutput:
        logits = self.fc(feature.mean(dim=(2, 3))) * self.scale
        return HeadOutput(F.cross_entropy(logits, targets), logits)


@pytest.fixture
def preset_cleanup():
    """Presets are process-wide: take the test's own out again."""
    from hpff_dist.local import PRESETS

    before = set(PRESETS)
    yield
    for name in set(PRESETS) - before:
        del PRESETS[name]


def test_a_new_head_and_method_are_a_registered_class_plus_a_config(preset_cleanup):
    register_preset(
        "linear_probe_cascade",
        dict(
            levels=[
                dict(
                    name="probe", span=1, weight=0.5, head=dict(type="LinearProbeHead", scale=2.0)
                ),
                dict(
                    name="cas",
                    span=2,
                    weight=1.0,
                    head=dict(type="ClassifierAuxHead", config="0c1f"),
                ),
            ]
        ),
        force=True,
    )
    spec = build_spec(dict(method="linear_probe_cascade", k=3))
    assert [lv.name for lv in spec.resolved_levels()] == ["probe", "cas"]
    torch.manual_seed(0)
    net = CifarResNet(depth=8, num_classes=3)
    learner = build_local_learner(net, None, 3, dict(method="linear_probe_cascade", k=3)).double()
    assert isinstance(learner.heads["probe1"], LinearProbeHead)
    assert set(learner.heads) == {"probe0", "probe1", "cas0", "cas1"}
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    out = learner.train_step_losses(images, y)
    assert set(out.losses) == {"loss_probe", "loss_cas", "ce_last"}
    # The probe head of module 1 gets exactly the gradient of 0.5 * CE of its own logits.
    mods = learner.local_modules
    with torch.no_grad():
        a1 = mods[1](mods[0](images))
    probe = learner.heads["probe1"]
    fc = nn.Linear(probe.fc.in_features, 3).double()
    fc.load_state_dict(probe.fc.state_dict())
    (0.5 * F.cross_entropy(fc(a1.mean(dim=(2, 3))) * 2.0, y)).backward()
    assert torch.allclose(probe.fc.weight.grad, fc.weight.grad, atol=1e-12)


def test_levels_are_validated():
    with pytest.raises(ValueError, match="span must be one of"):
        Level("x", 3, 1.0)
    with pytest.raises(ValueError, match="unique"):
        build_spec(dict(method="dgl", levels=[dict(name="a", span=1, weight=1.0)] * 2))
    with pytest.raises(ValueError, match="unknown level keys"):
        build_spec(dict(method="dgl", levels=[dict(name="a", span=1, weight=1.0, spam=1)]))


def test_shorthand_beside_explicit_levels_is_refused(preset_cleanup):
    levels = [dict(name="probe", span=1, weight=1.0, head=dict(type="ClassifierAuxHead"))]
    with pytest.raises(ValueError, match=r"\['pff', 'w_cas'\] are shorthand"):
        build_spec(dict(method="dgl", levels=levels, w_cas=0.5, pff=dict(n=4)))
    spec = build_spec(dict(method="dgl", levels=levels))
    assert build_spec(spec.to_dict()) == spec  # the round trip drops the inert shorthand


def test_register_preset_keeps_nothing_when_invalid(preset_cleanup):
    bad = dict(levels=[dict(name="x", span=5, weight=1.0)])
    with pytest.raises(ValueError, match="span"):
        register_preset("broken_method", bad)
    register_preset("broken_method", dict(levels=[dict(name="x", span=1, weight=1.0)]))


def test_bad_names_and_options_fail_at_build_time():
    with pytest.raises(ValueError, match="not ending in a digit"):
        Level("ind1", 1, 1.0)
    with pytest.raises(ValueError, match="aux_pool applies"):
        build_spec(dict(method="dgl", aux_net="bottleneck", aux_pool=2))
    with pytest.raises(TypeError, match=r"lacks \['net', 'criterion', 'loss_mode'\]"):
        HEADS.build(dict(type="PatchFusedClassifier", head=dict(type="LinearProbeHead")), CTX)


@HEADS.register()
class DictTargetProbe(LinearProbeHead):
    """Reads its labels from a dict of targets, as a dense task's heads would."""

    def forward(self, feature, targets, image=None) -> HeadOutput:
        return super().forward(feature, targets["labels"], image)


def test_targets_reach_the_heads_untouched():
    torch.manual_seed(0)
    levels = [dict(name="probe", span=1, weight=1.0, head=dict(type="DictTargetProbe"))]
    net = CifarResNet(depth=8, num_classes=3)
    learner = build_local_learner(
        net,
        None,
        3,
        dict(method="dgl", k=3, levels=levels),
        task_loss=lambda logits, t: F.cross_entropy(logits, t["labels"]),
    )
    targets = {"labels": torch.tensor([0, 1, 2, 0]), "meta": ["a", "b", "c", "d"]}
    out = learner.train_step_losses(torch.randn(4, 3, 8, 8), targets)
    assert set(out.losses) == {"loss_probe", "ce_last"}
    assert learner.heads["probe1"].fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [32, 37])
def test_declared_feature_info_matches_the_real_outputs(size):
    """The sizes heads are built for (no forward pass any more) are the real ones."""
    from hpff_dist.models.imagenet_resnet import TorchvisionResNet

    for net, image in ((CifarResNet(depth=20), size), (TorchvisionResNet("resnet50"), 2 * size)):
        net.eval()
        x = torch.zeros(1, 3, image, image)
        with torch.no_grad():
            x = net.stem(x)
            for block, info in zip(net.blocks, net.feature_info, strict=True):
                x = block(x)
                assert x.shape[1] == info.channels
                assert tuple(x.shape[-2:]) == info.spatial_size((image, image)), (block, info)


def test_custom_imports_register_a_head_from_a_user_module(tmp_path, monkeypatch):
    (tmp_path / "my_heads.py").write_text(
        "from hpff_dist.local import HEADS\n"
        "from hpff_dist.local.heads import ClassifierAuxHead\n\n"
        "@HEADS.register()\n"
        "class MyUserHead(ClassifierAuxHead):\n"
        "    pass\n"
    )
    config = tmp_path / "cfg.py"
    config.write_text(
        f"_base_ = ['{REPO}/configs/fashion_mnist/resnet32_k16_dgl.py']\n"
        "custom_imports = dict(imports=['my_heads'], allow_failed_imports=False)\n"
        "model = dict(method=dict(method='dgl', k=4, levels=[dict(name='mine', span=1, "
        "weight=1.0, head=dict(type='MyUserHead', config='0c1f'))]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from hpff_dist.engine.config import load_config
    from hpff_dist.engine.resolve import resolve_config
    from hpff_dist.registry import MODELS

    cfg, _ = resolve_config(load_config(str(config)))
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    assert type(model.learner.heads["mine1"]).__name__ == "MyUserHead"
