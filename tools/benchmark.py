"""Step time and activation memory of training configs, on synthetic batches.

    python tools/benchmark.py CONFIG[+key=value...] ... [--batch-size N] [--iters N]
        [--warmup N] [--repeat R] --out bench.json [--plot-dir DIR] [--plot-prefix P]

Each ``CONFIG`` may carry ``+key=value`` overrides (``--cfg-options`` syntax), e.g.
``configs/cifar10/resnet32_k16_infopro_hpff.py+model.method.schedule=reference``. Every entry
runs in a fresh process so ``peak_rss_bytes`` is that config's own. Classification configs
get random image/label batches, segmentation configs (``LocalEncoderDecoder``) mmseg's batch
format (uint8 images, ``SegDataSample`` label maps) at ``model.image_size``; the model is the
one ``resolve_config`` makes for a run here (without a GPU: ``SyncBN`` -> ``BN``, listed in
``sync_bn_to_bn``). Prints and writes JSON with ``method``, ``k``, ``batch_size``,
``step_time_s`` (median of ``--iters`` steps after ``--warmup``; ``step_cpu_time_s``: the
process's CPU seconds), ``peak_saved_bytes`` (one metered step, the first),
``aux_peak_saved_bytes`` / ``backbone_peak_saved_bytes`` (inside / outside the schedules' aux
region), ``group_peak_saved_bytes`` (own peaks of the backbone layers, the network's head, the
aux heads, the taps), ``peak_parts_bytes`` and ``peak_largest_saved`` (what was alive at the
peak, per model part, and the largest tensors) and ``peak_rss_bytes``, and draws PNG plots
(memory and step time per entry; memory against K per method).

``--repeat R`` runs every entry R times, round-robin (entry 1, 2, ..., 1, 2, ...), so slow
phases of a shared or virtualised machine hit all entries alike; ``step_time_s`` is then the
median of the R runs' medians and ``step_time_runs_s`` lists them (``step_times_runs_s``: every
run's steps). Saved-tensor memory is deterministic and taken from the first run;
``peak_rss_bytes`` is the largest run's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def split_entry(entry: str) -> tuple[str, dict[str, str]]:
    """``path+a.b=1+c=2`` -> (path, {'a.b': '1', 'c': '2'})."""
    path, *overrides = entry.split("+")
    pairs = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} in {entry!r} is not key=value")
        key, value = item.split("=", 1)
        pairs[key] = value
    return path, pairs


def run_worker(entry: str, batch_size: int | None, iters: int, warmup: int) -> dict:
    from mmengine.config import DictAction

    from hpff_dist.benchmark.step import measure_step
    from hpff_dist.engine.config import load_config
    from hpff_dist.engine.resolve import resolve_config

    path, overrides = split_entry(entry)
    # mmengine's own value parser for --cfg-options, so '+k=v' means what '--cfg-options k=v' does
    cfg = load_config(path, {k: DictAction._parse_iterable(v) for k, v in overrides.items()})
    # The model a run would build: normalisation merged in, SyncBN -> BN without a GPU.
    cfg, changes = resolve_config(cfg)
    bs = batch_size or cfg.train_dataloader.batch_size
    result = measure_step(cfg, bs, iters, warmup)
    result.update(entry=entry, config=path, overrides=overrides)
    result["config_changes"] = [c.as_json() for c in changes if c.key.startswith("model.")]
    # SyncBN synchronises CUDA devices only: on the CPU the benchmark runs per-process BN,
    # which is the same arithmetic for one process (the keys listed here say where).
    result["sync_bn_to_bn"] = [
        c.key
        for c in changes
        if c.key.endswith(".type") and c.new == "BN" and "SyncBN" in str(c.old)
    ]
    return result


#: part groups of ``peak_parts_bytes`` (``hpff_dist.benchmark.step.part_group``), as plotted.
GROUP_LABELS = {
    "backbone": "backbone layers",
    "net_head": "network head + task loss",
    "aux_heads": "aux heads",
    "taps": "taps (e.g. FCN aux head)",
    "unlabelled": "losses outside modules",
}


def plot(results: list[dict], out_dir: str, prefix: str = "") -> list[str]:
    """``<prefix>memory_time_per_method.png`` (what the saved activations at the peak were,
    stacked by part group, the bar's top being the peak; median wall step time and CPU time
    per thread) and, where a method was run at several K, ``<prefix>memory_vs_k.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpff_dist.benchmark.step import part_group

    os.makedirs(out_dir, exist_ok=True)
    labels = [_label(r) for r in results]
    x = list(range(len(results)))
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.6 * len(results)), 4.8))
    groups = []
    for r in results:
        at_peak: dict[str, int] = {}
        for part, n in r.get("peak_parts_bytes", {}).items():
            at_peak[part_group(part)] = at_peak.get(part_group(part), 0) + n
        groups.append(at_peak)
    bottom = [0.0] * len(results)
    for group, name in GROUP_LABELS.items():
        heights = [g.get(group, 0) / 2**20 for g in groups]
        if any(heights):
            axes[0].bar(x, heights, 0.6, bottom=bottom, label=name)
            bottom = [b + h for b, h in zip(bottom, heights)]
    for j, r in enumerate(results):
        peak = r["peak_saved_bytes"] / 2**20
        axes[0].bar(j, peak, 0.6, fill=False, edgecolor="black")  # the peak, also unsplit
        axes[0].annotate(f"{peak:.0f}", (j, peak), ha="center", va="bottom", fontsize=8)
    axes[0].set_ylabel("saved activations at the peak (MiB)")
    axes[0].legend(fontsize=7)
    width = 0.4
    axes[1].bar(
        [j - width / 2 for j in x],
        [r["step_time_s"] for r in results],
        width,
        color="tab:orange",
        label="wall (median)",
    )
    cpu = [r.get("step_cpu_time_s", 0) / r.get("threads", 1) for r in results]
    axes[1].bar(
        [j + width / 2 for j in x], cpu, width, color="tab:gray", label="CPU time / threads"
    )
    axes[1].set_ylabel("step time (s)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(x, labels)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    shape = "x".join(str(s) for s in results[0]["input_shape"])
    fig.suptitle(f"batch {results[0]['batch_size']}, input {shape}")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"{prefix}memory_time_per_method.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    if any(len({r["k"] for r in rs}) > 1 for rs in by_method.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, rs in by_method.items():
            rs = sorted(rs, key=lambda r: r["k"])
            ax.plot(
                [r["k"] for r in rs],
                [r["peak_saved_bytes"] / 2**20 for r in rs],
                "o-",
                label=method,
            )
        ax.set_xlabel("K (local modules)")
        ax.set_ylabel("peak saved activations (MiB)")
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{prefix}memory_vs_k.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _label(r: dict) -> str:
    extra = "\n".join(f"{k.split('.')[-1]}={v}" for k, v in r["overrides"].items())
    base = f"{r['method']} K={r['k']}"
    return f"{base}\n{extra}" if extra else base


def run_in_fresh_process(entry: str, args: argparse.Namespace) -> dict:
    """One measurement of ``entry`` in a new interpreter (its own RSS, allocator, caches)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        worker_out = tmp.name
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        entry,
        "--worker",
        "--worker-out",
        worker_out,
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
    ]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    try:
        subprocess.run(cmd, check=True)
        with open(worker_out) as f:
            return json.load(f)
    finally:
        os.unlink(worker_out)


def combine_runs(runs: list[dict]) -> dict:
    """The first run's record (memory is deterministic) with ``step_time_s`` = median of the
    runs' medians (``step_cpu_time_s`` likewise), every run's median (``step_time_runs_s``) and
    steps (``step_times_runs_s``), and ``peak_rss_bytes`` = the largest of the runs'."""
    result = dict(runs[0])
    result["step_time_runs_s"] = [r["step_time_s"] for r in runs]
    result["step_times_runs_s"] = [r["step_times_s"] for r in runs]
    result["step_time_s"] = statistics.median(result["step_time_runs_s"])
    if all("step_cpu_time_s" in r for r in runs):
        result["step_cpu_time_s"] = statistics.median(r["step_cpu_time_s"] for r in runs)
    result["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("entries", nargs="*", metavar="CONFIG[+key=value...]")
    p.add_argument("--batch-size", type=int, help="default: the config's train batch size")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--repeat", type=int, default=1, help="fresh-process runs per entry, round-robin"
    )
    p.add_argument("--out", default="bench.json")
    p.add_argument("--plot-dir", help="where to write PNG plots (default: next to --out)")
    p.add_argument("--plot-prefix", default="", help="prefix of the PNG file names")
    p.add_argument(
        "--replot", action="store_true", help="redraw the plots of an existing --out JSON only"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    out_dir = args.plot_dir or os.path.dirname(args.out) or "."
    if args.replot:
        with open(args.out) as f:
            report = json.load(f)
        report["plots"] = plot(report["results"], out_dir, args.plot_prefix)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        return
    if not args.entries:
        p.error("give at least one CONFIG (or --replot)")

    if args.worker:
        result = run_worker(args.entries[0], args.batch_size, args.iters, args.warmup)
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return

    for entry in args.entries:
        split_entry(entry)  # fail fast on a malformed entry
    runs: list[list[dict]] = [[] for _ in args.entries]
    for repeat in range(args.repeat):
        for i, entry in enumerate(args.entries):
            tag = f" (run {repeat + 1}/{args.repeat})" if args.repeat > 1 else ""
            print(f"[benchmark] {entry}{tag}", file=sys.stderr, flush=True)
            r = run_in_fresh_process(entry, args)
            runs[i].append(r)
            print(
                f"[benchmark]   {r['method']} K={r['k']} step {r['step_time_s']:.3f}s "
                f"saved {r['peak_saved_bytes'] / 2**20:.1f} MiB "
                f"aux {r['aux_peak_saved_bytes'] / 2**20:.1f} MiB "
                f"outside aux {r['backbone_peak_saved_bytes'] / 2**20:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    results = [combine_runs(entry_runs) for entry_runs in runs]
    plots = plot(results, out_dir, args.plot_prefix)
    report = {"results": results, "plots": plots}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
