"""The reference backend: torchvision's ImageFolder on ``root/<split>/<class>/*.JPEG``."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import ImageFolder

from hpff_dist.data.imagenet.errors import BadSampleBudget, DataNotFoundError
from hpff_dist.data.imagenet.transforms import build_imagenet_transform, rejects_normalisation
from hpff_dist.data.sample_seeds import SeededItems
from hpff_dist.registry import DATASETS


@DATASETS.register_module()
class ImageNetFolder(SeededItems, ImageFolder):
    """ImageFolder with the paper's transforms; an unreadable image is skipped under a budget.

    ``__getitem__`` returns ``(image float CHW in [0, 1], label)`` or ``None`` for a skipped
    image (drop it with :class:`~hpff_dist.data.imagenet.collate.SkipBadCollate`).
    """

    @rejects_normalisation
    def __init__(
        self,
        root: str,
        split: str = "train",
        train: bool | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        max_bad_samples: int = 0,
    ) -> None:
        split_dir = Path(root) / split
        if not split_dir.is_dir() or not any(p.is_dir() for p in split_dir.iterdir()):
            raise DataNotFoundError(
                f"no class folders in {split_dir}: the folder backend expects "
                f"{split_dir}/<wnid>/*.JPEG (ImageNet layout, val sorted into class folders too)"
            )
        self.train = split == "train" if train is None else train
        super().__init__(
            str(split_dir),
            transform=build_imagenet_transform(self.train, image_size, resize_size),
        )
        self.budget = BadSampleBudget(max_bad_samples, len(self.samples))

    def load_item(self, index: int):
        try:
            return ImageFolder.__getitem__(self, index)
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for broken files
            path = self.samples[index][0]
            self.budget.report(str(Path(path).parent), Path(path).name, error, index)
            return None
