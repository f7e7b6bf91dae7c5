"""tools/benchmark.py: the JSON fields issue 3 asks for, fresh processes, repeats, plots."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
C10 = "configs/cifar10"


def test_benchmark_writes_every_field_and_plots(tmp_path):
    out = tmp_path / "bench.json"
    entries = [
        f"{C10}/resnet32_e2e.py+model.backbone.depth=8",
        f"{C10}/resnet32_k16_dgl_hpff.py+model.backbone.depth=8+model.arch=None+model.method.k=3",
        f"{C10}/resnet32_k16_dgl_hpff.py+model.backbone.depth=8+model.arch=None+model.method.k=2",
    ]
    args = ["--batch-size", "4", "--iters", "2", "--warmup", "1", "--repeat", "2"]
    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", *entries, *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
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
