"""ViT as a local-learning block network, and the token heads (float64, small ViT, CPU).

torchvision's ViT regrouped as stem + encoder blocks + head gives its logits exactly; the
token heads (DGL classifier, InfoPro decoder) train it with every method, the one-forward
schedule giving the three-path reference's gradients; PFF on the token grid is exact one group
at a time; losses stay in their modules; layouts are refused where a head cannot read them.
"""

from __future__ import annotations

import pytest
import torch
from test_local_schedule import (
    _ids,
    _only,
    _touched,
    assert_same_grads,
    grads,
    reference_hilo,
    reference_independent,
)
from torchvision.models import vit_b_16
from torchvision.models.vision_transformer import VisionTransformer

from hpff_dist.local import HEADS, HeadContext, build_local_learner
from hpff_dist.local.features import FeatureInfo
from hpff_dist.local.pff import PatchFusedClassifier, PatchwiseReconstruction
from hpff_dist.local.spec import with_overrides
from hpff_dist.local.split import build_split_plan
from hpff_dist.local.token_heads import (
    TokenClassifierHead,
    TokenReconstructionHead,
    tokens_to_map,
)
from hpff_dist.models.vit import TorchvisionViT, from_torchvision_state_dict

SIZE, PATCH, CLASSES, BATCH = 16, 4, 5, 4
SMALL = dict(
    image_size=SIZE, patch_size=PATCH, num_layers=6, num_heads=2, hidden_dim=16, mlp_dim=32
)
TOKEN_HEADS = dict(aux_net="token2f", decoder="token", feature_dim=12)


