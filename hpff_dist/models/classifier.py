"""Image classifier trained end-to-end or with local learning, as an mmengine ``BaseModel``.

The backbone is any ``BlockNetwork`` from the registry; ``method`` (a plain dict, see
``hpff_dist.local``) decides how it is trained. ``train_step`` hands the schedule the optim
wrapper's backward and makes exactly one optimizer step per batch, so mmengine's loops, hooks,
AMP and our DeepSpeed strategy all see an ordinary train step.
"""

from __future__ import annotations

import torch
from mmengine.model import BaseModel
from torch import Tensor

from hpff_dist.engine.backward import loss_backward
from hpff_dist.local import build_local_learner
from hpff_dist.local.network import BlockNetwork
from hpff_dist.registry import MODELS


@MODELS.register_module()
class LocalClassifier(BaseModel):
    """Backbone + training method (e2e, dgl, infopro, dgl_hpff, infopro_hpff).

    Args:
        backbone: registry config of a ``BlockNetwork`` (e.g. ``CifarResNet``).
        method: local-learning spec, e.g. ``dict(method='dgl_hpff', k=16)``.
        arch: name of the split table to use (``resnet32`` ...); ``None`` = balanced split.
        image_size: input side length (InfoPro decoders reconstruct images of this size).
        data_preprocessor: normalisation config (``ClassifierDataPreprocessor``).
        channels_last: keep conv weights and batches in NHWC. oneDNN (CPU) and cuDNN tensor
            cores (GPU, AMP) run convolutions faster in it; the arithmetic is the same. DeepSpeed
            ZeRO re-lays parameters into its flat buffers (NCHW views): still correct, but the
            weights lose the layout, so under ZeRO only the batches are NHWC.
    """

    def __init__(
        self,
        backbone: dict,
        method: dict | None = None,
        arch: str | None = None,
        num_classes: int = 10,
        image_size: int = 32,
        data_preprocessor: dict | None = None,
        channels_last: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        # Built here (not by BaseModel) so it resolves in our registry whatever the default scope.
        preprocessor_cfg = {"type": "ClassifierDataPreprocessor", **(data_preprocessor or {})}
        if preprocessor_cfg.setdefault("channels_last", channels_last) != channels_last:
            raise ValueError(
                "data_preprocessor.channels_last differs from model.channels_last; set only "
                "model.channels_last (it lays out both the weights and the batches)"
            )
        preprocessor = MODELS.build(preprocessor_cfg)
        super().__init__(data_preprocessor=preprocessor, init_cfg=init_cfg)
        backbone = dict(backbone)
        backbone.setdefault("num_classes", num_classes)
        net = MODELS.build(backbone)
        if not isinstance(net, BlockNetwork):
            raise TypeError(
                f"backbone {backbone['type']!r} must expose stem/blocks/head/block_ids/"
                "block_channels (hpff_dist.local.network.BlockNetwork)"
            )
        self.learner = build_local_learner(
            net,
            arch,
            num_classes,
            dict(method or {"method": "e2e"}),
            image_size=image_size,
            image_channels=int(self.data_preprocessor.mean.shape[1]),
        )
        if channels_last:
            self.learner.to(memory_format=torch.channels_last)

    @property
    def net(self) -> BlockNetwork:
        return self.learner.net

    def forward(
        self,
        inputs: Tensor,
        images: Tensor | None = None,
        targets: Tensor | None = None,
        mode: str = "tensor",
    ):
        if mode == "tensor":
            return self.learner(inputs)
        if mode == "predict":
            return [dict(logits=self.learner(inputs).detach(), targets=targets)]
        if mode == "loss":
            raise RuntimeError(
                "local learning backpropagates inside train_step (several backward calls per "
                "step); call model.train_step(data, optim_wrapper) instead of mode='loss'"
            )
        raise ValueError(f"unknown mode {mode!r}: use 'tensor', 'predict' or 'loss'")

    def train_step(self, data, optim_wrapper) -> dict[str, Tensor]:
        counts = getattr(optim_wrapper, "_accumulative_counts", 1)
        if counts != 1 and getattr(optim_wrapper, "loss_backward", None) is None:
            # mmengine's OptimWrapper counts backward calls, not steps, and ``step()`` ignores
            # the count: with several backward calls per step accumulation would be wrong.
            raise ValueError(
                f"optim_wrapper.accumulative_counts={counts} is not supported by the single-process "
                "local-learning step; use strategy=dict(type='LocalDeepSpeedStrategy', "
                "gradient_accumulation_steps=N) or a larger batch"
            )
        backward = loss_backward(optim_wrapper)
        with optim_wrapper.optim_context(self):
            batch = self.data_preprocessor(data, True)
            out = self.learner.train_step_losses(
                batch["inputs"], batch["targets"], batch["images"], backward
            )
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        log_vars = {k: v.detach() for k, v in out.losses.items()}
        if out.logits is not None:
            log_vars["acc"] = (out.logits.argmax(1) == batch["targets"]).float().mean() * 100
        return log_vars
