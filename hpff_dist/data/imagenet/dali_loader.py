"""NVIDIA DALI loader over the webdataset shards: ``fn.readers.webdataset`` sharded by global rank.

Decoding is ``mixed`` (nvJPEG on the GPU) when a GPU is present, and the very same graph runs on
the CPU (``device_id=None``) otherwise, so the CPU tests exercise the code a GPU job runs with only
the decoder/operator placement changed. Batches come out as torch tensors
``(images float NCHW in [0, 1], labels int64)`` on the pipeline's device, like the other two
backends: ``crop_mirror_normalize`` only scales by 1/255 (mean 0, std 255), and the model's data
preprocessor normalises, as it does for every backend.

Equal steps per rank: the reader pads each rank's part of the dataset with its last sample
(``pad_last_batch=True``) and the iterator fills the last batch (``LastBatchPolicy.FILL``), so all
ranks run ``ceil(ceil(N / world) / batch)`` batches; the last one is trimmed to
``ceil(N / world)`` samples per rank, the count the other two backends give.

Bad data: a truncated shard is found before the run from its DALI index (components past the end
of the file), its readable samples are kept through a filtered index, the lost ones are reported
by key and counted against ``max_bad_samples``. DALI cannot skip a sample whose JPEG fails to
decode mid-run (the pipeline is invalid after an operator error), so that stops the run with
:class:`BadSampleError` naming the shard and key DALI reports; see docs/data.md.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hpff_dist.data.imagenet.errors import BadSampleBudget, BadSampleError
from hpff_dist.data.imagenet.ranks import check_batch_size, resolve_rank, samples_per_rank
from hpff_dist.data.imagenet.shards import (
    IMAGE_EXTS,
    TAR_BLOCK,
    ShardedSplit,
    find_bad_images,
    find_split,
    read_dali_index,
)
from hpff_dist.data.imagenet.transforms import default_resize_size, rejects_normalisation

READER_NAME = "Reader"


def resolve_device_id(device: str = "auto") -> int | None:
    """CUDA device for the pipeline (``mixed`` decoding), or None for the CPU-only pipeline."""
    if device not in ("auto", "gpu", "cpu"):
        raise ValueError(f"device must be 'auto', 'gpu' or 'cpu', got {device!r}")
    if device == "cpu":
        return None
    if torch.cuda.is_available():
        return torch.cuda.current_device()
    if device == "gpu":
        raise RuntimeError("device='gpu' asked for DALI GPU decoding but CUDA is not available")
    return None


def _key_at(tar: str, data_offset: int) -> str:
    """Sample key from the tar header just before a component's data."""
    with open(tar, "rb") as f:
        f.seek(data_offset - TAR_BLOCK)
        name = tarfile.TarInfo.frombuf(f.read(TAR_BLOCK), "utf-8", "surrogateescape").name
    return name[: name.find(".", name.rfind("/") + 1)]


def drop_truncated_samples(
    split: ShardedSplit, budget: BadSampleBudget, workdir: str
) -> tuple[list[str], list[int]]:
    """Index paths to give DALI, leaving out samples whose data runs past the end of the tar."""
    indexes, counts = [], []
    for tar, idx in zip(split.tars, split.indexes):
        samples = read_dali_index(idx)
        size = os.path.getsize(tar)
        fits = [all(off + n <= size for _, off, n in c) for c in samples]
        counts.append(sum(fits))
        if all(fits):
            indexes.append(idx)
            continue
        for i, components in enumerate(samples):
            if not fits[i]:
                offset = min(off for _, off, _ in components)
                key = _key_at(tar, offset) if offset <= size else f"#{i} (header lost)"
                budget.report(tar, key, f"truncated tar ({size} bytes)")
        filtered = os.path.join(workdir, Path(idx).name)
        with open(filtered, "w") as f:
            f.write(f"v1.2 {sum(fits)}\n")
            for components, fit in zip(samples, fits):
                if fit:
                    f.write(" ".join(f"{e} {o} {n} x.{e}" for e, o, n in components) + "\n")
        indexes.append(filtered)
    return indexes, counts


