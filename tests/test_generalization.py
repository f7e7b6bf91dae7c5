"""CIFAR-10 -> STL-10 (supplementary Table 5): ``tools/test.py --test-dataset stl10`` and
``tools/generalization.py`` on tiny STL-10 files in the official binary layout, with a
ResNet-32 whose logits per image colour are set by hand (CPU, ~60 s)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from hpff_dist.engine.cross_dataset import CIFAR10_CLASSES, STL10_CLASSES, CrossDatasetAccuracy

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "configs/cifar10/resnet32_e2e.py"
DGL = REPO / "configs/cifar10/resnet32_k16_dgl.py"
#: tiny data: no checksums (not the release), no worker processes, several batches.
TEST_OPTIONS = [
    "test_dataloader.dataset.verify_checksums=False",
    "test_dataloader.num_workers=0",
    "test_dataloader.persistent_workers=False",
    "test_dataloader.batch_size=5",
]

# Each colour's logits: 10 at `primary`, 5 at `secondary`, -0.1 * index elsewhere, so top-5 is
# (primary, secondary, then the lowest other indices). CIFAR indices: 0 airplane, 1 automobile,
# 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.
PALETTE = {  # colour (RGB) -> (primary, secondary)
    (255, 0, 0): (0, 9),
    (0, 255, 0): (1, 2),
    (0, 0, 255): (2, 1),
    (255, 255, 0): (6, 7),
    (255, 0, 255): (7, 6),
    (0, 255, 255): (3, 5),
    (128, 128, 128): (6, 5),
    (255, 255, 255): (9, 8),
    (0, 0, 0): (0, 8),
    (64, 160, 32): (4, 5),
}
_BY_PAIR = {pair: colour for colour, pair in PALETTE.items()}
# The test set: (STL label, the CIFAR (primary, secondary) its colour gets). STL indices:
# 0 airplane, 1 bird, 2 car, 3 cat, 4 deer, 5 dog, 6 horse, 7 monkey, 8 ship, 9 truck.
IMAGES = [
    (0, (0, 9)),  # A airplane->airplane: top1 yes, masked yes, top5 yes, naive yes (0=0)
    (2, (1, 2)),  # B car->automobile: yes, yes, yes; naive no (1!=2)
    (1, (2, 1)),  # C bird->bird: yes, yes, yes; naive no (2!=1)
    (1, (1, 2)),  # D bird->automobile: no; masked no; top5 yes (bird 2nd); naive yes (1=1)
    (6, (6, 7)),  # E horse->frog: no; masked yes (frog dropped: horse); top5 yes; naive yes
    (6, (7, 6)),  # F horse->horse: yes, yes, yes; naive no (7!=6)
    (7, (7, 6)),  # G monkey->horse: not shared (all: wrong); naive yes (7=7)
    (7, (3, 5)),  # H monkey->cat: not shared (all: wrong); naive no
    (3, (6, 5)),  # I cat->frog: no; masked no (dog); top5 no (6,5,0,1,2); naive no
    (9, (9, 8)),  # J truck->truck: yes, yes, yes; naive yes
    (8, (0, 8)),  # K ship->airplane: no; masked no; top5 yes; naive no
    (4, (4, 5)),  # L deer->deer: yes, yes, yes; naive yes
    (2, (1, 2)),  # M car->automobile: yes, yes, yes; naive no
]
# Hand count: 11 shared images (all but G, H); top1 A B C F J L M = 7; top5 all shared but I
# = 10; masked top1 adds E = 8; naive A D E G J L = 6 of 13.
EXPECTED = {
    "top1": 7 / 11 * 100,
    "top5": 10 / 11 * 100,
    "top1_all": 7 / 13 * 100,
    "top1_masked": 8 / 11 * 100,
    "top1_naive": 6 / 13 * 100,
    "images_shared": 11,
    "images_all": 13,
}


def _logits(pair: tuple[int, int]) -> torch.Tensor:
    row = -0.1 * torch.arange(10, dtype=torch.float64)
    row[pair[0]], row[pair[1]] = 10.0, 5.0
    return row


def write_stl10_test(root: Path, images: np.ndarray, labels: list[int]) -> Path:
    """STL-10's test split as the release stores it: test_X.bin holds uint8 images of 3x96x96,
    each channel column-major (torchvision reads (N, 3, 96, 96) and swaps the last two axes);
    test_y.bin holds the labels as 1..10; class_names.txt one name per line."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    np.ascontiguousarray(images.transpose(0, 1, 3, 2)).astype(np.uint8).tofile(
        folder / "test_X.bin"
    )
    (np.asarray(labels) + 1).astype(np.uint8).tofile(folder / "test_y.bin")
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return root


