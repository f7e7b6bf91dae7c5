"""``LocalClassifier`` options that change how, not what, it computes."""

import pytest
import torch

from hpff_dist.local import PlainBackward
from hpff_dist.registry import MODELS


def _grads(channels_last: bool, method: dict):
    torch.manual_seed(0)
    model = MODELS.build(
        dict(
            type="LocalClassifier",
            backbone=dict(type="CifarResNet", depth=14),
            method=method,
            num_classes=5,
            image_size=16,
            data_preprocessor=dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
            channels_last=channels_last,
        )
    )
    g = torch.Generator().manual_seed(1)
    batch = model.data_preprocessor([torch.rand(4, 3, 16, 16, generator=g), torch.arange(4)])
    # float64 after the preprocessor (which makes float32): .double() keeps the memory format
    model.learner.double()
    inputs, images = batch["inputs"].double(), batch["images"].double()
    model.learner.train_step_losses(inputs, batch["targets"], images, PlainBackward())
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return model, inputs, grads


@pytest.mark.parametrize(
    "method", [dict(method="e2e"), dict(method="infopro_hpff", k=4, aux_net="1c2f", pff=dict(n=2))]
)
def test_channels_last_gives_the_same_gradients(method):
    _, inputs, ref = _grads(False, method)
    assert inputs.is_contiguous()
    model, inputs, ours = _grads(True, method)
    assert inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous()
    convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs
    )
    assert set(ours) == set(ref) and len(ref) > 10
    for name, g in ref.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_conflicting_channels_last_settings_are_refused():
    with pytest.raises(ValueError, match="model.channels_last"):
        MODELS.build(
            dict(
                type="LocalClassifier",
                backbone=dict(type="CifarResNet", depth=8),
                data_preprocessor=dict(channels_last=True),
            )
        )
