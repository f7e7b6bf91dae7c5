"""Train several configs on the same data and budget; print accuracy, time and memory.

    python tools/compare.py CONFIG ... [--work-root DIR] [--cfg-options k=v ...] [--out F.json]

Each config is trained by ``tools/train.py`` in its own process (with the shared overrides),
then its activation memory is measured on one synthetic step at the training batch size
(``hpff_dist.benchmark.step``). Writes a JSON report and a PNG with the three columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))


def train_one(config: str, work_dir: str, options: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(TOOLS, "train.py"), config, "--work-dir", work_dir]
    if options:
        cmd += ["--cfg-options", *options]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    with open(os.path.join(work_dir, "test_metrics.json")) as f:
        metrics = json.load(f)
    return {"train_and_test_s": seconds, **metrics}


def memory_one(config: str, options: list[str], report: str) -> dict:
    cmd = [
        sys.executable,
        os.path.join(TOOLS, "benchmark.py"),
        "+".join([config, *options]),
        "--iters",
        "1",
        "--warmup",
        "0",
        "--out",
        report,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(report) as f:
        return json.load(f)["results"][0]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("configs", nargs="+")
    p.add_argument("--work-root", default="work_dirs/compare")
    p.add_argument("--cfg-options", nargs="+", default=[], help="key=value applied to every config")
    p.add_argument("--out", default=None, help="JSON report (default: WORK_ROOT/compare.json)")
    args = p.parse_args()

    rows = []
    for config in args.configs:
        name = os.path.splitext(os.path.basename(config))[0]
        result = train_one(config, os.path.join(args.work_root, name), args.cfg_options)
        model_options = [o for o in args.cfg_options if o.startswith("model.")]
        mem = memory_one(config, model_options, os.path.join(args.work_root, name, "memory.json"))
        rows.append(
            {
                "config": name,
                "method": mem["method"],
                "k": mem["k"],
                **result,
                "peak_saved_bytes": mem["peak_saved_bytes"],
                "aux_peak_saved_bytes": mem["aux_peak_saved_bytes"],
                "batch_size": mem["batch_size"],
            }
        )
    out = args.out or os.path.join(args.work_root, "compare.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=2)
    print(format_table(rows))
    print(f"report: {out}; plot: {plot(rows, os.path.splitext(out)[0] + '.png')}")


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<14} {'K':>3} {'top1 %':>8} {'time s':>8} {'saved MiB':>10} {'aux MiB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<14} {r['k']:>3} {r['top1']:>8.2f} {r['train_and_test_s']:>8.0f} "
            f"{r['peak_saved_bytes'] / 2**20:>10.1f} {r['aux_peak_saved_bytes'] / 2**20:>8.1f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(labels, [r["top1"] for r in rows])
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].set_ylim(min(r["top1"] for r in rows) - 5, 100)
    axes[1].bar(labels, [r["train_and_test_s"] for r in rows], color="tab:orange")
    axes[1].set_ylabel("train + test time (s)")
    axes[2].bar(labels, [r["peak_saved_bytes"] / 2**20 for r in rows], color="tab:green")
    axes[2].set_ylabel(f"peak saved activations (MiB, batch {rows[0]['batch_size']})")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
