"""Testing a CIFAR-10 classifier on STL-10 (the paper's supplementary Table 5), on record.

The checkpoint stays as trained; what changes is the test set, its pipeline and the metric,
each a config change made by :func:`use_stl10_test_set` and recorded like the other options
of ``tools/test.py`` (``config_changes.json``, ``by: tools/test.py``):

* data: STL-10's labelled test split (8,000 images of 96x96), read from the official
  ``stl10_binary/test_{X,y}.bin``;
* pipeline: ``ToFloatImage`` then ``DownsampleImage(size=32, filter='area')``: 96 -> 32 is an
  exact factor of 3, so the area filter makes each pixel the mean of its 3x3 block, the
  antialiased downsampling a coarser sensor would see (nearest or non-antialiased bilinear
  would alias the fine texture STL-10's larger images carry);
* normalisation: the checkpoint config's CIFAR-10 mean/std (the model's data preprocessor,
  unchanged): the network saw its inputs that way;
* metric: :class:`CrossDatasetAccuracy` with the class map below.

The two label sets share 9 classes (STL ``car`` = CIFAR ``automobile``, the other 8 by name);
STL ``monkey`` has no CIFAR class and CIFAR ``frog`` no STL class. docs/generalization.md
explains the protocols the metric reports and which one the paper's numbers fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric

from hpff_dist.registry import METRICS

__all__ = [
    "CIFAR10_CLASSES",
    "STL10_CLASSES",
    "STL10_TO_CIFAR10_RENAMES",
    "TEST_DATASETS",
    "CrossDatasetAccuracy",
    "use_stl10_test_set",
]

#: label order of the CIFAR-10 release (``batches.meta``).
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
#: label order of the STL-10 release (``class_names.txt``; ``test_y.bin`` holds 1..10).
STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)  # fmt: skip
#: STL-10 classes whose CIFAR-10 class has another name; the others map by name.
STL10_TO_CIFAR10_RENAMES = {"car": "automobile"}
#: where the STL-10 base config looks for ``stl10_binary/`` (configs/_base_/datasets/stl10.py).
STL10_DEFAULT_ROOT = "data/stl10"


@METRICS.register_module()
class CrossDatasetAccuracy(BaseMetric):
    """Accuracy of a model whose classes are not the test set's, under four protocols.

    Targets are the test set's own labels; ``renames`` (data class -> model class, the rest by
    name) gives the map. Reported, in percent:

    * ``top1``/``top5``: over images of shared classes (unmatched data classes, e.g. STL
      monkey, excluded); every model class competes, so predicting CIFAR frog is wrong;
    * ``top1_all``: over every image, unmatched data classes counted as always wrong;
    * ``top1_masked``: shared images, argmax over the shared model classes only (frog's
      logit dropped);
    * ``top1_naive``: predicted index == label index with no map, what a test that forgets
      the map reports;

    and the image counts ``images_shared`` and ``images_all``.
    """

    default_prefix = ""

    def __init__(
        self,
        data_classes: Sequence[str],
        model_classes: Sequence[str],
        renames: Mapping[str, str] | None = None,
        topk: Sequence[int] = (1, 5),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_classes, self.model_classes = tuple(data_classes), tuple(model_classes)
        renames = dict(renames or {})
        wrong = sorted(set(renames) - set(self.data_classes))
        wrong += sorted(set(renames.values()) - set(self.model_classes))
        if wrong:
            raise ValueError(
                f"CrossDatasetAccuracy renames name {wrong}, which are not in data_classes "
                f"{self.data_classes} (keys) or model_classes {self.model_classes} (values)"
            )
        index = {name: i for i, name in enumerate(self.model_classes)}
        mapped = [index.get(renames.get(name, name), -1) for name in self.data_classes]
        #: model index of each data class, -1 where the model has none
        self.to_model = torch.tensor(mapped, dtype=torch.long)
        shared = torch.zeros(len(self.model_classes), dtype=torch.bool)
        shared[self.to_model[self.to_model >= 0]] = True
        #: model classes some data class maps to (the rest are masked for ``top1_masked``)
        self.shared_model = shared
        self.topk = tuple(topk)

    @property
    def dataset_meta(self) -> dict | None:
        return self._dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, meta: dict | None) -> None:
        """Refuse a test set whose class names (where it knows them) are not ``data_classes``:
        the map would then pair the wrong classes."""
        classes = tuple((meta or {}).get("classes") or ())
        if classes and classes != self.data_classes:
            raise ValueError(
                f"the test set's classes {classes} are not the metric's data_classes "
                f"{self.data_classes}; set test_evaluator.data_classes to the test set's order"
            )
        self._dataset_meta = meta

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for batch in data_samples:
            logits, targets = batch["logits"].float().cpu(), batch["targets"].cpu().long()
            if logits.shape[1] != len(self.model_classes):
                raise ValueError(
                    f"the model gives {logits.shape[1]} logits but the metric's model_classes "
                    f"lists {len(self.model_classes)}: test a checkpoint of the dataset "
                    "model_classes names (e.g. a CIFAR-10 config for --test-dataset stl10)"
                )
            if targets.numel() and (targets.min() < 0 or targets.max() >= len(self.data_classes)):
                raise ValueError(
                    f"labels outside 0..{len(self.data_classes) - 1} (data_classes "
                    f"{self.data_classes}): got {sorted(set(targets.tolist()))}"
                )
            wanted = self.to_model[targets]
            k = min(max(self.topk), logits.shape[1])
            ranked = logits.topk(k, dim=1).indices
            masked = logits.masked_fill(~self.shared_model, float("-inf")).argmax(1)
            for i in range(len(targets)):
                shared = bool(wanted[i] >= 0)
                hits = tuple(shared and bool((ranked[i, :t] == wanted[i]).any()) for t in self.topk)
                self.results.append(
                    (shared, *hits, shared and bool(masked[i] == wanted[i]),
                     bool(ranked[i, 0] == targets[i]))
                )  # fmt: skip

    def compute_metrics(self, results: list) -> dict[str, float]:
        table = torch.tensor(results, dtype=torch.float64).view(-1, 3 + len(self.topk))
        shared = table[:, 0].bool()
        n_shared, n_all = int(shared.sum()), len(table)

        def percent(column: torch.Tensor, n: int) -> float:
            return float(column.sum() / n * 100) if n else float("nan")

        metrics = {
            f"top{t}": percent(table[shared, 1 + i], n_shared) for i, t in enumerate(self.topk)
        }
        top1 = 1 + self.topk.index(1) if 1 in self.topk else None
        if top1 is not None:
            metrics["top1_all"] = percent(table[:, top1], n_all)
        metrics["top1_masked"] = percent(table[shared, -2], n_shared)
        metrics["top1_naive"] = percent(table[:, -1], n_all)
        metrics.update(images_shared=n_shared, images_all=n_all)
        return metrics


def use_stl10_test_set(cfg: Any, config: str, data_root: str | None, recorder: Any) -> None:
    """``--test-dataset stl10``: the STL-10 test split, 96 -> 32 by area, and the class-mapped
    metric, set on ``cfg`` through ``recorder``. Refuses configs that do not test on CIFAR-10:
    their checkpoint's classes are not the ones the map pairs."""
    loader = cfg.get("test_dataloader")
    dataset = loader.get("dataset") if isinstance(loader, Mapping) else None
    kind = dataset.get("type") if isinstance(dataset, Mapping) else None
    if kind not in ("CIFAR10", "hpff_dist.CIFAR10"):
        raise ValueError(
            f"--test-dataset stl10 tests a CIFAR-10 checkpoint, but {config} tests on "
            f"{kind!r} (test_dataloader.dataset.type); pass the CIFAR-10 config the checkpoint "
            "was trained with (configs/cifar10/...)"
        )
    classes = (cfg.get("model") or {}).get("num_classes", len(CIFAR10_CLASSES))
    if classes != len(CIFAR10_CLASSES):
        raise ValueError(
            f"--test-dataset stl10: {config} builds a model with num_classes={classes}; the "
            "STL-10 class map is for CIFAR-10's 10 classes"
        )
    why = "--test-dataset stl10: "
    path = "test_dataloader.dataset"
    recorder.set(dataset, "type", "STL10", why + "STL-10 in place of CIFAR-10", f"{path}.type")
    recorder.set(dataset, "split", "test", why + "the 8,000 labelled test images", f"{path}.split")
    root = data_root or STL10_DEFAULT_ROOT
    recorder.set(dataset, "root", root, why + "folder holding stl10_binary/", f"{path}.root")
    # STL-10's 96x96 images become CIFAR-sized 32x32 ones, then go through the config's own
    # test steps (e.g. a ViT config's resize to 224), so the model sees what its CIFAR test
    # images go through.
    own_steps = [
        dict(step)
        for step in dataset.get("pipeline") or []
        if not (
            isinstance(step, Mapping)
            and step.get("type") in ("ToFloatImage", "hpff_dist.ToFloatImage")
        )
    ]
    pipeline = [
        dict(type="ToFloatImage"),
        dict(type="DownsampleImage", size=32, filter="area"),
        *own_steps,
    ]
    recorder.set(
        dataset,
        "pipeline",
        pipeline,
        why + "96x96 -> 32x32, each pixel the mean of its 3x3 block (area: antialiased), then "
        "the config's own CIFAR-10 test steps; normalised by the checkpoint config's "
        "CIFAR-10 mean/std",
        f"{path}.pipeline",
    )
    metric = dict(
        type="CrossDatasetAccuracy",
        data_classes=list(STL10_CLASSES),
        model_classes=list(CIFAR10_CLASSES),
        renames=dict(STL10_TO_CIFAR10_RENAMES),
        topk=[1, 5],
    )
    recorder.set(
        cfg,
        "test_evaluator",
        metric,
        why + "STL labels mapped to CIFAR classes (car=automobile, the rest by name); top1 "
        "over the 9 shared classes (monkey excluded), top1_all with monkey wrong, "
        "top1_masked without frog's logit, top1_naive without the map",
        "test_evaluator",
    )


#: ``--test-dataset`` name -> the function making its config changes.
TEST_DATASETS = {"stl10": use_stl10_test_set}
