"""Image classifier trained end-to-end or with local learning, as an mmengine ``BaseModel``.

The backbone is any ``BlockNetwork`` from the registry; ``method`` (a plain dict, see
``hpff_dist.local``) decides how it is trained. The train step is the shared one
(``hpff_dist.models.local_step``); this class adds what is classification's own: the
cross-entropy task loss of the last module, accuracy in the log, logits at inference.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor

from hpff_dist.local import build_local_learner
from hpff_dist.local.network import BlockNetwork
from hpff_dist.local.schedule import StepOutput
from hpff_dist.models.local_step import LocalTrainStepMixin
from hpff_dist.registry import MODELS

#: keyword arguments of ``torch.nn.functional.cross_entropy`` the ``loss`` option may set.
CROSS_ENTROPY_OPTIONS = ("ignore_index", "label_smoothing")


@MODELS.register_module()
class LocalClassifier(LocalTrainStepMixin, BaseModel):
    """Backbone + training method (e2e, dgl, infopro, dgl_hpff, infopro_hpff).

    Args:
        backbone: registry config of a ``BlockNetwork`` (e.g. ``CifarResNet``).
        method: local-learning spec, e.g. ``dict(method='dgl_hpff', k=16)``.
        arch: name of the split table to use (``resnet32`` ...); ``None`` = balanced split.
        image_size: input side length (InfoPro decoders reconstruct images of this size).
        data_preprocessor: normalisation config (``ClassifierDataPreprocessor``).
        loss: options of the task's cross entropy (``ignore_index``, ``label_smoothing``),
            used by the last module's head and by E2E.
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
        loss: dict | None = None,
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
                "feature_info (hpff_dist.local.network.BlockNetwork)"
            )
        loss = dict(loss or {})
        unknown = set(loss) - set(CROSS_ENTROPY_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown model.loss keys {sorted(unknown)}; valid keys: {CROSS_ENTROPY_OPTIONS}"
            )
        self.learner = build_local_learner(
            net,
            arch,
            num_classes,
            dict(method or {"method": "e2e"}),
            image_size=image_size,
            image_channels=int(self.data_preprocessor.mean.shape[1]),
            task_loss=functools.partial(F.cross_entropy, **loss) if loss else F.cross_entropy,
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

    def task_log_vars(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, Tensor]:
        if out.logits is None:
            return {}
        return {"acc": (out.logits.argmax(1) == batch["targets"]).float().mean() * 100}