def _torchvision_val_geometry(jpegs, resize_size: int, image_size: int):
    """torchvision's Resize(int) + CenterCrop sizes and offsets, computed in the DALI graph.

    ``fn.resize(resize_shorter=...)`` rounds the long side and the crop rounds its anchor its own
    way; one pixel of scale or shift is most of the difference between the backends at small
    sizes, so compute what torchvision computes: long side ``floor(resize * long / short)``, crop
    top ``round_half_even((size - crop) / 2)``, expressed as a crop position in [0, 1].
    """
    from nvidia.dali import fn, types

    shape = fn.peek_image_shape(jpegs, dtype=types.INT32)  # HWC, from the encoded header
    h, w = shape[0], shape[1]
    h_short = fn.cast(h <= w, dtype=types.INT32)
    w_short = 1 - h_short
    new_h = h_short * resize_size + w_short * ((resize_size * h) // w)
    new_w = w_short * resize_size + h_short * ((resize_size * w) // h)

    def crop_pos(length):
        slack = length - image_size
        half = slack // 2
        anchor = half + ((slack & 1) & (half & 1))  # Python's round(): half to even
        # +0.25 keeps the anchor exact whether DALI rounds or floors pos * slack
        return (fn.cast(anchor, dtype=types.FLOAT) + 0.25) / fn.cast(
            slack + fn.cast(slack == 0, dtype=types.INT32), dtype=types.FLOAT
        )

    as_float = dict(dtype=types.FLOAT)
    return fn.cast(new_w, **as_float), fn.cast(new_h, **as_float), crop_pos(new_w), crop_pos(new_h)


def build_pipeline(
    tars: list[str],
    indexes: list[str],
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    shard_id: int,
    num_shards: int,
    train: bool,
    image_size: int,
    resize_size: int,
    seed: int,
    prefetch: int = 2,
):
    """The DALI graph: read shard -> decode (mixed or cpu) -> crop/resize -> flip + scale to
    [0, 1] (mean 0, std 255: what ``ToDtype(scale=True)`` does in the torch backends). No
    ImageNet mean/std here: the model's data preprocessor normalises every backend's batches."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
    )
    def imagenet_pipeline():
        jpegs, labels = fn.readers.webdataset(
            paths=tars,
            index_paths=indexes,
            ext=[IMAGE_EXTS, "label"],
            dtypes=[types.UINT8, types.INT32],
            missing_component_behavior="error",
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=train,
            **({"shuffle_after_epoch": True, "shuffle_after_epoch_seed": seed} if train else {}),
            pad_last_batch=True,
            name=READER_NAME,
        )
        decoder = "mixed" if gpu else "cpu"
        if train:
            images = fn.decoders.image_random_crop(
                jpegs,
                device=decoder,
                output_type=types.RGB,
                random_area=[0.08, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3],
                num_attempts=10,
            )
            images = fn.resize(images, resize_x=image_size, resize_y=image_size, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
            crop_pos_x = crop_pos_y = 0.5
        else:
            resize_x, resize_y, crop_pos_x, crop_pos_y = _torchvision_val_geometry(
                jpegs, resize_size, image_size
            )
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(
                images,
                resize_x=resize_x,
                resize_y=resize_y,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
            mirror = 0
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            crop=(image_size, image_size),
            crop_pos_x=crop_pos_x,
            crop_pos_y=crop_pos_y,
            mean=[0.0, 0.0, 0.0],
            std=[255.0, 255.0, 255.0],
            mirror=mirror,
        )
        labels = fn.reshape(labels, shape=[])
        return images, labels.gpu() if gpu else labels

    return imagenet_pipeline()


class DaliShardLoader:
    """What every DALI loader over our shards shares: the ranks, the split with its truncated
    samples left out (:func:`drop_truncated_samples`), equal steps per rank (``ceil(N / world)``
    samples, the last batch trimmed), draining DALI's epoch, and cleaning up.

    A subclass calls :meth:`_open_split`, builds ``self.pipeline`` and ``self.iterator`` over
    the returned indexes, and iterates :meth:`_trimmed`.
    """

    def _open_split(
        self,
        root: str,
        split: str,
        batch_size: int,
        train: bool | None,
        drop_last: bool | None,
        max_bad_samples: int,
        rank: int | None,
        world_size: int | None,
        **find_args: Any,
    ) -> list[str]:
        """Set the loader's ranks, split and counts; return the index files DALI reads."""
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.train = split == "train" if train is None else train
        self.drop_last = self.train if drop_last is None else drop_last
        self.batch_size = batch_size
        self.budget = BadSampleBudget(max_bad_samples)
        self.split_info = find_split(root, split, **find_args)
        self._workdir = tempfile.mkdtemp(prefix="hpff_dali_idx_")
        indexes, counts = drop_truncated_samples(self.split_info, self.budget, self._workdir)
        self.num_samples = sum(counts)
        self.samples_per_rank = samples_per_rank(self.num_samples, self.world_size)
        self.num_batches = check_batch_size(batch_size, self.samples_per_rank, self.drop_last)
        return indexes

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """No-op: DALI reshuffles shards itself after each epoch from the constructor's seed."""

    def _trimmed(self) -> Iterator[tuple[dict[str, Any], int]]:
        """``(outputs, take)`` per batch: the DALI outputs and how many of its samples belong
        to this rank's epoch (the padding of the last batch is left out)."""
        remaining = self.num_batches * self.batch_size if self.drop_last else self.samples_per_rank
        for batch in self.iterator:
            outputs = batch[0]
            if remaining > 0:
                take = min(remaining, len(outputs["images"]))
                remaining -= take
                yield outputs, take
            # keep draining: DALI resets only at the end of its own epoch

    def close(self) -> None:
        """Remove the filtered index files (if any were needed)."""
        workdir = getattr(self, "_workdir", None)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    def __del__(self) -> None:
        self.close()


class DaliImageNetLoader(DaliShardLoader):
    """Iterable of ``(images, labels)`` batches from a DALI pipeline; same contract as the others.

    Args:
        root: directory written by ``tools/make_shards.py``.
        split: ``train`` or ``val``; ``train`` (default for split 'train') turns on augmentation
            and shuffling.
        batch_size: per-rank batch size.
        num_threads: DALI CPU threads (the counterpart of DataLoader workers).
        device: ``auto`` (GPU if present), ``gpu`` or ``cpu``.
        rank, world_size: global rank / number of ranks; default from torch.distributed or env.
        seed: pipeline seed; all ranks must agree (it also orders the shard shuffle).

    Images are in [0, 1]; there is no normalisation option (the model's data preprocessor
    normalises, see :func:`~hpff_dist.data.imagenet.transforms.reject_normalisation`).
    """

    @rejects_normalisation
    def __init__(
        self,
        root: str,
        split: str = "train",
        batch_size: int = 32,
        train: bool | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        num_threads: int = 4,
        device: str = "auto",
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        max_bad_samples: int = 0,
        prefetch: int = 2,
    ) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        indexes = self._open_split(
            root, split, batch_size, train, drop_last, max_bad_samples, rank, world_size
        )
        split_info = self.split_info
        self.device_id = resolve_device_id(device)
        self.pipeline = build_pipeline(
            split_info.tars,
            indexes,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=self.device_id,
            shard_id=self.rank,
            num_shards=self.world_size,
            train=self.train,
            image_size=image_size,
            resize_size=resize_size or default_resize_size(image_size),
            seed=seed,
            prefetch=prefetch,
        )
        self.pipeline.build()
        self.iterator = DALIGenericIterator(
            self.pipeline,
            ["images", "labels"],
            reader_name=READER_NAME,
            last_batch_policy=LastBatchPolicy.FILL,
            auto_reset=True,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for outputs, take in self._trimmed():
                yield outputs["images"][:take], outputs["labels"][:take].long()
        except RuntimeError as error:
            raise self._bad_sample_error(error) from error

    def _bad_sample_error(self, error: RuntimeError) -> RuntimeError:
        """DALI names the failing operator, not the sample: find the bad sample(s) with PIL."""
        text = str(error)
        if "decoders" not in text:
            return error
        bad = find_bad_images(self.split_info)
        found = "; ".join(f"shard={t} key={k}: {e}" for t, k, e in bad) or (
            "no sample fails a PIL decode; see DALI's message"
        )
        return BadSampleError(
            f"DALI could not decode a sample: {found}. DALI cannot skip a sample mid-run, so "
            "fix or re-make the shard (tools/make_shards.py), or use the webdataset backend, "
            f"which skips bad samples under max_bad_samples.\nDALI: {text}"
        )