def _colour_images() -> tuple[np.ndarray, list[int]]:
    images = np.zeros((len(IMAGES), 3, 96, 96), dtype=np.uint8)
    for i, (_, pair) in enumerate(IMAGES):
        images[i] = np.asarray(_BY_PAIR[pair], dtype=np.uint8).reshape(3, 1, 1)
    return images, [label for label, _ in IMAGES]


def crafted_checkpoint(config: Path, path: Path) -> Path:
    """A checkpoint of ``config``'s model (random weights) whose classifier is solved so that an
    image of each palette colour gets exactly that colour's designed logits."""
    from hpff_dist.engine.resolve import resolve_config
    from hpff_dist.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(resolve_config(Config.fromfile(config))[0].model).eval()
    fc = model.learner.net.head.fc
    colours = torch.tensor(list(PALETTE), dtype=torch.float32) / 255
    images = colours.view(-1, 3, 1, 1).expand(-1, 3, 32, 32)
    seen = []
    hook = fc.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    with torch.no_grad():
        model(model.data_preprocessor([images, torch.zeros(len(images))])["inputs"])
    hook.remove()
    features = torch.cat([seen[0].double(), torch.ones(len(colours), 1, dtype=torch.float64)], 1)
    wanted = torch.stack([_logits(pair) for pair in PALETTE.values()])
    solved = torch.linalg.lstsq(features, wanted).solution  # (features + 1, 10), exact: rank 10
    with torch.no_grad():
        fc.weight.copy_(solved[:-1].T.float())
        fc.bias.copy_(solved[-1].float())
        batch = model.data_preprocessor([images, torch.zeros(len(images))])["inputs"]
        assert torch.allclose(model(batch).double(), wanted, atol=1e-3)
    torch.save({"meta": {}, "state_dict": model.state_dict()}, path)
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"hpff_{name}_tool", REPO / "tools" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stl10_binary_layout_labels_and_area_downsampling(tmp_path):
    """The dataset reads the column-major release layout into upright images, labels 1..10
    become 0..9, and 96 -> 32 by area is the mean of each 3x3 block."""
    from hpff_dist.data.torchvision_folders import STL10

    y, x = np.mgrid[0:96, 0:96]
    upright = np.stack([(2 * y + x) % 256, (y + 3 * x) % 256, (5 * y) % 256]).astype(np.uint8)
    root = write_stl10_test(tmp_path / "stl", upright[None], [7])
    pipeline = [dict(type="ToFloatImage"), dict(type="DownsampleImage", size=32)]
    data = STL10(str(root), split="test", pipeline=pipeline, verify_checksums=False)
    image, label = data[0]
    blocks = upright.astype(np.float64).reshape(3, 32, 3, 32, 3).mean(axis=(2, 4)) / 255
    assert label == 7 and data.metainfo["classes"] == STL10_CLASSES  # monkey
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    np.testing.assert_allclose(image.numpy(), blocks, atol=1e-6)
    with pytest.raises(TypeError, match="after dict\\(type='ToFloatImage'\\)"):
        STL10(str(root), split="test", pipeline=pipeline[1:], verify_checksums=False)[0]


def test_metric_class_map_and_unmatched_classes_by_hand():
    metric = CrossDatasetAccuracy(
        STL10_CLASSES, CIFAR10_CLASSES, renames={"car": "automobile"}, topk=(1, 5)
    )
    metric.dataset_meta = {"classes": STL10_CLASSES}
    for start in range(0, len(IMAGES), 5):
        chunk = IMAGES[start : start + 5]
        logits = torch.stack([_logits(pair) for _, pair in chunk]).float()
        metric.process(None, [dict(logits=logits, targets=torch.tensor([t for t, _ in chunk]))])
    assert metric.evaluate(len(IMAGES)) == pytest.approx(EXPECTED)

    with pytest.raises(ValueError, match="not the metric's data_classes"):
        metric.dataset_meta = {"classes": CIFAR10_CLASSES}
    with pytest.raises(ValueError, match=r"renames name \['auto'\]"):
        CrossDatasetAccuracy(STL10_CLASSES, CIFAR10_CLASSES, renames={"car": "auto"})


