"""The local-learning pipeline's core (``hpff_dist.local.pipeline``): stage balancing,
micro-batches, and the synchronous schedule on P x D localhost processes (torchrun + gloo),
float64, against the single-process one-forward schedule on the same micro-batches."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpff_dist.local import PlainBackward, ScaledBackward, build_local_learner
from hpff_dist.local.pipeline import (
    StageLink,
    WeightedBackward,
    balanced_stages,
    micro_batches,
    stage_bounds_from_sizes,
    stage_modules_of,
)
from hpff_dist.models.cifar_resnet import CifarResNet

SCRIPT = Path(__file__).parent / "dist_scripts" / "pipeline_core.py"
METHODS = ("dgl", "infopro", "dgl_hpff", "infopro_hpff")


def _brute_force(costs, stages):
    """The least largest stage cost over every way to cut ``costs`` into ``stages`` parts."""
    k = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, k), stages - 1):
        edges = (0, *cuts, k)
        best = min(best, max(sum(costs[a:b]) for a, b in zip(edges, edges[1:])))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_balanced_stages_minimise_the_slowest_stage(seed, stages):
    g = torch.Generator().manual_seed(seed)
    costs = (torch.rand(9, generator=g) * 10).tolist()
    bounds = balanced_stages(costs, stages)
    assert bounds[0][0] == 0 and bounds[-1][1] == 9 and len(bounds) == stages
    assert all(a < b for a, b in bounds) and all(
        b == c for (_, b), (c, _) in zip(bounds, bounds[1:])
    )
    assert max(sum(costs[a:b]) for a, b in bounds) == pytest.approx(_brute_force(costs, stages))


def test_bad_stage_requests_are_named():
    with pytest.raises(ValueError, match="cannot cut 3 local modules into 4 stages"):
        balanced_stages([1, 1, 1], 4)
    with pytest.raises(ValueError, match="add up to the 5 local modules"):
        stage_bounds_from_sizes([2, 2], 5)
    assert stage_bounds_from_sizes([2, 3], 5) == [(0, 2), (2, 5)]
    with pytest.raises(ValueError, match="prev_rank must be None exactly at stage 0"):
        StageLink(0, 2, 3, 1, receives_cascade=False)
    with pytest.raises(ValueError, match="micro_batches=9 must be between 1 and"):
        micro_batches(torch.zeros(8, 3), None, None, 9)


def test_micro_batches_weight_their_share_of_an_uneven_batch():
    inputs = torch.arange(10.0)[:, None]
    targets = list(range(10))
    parts = micro_batches(inputs, targets, inputs * 2, 4)
    assert [len(p.inputs) for p in parts] == [3, 3, 2, 2]
    assert [p.weight for p in parts] == [0.3, 0.3, 0.2, 0.2]
    assert sum((p.targets for p in parts), []) == targets
    assert torch.equal(torch.cat([p.image for p in parts]), inputs * 2)
    # The weighted micro-batch means are the batch mean.
    assert sum(p.weight * p.inputs.mean() for p in parts).item() == pytest.approx(4.5)


def test_weighted_backward_scales_losses_and_cotangents():
    w = torch.ones(3, requires_grad=True)
    plain = WeightedBackward(PlainBackward(), 0.25)
    assert plain.scale == 0.25 and hasattr(plain, "vjp")
    plain((w * 2).sum())
    plain.vjp(w * 3, torch.ones(3), [w])
    assert torch.allclose(w.grad, torch.full((3,), 0.25 * 5))
    scaled = WeightedBackward(ScaledBackward(8.0), 0.5)
    assert scaled.scale == 4.0 and not hasattr(scaled, "vjp")  # the surrogate fallback stays


def test_a_kept_stage_holds_its_own_parameters_only():
    learner = build_local_learner(
        CifarResNet(14, num_classes=5), None, 5, dict(method="dgl_hpff", k=6), image_size=16
    )
    every = dict(learner.state_dict())
    owners = [stage_modules_of(learner.local_modules[a:b]) for a, b in [(0, 2), (2, 6)]]
    expected = [
        {id(t) for part in parts for t in [*part.parameters(), *part.buffers()]} for parts in owners
    ]
    assert not expected[0] & expected[1]
    kept = []
    for (a, b), ids in zip([(0, 2), (2, 6)], expected):
        stage = build_local_learner(
            CifarResNet(14, num_classes=5), None, 5, dict(method="dgl_hpff", k=6), image_size=16
        )
        stage.keep_modules(a, b)
        assert [m.index for m in stage.local_modules] == list(range(a, b))
        assert len(list(stage.parameters())) + len(list(stage.buffers())) == len(ids)
        kept.append(set(stage.state_dict()))
    assert kept[0].isdisjoint(kept[1]) and kept[0] | kept[1] == set(every)
    assert "net.head.fc.weight" in kept[1]
    assert any(k.startswith("heads.cas2.") for k in kept[1])  # the cascade into stage 0


def _torchrun(stages: int, replicas: int, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(stages * replicas), str(SCRIPT), str(out), str(stages), str(replicas),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        pytest.fail("\n".join((proc.stdout + proc.stderr).splitlines()[-60:]))
    return json.loads(out.read_text())


@pytest.fixture(
    scope="module", params=[(2, 1), (3, 1), (4, 1), (2, 2)], ids=lambda p: f"P{p[0]}xD{p[1]}"
)
def grid(request, tmp_path_factory):
    stages, replicas = request.param
    return stages, replicas, _torchrun(stages, replicas, tmp_path_factory.mktemp("pipe") / "r.json")


@pytest.mark.parametrize("method", METHODS)
def test_pipeline_equals_the_single_process_schedule(grid, method):
    stages, replicas, results = grid
    r = results[method]
    assert r["moved"] > 1e-2, "parameters did not train: the comparison would be vacuous"
    assert not r["missing"], f"trained parameters no stage owns: {r['missing']}"
    # float64: the synchronous schedule is the same arithmetic; D>1 adds an all_reduce.
    assert r["max_rel_diff"] < 1e-10, r
