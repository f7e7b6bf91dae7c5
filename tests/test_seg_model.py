"""LocalEncoderDecoder: mmseg's DeepLabV3 trained with local learning (float64, tiny model).

References are independent of our schedule: mmseg's own ``EncoderDecoder.loss`` for E2E,
mmseg's own forward for the block view, and the plainly written three-path schedule
(``reference_step``) for every local method with and without PFF. The auxiliary FCN head is a
tap on the block where stage 3 ends; its gradient must stay in the module holding that block.
"""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from seg_tiny import CONFIGS, CROP, tiny_model_options

import segmentation  # noqa: F401  (registers LocalEncoderDecoder; mmcv.ops before mmseg)
from hpff_dist.engine.resolve import resolve_config
from hpff_dist.local.backward import PlainBackward
from hpff_dist.local.schedule import one_forward_step, reference_step
from hpff_dist.registry import MODELS

NO_DROPOUT_HEADS = dict(
    dgl_head=dict(type="DGLSegHead", dropout=0.0),
    infopro_head=dict(
        type="InfoProSegHead", classifier=dict(type="SegClassifierHead", dropout=0.0)
    ),
)


def _cfg(method: dict, dropout: bool = False) -> Config:
    init_default_scope("hpff_dist")
    cfg = Config.fromfile(CONFIGS / "deeplabv3_r101_d8_e2e.py")
    cfg.merge_from_dict(tiny_model_options(method))
    if not dropout:
        cfg.merge_from_dict(
            {"model.decode_head.dropout_ratio": 0.0, "model.auxiliary_head.dropout_ratio": 0.0}
        )
    return cfg


def _build(method: dict, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS.build(_cfg(method, **kw).model).double().train()


def _batch(n: int = 2, seed: int = 1, size: tuple[int, int] = CROP) -> dict:
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    h, w = size
    labels = torch.randint(0, 19, (n, 1, h, w), generator=g)
    labels[torch.rand(n, 1, h, w, generator=g) < 0.2] = 255
    return dict(
        inputs=[torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(n)],
        data_samples=[SegDataSample(gt_sem_seg=PixelData(data=labels[i])) for i in range(n)],
    )


def _prepared(model, data):
    batch = model.data_preprocessor(data, True)
    return batch["inputs"].double(), batch["targets"], batch["images"].double(), batch


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, tol=1e-10):
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for name in b:
        diff = (a[name] - b[name]).norm()
        assert diff <= tol * max(b[name].norm(), 1e-12), (name, float(diff))


def _step(model, schedule=None) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    inputs, targets, images, _ = _prepared(model, _batch())
    learner = model.learner
    if schedule is None:
        learner.train_step_losses(inputs, targets, images, PlainBackward())
    else:
        schedule(learner.local_modules, inputs, targets, images, PlainBackward())
    return _grads(model)


# ------------------------------------------------------------------ the model mmseg would build
def test_parameter_names_are_mmsegs_and_the_view_runs_mmsegs_forward():
    model = _build(dict(method="infopro_hpff", k=4)).eval()
    cfg = _cfg(dict(method="e2e"))
    plain = dict(cfg.model)
    for key in ("method", "arch", "image_size"):
        plain.pop(key)
    plain["type"] = "mmseg.EncoderDecoder"
    plain["data_preprocessor"] = dict(
        type="mmseg.SegDataPreProcessor", **plain["data_preprocessor"]
    )
    reference = MODELS.build(plain).double()
    ours = {k for k in model.state_dict() if not k.startswith("local_heads.")}
    assert ours == set(reference.state_dict())
    assert any(k.startswith("local_heads.") for k in model.state_dict())
    x = torch.randn(2, 3, *CROP, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.learner.net(x), model._forward(x))  # view == mmseg forward


