"""Split plans: published tables build and cover every block once; bad K is a clear error."""

import pytest

from hpff_dist.local.network import block_id_table
from hpff_dist.local.split import SPLIT_TABLES, SplitPlan, balanced_split, build_split_plan
from hpff_dist.models.cifar_resnet import CifarResNet

STAGES = {
    "resnet32": [5, 5, 5],
    "resnet110": [18, 18, 18],
    "resnet101": [3, 4, 23, 3],
    "resnet152": [3, 8, 36, 3],
    "resnext101_32x8d": [3, 4, 23, 3],
}


def test_table_keys_are_the_published_ones():
    assert sorted(SPLIT_TABLES["resnet32"]) == [1, 2, 3, 4, 8, 16]
    assert sorted(SPLIT_TABLES["resnet110"]) == [1, 2, 3, 4, 8, 16, 32, 55]
    for arch in ("resnet101", "resnet152", "resnext101_32x8d"):
        assert sorted(SPLIT_TABLES[arch]) == [1, 4, 8]


@pytest.mark.parametrize("arch", sorted(STAGES))
def test_every_table_builds_and_covers_all_blocks_once(arch):
    ids = block_id_table(STAGES[arch])
    for k, table in SPLIT_TABLES[arch].items():
        plan = build_split_plan(arch, k, ids)
        assert plan.source == f"table:{arch}"
        flat = [b for mod in plan.modules for b in mod]
        assert flat == list(range(len(ids)))
        assert plan.num_modules == len(table)
        assert plan.last_block_ids == [tuple(b) for b in table]
        assert plan.k == k


def test_tables_build_for_the_real_cifar_nets():
    for depth, arch in ((32, "resnet32"), (110, "resnet110")):
        net = CifarResNet(depth)
        for k in SPLIT_TABLES[arch]:
            build_split_plan(arch, k, net.block_ids)


def test_reference_quirk_in_module_counts():
    r32 = block_id_table(STAGES["resnet32"])
    r110 = block_id_table(STAGES["resnet110"])
    assert build_split_plan("resnet32", 16, r32).num_modules == 15
    assert build_split_plan("resnet110", 16, r110).num_modules == 16
    assert build_split_plan("resnet110", 32, r110).num_modules == 32
    assert build_split_plan("resnet110", 55, r110).num_modules == 54
    assert build_split_plan("resnet32", 8, r32).num_modules == 8


@pytest.mark.parametrize("n_blocks,k", [(15, 5), (15, 7), (9, 2), (54, 54), (6, 1), (7, 3)])
def test_balanced_split(n_blocks, k):
    ids = [(1, i) for i in range(n_blocks)]
    plan = build_split_plan(None, k, ids)
    sizes = [len(m) for m in plan.modules]
    assert plan.num_modules == k and sum(sizes) == n_blocks
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes)  # extra blocks go to the later modules


def test_arch_without_table_for_k_falls_back_to_balanced():
    plan = build_split_plan("resnet32", 5, block_id_table(STAGES["resnet32"]))
    assert plan.source == "balanced" and plan.num_modules == 5


@pytest.mark.parametrize("k", [0, -1, 16])
def test_impossible_k_is_a_clear_error(k):
    ids = block_id_table([5, 5, 5])
    with pytest.raises(ValueError) as err:
        balanced_split(k, ids)
    msg = str(err.value)
    assert "1 <= K <= 15" in msg and "resnet32" in msg and "resnet110" in msg


def test_table_that_does_not_fit_the_net_is_rejected():
    ids = block_id_table([3, 3, 3])  # ResNet-20: no block (1, 4)
    with pytest.raises(ValueError, match="does not exist"):
        build_split_plan("resnet32", 16, ids)
    with pytest.raises(ValueError, match="final block"):
        SplitPlan.from_last_blocks(2, [(1, 0), (2, 1)], ids, source="test")
    with pytest.raises(ValueError, match="block order"):
        SplitPlan.from_last_blocks(3, [(2, 0), (1, 2), (3, 2)], ids, source="test")


def test_plan_validates_coverage():
    ids = tuple(block_id_table([2, 2]))
    with pytest.raises(ValueError, match="exactly once"):
        SplitPlan(k=2, modules=((0, 1), (1, 2, 3)), block_ids=ids)
    with pytest.raises(ValueError, match="at least one block"):
        SplitPlan(k=2, modules=((0, 1, 2, 3), ()), block_ids=ids)