def test_test_tool_on_stl10_reproduces_the_hand_computed_accuracy(tmp_path):
    root = write_stl10_test(tmp_path / "stl", *_colour_images())
    ckpt = crafted_checkpoint(E2E, tmp_path / "e2e.pth")
    work, out = tmp_path / "work", tmp_path / "metrics.json"
    args = ["tools/test.py", str(E2E), str(ckpt), "--test-dataset", "stl10"]
    args += ["--data-root", str(root), "--work-dir", str(work), "--out", str(out)]
    printed = _run([*args, "--cfg-options", *TEST_OPTIONS]).stdout
    assert json.loads(out.read_text()) == pytest.approx(EXPECTED)
    assert "top1_naive" in printed
    records = {r["key"]: r for r in json.loads((work / "config_changes.json").read_text())}
    assert records["test_dataloader.dataset.type"]["new"] == "STL10"
    assert records["test_dataloader.dataset.type"]["by"] == "tools/test.py"
    resolved = Config.fromfile(work / "resolved_config.py")  # --data-root: set when read
    assert resolved.test_dataloader.dataset.root == str(root)
    assert resolved.model.data_preprocessor.mean == [0.4914, 0.4824, 0.4467]  # CIFAR-10's
    assert records["test_dataloader.dataset.pipeline"]["new"][1] == dict(
        type="DownsampleImage", size=32, filter="area"
    )
    assert records["test_evaluator"]["new"]["renames"] == {"car": "automobile"}


def test_test_dataset_refuses_a_config_that_does_not_test_on_cifar10():
    tool = _tool("test.py")
    config = "configs/fashion_mnist/resnet32_e2e.py"
    cfg = Config.fromfile(REPO / config)
    args = Namespace(
        config=config, slide=None, tta=False, show_dir=None, test_dataset="stl10", data_root=None
    )
    with pytest.raises(ValueError, match="tests on 'FashionMNIST'.*pass the CIFAR-10 config"):
        tool.apply_test_options(cfg, args)


def test_stl10_images_then_take_the_configs_own_test_steps():
    """A ViT-B/16 config tests CIFAR-10 at 224: STL-10's images are brought to 32x32, then
    resized to 224 as its CIFAR test images are, and a batch runs through that pipeline."""
    import torch

    from hpff_dist.data.transforms import build_pipeline

    tool = _tool("test.py")
    config = "configs/cifar10/vit_b16_e2e.py"
    cfg = Config.fromfile(REPO / config)
    args = Namespace(
        config=config, slide=None, tta=False, show_dir=None, test_dataset="stl10", data_root=None
    )
    tool.apply_test_options(cfg, args)
    steps = [t["type"] for t in cfg.test_dataloader.dataset.pipeline]
    assert steps == ["ToFloatImage", "DownsampleImage", "Resize"]
    image = build_pipeline(cfg.test_dataloader.dataset.pipeline)(
        torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    )
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32


def _work_dir(config: Path, path: Path) -> Path:
    """What tools/train.py leaves that the table needs: resolved_config.py, a checkpoint and
    last_checkpoint naming it."""
    from hpff_dist.engine.resolve import resolve_config, write_resolved_config

    cfg = Config.fromfile(config)
    cfg.work_dir = str(path)
    write_resolved_config(*resolve_config(cfg))
    ckpt = crafted_checkpoint(config, path / "epoch_1.pth")
    (path / "last_checkpoint").write_text(str(ckpt))
    return path


def test_generalization_table_for_two_work_dirs(tmp_path):
    root = write_stl10_test(tmp_path / "stl", *_colour_images())
    runs = [_work_dir(E2E, tmp_path / "bp"), _work_dir(DGL, tmp_path / "dgl")]
    out, png = tmp_path / "table.json", tmp_path / "table.png"
    args = ["tools/generalization.py", *map(str, runs), "--data-root", str(root)]
    args += ["--work-root", str(tmp_path / "eval"), "--out", str(out), "--plot", str(png)]
    printed = _run([*args, "--cfg-options", *TEST_OPTIONS]).stdout
    table = json.loads(out.read_text())["table"]
    assert list(table) == ["BP", "DGL"]
    for method, paper in (("BP", 35.98), ("DGL", 31.95)):
        cell = table[method]["ResNet-32"]
        assert cell["top1"] == pytest.approx(EXPECTED["top1"])
        assert cell["top1_naive"] == pytest.approx(EXPECTED["top1_naive"])
        assert cell["paper_stl10"] == paper
    assert table["DGL"]["ResNet-32"]["k"] == 16
    assert "| BP | 63.64 | 53.85 | 46.15 | 35.98 |" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generalization_inputs_name_what_is_missing(tmp_path):
    tool = _tool("generalization.py")
    ckpt = tmp_path / "e2e.pth"
    torch.save({"meta": {}, "state_dict": {}}, ckpt)
    with pytest.raises(ValueError, match="pass its training config with --configs"):
        tool.find_run(str(ckpt), None)
    assert tool.find_run(str(ckpt), str(E2E)) == (str(E2E), str(ckpt))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "resolved_config.py").write_text("")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        tool.find_run(str(empty), None)
    assert tool.describe(str(DGL)) == {"method": "DGL", "network": "ResNet-32", "k": 16}
