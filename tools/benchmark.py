"""Step time and activation memory of training configs, on synthetic batches.

    python tools/benchmark.py CONFIG[+key=value...] ... [--batch-size N] [--iters N]
        [--repeat R] --out bench.json [--plot-dir DIR]

Each ``CONFIG`` may carry ``+key=value`` overrides (``--cfg-options`` syntax), e.g.
``configs/cifar10/resnet32_k16_infopro_hpff.py+model.method.schedule=reference``. Every entry
runs in a fresh process so ``peak_rss_bytes`` is that config's own. Prints and writes JSON with
``method``, ``k``, ``batch_size``, ``step_time_s`` (median after warm-up), ``peak_saved_bytes``,
``aux_peak_saved_bytes`` and ``peak_rss_bytes``, and draws PNG plots (memory and step time per
entry; memory against K per method).

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
    cfg, _ = resolve_config(cfg)  # the model a run would build (normalisation merged in)
    bs = batch_size or cfg.train_dataloader.batch_size
    result = measure_step(cfg, bs, iters, warmup)
    result.update(entry=entry, config=path, overrides=overrides)
    return result


def plot(results: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    labels = [_label(r) for r in results]
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(results)), 4.5))
    axes[0].bar(labels, [r["peak_saved_bytes"] / 2**20 for r in results], label="all")
    axes[0].bar(labels, [r["aux_peak_saved_bytes"] / 2**20 for r in results], label="aux heads")
    axes[0].set_ylabel("peak saved activations (MiB)")
    axes[0].legend()
    axes[1].bar(labels, [r["step_time_s"] for r in results], color="tab:orange")
    axes[1].set_ylabel("step time (s, median)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.suptitle(f"batch {results[0]['batch_size']}")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "memory_time_per_method.png"))
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
        paths.append(os.path.join(out_dir, "memory_vs_k.png"))
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
    runs' medians, every run's median (``step_time_runs_s``) and steps (``step_times_runs_s``),
    and ``peak_rss_bytes`` = the largest of the runs'."""
    result = dict(runs[0])
    result["step_time_runs_s"] = [r["step_time_s"] for r in runs]
    result["step_times_runs_s"] = [r["step_times_s"] for r in runs]
    result["step_time_s"] = statistics.median(result["step_time_runs_s"])
    result["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("entries", nargs="+", metavar="CONFIG[+key=value...]")
    p.add_argument("--batch-size", type=int, help="default: the config's train batch size")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--repeat", type=int, default=1, help="fresh-process runs per entry, round-robin"
    )
    p.add_argument("--out", default="bench.json")
    p.add_argument("--plot-dir", help="where to write PNG plots (default: next to --out)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be >= 1")

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
                f"aux {r['aux_peak_saved_bytes'] / 2**20:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    results = [combine_runs(entry_runs) for entry_runs in runs]
    plots = plot(results, args.plot_dir or os.path.dirname(os.path.abspath(args.out)))
    report = {"results": results, "plots": plots}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
