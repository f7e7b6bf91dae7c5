"""``tools/benchmark_loaders.py --dataset cityscapes``: the segmentation mode run for real on a
tiny synthetic set (every backend in its own process, as the docs' numbers were taken), and
the run merging that turns repeats into medians and names the limiting stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _cli():
    path = ROOT / "tools" / "benchmark_loaders.py"
    spec = importlib.util.spec_from_file_location("benchmark_loaders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _backends() -> list[str]:
    return ["folder", "webdataset"] + (["dali"] if importlib.util.find_spec("nvidia.dali") else [])


def test_cityscapes_mode_times_each_backend_and_its_stages(tmp_path, capsys):
    """Each backend's train loader and its read / decode / transform stages give images/s; the
    synthetic pairs are in the Cityscapes layout with labels in 0-18 and 255."""
    cli = _cli()
    data, out, picture = tmp_path / "data", tmp_path / "seg.json", tmp_path / "seg.png"
    backends = _backends()
    argv = ["--dataset", "cityscapes", "--data", str(data), "--synthetic", "4"]
    argv += ["--size", "128x64", "--workers", "1", "--batch-size", "2", "--iters", "2"]
    argv += ["--warmup", "1", "--device", "cpu", "--backend", *backends]
    argv += ["--out", str(out), "--plot", str(picture)]
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert [r["backend"] for r in report["results"]] == backends and picture.stat().st_size > 0
    for result in report["results"]:
        assert result["dataset"] == "cityscapes" and result["image_size"] == [128, 64]
        assert result["images"] == 4 and result["images_per_s"] > 0
        assert result["images_per_s_runs"] == [result["images_per_s"]]
        assert set(result["stages"]) == {"read", "decode", "transforms"}
        assert all(
            s["images_per_s"] > 0 and s["ms_per_image"] > 0 for s in result["stages"].values()
        )
        assert result["limiting_stage"] in result["stages"] and result["serial_images_per_s"] > 0
    labels = sorted(data.glob("gtFine/train/*/*_gtFine_labelTrainIds.png"))
    assert len(labels) == 4 and len(list(data.glob("leftImg8bit/train/*/*.png"))) == 4
    values = set(np.unique(np.asarray(Image.open(labels[0]))).tolist())
    assert values <= set(range(19)) | {255} and len(values) > 3


def test_runs_merge_into_medians_and_the_slowest_stage():
    """Repeats: images/s and each stage's ms per image are medians of the runs, every run
    kept, and the limiting stage is the one with the largest median time per image."""
    cli = _cli()

    def run(rate: float, decode_ms: float) -> dict:
        stages = {"read": {"ms_per_image": 1.0}, "decode": {"ms_per_image": decode_ms}}
        return {"images_per_s": rate, "stages": {**stages, "transforms": {"ms_per_image": 20.0}}}

    merged = cli.combine_runs([run(10, 30), run(12, 10), run(11, 40)])
    assert merged["images_per_s"] == 11 and merged["images_per_s_runs"] == [10, 12, 11]
    assert merged["stages"]["decode"]["ms_per_image"] == 30
    assert merged["stages"]["decode"]["ms_per_image_runs"] == [30, 10, 40]
    assert merged["limiting_stage"] == "decode" and merged["serial_images_per_s"] == 19.6
