"""tools/benchmark_pipeline.py on a tiny setting: every row runs under torchrun, the JSON has
positive throughput and memory for every rank of every row, the plot is written."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_pipeline_tiny(tmp_path):
    out = tmp_path / "bench"
    args = ["--depths", "8", "--k", "3", "--batch", "16", "--steps", "1", "--warmup", "1"]
    args += ["--repeat", "1", "--micro-batches", "2", "--out-dir", str(out)]
    proc = subprocess.run(
        [sys.executable, "tools/benchmark_pipeline.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((out / "pipeline_cpu.json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == [
        "(a) dgl_hpff local pipe P=2 M=2",
        "(b) dgl_hpff local DP D=2",
        "(c) dgl_hpff local 1 proc",
        "(d) e2e DDP D=2",
        "(e) e2e GPipe P=2 M=2",
        "(e) e2e 1F1B P=2 M=2",
    ]
    for r in rows:
        assert r["net"] == "resnet8" and r["batch"] == 16 and r["repeats"] == 1
        ips = r["images_per_s"]
        assert ips["min"] == ips["median"] == ips["max"] > 0
        assert r["ratio_to_c"]["of_medians"] > 0
        assert len(r["ranks"]) == r["procs"] == (1 if r["case"] == "c" else 2)
        for rank in r["ranks"]:
            assert rank["threads"] == 1 and rank["params"] > 0
            assert rank["saved_peak_bytes"]["median"] > 0
            assert rank["rss_growth_bytes"]["median"] > 0
            assert rank["rss_peak_bytes"]["median"] > rank["rss_base_bytes"]["median"]
    pipe = rows[0]
    # the stages split the modules, and hold only their own parameters
    assert pipe["bounds"] == [[0, pipe["bounds"][0][1]], [pipe["bounds"][0][1], 3]]
    full = rows[2]["ranks"][0]["params"]
    assert sum(rank["params"] for rank in pipe["ranks"]) == full
    for rank in pipe["ranks"]:
        waits = rank["waits_s_per_step"]
        assert all(v["median"] >= 0 for v in waits.values())
        assert rank["bare_message_s"]["median"] > 0
    assert "wait_upstream" in pipe["ranks"][1]["waits_s_per_step"]
    assert "wait_h" in pipe["ranks"][0]["waits_s_per_step"]  # HPFF's cascade sends h back
    assert rows[4]["cut_block"] == rows[4]["bounds"][0][1]
    assert any(line.startswith(("PASS", "FAIL")) for line in report["targets"])
    assert "| resnet8 | (a) dgl_hpff local pipe P=2 M=2 |" in proc.stdout
    png = out / "pipeline_cpu.png"
    assert png.stat().st_size > 10_000
