"""The method spec: presets, overrides, and clear errors for unknown keys."""

import pytest
import torch

from hpff_dist.local import PRESETS, build_local_learner, build_spec
from hpff_dist.local.pff import PatchFusedClassifier, PatchwiseReconstruction
from hpff_dist.models.cifar_resnet import CifarResNet


def test_presets():
    hpff = build_spec(dict(method="infopro_hpff"))
    assert (hpff.w_ind, hpff.w_cas, hpff.first_module, hpff.last_module) == (
        0.001,
        0.999,
        "cascade_only",
        "both",
    )
    assert (hpff.ind_head, hpff.cas_head) == ("classifier", "infopro")
    assert hpff.pff.n == 2 and hpff.pff.variant == "paper"
    assert set(hpff.pff.levels) == {"independent", "cascade"}
    dgl = build_spec(dict(method="dgl_hpff"))
    assert (dgl.ind_head, dgl.cas_head) == ("classifier", "classifier")
    plain = build_spec(dict(method="dgl"))
    assert (plain.w_ind, plain.w_cas, plain.pff, plain.first_module) == (
        1.0,
        0.0,
        None,
        "independent",
    )
    assert build_spec(dict(method="infopro")).ind_head == "infopro"
    assert build_spec(dict(method="e2e")).is_e2e
    assert set(PRESETS) == {"e2e", "dgl", "infopro", "dgl_hpff", "infopro_hpff"}


def test_overrides():
    spec = build_spec(
        dict(
            method="dgl_hpff",
            k=8,
            aux_net="0c2f",
            w_ind=0.0,
            w_cas=1.0,
            pff=dict(n=3, levels="cascade"),
            schedule="reference",
        )
    )
    assert (spec.k, spec.aux_net, spec.w_ind, spec.schedule) == (8, "0c2f", 0.0, "reference")
    assert spec.pff.n == 3 and spec.pff.levels == ("cascade",)
    assert build_spec(dict(method="dgl_hpff", pff=None)).pff is None
    assert build_spec(spec.to_dict()) == spec


def test_unknown_keys_are_listed():
    with pytest.raises(
        ValueError, match=r"unknown local-learning keys \['lr'\]; valid keys: .*w_cas"
    ):
        build_spec(dict(method="dgl", lr=0.1))
    with pytest.raises(ValueError, match=r"unknown pff keys \['size'\]; valid keys"):
        build_spec(dict(method="dgl_hpff", pff=dict(size=2)))


@pytest.mark.parametrize(
    "bad",
    [
        dict(method="dgl2"),
        dict(method="dgl", first_module="none"),
        dict(method="dgl", aux_net="3x"),
        dict(method="dgl", k=0),
        dict(method="dgl", w_ind=0.0),
        dict(method="dgl", schedule="fast"),
        dict(method="dgl_hpff", pff=dict(variant="mine")),
        dict(method="dgl", local_loss="mse"),
        dict(k=2),
    ],
)
def test_invalid_values(bad):
    with pytest.raises(ValueError):
        build_spec(bad)


def test_learner_builds_heads_per_spec():
    net = CifarResNet(14, num_classes=5)
    learner = build_local_learner(net, None, 5, dict(method="infopro_hpff", k=6, pff=dict(n=2)))
    assert learner.plan.num_modules == 6 and learner.needs_image
    # K=6, ixx_2 = ixy_2 = 0: the lambdas reach 0 at module 4, so it has no cascade head
    assert sorted(learner.heads) == sorted(
        [f"ind{i}" for i in range(1, 5)] + [f"cas{i}" for i in range(1, 4)]
    )
    assert isinstance(learner.heads["ind1"], PatchFusedClassifier)
    assert isinstance(learner.heads["cas1"].reconstruction, PatchwiseReconstruction)
    # every parameter exactly once, heads included
    n_params = sum(1 for _ in learner.parameters())
    assert n_params == len({id(p) for p in learner.parameters()})
    assert n_params == len(list(net.parameters())) + len(list(learner.heads.parameters()))
    # the cascade lambdas follow InfoPro's schedule over the nominal K
    assert learner.heads["cas1"].ixx == pytest.approx(5 * (1 - 1 / 4))
    assert learner.local_modules[4].cas_head is None


def test_learner_uses_published_table_and_checks_image_size():
    learner = build_local_learner(
        CifarResNet(32), "resnet32", 10, dict(method="dgl_hpff", k=16), image_size=32
    )
    assert learner.plan.source == "table:resnet32" and len(learner.local_modules) == 15
    assert not learner.needs_image
    with pytest.raises(ValueError, match="expected"):
        learner.train_step_losses(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))


def test_module_without_gradient_is_an_error():
    net = CifarResNet(14, num_classes=5)
    with pytest.raises(ValueError, match="module 0 would get no gradient"):
        build_local_learner(net, None, 5, dict(method="dgl_hpff", k=4, w_cas=0.0))
    with pytest.raises(ValueError, match="would get no gradient"):
        build_local_learner(net, None, 5, dict(method="infopro", k=4))  # lambdas hit 0 at module 2
