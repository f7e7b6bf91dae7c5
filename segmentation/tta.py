"""Test-time augmentation that leaves checkpoint loading alone and keeps each image's metainfo.

mmseg's ``tools/test.py --tta`` replaces ``cfg.model`` by ``cfg.tta_model`` wrapping it
(``module=cfg.model``). Here that would break loading: the runner's model would then be the
wrapper, whose parameter names start with ``module.``, so the strict key check of
``LocalRunner``/``LocalDeepSpeedStrategy`` (and DeepSpeed's own load) would refuse every
checkpoint tools/train.py writes. :class:`TTATestLoop` keeps the runner's model, and its
checkpoint handling, as they are, and wraps the loaded model for prediction only.

:class:`SegTTAAverage` is mmseg's ``SegTTAModel`` arithmetic (mean of each view's softmax,
argmax), accumulated view by view (mmseg holds every view's full-size logits at once: 12 maps
of 19 x 1024 x 2048 per Cityscapes image), with a merged sample that is the *image's*:

* mmseg's merged sample is the last view's (flip=True, the last scale's ``img_shape``, that
  view's ``seg_logits``); through mmseg 1.0 it was a fresh ``SegDataSample`` without
  ``img_path``, hence ``KeyError: 'img_path'`` in ``IoUMetric.process`` when an ``output_dir``
  is set (mmseg's ``--tta --out``, open-mmlab/mmsegmentation#3064). Ours keeps every metainfo
  key of the image (``img_path``, ``seg_map_path``, ``ori_shape`` ...) and drops the per-view
  ones (``img_shape``, ``scale_factor``, ``flip`` ...);
* ``seg_logits`` is the merged prediction's: log of the mean probabilities (softmax of it gives
  them back; argmax is ``pred_sem_seg``), not one view's logits;
* images without ground truth (a test split) give predictions without ``gt_sem_seg``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.structures import PixelData
from mmseg.models.segmentors import SegTTAModel
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from hpff_dist.compat import defer_deepspeed_import_in_mmengine
from hpff_dist.registry import LOOPS, MODELS

defer_deepspeed_import_in_mmengine()  # before mmengine.runner, as in mmengine_runner.py

from mmengine.runner import TestLoop  # noqa: E402
from mmengine.runner.amp import autocast  # noqa: E402

__all__ = ["VIEW_KEYS", "SegTTAAverage", "TTATestLoop", "build_tta_model", "split_views"]

#: metainfo keys that describe one augmented view, not the image: dropped when merging.
VIEW_KEYS = frozenset(
    {"img_shape", "pad_shape", "scale_factor", "keep_ratio", "flip", "flip_direction",
     "padding_size", "img_padding_size", "homography_matrix"}
)  # fmt: skip


def split_views(data: Any) -> list[Any]:
    """A TTA batch (``pseudo_collate`` of ``TestTimeAug`` outputs: ``inputs[view][image]``)
    -> one ordinary batch per view, as ``BaseTTAModel.test_step`` cuts it."""
    if isinstance(data, Mapping):
        count = len(data[next(iter(data))])
        return [{key: value[index] for key, value in data.items()} for index in range(count)]
    if isinstance(data, (tuple, list)):
        return [[part[index] for part in data] for index in range(len(data[0]))]
    raise TypeError(f"a TTA batch is a dict, tuple or list, got {type(data).__name__}")


@MODELS.register_module()
class SegTTAAverage(SegTTAModel):
    """mmseg's ``SegTTAModel`` (mean of softmax over views, argmax) with the image's metainfo
    and ground truth kept, views accumulated one at a time (see the module docstring).

    ``seg_logits`` of a merged sample: log of the mean probabilities (C > 1), or the mean
    probability (C == 1, as mmseg's ``postprocess_result`` stores sigmoid outputs there;
    mmseg's ``SegTTAModel`` applies a second sigmoid to those)."""

    def test_step(self, data: Any) -> list[SegDataSample]:
        sums: list[Tensor] = []
        firsts: list[SegDataSample] = []
        views = split_views(data)
        for view in views:
            samples = self.module.test_step(view)
            for index, sample in enumerate(samples):
                probs = self._probabilities(sample)
                if index == len(sums):
                    sums.append(probs.clone())
                    firsts.append(sample)
                else:
                    sums[index] += probs
                del sample.seg_logits  # only the running sum is kept
        count = len(views)
        return [self._merged(first, total / count, count) for first, total in zip(firsts, sums)]

    def merge_preds(self, data_samples_list: Sequence[Sequence[SegDataSample]]) -> list:
        """The same merge for predictions already made (``BaseTTAModel``'s interface):
        ``data_samples_list[image][view]``."""
        merged = []
        for views in data_samples_list:
            total = sum(self._probabilities(view) for view in views)
            merged.append(self._merged(views[0], total / len(views), len(views)))
        return merged

    def _probabilities(self, sample: SegDataSample) -> Tensor:
        """(C, H, W) class probabilities of one view, already un-flipped and resized to the
        image by the segmentor's ``postprocess_result``."""
        data = sample.seg_logits.data
        return data.softmax(dim=0) if self.module.out_channels > 1 else data

    def _merged(self, first: SegDataSample, probs: Tensor, views: int) -> SegDataSample:
        meta = {k: v for k, v in first.metainfo.items() if k not in VIEW_KEYS}
        meta["tta_views"] = views
        merged = SegDataSample(metainfo=meta)
        if self.module.out_channels > 1:
            pred = probs.argmax(dim=0, keepdim=True)
            logits = probs.log()
        else:
            pred = (probs > self.module.decode_head.threshold).to(probs)
            logits = probs
        merged.seg_logits = PixelData(data=logits)
        merged.pred_sem_seg = PixelData(data=pred)
        if "gt_sem_seg" in first:
            merged.gt_sem_seg = first.gt_sem_seg
        return merged


def build_tta_model(cfg: Mapping[str, Any], module: nn.Module) -> BaseTTAModel:
    """``cfg`` (e.g. ``dict(type='SegTTAAverage')``) built around the loaded ``module`` (a
    model wrapper's inner model); a config that is not a TTA model is refused, naming it."""
    cfg = dict(cfg)
    if "module" in cfg:
        raise ValueError(
            "tta_model must not set 'module': the model under test is the config's `model`, "
            "loaded from the checkpoint; drop tta_model.module"
        )
    if is_model_wrapper(module):
        module = module.module
    tta = MODELS.build({**cfg, "module": module})
    if not isinstance(tta, BaseTTAModel):
        raise TypeError(
            f"tta_model type {cfg.get('type')!r} builds a {type(tta).__name__}, not a TTA model "
            "(mmengine BaseTTAModel); use tta_model = dict(type='SegTTAAverage')"
        )
    return tta


@LOOPS.register_module()
class TTATestLoop(TestLoop):
    """mmengine's ``TestLoop``; with ``tta_model`` (a config dict), every batch is predicted
    by that TTA model built around the runner's model once the test starts (after the runner
    has loaded the checkpoint into it), so loading, strict checks and model wrappers stay the
    runner's. Its dataloader must yield ``TestTimeAug`` batches (``tta_pipeline``)."""

    def __init__(
        self,
        runner: Any,
        dataloader: Any,
        evaluator: Any,
        fp16: bool = False,
        tta_model: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        self.tta_model_cfg = dict(tta_model) if tta_model is not None else None
        self.tta_model: BaseTTAModel | None = None

    def run(self) -> dict:
        if self.tta_model_cfg is not None:
            self.tta_model = build_tta_model(self.tta_model_cfg, self.runner.model)
            self.tta_model.eval()
        return super().run()

    @torch.no_grad()
    def run_iter(self, idx: int, data_batch: Any) -> None:
        if self.tta_model is None:
            return super().run_iter(idx, data_batch)
        self.runner.call_hook("before_test_iter", batch_idx=idx, data_batch=data_batch)
        with autocast(enabled=self.fp16):
            outputs = self.tta_model.test_step(data_batch)
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook(
            "after_test_iter", batch_idx=idx, data_batch=data_batch, outputs=outputs
        )