def test_resnet101_d8_blocks_and_split_tables():
    init_default_scope("hpff_dist")
    cfg = Config.fromfile(CONFIGS / "deeplabv3_r101_d8_k4_infopro_hpff.py")
    for part in ("backbone", "decode_head", "auxiliary_head"):
        cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)
    expected = {
        4: [(3, 0), (3, 9), (3, 17), (4, 2)],  # the reference ResNet-101 tables
        8: [(2, 0), (3, 1), (3, 5), (3, 9), (3, 13), (3, 17), (3, 21), (4, 2)],
        2: [(3, 8), (4, 2)],  # no table: balanced, 16 + 17 blocks
    }
    for k, last_blocks in expected.items():
        cfg.model.method = dict(method="infopro_hpff", k=k)
        model = MODELS.build(cfg.model)
        net, plan = model.learner.net, model.learner.plan
        assert net.stage_depths == (3, 4, 23, 3)
        assert [f.reduction for f in net.feature_info] == [4] * 3 + [8] * 30  # D8
        assert [f.channels for f in net.feature_info][6:8] == [512, 1024]
        assert plan.last_block_ids == last_blocks
        # the auxiliary head reads the end of stage 3, block (3, 22): inside the last module
        (tap,) = model.learner.taps
        assert net.block_ids[tap.block] == (3, 22)
        assert tap.block in plan.modules[-1]
        assert model.learner.local_modules[-1].taps[0].position == plan.modules[-1].index(tap.block)


# ------------------------------------------------------------------ E2E is mmseg's training
def test_e2e_step_gives_mmsegs_gradients_with_the_auxiliary_head():
    from mmseg.models.segmentors import EncoderDecoder

    model = _build(dict(method="e2e"))
    ours = _step(model)
    model.zero_grad(set_to_none=True)
    inputs, _, _, batch = _prepared(model, _batch())
    losses = EncoderDecoder.loss(model, inputs, batch["data_samples"])  # mmseg's own
    sum(v for k, v in losses.items() if "loss" in k).backward()
    _assert_same(ours, _grads(model), tol=1e-12)
    assert {"aux.loss_ce", "decode.loss_ce"} <= set(losses)


# ------------------------------------------------------------------ local schedules
METHODS = ["dgl", "infopro", "dgl_hpff", "infopro_hpff"]


# PFF (n > 1) is part of the HPFF presets only: dgl/infopro run with n=1.
METHOD_N = [(m, n) for m in METHODS for n in ((1, 2) if m.endswith("_hpff") else (1,))]


@pytest.mark.parametrize("k", [4, 3])  # K=3: the tapped block opens module 2 (inside it)
@pytest.mark.parametrize(("method", "n"), METHOD_N)
def test_one_forward_equals_three_path_reference(method, n, k):
    spec = dict(method=method, k=k, **NO_DROPOUT_HEADS)
    if method.endswith("_hpff"):
        spec["n"] = n
    model = _build(spec)
    taps = [t for mod in model.learner.local_modules for t in mod.taps]
    assert len(taps) == 1
    ours = _step(model)
    reference = _step(model, reference_step)
    _assert_same(ours, reference)
    assert any(k.startswith("local_heads.") for k in ours)
    assert any(k.startswith("auxiliary_head.") for k in ours)


@pytest.mark.parametrize("method", ["dgl", "infopro_hpff"])
@pytest.mark.parametrize("k", [4, 3])
def test_the_auxiliary_tap_trains_only_the_module_holding_its_block(method, k):
    """Changing the auxiliary head changes the gradients of the module holding the tapped
    block and of the head, and nothing else (not even through HPFF's cascade)."""
    spec = dict(method=method, k=k, **NO_DROPOUT_HEADS)
    model = _build(spec)
    learner = model.learner
    holder = next(m for m in learner.local_modules if m.taps)
    before = _step(model, one_forward_step)
    with torch.no_grad():
        for p in model.auxiliary_head.parameters():
            p.add_(torch.randn_like(p))
    after = _step(model, one_forward_step)
    holder_params = {id(p) for p in holder.parameters()}
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    for name, p in model.named_parameters():
        if name.startswith("auxiliary_head."):
            continue
        if id(p) in holder_params:
            continue
        assert name not in changed, name
    assert any(id(dict(model.named_parameters())[n]) in holder_params for n in changed)


