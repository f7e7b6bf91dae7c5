"""tools/benchmark.py: the JSON fields issue 3 asks for, fresh processes, repeats, plots."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
C10 = "configs/cifar10"


def _run_benchmark(entries: list[str], args: list[str], out) -> dict:
    """``tools/benchmark.py`` in a subprocess; its JSON report."""
    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", *entries, *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_benchmark_writes_every_field_and_plots(tmp_path):
    out = tmp_path / "bench.json"
    entries = [
        f"{C10}/resnet32_e2e.py+model.backbone.depth=8",
        f"{C10}/resnet32_k16_dgl_hpff.py+model.backbone.depth=8+model.arch=None+model.method.k=3",
        f"{C10}/resnet32_k16_dgl_hpff.py+model.backbone.depth=8+model.arch=None+model.method.k=2",
    ]
    args = ["--batch-size", "4", "--iters", "2", "--warmup", "1", "--repeat", "2"]
    report = _run_benchmark(entries, args, out)
    results = report["results"]
    assert [r["method"] for r in results] == ["e2e", "dgl_hpff", "dgl_hpff"]
    assert [r["k"] for r in results] == [1, 3, 2]
    for r in results:
        assert r["batch_size"] == 4 and r["input_shape"] == [3, 32, 32]
        assert len(r["step_times_s"]) == 2 and len(r["step_time_runs_s"]) == 2
        assert [len(steps) for steps in r["step_times_runs_s"]] == [2, 2]
        assert min(r["step_time_runs_s"]) <= r["step_time_s"] <= max(r["step_time_runs_s"])
        assert r["peak_saved_bytes"] > 0 and r["peak_rss_bytes"] > 50 * 2**20
        assert r["cpu_malloc"] is not None  # the default runtime's allocator settings
    e2e, k3, _ = results
    assert e2e["aux_peak_saved_bytes"] == 0 < k3["aux_peak_saved_bytes"]
    # local learning keeps at most two module graphs: below E2E's whole-network graph
    assert k3["peak_saved_bytes"] < e2e["peak_saved_bytes"]
    plots = [Path(p) for p in report["plots"]]
    assert {p.name for p in plots} == {"memory_time_per_method.png", "memory_vs_k.png"}
    assert all(p.stat().st_size > 1000 for p in plots)


def _entry(config: str, options: dict) -> str:
    """A benchmark entry ``config+key=value...``; dict options (norm_cfg) are left out, the
    benchmark's resolve_config turns SyncBN into BN on the CPU itself."""
    parts = [config]
    for key, value in options.items():
        if isinstance(value, dict):
            continue
        text = "(" + ",".join(map(str, value)) + ")" if isinstance(value, tuple) else str(value)
        parts.append(f"{key}={text}")
    return "+".join(parts)


def _direct_peak(name: str, batch_size: int) -> int:
    """Peak saved bytes of the first train step of the same tiny model, measured here with
    the plain SavedTensorMeter (no part labels), for the benchmark's numbers to match."""
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from seg_tiny import CONFIGS, tiny_model_options

    import segmentation  # noqa: F401  (registers LocalEncoderDecoder)
    from hpff_dist.benchmark.step import synthetic_batch
    from hpff_dist.engine.resolve import resolve_config
    from hpff_dist.local.memory import SavedTensorMeter
    from hpff_dist.registry import MODELS

    init_default_scope("hpff_dist")
    cfg = Config.fromfile(CONFIGS / f"deeplabv3_r101_d8_{name}.py")
    cfg.merge_from_dict(tiny_model_options())
    cfg, _ = resolve_config(cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    data = synthetic_batch(model, cfg, batch_size)
    with SavedTensorMeter(ignore=model) as meter:
        model.train_step(data, optim_wrapper)
    return meter.peak_bytes


def test_benchmark_runs_segmentation_configs(tmp_path):
    """DeepLabV3 configs (tests/seg_tiny.py size): mmseg batches at the (H, W) crop, SyncBN ->
    BN on record, the peak broken down by part, local learning below E2E, the same peak as a
    direct SavedTensorMeter measurement."""
    import torch
    from seg_tiny import CROP, tiny_model_options

    out = tmp_path / "seg.json"
    names = ["e2e", "k4_infopro_hpff"]
    options = tiny_model_options()
    options.pop("model.method", None)
    entries = [_entry(f"configs/cityscapes/deeplabv3_r101_d8_{n}.py", options) for n in names]
    args = ["--iters", "1", "--warmup", "0", "--plot-prefix", "seg_"]
    report = _run_benchmark(entries, args, out)
    e2e, local = report["results"]
    assert (e2e["method"], local["method"], local["k"]) == ("e2e", "infopro_hpff", 4)
    for r in (e2e, local):
        assert r["task"] == "segmentation"
        assert r["input_shape"] == [3, *CROP] and r["batch_size"] == 2  # the config's batch
        assert "SyncBatchNorm" not in r["norm_layers"] and r["norm_layers"]["BatchNorm2d"] > 0
        if not torch.cuda.is_available():
            assert r["sync_bn_to_bn"] == [
                "model.backbone.norm_cfg.type",
                "model.decode_head.norm_cfg.type",
                "model.auxiliary_head.norm_cfg.type",
            ]
        # what was alive at the peak adds up to the peak; the largest tensor is part of it
        assert sum(r["peak_parts_bytes"].values()) == r["peak_saved_bytes"]
        largest = r["peak_largest_saved"]
        assert largest and largest[0]["bytes"] <= r["peak_saved_bytes"]
        assert [x["bytes"] for x in largest] == sorted((x["bytes"] for x in largest), reverse=True)
    # E2E keeps the whole backbone's graph; InfoPro+HPFF at most two modules' graphs
    assert local["backbone_peak_saved_bytes"] < e2e["backbone_peak_saved_bytes"]
    backbone = [r["group_peak_saved_bytes"]["backbone"] for r in (e2e, local)]
    assert backbone[1] < backbone[0] <= e2e["backbone_peak_saved_bytes"]
    assert local["peak_saved_bytes"] < e2e["peak_saved_bytes"]
    assert {f"module{m}" for m in range(4)} & set(local["peak_parts_bytes"])
    assert set(e2e["peak_parts_bytes"]) <= {"module0", "net_head", "tap:aux", "other unlabelled"}
    assert e2e["peak_saved_bytes"] == _direct_peak("e2e", 2)
    assert local["peak_saved_bytes"] == _direct_peak("k4_infopro_hpff", 2)
    assert {Path(p).name for p in report["plots"]} == {"seg_memory_time_per_method.png"}


def test_input_shape_and_segmentation_batch():
    from mmengine.config import Config

    from hpff_dist.benchmark.step import input_shape, segmentation_batch

    square = Config(dict(model=dict(image_size=96, data_preprocessor=dict(mean=[0.0] * 3))))
    assert input_shape(square) == (3, 96, 96)
    crop = Config(dict(model=dict(image_size=(32, 64), data_preprocessor=dict(mean=[0.0] * 3))))
    assert input_shape(crop) == (3, 32, 64)
    batch = segmentation_batch(3, (3, 32, 64), num_classes=19)
    assert [tuple(x.shape) for x in batch["inputs"]] == [(3, 32, 64)] * 3
    assert all(x.dtype.is_floating_point is False for x in batch["inputs"])
    labels = [s.gt_sem_seg.data for s in batch["data_samples"]]
    assert all(tuple(y.shape) == (1, 32, 64) for y in labels)
    values = set().union(*(set(y.unique().tolist()) for y in labels))
    assert 255 in values and values - {255} <= set(range(19)) and len(values) > 10
