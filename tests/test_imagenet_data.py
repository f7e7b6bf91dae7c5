"""ImageNet data: shard writer round trip, the three backends per rank, agreement, bad data.

Everything runs on tiny synthetic JPEGs written in the real formats (an ImageFolder tree, real
webdataset tars with DALI indexes). Every loader is the one of
``configs/_base_/datasets/imagenet_<backend>.py``, built by ``build_dataloader`` (the route
training takes); ranks are simulated with torch's single-process fake process group, so each
backend learns its rank where it would in a job. Normalised values come from the model's data
preprocessor, the only place that normalises.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import webdataset as wds
from mmengine.config import Config
from PIL import Image

import hpff_dist.models  # noqa: F401  (registers ClassifierDataPreprocessor)
from hpff_dist.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadSampleError,
    DataNotFoundError,
    ShardAwareDistributedSampler,
)
from hpff_dist.data.imagenet.ranks import check_batch_size, resolve_rank
from hpff_dist.data.imagenet.shards import (
    find_split,
    make_split_shards,
    parse_shard_size,
    read_dali_index,
)
from hpff_dist.data.loader_builder import build_dataloader, with_loader_args
from hpff_dist.data.sample_seeds import sample_seed
from hpff_dist.registry import MODELS

SIZE, RESIZE = 32, 40
VAL_PER_CLASS = (4, 5, 6)  # 15 images: 3 shards of (6, 6, 3) at --shard-size 6
TRAIN_PER_CLASS = (7, 6, 8)
ROOT = Path(__file__).resolve().parents[1]


def _write_tree(root: Path, split: str, per_class: tuple[int, ...], seed: int) -> None:
    """Smooth random JPEGs of varied size and aspect (upscaled noise), quality 90."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(per_class):
        folder = root / split / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(44, 90, 2))
            small = (rng.random((max(h // 6, 2), max(w // 6, 2), 3)) * 255).astype(np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            image.save(folder / f"n{c:08d}_{i}.JPEG", quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    _write_tree(root, "val", VAL_PER_CLASS, seed=0)
    _write_tree(root, "train", TRAIN_PER_CLASS, seed=1)
    return root


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    make_split_shards(tree, out, "val", parse_shard_size("6"), progress=False)
    make_split_shards(tree, out, "train", parse_shard_size("40KB"), shuffle_seed=0, progress=False)
    return out


def _config(backend: str, train: bool) -> dict:
    """``train_dataloader`` or ``val_dataloader`` of the backend's dataset config."""
    cfg = Config.fromfile(str(ROOT / f"configs/_base_/datasets/imagenet_{backend}.py"))
    return cfg.to_dict()["train_dataloader" if train else "val_dataloader"]


def _loader(
    backend, tree, shards, split="val", train=None, num_workers=0, batch_size=4, seed=0, **kw
):
    """The config's loader pointed at the test data (train augmentation and shuffling from the
    config's ``train_dataloader`` when ``train``), built as training builds it."""
    train = split == "train" if train is None else train
    args = dict(
        root=str(tree if backend == "folder" else shards),
        split=split,
        train=train,
        batch_size=batch_size,
        image_size=SIZE,
        resize_size=RESIZE,
        **kw,
    )
    if backend == "dali":
        args.update(num_threads=max(num_workers, 1), device="cpu")
    else:
        args.update(num_workers=num_workers, pin_memory=False)
    return build_dataloader(with_loader_args(_config(backend, train), **args), seed=seed)


@contextmanager
def _as_rank(rank: int, world_size: int) -> Iterator[None]:
    """This process as ``rank`` of ``world_size``: torch's fake process group (no peers, no-op
    collectives), so mmengine's ``DefaultSampler``, our sampler and DALI all see that rank."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _preprocessor():
    """The ImageNet models' data preprocessor, built as ``LocalClassifier`` builds it."""
    cfg = Config.fromfile(str(ROOT / "configs/_base_/models/imagenet_resnet101.py"))
    return MODELS.build({"type": "ClassifierDataPreprocessor", **cfg.model.data_preprocessor})


def _normalised(images: torch.Tensor) -> torch.Tensor:
    """What the model computes on: the batch through its data preprocessor."""
    return _preprocessor()([images, torch.zeros(len(images))])["inputs"]


def _epoch(loader):
    images, labels, steps = [], [], 0
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.ndim == 4 and x.shape[1:] == (3, SIZE, SIZE)
        assert x.min() >= 0 and x.max() <= 1  # never normalised on the data side
        images.append(x)
        labels += y.tolist()
        steps += 1
    return torch.cat(images), labels, steps


# --- shard writer -------------------------------------------------------------------------------


def test_round_trip_every_image_and_label_once(tree, shards):
    """Read the tars back with webdataset's own streaming reader: each source file exactly once."""
    expected = {}
    for c, _ in enumerate(VAL_PER_CLASS):
        for path in sorted((tree / "val" / f"n{c:08d}").iterdir()):
            expected[f"n{c:08d}/{path.stem}"] = (hashlib.sha256(path.read_bytes()).hexdigest(), c)
    split = find_split(shards, "val")
    assert split.nsamples == [6, 6, 3] and len(split.tars) == 3
    seen = Counter()
    for sample in wds.WebDataset(split.tars, shardshuffle=False, empty_check=False):
        key = sample["__key__"]
        label = int(sample["cls"])
        assert int(np.frombuffer(sample["label"], dtype="<i4")[0]) == label
        assert (hashlib.sha256(sample["jpg"]).hexdigest(), label) == expected[key]
        seen[key] += 1
    assert seen == Counter(expected.keys())
    manifest = json.loads((shards / "manifest-val.json").read_text())
    assert manifest["num_samples"] == 15
    assert manifest["per_class"] == {f"n{c:08d}": n for c, n in enumerate(VAL_PER_CLASS)}
    classes = json.loads((shards / "classes.json").read_text())
    assert classes == {str(c): f"n{c:08d}" for c in range(3)}
    for idx, n in zip(split.indexes, split.nsamples):
        assert len(read_dali_index(idx)) == n
    wids_spec = json.loads((shards / "val-wids.json").read_text())
    assert [s["nsamples"] for s in wids_spec["shardlist"]] == [6, 6, 3]


def test_byte_sized_shards_respect_the_limit(shards):
    manifest = json.loads((shards / "manifest-train.json").read_text())
    assert manifest["num_samples"] == sum(TRAIN_PER_CLASS)
    assert manifest["num_shards"] > 1
    # planned payload <= 40 kB; tarfile pads the archive to a 10 kB record
    assert all(r["filesize"] <= 40_000 + 10_240 for r in manifest["shards"])


def test_shard_size_parsing():
    assert parse_shard_size("1000").unit == "samples"
    assert parse_shard_size("1000").value == 1000
    assert parse_shard_size("500MB").value == 500 * 10**6
    assert parse_shard_size("1GiB").value == 2**30
    for bad in ("0", "1.5GB", "10parsecs", ""):
        with pytest.raises(ValueError):
            parse_shard_size(bad)


def _make_shards_cli():
    spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_rewrites_only_missing_shards_identically(tree, tmp_path, capsys):
    cli = _make_shards_cli()
    out = tmp_path / "out"
    args = [str(tree), str(out), "--split", "val", "--shard-size", "4", "--no-progress"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_shards"] == 4
    first = (out / "val-000001.tar").read_bytes()
    kept_mtime = os.stat(out / "val-000000.tar").st_mtime_ns
    (out / "val-000001.tar").unlink()
    (out / "val-000002.tar.tmp").write_bytes(b"half a shard from a killed run")
    (out / "val-000003.idx").unlink()

    with pytest.raises(FileExistsError, match="--resume"):
        cli.main(args)
    assert cli.main([*args, "--resume"]) == 0
    assert (out / "val-000001.tar").read_bytes() == first  # deterministic content
    assert os.stat(out / "val-000000.tar").st_mtime_ns == kept_mtime  # finished shard skipped
    assert (out / "val-000003.idx").is_file()
    assert find_split(out, "val").num_samples == 15
    with pytest.raises(ValueError, match="plan"):
        cli.main([*args[:-2], "5", "--no-progress", "--resume"])


# --- backends ----------------------------------------------------------------------------------

BACKENDS = ("folder", "webdataset", "dali")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_two_ranks_same_steps_and_all_samples(backend, train, tree, shards):
    """15 samples in 3 uneven shards, 2 ranks: 8 samples and 2 batches of 4 on each rank."""
    per_rank = []
    for rank in range(2):
        with _as_rank(rank, 2):
            loader = _loader(
                backend,
                tree,
                shards,
                train=train,
                drop_last=False,
                num_workers=2 if backend != "folder" else 0,
            )
            _, labels, steps = _epoch(loader)
        assert len(loader) == steps == 2
        assert len(labels) == 8
        per_rank.append(labels)
    everything = Counter({c: n for c, n in enumerate(VAL_PER_CLASS)})
    union = Counter(per_rank[0] + per_rank[1])
    assert not everything - union  # every val image's label is accounted for
    assert sum((union - everything).values()) == 1  # exactly one padding sample


def test_drop_last_gives_equal_full_batches(tree, shards):
    for backend in BACKENDS:
        steps = []
        for r in range(2):
            with _as_rank(r, 2):
                steps.append(
                    _epoch(_loader(backend, tree, shards, batch_size=3, drop_last=True))[2]
                )
        assert steps == [2, 2], backend  # floor(8 / 3)


def test_val_tensors_agree_across_backends(tree, shards):
    """folder and webdataset decode the same bytes with the same code: identical. DALI on the CPU
    decodes with libjpeg-turbo too (bit-identical here) and resizes with its own antialiased
    linear filter, which rounds differently: within 1-2 intensity levels (1/255/0.225 = 0.017
    after the model's normalisation). On a GPU nvJPEG's IDCT adds a few levels more; see
    docs/data.md."""
    outputs = {}
    for backend in BACKENDS:
        images, labels, _ = _epoch(_loader(backend, tree, shards, batch_size=5))
        outputs[backend] = (_normalised(images), labels)
    # the sorted ImageFolder order is the sharded order for val (no shuffle)
    assert outputs["folder"][1] == outputs["webdataset"][1] == outputs["dali"][1]
    assert torch.equal(outputs["folder"][0], outputs["webdataset"][0])
    diff = (outputs["dali"][0] - outputs["folder"][0]).abs()
    assert diff.mean() < 0.01, diff.mean()  # ~0.5 intensity level on average
    assert diff.amax() < 0.05, diff.amax()  # ~3 intensity levels at worst


def test_train_augmentation_is_random_but_labelled(shards):
    loader = _loader("dali", None, shards, split="train", num_workers=1)
    images, labels, steps = _epoch(loader)
    assert steps == len(loader) == sum(TRAIN_PER_CLASS) // 4
    assert set(labels) <= {0, 1, 2}
    assert _normalised(images).std() > 0.1


def test_sampler_is_deterministic_per_epoch_and_partitions():
    lengths = [6, 6, 3]
    samplers = [
        ShardAwareDistributedSampler(None, seed=3, rank=r, world_size=2, shard_lengths=lengths)
        for r in range(2)
    ]
    orders = {}
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        orders[epoch] = [[key.index for key in s] for s in samplers]  # SeededIndex keys
        assert [len(o) for o in orders[epoch]] == [8, 8]
        assert set(orders[epoch][0]) | set(orders[epoch][1]) == set(range(15))
        assert len(set(orders[epoch][0]) & set(orders[epoch][1])) <= 1  # only the padding
    assert orders[0] != orders[1]
    samplers[0].set_epoch(0)
    keys = list(samplers[0])
    assert [key.index for key in keys] == orders[0][0]
    # every key carries its augmentation seed, a function of (seed, epoch, index) only
    assert all(key.seed == sample_seed(3, 0, key.index) for key in keys)
    samplers[0].start_at(5)  # a run resumed mid-epoch: the same order from position 5
    assert list(samplers[0]) == keys[5:]
    assert list(samplers[0]) == keys  # for that one epoch only


# --- configuration errors ----------------------------------------------------------------------


def test_rank_and_batch_errors(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (1, 4)
    assert resolve_rank(0, 2) == (0, 2)
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(2, 2)
    with pytest.raises(ValueError, match="world_size"):
        resolve_rank(0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        check_batch_size(0, 8, False)
    with pytest.raises(ValueError, match="empty epoch"):
        check_batch_size(16, 8, True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_data_says_what_to_put_where(backend, tmp_path):
    def build(root):
        return len(_loader(backend, root, root, batch_size=2))  # DALI builds on first use

    with pytest.raises(DataNotFoundError) as error:
        build(tmp_path / "nowhere")
    message = str(error.value)
    assert ("make_shards.py" in message) if backend != "folder" else ("<wnid>" in message)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError):
        build(tmp_path / "empty")


def test_a_dropped_dali_loader_frees_its_pipeline_without_the_garbage_collector(shards):
    """Otherwise the pipeline waits for a GC pass, which may run in a forked DataLoader worker
    of a later loader, where DALI's executor destructor deadlocks (seen in this suite)."""
    import gc
    import weakref

    loader = _loader("dali", None, shards)
    _epoch(loader)
    built = weakref.ref(loader.built)
    gc.disable()
    try:
        del loader
        assert built() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_unshuffled_split_is_the_one_mmengines_result_collection_undoes(world):
    """Evaluation: each rank's results, collected the way mmengine does (interleaved, then the
    first N kept), are every sample once and in order, whatever the padding."""
    from itertools import chain, zip_longest

    lengths = [6, 6, 2]  # 14 samples: 2 padded on 3 or 4 ranks
    parts = [
        [k.index for k in ShardAwareDistributedSampler(
            None, shuffle=False, rank=r, world_size=world, shard_lengths=lengths)]
        for r in range(world)
    ]  # fmt: skip
    assert len({len(p) for p in parts}) == 1
    collected = [i for i in chain.from_iterable(zip_longest(*parts)) if i is not None]
    assert collected[:14] == list(range(14))


def test_registered_in_hpff_dist_scope(shards):
    from hpff_dist.registry import DATA_SAMPLERS, DATASETS, TRANSFORMS

    dataset = DATASETS.build(
        dict(
            type="ImageNetShards",
            root=str(shards),
            split="val",
            image_size=SIZE,
            resize_size=RESIZE,
        )
    )
    image, label = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and label.item() == 0
    sampler = DATA_SAMPLERS.build(
        dict(type="ShardAwareDistributedSampler", shuffle=False),
        default_args=dict(dataset=dataset, seed=None),
    )
    assert len(sampler) == 15
    transform = TRANSFORMS.build(dict(type="ImageNetTransform", train=True, image_size=SIZE))
    assert transform(Image.new("RGB", (50, 60))).shape == (3, SIZE, SIZE)


# --- normalisation: once, in the model's data preprocessor ------------------------------------


def _write_imagenet_like(root: Path, split: str, n: int, seed: int) -> None:
    """64x64 JPEGs whose pixels have ImageNet's per-channel mean and std: 16-pixel blocks of one
    colour drawn from N(mean, std), which JPEG and resizing keep."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / split / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        blocks = np.clip(rng.normal(IMAGENET_MEAN, IMAGENET_STD, (4, 4, 3)), 0, 1)
        pixels = (blocks.repeat(16, 0).repeat(16, 1) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=95)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_like")
    _write_imagenet_like(root, "val", 16, seed=2)
    _write_imagenet_like(root, "train", 8, seed=3)
    out = root / "shards"
    make_split_shards(root, out, "val", parse_shard_size("8"), progress=False)
    make_split_shards(root, out, "train", parse_shard_size("8"), shuffle_seed=0, progress=False)
    return root


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_are_unit_range_and_the_model_normalises_them_once(backend, imagenet_like):
    """Each backend's train and val loaders yield float images in [0, 1] (``_epoch`` checks);
    through the model's data preprocessor, pixels with ImageNet's statistics come out with mean
    ~0 and std ~1 per channel. Normalising on the data side as well would give mean ~-2 and std
    ~4.4 here; not normalising at all, std ~0.22."""
    for split in ("train", "val"):
        images, _, steps = _epoch(_loader(backend, imagenet_like, imagenet_like / "shards", split))
        assert steps == {"train": 2, "val": 4}[split] and images.std() > 0.05
    inputs = _normalised(images)
    mean, std = inputs.mean(dim=(0, 2, 3)), inputs.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.25, mean
    assert ((std > 0.7) & (std < 1.3)).all(), std


@pytest.mark.parametrize("arg", ["normalize", "mean", "std"])
def test_data_side_normalisation_is_refused_naming_the_data_preprocessor(arg, tree, shards):
    """No ImageNet data constructor, and no loader config, can ask for normalisation (not even
    ``normalize=False``): the error says the model's data preprocessor is the one place."""
    from hpff_dist.data.imagenet import ImageNetFolder, ImageNetShards, build_imagenet_transform
    from hpff_dist.data.imagenet.dali_loader import DaliImageNetLoader
    from hpff_dist.registry import TRANSFORMS

    value = {"normalize": False, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}[arg]
    given = {arg: value}
    attempts = {
        "transform": lambda: build_imagenet_transform(True, SIZE, **given),
        "transform config": lambda: TRANSFORMS.build(
            dict(type="ImageNetTransform", train=True, **given)
        ),
        "folder dataset": lambda: ImageNetFolder(str(tree), "val", **given),
        "webdataset dataset": lambda: ImageNetShards(str(shards), "val", **given),
        "dali loader": lambda: DaliImageNetLoader(str(shards), "val", device="cpu", **given),
        **{f"{b} config": lambda b=b: _loader(b, tree, shards, **given) for b in BACKENDS},
    }
    for name, attempt in attempts.items():
        with pytest.raises(TypeError, match="model's data preprocessor") as error:
            attempt()
        assert repr(arg) in str(error.value), name


def _benchmark_loaders_cli():
    path = ROOT / "tools" / "benchmark_loaders.py"
    spec = importlib.util.spec_from_file_location("benchmark_loaders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loader_benchmark_times_the_configs_loaders(tmp_path, capsys):
    """tools/benchmark_loaders.py builds each backend's config loader, or an experiment's."""
    cli = _benchmark_loaders_cli()
    common = ["--data", str(tmp_path), "--synthetic", "6", "--iters", "2", "--warmup", "1"]
    common += ["--batch-size", "2", "--image-size", str(SIZE), "--workers", "0", "--device", "cpu"]
    runs = [["--backend", "folder"], ["--backend", "webdataset"]]
    runs.append(["--config", str(ROOT / "configs/imagenet/resnet101_e2e.py")])  # dali
    for run, backend in zip(runs, ("folder", "webdataset", "dali")):
        assert cli.main([*common, *run]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["backend"] == backend and result["images"] == 4
        assert result["image_size"] == SIZE and result["images_per_s"] > 0


# --- bad data ----------------------------------------------------------------------------------

BAD_KEY = "n00000001/n00000001_2"


@pytest.fixture(scope="module")
def corrupt(tree, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the val tree with one undecodable JPEG, and its shards."""
    root = tmp_path_factory.mktemp("corrupt")
    shutil.copytree(tree / "val", root / "val")
    rng = np.random.default_rng(0)
    (root / "val" / f"{BAD_KEY}.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(2000))
    out = root / "shards"  # written undecoded: a set made before make_shards decoded images
    make_split_shards(root, out, "val", parse_shard_size("6"), progress=False, check_images=False)
    return root, out


@pytest.fixture(scope="module")
def truncated(shards, tmp_path_factory) -> Path:
    """A copy of the val shards whose middle shard is cut inside its last image."""
    out = tmp_path_factory.mktemp("truncated")
    for path in shards.iterdir():
        shutil.copy(path, out / path.name)
    idx = read_dali_index(str(out / "val-000001.idx"))
    jpg = next((off, n) for ext, off, n in idx[-1] if ext == "jpg")
    with open(out / "val-000001.tar", "r+b") as f:
        f.truncate(jpg[0] + jpg[1] // 2)
    return out


@pytest.mark.parametrize("backend", ["folder", "webdataset"])
def test_corrupt_jpeg_skipped_under_budget(backend, corrupt, caplog):
    root, out = corrupt
    caplog.set_level(logging.WARNING, "hpff_dist.data.imagenet")
    loader = _loader(backend, root, out, max_bad_samples=1)
    _, labels, steps = _epoch(loader)
    assert steps == len(loader) == 4
    assert len(labels) == 14 and Counter(labels)[1] == VAL_PER_CLASS[1] - 1
    report = " ".join(r.getMessage() for r in caplog.records)
    assert "n00000001_2" in report and "skipping bad sample 1/1" in report
    if backend == "webdataset":
        assert "val-000001.tar" in report and BAD_KEY in report


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_jpeg_over_budget_names_shard_and_key(backend, corrupt):
    root, out = corrupt
    loader = _loader(backend, root, out, max_bad_samples=0, num_workers=2)
    with pytest.raises(BadSampleError) as error:
        _epoch(loader)
    message = str(error.value)
    assert "n00000001_2" in message
    if backend != "folder":
        assert "val-000001.tar" in message and BAD_KEY in message


@pytest.mark.parametrize("backend", ["webdataset", "dali"])
def test_truncated_tar_skipped_under_budget(backend, truncated, caplog):
    caplog.set_level(logging.WARNING, "hpff_dist.data.imagenet")
    _, labels, _ = _epoch(_loader(backend, None, truncated, max_bad_samples=1))
    assert len(labels) == 14
    report = " ".join(r.getMessage() for r in caplog.records)
    assert "val-000001.tar" in report


@pytest.mark.parametrize("backend", ["webdataset", "dali"])
def test_truncated_tar_over_budget_names_shard_and_key(backend, truncated):
    idx = read_dali_index(str(truncated / "val-000001.idx"))
    with open(truncated / "val-000001.tar", "rb") as f:
        f.seek(idx[-1][0][1] - 512)
        key = f.read(100).split(b"\0")[0].decode().split(".")[0]
    with pytest.raises(BadSampleError) as error:
        _epoch(_loader(backend, None, truncated, max_bad_samples=0, num_workers=2))
    assert "val-000001.tar" in str(error.value) and key in str(error.value)


def test_bad_sample_budget_is_shared_by_workers_and_counts_a_sample_once(corrupt):
    """The one bad sample, read in 3 epochs by 2 workers, spends 1 of the shared budget (a
    budget of 1 holds); a budget of 0 stops at its first read."""
    from hpff_dist.data.imagenet.errors import BadSampleBudget

    root, out = corrupt
    loader = _loader("webdataset", root, out, max_bad_samples=1, num_workers=2)
    for _ in range(3):
        _epoch(loader)
    assert loader.dataset.budget.count == 1
    with pytest.raises(BadSampleError, match="bad sample 1 exceeds max_bad_samples=0"):
        _epoch(_loader("webdataset", root, out, max_bad_samples=0, num_workers=2))
    budget = BadSampleBudget(1, num_samples=4)
    for _ in range(3):
        budget.report("shard", "a", "broken", index=2)
    with pytest.raises(BadSampleError, match="bad sample 2 exceeds"):
        budget.report("shard", "b", "broken", index=3)


def test_images_are_decodable_jpeg_bytes(shards):
    """Guard for the fixtures: the shards really contain JPEGs (not re-encoded/other formats)."""
    sample = next(iter(wds.WebDataset(find_split(shards, "val").tars[:1], shardshuffle=False)))
    assert Image.open(io.BytesIO(sample["jpg"])).format == "JPEG"


def test_a_batch_of_only_bad_samples_stops_with_a_clear_error():
    from hpff_dist.data.imagenet.collate import SkipBadCollate
    from hpff_dist.data.imagenet.errors import BadSampleError

    good = (torch.zeros(3, 4, 4), 1)
    images, labels = SkipBadCollate()([None, good, None])
    assert images.shape == (1, 3, 4, 4) and labels.tolist() == [1]
    with pytest.raises(BadSampleError, match="all 2 samples of a batch were bad"):
        SkipBadCollate()([None, None])
