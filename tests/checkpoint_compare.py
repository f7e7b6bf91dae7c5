"""Bitwise comparison of two training checkpoints (the exact-resume tests' reference check)."""

from __future__ import annotations

import torch


def assert_checkpoints_bitwise_equal(a: dict, b: dict) -> None:
    """Weights, buffers, optimizer state, learning rate and schedule of two checkpoints."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differing = [
        k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])
    ]
    assert not differing, f"{len(differing)} of {len(a['state_dict'])} differ: {differing[:5]}"
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for key in state_a:
        for name, value in state_a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[key][name])), name
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["param_schedulers"] == b["param_schedulers"]