def _randomise_head(model: VisionTransformer) -> None:
    """torchvision zero-initialises the classifier; random weights make the logits tell."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


# ------------------------------------------------------------------ the block network
def test_small_vit_logits_are_torchvisions_with_the_same_weights():
    torch.manual_seed(0)
    reference = VisionTransformer(num_classes=CLASSES, **SMALL).double().eval()
    _randomise_head(reference)
    net = TorchvisionViT(num_classes=CLASSES, **SMALL).double().eval()
    net.load_state_dict(from_torchvision_state_dict(reference.state_dict()))
    images = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    assert torch.equal(net(images), reference(images))
    assert net.block_ids == [(1, i) for i in range(6)]
    assert net.feature_info == [FeatureInfo(16, PATCH, "NLC", prefix_tokens=1)] * 6
    # The stem emits the class token + the 4x4 token grid; a block keeps that shape.
    assert net.stem(images).shape == (3, 1 + 16, 16)


def test_vit_b16_logits_are_torchvisions_vit_b_16():
    torch.manual_seed(0)
    reference = vit_b_16(weights=None, num_classes=10).eval()
    _randomise_head(reference)
    net = TorchvisionViT(num_classes=10).eval()  # the defaults are ViT-B/16
    net.load_state_dict(from_torchvision_state_dict(reference.state_dict()))
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(net(image), reference(image))
    assert len(net.blocks) == 12
    assert net.feature_info[0] == FeatureInfo(768, 16, "NLC", prefix_tokens=1)
    # Wrapping shares torchvision's modules: same parameters, no copies.
    shared = TorchvisionViT.from_torchvision(reference)
    assert shared.stem.class_token is reference.class_token
    assert shared.blocks[11] is reference.encoder.layers[11]


def test_k12_is_one_block_per_module_and_other_k_is_balanced():
    net = TorchvisionViT(num_classes=CLASSES, **dict(SMALL, num_layers=12))
    assert build_split_plan(None, 12, net.block_ids).modules == tuple((i,) for i in range(12))
    assert [len(m) for m in build_split_plan(None, 5, net.block_ids).modules] == [2, 2, 2, 3, 3]
    learner = build_learner(dict(method="dgl_hpff", k=12), layers=12)
    assert learner.plan.num_modules == 12
    assert isinstance(learner.heads["cas1"].inner, TokenClassifierHead)


# ------------------------------------------------------------------ schedules vs reference
def build_learner(method: dict, layers: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    net = TorchvisionViT(num_classes=CLASSES, **dict(SMALL, num_layers=layers))
    _randomise_head(net.head)  # else the last module's blocks get no gradient at step 0
    spec = {**TOKEN_HEADS, **method}
    return build_local_learner(net, None, CLASSES, spec, image_size=SIZE).double().train()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    restored = torch.rand(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    return images, torch.tensor([0, 1, 2, 1]), restored


def _hilo(*args):
    reference_hilo(*args, 0.001, 0.999)


CASES = [
    ("dgl", dict(), reference_independent),
    ("dgl", dict(pff=dict(n=2)), reference_independent),
    ("infopro", dict(ixy_2=0.1), reference_independent),
    ("infopro", dict(ixy_2=0.1, pff=dict(n=2)), reference_independent),
    ("dgl_hpff", dict(), _hilo),
    ("dgl_hpff", dict(pff=None, aux_net="token1f"), _hilo),
    ("infopro_hpff", dict(ixy_2=0.1), _hilo),
    ("infopro_hpff", dict(local_loss="contrast", ixx_2=1.0, ixy_2=0.25), _hilo),
]


@pytest.mark.parametrize("k", [3, 6])
@pytest.mark.parametrize("method,extra,reference", CASES)
def test_one_forward_matches_the_three_path_reference(method, extra, reference, k):
    images, targets, restored = batch()
    learner = build_learner(dict(method=method, k=k, **extra))
    learner.train_step_losses(images, targets, restored)
    ours = grads(learner)
    learner.zero_grad(set_to_none=True)
    reference(learner, images, targets, restored)  # written plainly, in tests/
    assert_same_grads(ours, grads(learner))
    learner.zero_grad(set_to_none=True)
    learner.spec = with_overrides(learner.spec, schedule="reference")
    learner.train_step_losses(images, targets, restored)  # the packaged three-path schedule
    assert_same_grads(ours, grads(learner))


def test_the_hpff_presets_build_token_heads_with_pff_on_both_levels():
    learner = build_learner(dict(method="infopro_hpff", k=4))
    ind, cas = learner.heads["ind1"], learner.heads["cas1"]
    assert isinstance(ind, PatchFusedClassifier) and isinstance(ind.inner, TokenClassifierHead)
    assert isinstance(cas.reconstruction, PatchwiseReconstruction)
    assert isinstance(cas.reconstruction.inner, TokenReconstructionHead)
    assert isinstance(cas.classifier.inner, TokenClassifierHead)
    # InfoPro's lambdas as the CNN InfoProHead takes them: ratio = i / (K - 2) = 1/2 here.
    assert (cas.ixx, cas.ixy) == (2.5, 0.25)


# ------------------------------------------------------------------ PFF on the token grid
def _tokens(side: int = 8, channels: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(BATCH, 1 + side * side, channels, generator=g, dtype=torch.float64)
    image = torch.rand(BATCH, 3, side * PATCH, side * PATCH, generator=g, dtype=torch.float64)
    return feat, torch.tensor([0, 1, 2, 1]), image


def _token_ctx(side: int = 8, channels: int = 6) -> HeadContext:
    feature = FeatureInfo(channels, PATCH, "NLC", prefix_tokens=1)
    return HeadContext(feature, 1, 4, 3, image_size=(side * PATCH, side * PATCH))


def _grads_of(head, run, feat):
    leaf = feat.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    run(leaf)
    out = {n: p.grad.clone() for n, p in head.named_parameters()}
    out["<feature>"] = leaf.grad.clone()
    return out


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(type="PatchFusedClassifier", head=dict(type="TokenClassifierHead", feature_dim=5)),
        dict(
            type="PatchFusedClassifier",
            head=dict(type="TokenClassifierHead", fcs=1, loss="contrast", feature_dim=5),
        ),
        dict(type="PatchwiseReconstruction", head=dict(type="TokenReconstructionHead")),
        dict(
            type="PatchwiseReconstruction",
            patch_loss="mean",
            head=dict(type="TokenReconstructionHead", head=dict(type="ReconstructionHead")),
        ),
    ],
)
def test_pff_one_group_at_a_time_equals_all_at_once(cfg, n):
    torch.manual_seed(0)
    head = HEADS.build(dict(cfg, n=n), _token_ctx()).double()
    feat, targets, image = _tokens()

    def at_once(leaf):
        (head(leaf, targets, image).loss * 0.7).backward()

    def one_at_a_time(leaf):
        head.accumulate(leaf, targets, image, 0.7, lambda loss: loss.backward())

    ref, ours = _grads_of(head, at_once, feat), _grads_of(head, one_at_a_time, feat)
    for name, g in ref.items():
        assert (ours[name] - g).norm() <= 1e-12 * max(g.norm(), 1e-12), name
    # The class token is in no group: no PFF head reads it.
    assert torch.count_nonzero(ours["<feature>"][:, 0]) == 0
    assert torch.count_nonzero(ours["<feature>"][:, 1:]) > 0


def test_a_token_group_reconstructs_the_pixels_its_tokens_cover():
    torch.manual_seed(0)
    head = HEADS.build(
        dict(type="PatchwiseReconstruction", n=3, head=dict(type="TokenReconstructionHead")),
        _token_ctx(),
    ).double()
    feat, targets, image = _tokens()
    pairs = head._pairs(feat, image)
    # 8 tokens per side in 3 groups: 3, 3, 2 tokens = 12, 12, 8 pixels (4 per token).
    assert [(g.shape[1], tuple(p.shape[-2:])) for g, p in pairs[:3]] == [
        (9, (12, 12)),
        (9, (12, 12)),
        (6, (12, 8)),
    ]
    grid = feat[:, 1:].reshape(BATCH, 8, 8, 6)
    last = tokens_to_map(pairs[-1][0], (2, 2))
    assert torch.equal(last, grid[:, 6:, 6:].permute(0, 3, 1, 2))
    assert torch.equal(pairs[-1][1], image[..., 24:, 24:])
    total = sum(head.inner(g, targets, p).loss for g, p in pairs)
    assert torch.allclose(head(feat, targets, image).loss, total, rtol=0, atol=0)


def test_the_token_classifier_mean_pools_grid_tokens_and_ignores_the_class_token():
    torch.manual_seed(0)
    head = HEADS.build(dict(type="TokenClassifierHead"), _token_ctx()).double()
    feat, targets, _ = _tokens()
    leaf = feat.clone().requires_grad_()
    out = head(leaf, targets)
    out.loss.backward()
    assert torch.equal(out.logits, head.net(feat[:, 1:]))
    assert torch.count_nonzero(leaf.grad[:, 0]) == 0


# ------------------------------------------------------------------ gradient isolation
@pytest.mark.parametrize("module", [1, 3, 5])
def test_an_independent_loss_stays_in_its_module(module):
    learner = build_learner(dict(method="infopro_hpff", k=6))
    images, targets, restored = batch()
    _only(learner, module, "ind")
    learner.train_step_losses(images, targets, restored)
    mod = learner.local_modules[module]
    head = mod.ind_head.classifier if module == 5 else mod.ind_head
    touched = _touched(learner)
    assert touched <= _ids(mod.parameters()) | _ids(head.parameters())
    assert _ids(mod.parameters()) <= touched


@pytest.mark.parametrize("module", [1, 2, 5])
def test_a_cascade_loss_reaches_exactly_its_module_and_the_one_before(module):
    learner = build_learner(dict(method="infopro_hpff", k=6))
    images, targets, restored = batch()
    _only(learner, module, "cas")
    learner.train_step_losses(images, targets, restored)
    mods = learner.local_modules
    head = mods[module].cas_head.classifier if module == 5 else mods[module].cas_head
    both = _ids(mods[module].parameters()) | _ids(mods[module - 1].parameters())
    touched = _touched(learner)
    assert touched <= both | _ids(head.parameters())
    assert both <= touched
    if module == 1:  # module 0 holds the stem: class token and position embedding learn here
        stem = learner.net.stem
        assert {id(stem.class_token), id(stem.pos_embedding)} <= touched


# ------------------------------------------------------------------ the layout contract
MAP_CTX = HeadContext(FeatureInfo(6, 4), 1, 4, 3, image_size=(32, 32))


@pytest.mark.parametrize("head", ["TokenClassifierHead", "TokenReconstructionHead"])
def test_token_heads_are_refused_on_maps(head):
    with pytest.raises(ValueError, match=f"{head} accepts NLC features, but this block emits NCHW"):
        HEADS.build(dict(type=head), MAP_CTX)
    wrapped = dict(type="PatchFusedClassifier", n=2, head=dict(type=head))
    with pytest.raises(ValueError, match="accepts NLC features, but this block emits NCHW"):
        HEADS.build(wrapped, MAP_CTX)


@pytest.mark.parametrize(
    "spec,refused",
    [
        (dict(method="dgl", k=3, aux_net="0c2f"), "ClassifierAuxHead"),
        (dict(method="dgl_hpff", k=3, aux_net="2c2f"), "ClassifierAuxHead"),
        (dict(method="infopro", k=3, aux_net="token2f", ixy_2=0.1), "ReconstructionHead"),
        (dict(method="infopro", k=3, aux_net="bottleneck", decoder="token"), "BottleneckAuxHead"),
        (
            dict(
                method="infopro_hpff",
                k=4,
                aux_net="token2f",
                decoder="token",
                pff=dict(variant="official"),
            ),
            "OfficialPatchDecoder",
        ),
    ],
)
def test_cnn_heads_are_refused_on_tokens(spec, refused):
    torch.manual_seed(0)
    net = TorchvisionViT(num_classes=CLASSES, **SMALL)
    with pytest.raises(
        ValueError, match=f"{refused} accepts NCHW features, but this block emits NLC"
    ):
        build_local_learner(net, None, CLASSES, spec, image_size=SIZE)


def test_a_token_decoder_given_the_wrong_grid_says_so():
    head = HEADS.build(dict(type="TokenReconstructionHead"), _token_ctx()).double()
    feat, targets, image = _tokens()
    with pytest.raises(ValueError, match="do not form a 7x7 grid"):
        head(feat, targets, image[..., :28, :28])
