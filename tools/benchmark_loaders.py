"""Images/s of a loader from a config (decode + augment), printed and saved as JSON.

    python tools/benchmark_loaders.py --data /data/imagenet-wds --backend dali --workers 8
    python tools/benchmark_loaders.py --synthetic 2000 --backend webdataset --workers 2
    python tools/benchmark_loaders.py --config configs/imagenet/resnet101_k4_infopro.py \
        --data /data/imagenet-wds --cfg-options train_dataloader.num_threads=16
    python tools/benchmark_loaders.py --dataset cityscapes --synthetic 24 --workers 2 \
        --batch-size 2 --backend folder webdataset dali --repeat 3 --out seg.json --plot seg.png

The loader is the config's ``train_dataloader`` (``--split train``) or ``val_dataloader``, built
by ``hpff_dist.data.loader_builder.build_dataloader``, the route a training run takes: same
dataset, sampler, collate function and transforms. ``--backend B`` reads
``configs/_base_/datasets/<dataset>_B.py``; ``--config`` any config with loaders (an experiment).
``--data`` is the dataset folder for ``folder`` and the shard directory for the others. With
``--synthetic N`` N synthetic samples and their shards (DIR/shards) are made in ``--data``
(kept, reused by later runs) or in a temporary directory: ImageNet-sized JPEGs
(DIR/train/<class>/), or for ``--dataset cityscapes`` Cityscapes-like PNG pairs
(:func:`make_synthetic_cityscapes`, ``--size WxH``, default 2048x1024). The first ``--warmup``
batches (worker start-up, DALI graph build) are not timed.

Cityscapes also times the stages of one sample in this one process (``stages`` in the JSON,
images/s of each: the read of the bytes, the PNG decode of image + label, the train transforms
on the decoded arrays), so the stage that limits a backend can be named (the slowest one).
Several ``--backend`` values or ``--repeat R`` run each backend R times, round-robin, each in a
fresh process (its own workers, caches, DALI pipeline), so slow phases of a shared machine hit
all backends alike; the JSON then has one record per backend with the median of the runs and
every run's value (``images_per_s_runs``), and ``--plot`` draws a bar chart of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config, DictAction
from PIL import Image

import hpff_dist.data  # noqa: F401  (registers the datasets, samplers and collate functions)
from hpff_dist.data.imagenet import BACKENDS
from hpff_dist.data.imagenet.shards import make_split_shards, parse_shard_size
from hpff_dist.data.loader_builder import build_dataloader, with_loader_args

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("imagenet", "cityscapes")
CITYSCAPES_SIZE = (2048, 1024)  # (w, h) of a Cityscapes frame
STAGES = ("read", "decode", "transforms")


def make_synthetic(root: Path, num_images: int, num_classes: int = 10, seed: int = 0) -> Path:
    """ImageNet-like JPEGs (~ 500x375, smooth content, quality 90) in root/train/<class>/."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        folder = root / "train" / f"n{i % num_classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(300, 500, 2))
        small = (rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"{i}.JPEG", quality=90)
    make_split_shards(root, root / "shards", "train", parse_shard_size("100MB"), progress=False)
    return root


