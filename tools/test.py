"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--out results.json]``.

The checkpoint must fit the model the config builds (every key, every shape); a mismatch is an
error naming the keys, not metrics of a half-loaded model (``--partial-load`` on purpose).
CHECKPOINT is a ``.pth`` file of tools/train.py, or a DeepSpeed checkpoint directory (its
module weights).

Segmentation configs (mmseg segmentors) also take:
  --slide CROP_H CROP_W STRIDE_H STRIDE_W  sliding-window inference (``model.test_cfg``);
                                           default: the config's (``mode='whole'``)
  --tta                                    multi-scale + flip: the config's ``tta_pipeline``
                                           and ``tta_model`` (``SegTTAAverage``)
  --show-dir DIR                           image | ground truth | prediction PNG per image
``--out`` then holds ``aAcc``, ``mIoU``, ``mAcc`` and ``IoU.<class>``/``Acc.<class>``
(percent; ``null`` for NaN).

CIFAR-10 classification configs also take:
  --test-dataset stl10   test on STL-10's test split (``--data-root``: the folder holding
                         ``stl10_binary/``; default data/stl10): 96 -> 32 by area, the
                         checkpoint's CIFAR-10 normalisation, STL labels mapped to CIFAR
                         classes (hpff_dist/engine/cross_dataset.py, docs/generalization.md)