def test_tap_within_a_module_reaches_only_the_layers_before_it():
    """K=3 puts the tapped block (3, 1) first in module 2: blocks after it in that module
    get no gradient from the tap, the tapped block does."""
    model = _build(dict(method="dgl", k=3, **NO_DROPOUT_HEADS))
    learner = model.learner
    holder = next(m for m in learner.local_modules if m.taps)
    assert holder.taps[0].position == 0
    model.zero_grad(set_to_none=True)
    inputs, targets, images, _ = _prepared(model, _batch())
    x = inputs
    for mod in learner.local_modules[: holder.index]:
        x = mod(x).detach()
    _, (feature,) = holder.forward_tapped(x)
    holder.taps[0].head(feature, targets).loss.backward()
    tapped, after = holder.layers[0], holder.layers[1:]
    assert all(p.grad is not None for p in tapped.parameters())
    assert all(p.grad is None for layer in after for p in layer.parameters())


# ------------------------------------------------------------------ config and bad input
def test_sync_bn_becomes_bn_without_a_gpu_and_is_recorded():
    cfg = Config.fromfile(CONFIGS / "deeplabv3_r101_d8_k4_infopro_hpff.py")
    cfg.launcher = "none"
    run, changes = resolve_config(cfg)
    paths = {c.key for c in changes if c.new == "BN"}
    assert {
        "model.backbone.norm_cfg.type",
        "model.decode_head.norm_cfg.type",
        "model.auxiliary_head.norm_cfg.type",
    } <= paths
    assert run.model.backbone.norm_cfg.type == "BN"
    assert cfg.model.backbone.norm_cfg.type == "SyncBN"  # the user's config is left as it was


def test_a_crop_smaller_than_the_crop_size_is_refused_with_the_fix():
    model = _build(dict(method="e2e"))
    data = _batch(size=(CROP[0] - 8, CROP[1]))
    with pytest.raises(ValueError, match=r"smaller than the 32x64 crop size.*RandomResize"):
        model.data_preprocessor(data, True)
    model.data_preprocessor.allow_padding = True  # mmseg's behaviour on request
    out = model.data_preprocessor(data, True)
    assert out["targets"].shape[-2:] == CROP and (out["targets"][:, -8:] == 255).all()


def test_aspp_with_one_image_per_process_names_the_batch_size():
    model = _build(dict(method="infopro_hpff", k=4)).float()
    with pytest.raises(ValueError, match="batch of at least 2 images per process"):
        model.train_step(_batch(n=1), optim_wrapper=None)


def test_mode_loss_is_refused():
    model = _build(dict(method="dgl", k=4))
    inputs, _, _, batch = _prepared(model, _batch())
    with pytest.raises(RuntimeError, match="train_step"):
        model(inputs, batch["data_samples"], mode="loss")


def test_restored_images_are_the_rgb_input_in_0_1():
    model = _build(dict(method="infopro", k=4))
    data = _batch()
    out = model.data_preprocessor(data, True)
    rgb = torch.stack([img.flip(0) for img in data["inputs"]]).double() / 255  # bgr_to_rgb
    torch.testing.assert_close(out["images"].double(), rgb, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["dgl", "infopro", "dgl_hpff", "infopro_hpff"])
def test_a_local_head_trains_its_module_and_a_cascade_also_the_one_before(method):
    """Perturb the heads of module 1 only: the gradients that change are those of module 1
    (and module 0 for a cascade level) and of those heads; modules 2.. keep theirs bitwise."""
    model = _build(dict(method=method, k=4, **NO_DROPOUT_HEADS))
    learner = model.learner
    before = _step(model)
    heads = [name for name in learner.heads if name.endswith("1") and name != "aux"]
    assert heads
    with torch.no_grad():
        for name in heads:
            for p in learner.heads[name].parameters():
                p.mul_(1.5)
    after = _step(model)
    reaches = {1, 0} if method.endswith("_hpff") else {1}
    owner = {id(p): mod.index for mod in learner.local_modules for p in mod.parameters()}
    params = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    for name in changed:
        if id(params[name]) in owner:
            assert owner[id(params[name])] in reaches, name
    touched = {owner[id(params[n])] for n in changed if id(params[n]) in owner}
    assert touched == reaches


def test_data_root_option_points_mmseg_datasets_at_the_folder():
    from hpff_dist.engine.config import load_config

    cfg = load_config(str(CONFIGS / "deeplabv3_r101_d8_e2e.py"), data_root="/data/cs")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert cfg[key].dataset.data_root == "/data/cs"
