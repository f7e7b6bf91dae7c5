"""``LocalEncoderDecoder``: mmseg's ``EncoderDecoder`` trained with local learning.

Everything but the training step is mmseg's: the backbone, decode and auxiliary heads are
built by mmseg's registry from mmseg's own configs, inference (whole image or sliding window),
post-processing, ``SegTTAModel`` and ``IoUMetric`` are mmseg's, and parameter names are
mmseg's (an mmseg DeepLabV3 checkpoint loads; only ``local_heads.*`` are ours). Training cuts the
backbone's residual blocks into K local modules (``method``, the split tables of ``arch``):

* the decode head (ASPP) and its loss train the last module, as the task's head;
* the auxiliary head (``FCNHead`` at the end of stage 3) is a *tap*: its loss trains the
  module that contains that block, with the gradient stopping at the module's input (E2E:
  everywhere, as in mmseg). With the ResNet-101 tables for K=2, 4 and 8 stage 3 ends inside
  the last module, so the auxiliary loss trains the last module beside the decode head;
* the local heads (``hpff_dist.local.dense_heads``, built from the method's levels) train the
  others; ``method=dict(method='infopro_hpff', k=4)`` gets the dense heads by default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from torch import Tensor, nn

from hpff_dist.local import BlockTap, build_local_learner
from hpff_dist.local.dense_heads import DENSE_METHODS, dense_levels
from hpff_dist.local.schedule import StepOutput
from hpff_dist.models.local_step import LocalTrainStepMixin
from hpff_dist.registry import MODELS
from segmentation.mmseg_heads import DecodeHeadLoss, DecodeHeadOnFeature, MMSegAuxHead
from segmentation.resnet_blocks import MMSegResNetBlocks

#: method keys of the segmentation form that ``dense_levels`` takes (the rest go to the spec).
_DENSE_LEVEL_KEYS = ("n", "w_ind", "w_cas", "dgl_head", "infopro_head")


def dense_method(method: dict | None) -> dict[str, Any]:
    """The spec for a segmentation method: ``dgl``/``infopro``/``*_hpff`` without explicit
    levels get their dense form (``dense_levels``: ``DGLSegHead``, ``InfoProSegHead``, PFF with
    ``n`` x ``n`` patches); anything else (``e2e``, explicit ``levels``) passes unchanged."""
    method = dict(method or {"method": "e2e"})
    if method.get("method") in DENSE_METHODS and "levels" not in method:
        options = {key: method.pop(key) for key in _DENSE_LEVEL_KEYS if key in method}
        method["levels"] = dense_levels(method["method"], **options)
    return method


@MODELS.register_module()
class LocalEncoderDecoder(LocalTrainStepMixin, EncoderDecoder):
    """mmseg's ``EncoderDecoder`` with a local-learning ``train_step``.

    Args:
        backbone, decode_head, auxiliary_head, train_cfg, test_cfg, init_cfg: as mmseg's
            (``type='mmseg.ResNetV1c'``, ``'mmseg.ASPPHead'``, ``'mmseg.FCNHead'`` ...).
        method: the local-learning spec, e.g. ``dict(method='infopro_hpff', k=4)`` (dense
            heads by default, see :func:`dense_method`); ``dict(method='e2e')`` is mmseg's
            training.
        arch: split table (``'resnet101'``: K=4 and 8 from the tables, K=2 balanced).
        image_size: the (H, W) training crop; InfoPro's decoders reconstruct this size.
        data_preprocessor: ``LocalSegDataPreProcessor`` options (mmseg's ``SegDataPreProcessor``
            ones, plus ``allow_padding``).
    """

    def __init__(
        self,
        backbone: dict,
        decode_head: dict,
        method: dict | None = None,
        arch: str | None = "resnet101",
        image_size: tuple[int, int] | list[int] = (512, 1024),
        auxiliary_head: dict | list | None = None,
        data_preprocessor: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        pretrained: str | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        preprocessor = MODELS.build(
            {"type": "LocalSegDataPreProcessor", **(data_preprocessor or {})}
        )
        super().__init__(
            backbone=backbone,
            decode_head=decode_head,
            auxiliary_head=auxiliary_head,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=preprocessor,
            pretrained=pretrained,
            init_cfg=init_cfg,
        )
        self.image_size = tuple(int(s) for s in image_size)
        head = DecodeHeadOnFeature(self.decode_head)
        net = MMSegResNetBlocks(self.backbone, head)
        self._check_reads_last_stage(head.in_index, net)
        learner = build_local_learner(
            net,
            arch,
            self.num_classes,
            dense_method(method),
            image_size=self.image_size,
            image_channels=3,
            task_loss=DecodeHeadLoss(self.decode_head),
            taps=self._auxiliary_taps(net),
        )
        # The learner's network parts belong to this model (backbone, decode_head,
        # auxiliary_head) under mmseg's names; only its local heads are registered here.
        object.__setattr__(self, "learner", learner)
        self.local_heads = learner.heads

    def _stage_end(self, in_index: int, net: MMSegResNetBlocks) -> int:
        out_indices = tuple(self.backbone.out_indices)
        return net.stage_ends[out_indices[in_index]]

    def _check_reads_last_stage(self, in_index: int, net: MMSegResNetBlocks) -> None:
        if self.with_neck:
            raise ValueError("LocalEncoderDecoder trains backbone + heads; a neck is not supported")
        if self._stage_end(in_index, net) != len(net.blocks) - 1:
            raise ValueError(
                f"decode_head.in_index={in_index} reads backbone stage "
                f"{self.backbone.out_indices[in_index] + 1}, not the last one: the last module's "
                "head must read the last block"
            )

    def _auxiliary_taps(self, net: MMSegResNetBlocks) -> list[BlockTap]:
        if not self.with_auxiliary_head:
            return []
        heads = self.auxiliary_head
        heads = list(heads) if isinstance(heads, nn.ModuleList) else [heads]
        names = ["aux"] if len(heads) == 1 else [f"aux_{i}" for i in range(len(heads))]
        return [
            BlockTap(name, self._stage_end(int(head.in_index), net), MMSegAuxHead(head))
            for name, head in zip(names, heads)
        ]

    def train_step(self, data: Any, optim_wrapper: Any) -> dict[str, Tensor]:
        """The local-learning step; refuses the batch of one that ASPP's pooling branch
        cannot normalise (BatchNorm of a 1x1 map of one image) with the fix, not BN's error."""
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if inputs is not None and len(inputs) < 2 and hasattr(self.decode_head, "image_pool"):
            raise ValueError(
                f"{type(self.decode_head).__name__} needs a batch of at least 2 images per "
                f"process in training, got {len(inputs)}: its image-pooling branch applies "
                "BatchNorm to one 1x1 map per image. Set train_dataloader.batch_size >= 2"
            )
        return super().train_step(data, optim_wrapper)

    def loss(self, inputs: Tensor, data_samples: Any) -> dict:
        raise RuntimeError(
            "local learning backpropagates inside train_step (several backward calls per step); "
            "call model.train_step(data, optim_wrapper) instead of mode='loss'"
        )

    def task_log_vars(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Pixel accuracy (%) of the decode head on the labelled pixels (mmseg's acc_seg)."""
        if out.logits is None:
            return {}
        labels = batch["targets"]
        with torch.no_grad():
            logits = F.interpolate(
                out.logits,
                size=labels.shape[-2:],
                mode="bilinear",
                align_corners=self.decode_head.align_corners,
            )
            keep = labels != self.decode_head.ignore_index
            correct = (logits.argmax(1) == labels) & keep
            return {"acc_seg": correct.sum() * 100.0 / keep.sum().clamp_min(1)}