Every change these options make to the config is logged and appended to the work dir's
``config_changes.json`` (``by: tools/test.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Mapping
from typing import Any

from hpff_dist.engine.config import DictAction, load_config

_BY = "tools/test.py"
#: transform names that load ground truth (dropped when the test dataset lists none).
_LABEL_LOADERS = frozenset({"LoadAnnotations", "mmseg.LoadAnnotations"})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--work-dir")
    p.add_argument("--data-root", help="dataset folder for the train, val and test loaders")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument(
        "--partial-load",
        action="store_true",
        help="evaluate even when the checkpoint does not fit the model (missing/unexpected "
        "keys are logged, not refused): config key load_strict=False",
    )
    p.add_argument(
        "--slide",
        nargs=4,
        type=int,
        metavar=("CROP_H", "CROP_W", "STRIDE_H", "STRIDE_W"),
        help="segmentation: sliding-window inference with this crop and stride "
        "(model.test_cfg=dict(mode='slide', crop_size=..., stride=...))",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: the config's tta_pipeline (multi-scale + flip) merged "
        "by its tta_model",
    )
    p.add_argument(
        "--test-dataset",
        choices=["stl10"],
        help="classification: test a CIFAR-10 checkpoint on another dataset's test split "
        "with the class map between the label sets (--data-root: that dataset's folder)",
    )
    p.add_argument(
        "--show-dir",
        help="segmentation: write image | ground truth | prediction PNGs (dataset palette) here",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from hpff_dist.engine.changes import report_changes
    from hpff_dist.engine.checkpoint_files import require_checkpoint
    from hpff_dist.engine.reporting import jsonable_metrics, print_metrics_table
    from hpff_dist.engine.runner_factory import build_runner

    require_checkpoint(args.checkpoint)  # before the config is read and the data found
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.data_root)
    cfg.launcher = args.launcher
    cfg.load_from, cfg.resume = args.checkpoint, False
    if args.partial_load:
        cfg.load_strict = False
    changes = apply_test_options(cfg, args)
    runner = build_runner(cfg)
    report_changes(changes, cfg.work_dir, runner.rank)  # logged; after resolve's records
    metrics = runner.test()
    if runner.rank != 0:  # metrics are gathered on every rank; one writer is enough
        return
    summary = {k: v for k, v in metrics.items() if "." not in k}  # per-class: the log's table
    print_metrics_table(summary, title=f"{os.path.basename(args.checkpoint)}")
    if _is_segmentation(cfg) and "mIoU" not in metrics:
        print("no mIoU/aAcc: the test data has no ground-truth labels (see the log above)")
    if args.show_dir:
        print(f"pictures (image | ground truth | prediction): {args.show_dir}/")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(jsonable_metrics(metrics), f, indent=2)


def apply_test_options(cfg: Any, args: argparse.Namespace) -> list:
    """The config changes ``--slide``, ``--tta``, ``--show-dir`` and ``--test-dataset`` ask
    for (and dropping label loading where the test dataset lists no labels), made on ``cfg``
    and returned as records; a config that cannot do what is asked is refused with what to
    add."""
    from hpff_dist.engine.changes import ChangeRecorder

    recorder = ChangeRecorder(by=_BY)
    segmentation = _is_segmentation(cfg)
    for flag, given in (("--slide", args.slide), ("--show-dir", args.show_dir)):
        if given and not segmentation:
            raise ValueError(
                f"{flag} is for segmentation configs (an mmseg segmentor as `model`); "
                f"{args.config} builds {cfg.model.get('type')!r}"
            )
    if segmentation:
        _import_segmentation()
    if getattr(args, "test_dataset", None):
        from hpff_dist.engine.cross_dataset import TEST_DATASETS

        TEST_DATASETS[args.test_dataset](cfg, args.config, args.data_root, recorder)
    if args.slide:
        crop_h, crop_w, stride_h, stride_w = args.slide
        if min(args.slide) <= 0:
            raise ValueError(f"--slide takes positive sizes, got {args.slide}")
        recorder.set(
            cfg.model,
            "test_cfg",
            dict(mode="slide", crop_size=(crop_h, crop_w), stride=(stride_h, stride_w)),
            f"--slide: {crop_h}x{crop_w} windows every {stride_h}x{stride_w} pixels",
            "model.test_cfg",
        )
    if args.tta:
        _use_tta(cfg, args.config, recorder)
    if segmentation:
        _drop_label_loading_without_labels(cfg, recorder)
    if args.show_dir:
        hooks = list(copy.deepcopy(cfg.get("custom_hooks") or []))
        hooks.append(dict(type="SegPredictionPictures", out_dir=os.path.abspath(args.show_dir)))
        recorder.set(cfg, "custom_hooks", hooks, "--show-dir: prediction pictures", "custom_hooks")
    return recorder.changes


def _use_tta(cfg: Any, config: str, recorder: Any) -> None:
    """mmseg's --tta, in spirit: the test pipeline becomes ``tta_pipeline`` and predictions
    come from ``tta_model`` around the model; the wrapping is done by ``TTATestLoop`` after the
    checkpoint is loaded (see segmentation/tta.py), not by replacing ``cfg.model``."""
    loader = cfg.get("test_dataloader")
    if isinstance(loader, Mapping) and "type" in loader and "dataset" not in loader:
        variant = config.replace("_dali.py", "_wds.py")
        raise ValueError(
            f"--tta: {config} tests with the {loader['type']} loader, which has no mmseg "
            "pipeline for TestTimeAug to run; evaluate the same checkpoint with the webdataset "
            f"or folder config, e.g. tools/test.py {variant} CHECKPOINT --tta (same shards)"
        )
    if not cfg.get("tta_pipeline"):
        raise KeyError(
            f"--tta: {config} has no tta_pipeline. Add one, e.g. (mmseg's): tta_pipeline = "
            "[dict(type='mmseg.LoadImageFromFile'), dict(type='mmseg.TestTimeAug', "
            "transforms=[[dict(type='mmseg.Resize', scale_factor=r, keep_ratio=True) for r in "
            "(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)], [dict(type='mmseg.RandomFlip', prob=0.0, "
            "direction='horizontal'), dict(type='mmseg.RandomFlip', prob=1.0, "
            "direction='horizontal')], [dict(type='mmseg.LoadAnnotations')], "
            "[dict(type='mmseg.PackSegInputs')]])] (configs/_base_/datasets/cityscapes_folder.py)"
        )
    if not cfg.get("tta_model"):
        raise KeyError(
            f"--tta: {config} has no tta_model. Add tta_model = dict(type='SegTTAAverage') "
            "(segmentation; mmseg's 'mmseg.SegTTAModel' also works)"
        )
    _check_tta_model_type(cfg)
    loader = cfg.get("test_dataloader")
    if not isinstance(loader, Mapping) or not isinstance(loader.get("dataset"), Mapping):
        raise KeyError(f"--tta: {config} has no test_dataloader.dataset to give tta_pipeline")
    why = "--tta: each image at the tta_pipeline's scales and flips (TestTimeAug)"
    recorder.set(
        loader["dataset"],
        "pipeline",
        copy.deepcopy(list(cfg.tta_pipeline)),
        why,
        "test_dataloader.dataset.pipeline",
    )
    loop = dict(copy.deepcopy(cfg.get("test_cfg") or {}))
    if loop.get("type", "TestLoop") not in ("TestLoop", "mmengine.TestLoop", "TTATestLoop"):
        raise ValueError(
            f"--tta runs the test with TTATestLoop, but {config} sets test_cfg.type="
            f"{loop['type']!r}; drop it (or set it to 'TestLoop')"
        )
    loop.update(type="TTATestLoop", tta_model=copy.deepcopy(dict(cfg.tta_model)))
    recorder.set(
        cfg,
        "test_cfg",
        loop,
        "--tta: the loop predicts with tta_model around the loaded model (checkpoint keys "
        "stay the model's)",
        "test_cfg",
    )


def _check_tta_model_type(cfg: Any) -> None:
    from mmengine.model import BaseTTAModel
    from mmengine.registry import DefaultScope

    from hpff_dist.registry import MODELS

    _import_segmentation()
    kind = cfg.tta_model.get("type")
    with DefaultScope.overwrite_default_scope(cfg.get("default_scope") or "hpff_dist"):
        cls = MODELS.get(kind) if isinstance(kind, str) else kind
    if not (isinstance(cls, type) and issubclass(cls, BaseTTAModel)):
        raise TypeError(
            f"--tta: tta_model type {kind!r} is not a TTA model (mmengine BaseTTAModel); use "
            "tta_model = dict(type='SegTTAAverage')"
        )


def _drop_label_loading_without_labels(cfg: Any, recorder: Any) -> None:
    """A test dataset without ``data_prefix.seg_map_path`` (e.g. images only) lists no label
    files: ``LoadAnnotations`` would fail with ``KeyError: 'seg_map_path'`` in a loader
    worker. Drop it (inside ``TestTimeAug`` too); the metric then reports no labels."""
    dataset = (cfg.get("test_dataloader") or {}).get("dataset")
    if not isinstance(dataset, Mapping) or "data_prefix" not in dataset:
        return
    if (dataset.get("data_prefix") or {}).get("seg_map_path"):
        return
    pipeline = list(dataset.get("pipeline") or [])
    kept = _without_label_loading(pipeline)
    if kept != pipeline:
        recorder.set(
            dataset,
            "pipeline",
            kept,
            "the test dataset lists no labels (no data_prefix.seg_map_path): LoadAnnotations "
            "dropped; predictions without metrics",
            "test_dataloader.dataset.pipeline",
        )


def _without_label_loading(transforms: list) -> list:
    kept = []
    for step in transforms:
        if isinstance(step, Mapping) and step.get("type") in _LABEL_LOADERS:
            continue
        if isinstance(step, Mapping) and isinstance(step.get("transforms"), list):
            inner = step["transforms"]
            if inner and all(isinstance(group, list) for group in inner):  # TestTimeAug
                groups = [_without_label_loading(group) for group in inner]
                step = {**step, "transforms": [g for g in groups if g]}  # [] would drop all
            else:
                step = {**step, "transforms": _without_label_loading(inner)}
        kept.append(step)
    return kept


def _is_segmentation(cfg: Any) -> bool:
    """Whether ``cfg.model`` builds an mmseg segmentor (imports mmseg only for configs that
    import the ``segmentation`` package)."""
    if "segmentation" not in list((cfg.get("custom_imports") or {}).get("imports") or []):
        return False
    from mmengine.registry import DefaultScope
    from mmseg.models.segmentors import BaseSegmentor

    from hpff_dist.registry import MODELS

    kind = (cfg.get("model") or {}).get("type")
    with DefaultScope.overwrite_default_scope(cfg.get("default_scope") or "hpff_dist"):
        cls = MODELS.get(kind) if isinstance(kind, str) else kind
    return isinstance(cls, type) and issubclass(cls, BaseSegmentor)


def _import_segmentation() -> None:
    """Register the segmentation parts: metric, picture hook, TTATestLoop, SegTTAAverage."""
    import segmentation  # noqa: F401


if __name__ == "__main__":
    main()