def synthetic_frame(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth RGB frame with a little sensor-like texture: PNG cost depends on entropy, so
    random pixels (incompressible, ~6 MB) or flat colour (a few KB) would misstate decode time.
    Bicubic-upsampled 1/32-scale noise plus Gaussian noise (sigma 1.5 levels) compresses to
    about 3 MB at 2048x1024, near real Cityscapes frames (~2 MB)."""
    small = rng.random((height // 32 + 2, width // 32 + 2, 3), dtype=np.float32) * 255
    base = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((width, height), 3))
    texture = rng.normal(0.0, 1.5, (height, width, 3)).astype(np.float32)
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def synthetic_labels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Piecewise-constant trainIds as a street scene has them: sky over buildings over road
    bands, then 20-40 rectangles and ellipses of random classes (0-18) and an ignored (255)
    ego-vehicle strip and a few ignored boxes: large flat regions, like real label maps."""
    seg = np.full((height, width), 2, np.uint8)  # building
    seg[: height // 4] = 10  # sky
    seg[int(height * 0.6) :] = 0  # road
    ys, xs = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(20, 41))):
        cls = int(rng.integers(0, 19)) if rng.random() > 0.1 else 255
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (
            int(rng.integers(width // 40, width // 5)),
            int(rng.integers(height // 30, height // 4)),
        )
        if rng.random() < 0.5:
            seg[y0 : y0 + h, x0 : x0 + w] = cls
        else:
            inside = ((xs - x0) / (w / 2)) ** 2 + ((ys - y0) / (h / 2)) ** 2 <= 1
            seg[inside] = cls
    seg[int(height * 0.92) :] = 255  # ego vehicle: void in Cityscapes
    return seg


def make_synthetic_cityscapes(
    root: Path, num_pairs: int, size: tuple[int, int] = CITYSCAPES_SIZE, seed: int = 0
) -> Path:
    """``num_pairs`` Cityscapes-like (image, trainIds) PNG pairs of ``size`` (w, h) in the
    official layout (3 cities) and their shards in root/shards, as ``make_shards`` writes
    them. See :func:`synthetic_frame` and :func:`synthetic_labels` for the content."""
    from hpff_dist.data.cityscapes.shards import make_seg_split_shards
    from hpff_dist.data.shard_writer import parse_shard_size as seg_shard_size

    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(num_pairs):
        city = ("aachen", "bochum", "zurich")[i % 3]
        stem = f"{city}_{i:06d}_000019"
        images = root / "leftImg8bit" / "train" / city
        labels = root / "gtFine" / "train" / city
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_frame(rng, width, height)).save(
            images / f"{stem}_leftImg8bit.png"
        )
        seg = Image.fromarray(synthetic_labels(rng, width, height), mode="L")
        seg.save(labels / f"{stem}_gtFine_labelTrainIds.png")
    make_seg_split_shards(root, root / "shards", "train", seg_shard_size("1GB"), progress=False)
    return root


def batch_images(batch: Any) -> int:
    """Images in a batch: ``(images, labels)`` tensors (ImageNet) or mmseg's dict."""
    if isinstance(batch, dict):
        return len(batch["inputs"])
    return batch[0].shape[0]


def benchmark(loader: Iterable, iters: int, warmup: int) -> dict:
    """Time ``iters`` batches after ``warmup`` batches; epochs restart as needed."""
    images, batches, start = 0, 0, None
    while batches < iters + warmup:
        for batch in loader:
            batches += 1
            if batches == warmup:
                start = time.perf_counter()
            elif batches > warmup:
                images += batch_images(batch)
            if batches >= iters + warmup:
                break
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
    }


def backend_of(loader_cfg: dict) -> str:
    """Which of the three backends a loader config entry reads with."""
    if loader_cfg.get("type") in ("DaliImageNetLoader", "DaliSegLoader"):
        return "dali"
    folders = ("ImageNetFolder", "CityscapesFolder")
    return "folder" if loader_cfg["dataset"]["type"] in folders else "webdataset"


def config_path(args: argparse.Namespace) -> str:
    """The config file benchmarked: ``--config``, else the backend's dataset base."""
    return str(args.config or f"configs/_base_/datasets/{args.dataset}_{args.backend}.py")


def scale_seg_sizes(loader: dict, size: tuple[int, int]) -> dict:
    """The train loader with RandomResize's scale set to ``size`` (w, h) and the crop scaled
    alike (the config's crop / scale ratio), so a small synthetic set keeps Cityscapes'
    proportions instead of being upsampled to 2048x1024."""
    width, height = size
    if loader.get("type") == "DaliSegLoader":
        (sw, sh), (ch, cw) = loader["scale"], loader["crop_size"]
        loader.update(scale=(width, height), crop_size=(ch * height // sh, cw * width // sw))
        return loader
    for step in loader["dataset"]["pipeline"]:
        if step["type"].endswith("RandomResize"):
            sw, sh = step["scale"]
            step["scale"] = (width, height)
        elif step["type"].endswith("RandomCrop"):
            ch, cw = step["crop_size"]
    for step in loader["dataset"]["pipeline"]:
        if step["type"].endswith("RandomCrop"):
            step["crop_size"] = (ch * height // sh, cw * width // sw)
    return loader


def loader_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config's loader entry for ``--split``, with the command line's settings applied."""
    cfg = Config.fromfile(str(REPO / config_path(args)))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    loader = cfg.to_dict()["train_dataloader" if args.split == "train" else "val_dataloader"]
    backend = backend_of(loader)
    values: dict[str, Any] = {"split": args.split, "batch_size": args.batch_size}
    if args.image_size is not None:
        values["image_size"] = args.image_size
    if args.dataset == "cityscapes":
        del values["split"]  # the config's: the dataset's data_prefix names it
        if args.size and tuple(args.size) != CITYSCAPES_SIZE:
            loader = scale_seg_sizes(loader, tuple(args.size))
    if backend == "dali":
        values.update(num_threads=max(args.workers, 1), device=args.device)
    else:
        values.update(num_workers=args.workers, pin_memory=torch.cuda.is_available())
    return with_loader_args(loader, **values)


def data_root_args(cfg: dict, data: Path, synthetic: bool, dataset: str) -> dict[str, str]:
    """Where the loader reads: the folder tree or the shards, under the key its kind takes."""
    backend = backend_of(cfg)
    root = data if backend == "folder" or not synthetic else data / "shards"
    key = "data_root" if dataset == "cityscapes" and backend == "folder" else "root"
    return {key: str(root)}


# --- stages of one Cityscapes sample -------------------------------------------------------


def _rate(seconds: list[float]) -> dict[str, float]:
    """images/s and ms per image of one stage from its per-sample seconds."""
    total = sum(seconds)
    return {
        "images_per_s": round(len(seconds) / total, 1),
        "ms_per_image": round(1e3 * total / len(seconds), 3),
    }


def torch_seg_stages(loader: Any, samples: int, seed: int) -> dict[str, dict]:
    """Per-stage images/s of the mmseg pipeline of ``loader.dataset`` in this process: read
    (``fileio.get`` of image and label, the call mmseg's loaders make: a file or a shard
    member), decode (``mmcv.imfrombytes`` as LoadImageFromFile / LoadAnnotations call it, plus
    our label check) and the remaining transforms (resize, crop, flip, photometric, pack)."""
    import mmcv
    from mmengine import fileio
    from mmseg.datasets.transforms import LoadAnnotations

    from hpff_dist.data.cityscapes.folder import CheckedLabels, check_label_values

    dataset = loader.dataset
    steps = list(dataset.pipeline.transforms)
    load_img, load_ann = steps[0], steps[1]
    checked = isinstance(load_ann, CheckedLabels)
    ann = load_ann.load if checked else load_ann
    assert isinstance(ann, LoadAnnotations), f"unexpected pipeline start {steps[:2]}"
    num_classes = len(dataset.metainfo["classes"])
    np.random.seed(seed)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    for i in range(min(samples, len(dataset))):
        info = dataset.get_data_info(i)
        t0 = time.perf_counter()
        img_bytes = fileio.get(info["img_path"], backend_args=load_img.backend_args)
        seg_bytes = fileio.get(info["seg_map_path"], backend_args=ann.backend_args)
        t1 = time.perf_counter()
        img = mmcv.imfrombytes(
            img_bytes, flag=load_img.color_type, backend=load_img.imdecode_backend
        )
        seg = mmcv.imfrombytes(seg_bytes, flag="unchanged", backend=ann.imdecode_backend)
        seg = seg.squeeze().astype(np.uint8)
        if checked:
            check_label_values(seg, info["seg_map_path"], num_classes)
        t2 = time.perf_counter()
        results = dict(info, img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        results.update(gt_seg_map=seg, seg_fields=["gt_seg_map"])
        for step in steps[2:]:
            results = step(results)
        t3 = time.perf_counter()
        for stage, t in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2)):
            times[stage].append(t)
    return {stage: _rate(t) for stage, t in times.items()}


def dali_seg_stages(cfg: dict, samples: int) -> dict[str, dict]:
    """Per-stage images/s of the DALI backend at one thread: read (the members' bytes at
    their index offsets, what DALI's reader does), decode (a reader + image/label decoder
    graph, less the read) and transforms (the config's ``DaliSegLoader`` with one thread,
    less the decode graph). DALI's stages run in one graph, hence the differences."""
    from nvidia.dali import fn, pipeline_def, types

    from hpff_dist.data.cityscapes.dali_loader import IMAGE_EXTS, LABEL_EXT
    from hpff_dist.data.imagenet.shards import find_split, sample_components

    split = find_split(cfg["root"], cfg.get("split", "train"))
    members = [
        (tar, sample["members"])
        for tar, idx in zip(split.tars, split.indexes)
        for sample in sample_components(idx)
    ][:samples]
    read: list[float] = []
    for tar, parts in members:
        start = time.perf_counter()
        with open(tar, "rb") as f:
            for ext in ("png", LABEL_EXT):
                offset, size = parts[ext]
                os.pread(f.fileno(), size, offset)
        read.append(time.perf_counter() - start)
    batch = cfg["batch_size"]
    batches = max(len(members) // batch, 1)

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def decode_graph():
        image, label = fn.readers.webdataset(
            paths=split.tars, index_paths=split.indexes, ext=[IMAGE_EXTS, LABEL_EXT]
        )
        image = fn.decoders.image(image, device="cpu", output_type=types.BGR)
        return image, fn.decoders.image(label, device="cpu", output_type=types.ANY_DATA)

    def time_batches(run: Callable[[], Any]) -> float:
        run()  # warm-up: graph build, first batch
        start = time.perf_counter()
        for _ in range(batches):
            run()
        return (time.perf_counter() - start) / (batches * batch)

    graph = decode_graph()
    graph.build()
    per_decode = time_batches(graph.run)
    del graph
    full = build_dataloader(with_loader_args(cfg, num_threads=1))
    stream = iter(_cycle(full))
    per_full = time_batches(lambda: next(stream))
    per_read = sum(read) / len(read)
    per_image = {
        "read": per_read,
        "decode": max(per_decode - per_read, 1e-9),
        "transforms": max(per_full - per_decode, 1e-9),
    }
    return {
        stage: {"images_per_s": round(1 / t, 1), "ms_per_image": round(1e3 * t, 3)}
        for stage, t in per_image.items()
    }


def _cycle(loader: Iterable) -> Iterable:
    while True:
        yield from loader


def with_limits(stages: dict[str, dict]) -> dict[str, Any]:
    """The stages plus the serial estimate (one process doing all of them) and the stage that
    limits: the one taking the most time per image."""
    per_image = sum(s["ms_per_image"] for s in stages.values())
    return {
        "stages": stages,
        "serial_images_per_s": round(1e3 / per_image, 1),
        "limiting_stage": max(stages, key=lambda s: stages[s]["ms_per_image"]),
    }


# --- one run, several runs ------------------------------------------------------------------


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One backend's measurement in this process (the data already made if synthetic)."""
    import cv2

    cv2.setNumThreads(0)  # as mmengine's setup_env does for a training run
    torch.set_num_threads(1)  # the workers, not intra-op threads, should do the work
    data = Path(args.data)
    cfg = loader_config(args)
    backend = backend_of(cfg)
    cfg = with_loader_args(cfg, **data_root_args(cfg, data, bool(args.synthetic), args.dataset))
    loader = build_dataloader(cfg, seed=args.seed)
    result = benchmark(loader, args.iters, args.warmup)
    if args.dataset == "cityscapes" and args.stage_samples > 0:
        if backend == "dali":
            del loader
            stages = dali_seg_stages(cfg, args.stage_samples)
        else:
            stages = torch_seg_stages(loader, args.stage_samples, args.seed)
            del loader
        result.update(with_limits(stages))
    result.update(
        backend=backend,
        dataset=args.dataset,
        config=config_path(argparse.Namespace(**{**vars(args), "backend": backend})),
        workers=args.workers,
        batch_size=args.batch_size,
        image_size=(
            list(args.size or CITYSCAPES_SIZE)
            if args.dataset == "cityscapes"
            else cfg.get("image_size", cfg.get("dataset", {}).get("image_size"))
        ),
        split=args.split,
        synthetic=args.synthetic,
        device=("gpu" if torch.cuda.is_available() and args.device != "cpu" else "cpu"),
        cpus=os.cpu_count(),
        machine=platform.processor() or platform.machine(),
    )
    return result


def run_in_fresh_process(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run_once` in a new interpreter, so each run has its own workers and caches."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    try:
        spec = json.dumps({**vars(args), "worker_out": out})
        subprocess.run([sys.executable, __file__, "--worker", spec], check=True)
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def combine_runs(runs: list[dict]) -> dict[str, Any]:
    """The first run's record with images/s (and each stage's) the median of the runs, every
    run's value kept (``*_runs``), and the limiting stage re-derived from the medians."""
    result = dict(runs[0])
    result["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    result["images_per_s"] = statistics.median(result["images_per_s_runs"])
    if "stages" in result:
        stages = {}
        for stage in result["stages"]:
            values = [r["stages"][stage]["ms_per_image"] for r in runs]
            ms = statistics.median(values)
            stages[stage] = {
                "images_per_s": round(1e3 / ms, 1),
                "ms_per_image": ms,
                "ms_per_image_runs": values,
            }
        result.update(with_limits(stages))
    return result


def plot(results: list[dict], path: str) -> None:
    """Bars per backend: the loader's images/s (its workers) and each stage's in one process
    (log scale: reads are orders of magnitude faster than decodes), run ranges as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = ["loader", *STAGES]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(bars)
    for j, bar in enumerate(bars):
        xs, heights, low, high = [], [], [], []
        for i, r in enumerate(results):
            if bar == "loader":
                runs, value = r.get("images_per_s_runs", [r["images_per_s"]]), r["images_per_s"]
            elif bar in r.get("stages", {}):
                stage = r["stages"][bar]
                runs = [1e3 / ms for ms in stage.get("ms_per_image_runs", [stage["ms_per_image"]])]
                value = stage["images_per_s"]
            else:
                continue
            xs.append(i + (j - (len(bars) - 1) / 2) * width)
            heights.append(value)
            low.append(max(value - min(runs), 0))
            high.append(max(max(runs) - value, 0))
        label = (
            f"loader ({results[0]['workers']} workers)" if bar == "loader" else f"{bar} (1 process)"
        )
        ax.bar(xs, heights, width, yerr=[low, high], capsize=2, label=label)
        for x, h, up in zip(xs, heights, high):  # above the error bar
            text = f"{h:.0f}" if h >= 10 else f"{h:.1f}"
            ax.annotate(text, (x, h + up), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(results)), [r["backend"] for r in results])
    ax.set_ylabel("images/s (log scale)")
    w, h = results[0]["image_size"]
    ax.set_title(
        f"{results[0]['dataset']} loaders: {w}x{h} PNG pairs, batch {results[0]['batch_size']}, {results[0]['cpus']} CPUs"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (w, h)."""
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one run of run_in_fresh_process
        args = argparse.Namespace(**json.loads(argv[1]))
        Path(args.worker_out).write_text(json.dumps(run_once(args)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagenet", choices=DATASETS)
    parser.add_argument("--data", help="dataset folder (folder) or shard directory (others)")
    parser.add_argument("--synthetic", type=int, default=0, help="make N synthetic samples first")
    parser.add_argument("--size", type=parse_size, help="cityscapes synthetic WxH (2048x1024)")
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, help="one or more backends")
    parser.add_argument("--config", help="a config with loaders (instead of --backend)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="key=value overrides")
    parser.add_argument("--split", default="train", choices=["train", "val"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, help="default: the config's")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process runs per backend")
    parser.add_argument("--stage-samples", type=int, default=24, help="cityscapes stage timing")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (the Runner's seed)")
    parser.add_argument("--device", default="auto", help="DALI: auto | gpu | cpu")
    parser.add_argument("--out", help="also write the JSON result here")
    parser.add_argument("--plot", help="PNG bar chart of the results")
    args = parser.parse_args(argv)
    if not args.data and not args.synthetic:
        parser.error("give --data DIR or --synthetic N")
    if (args.backend is None) == (args.config is None):
        parser.error("give exactly one of --backend B and --config FILE")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.dataset == "cityscapes" and args.split != "train":
        parser.error("--dataset cityscapes times the train loader only")
    if args.size and args.dataset != "cityscapes":
        parser.error("--size is for --dataset cityscapes (ImageNet: --image-size)")

    with tempfile.TemporaryDirectory(prefix="hpff_bench_") as tmp:
        data = Path(args.data or tmp)
        if args.synthetic and not (data / "shards" / "manifest-train.json").exists():
            if args.dataset == "cityscapes":
                make_synthetic_cityscapes(data, args.synthetic, args.size or CITYSCAPES_SIZE)
            else:
                make_synthetic(data, args.synthetic)
        backends = args.backend or [None]
        spec = {k: v for k, v in vars(args).items() if k not in ("backend", "plot", "out")}
        spec["data"] = str(data)
        if len(backends) == 1 and args.repeat == 1:
            report: dict[str, Any] = run_once(argparse.Namespace(**spec, backend=backends[0]))
            results = [report]
        else:
            runs: list[list[dict]] = [[] for _ in backends]
            for repeat in range(args.repeat):
                for i, backend in enumerate(backends):
                    print(
                        f"[benchmark_loaders] {backend or args.config} run {repeat + 1}/{args.repeat}",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs[i].append(
                        run_in_fresh_process(argparse.Namespace(**spec, backend=backend))
                    )
                    print(
                        f"[benchmark_loaders]   {runs[i][-1]['images_per_s']} images/s",
                        file=sys.stderr,
                        flush=True,
                    )
            results = [combine_runs(r) for r in runs]
            report = {"results": results, "repeat": args.repeat}
    if args.plot:
        plot(results, args.plot)
        report["plot"] = args.plot
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
