"""CIFAR-10 -> STL-10 generalization, shaped like the paper's supplementary Table 5.

    python tools/generalization.py CKPT_OR_WORKDIR ... [--configs CONFIG ...]
        [--data-root STL10_DIR] [--cifar10-root CIFAR10_DIR] [--work-root DIR]
        [--cfg-options k=v ...] --out table.json --plot table.png

Each input is a tools/train.py work dir (its ``resolved_config.py`` and the checkpoint its
``last_checkpoint`` names, else its newest ``epoch_N``/``iter_N``) or a checkpoint, whose
config then comes from ``--configs`` (one per input, in order; given, they replace the work
dirs' configs too). Each is tested by ``tools/test.py --test-dataset stl10`` in its own
process (and on CIFAR-10's test split with ``--cifar10-root``); rows are methods (BP = e2e,
DGL, DGL+HPFF, ...), columns networks, our numbers beside the paper's. The protocols
(``top1`` 9 shared classes, ``top1_all`` monkey wrong, ``top1_naive`` no class map) are
described in docs/generalization.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
if REPO not in sys.path:  # run as a script: the repository's package, not an installed one
    sys.path.insert(0, REPO)

#: supplementary Table 5: STL-10 test top-1 (%) of CIFAR-10 checkpoints.
PAPER_TABLE5 = {
    "BP": {"ResNet-32": 35.98, "ResNet-110": 36.78},
    "DGL": {"ResNet-32": 31.95, "ResNet-110": 33.16},
    "DGL+HPFF": {"ResNet-32": 39.06, "ResNet-110": 40.62},
}
#: the paper's K per network (BP has none).
PAPER_K = {"ResNet-32": 16, "ResNet-110": 55}
METHOD_NAMES = {
    "e2e": "BP",
    "dgl": "DGL",
    "dgl_hpff": "DGL+HPFF",
    "infopro": "InfoPro",
    "infopro_hpff": "InfoPro+HPFF",
}
#: STL-10 metrics in the table: key -> column heading.
STL_COLUMNS = {"top1": "9 cls", "top1_all": "10 cls", "top1_naive": "naive"}


def find_run(path: str, config: str | None) -> tuple[str, str]:
    """``(config, checkpoint)`` of one input: a work dir or a checkpoint (then ``config`` is
    required)."""
    from hpff_dist.engine.checkpoint_files import list_checkpoints, recorded_checkpoint
    from hpff_dist.engine.resolve import RESOLVED_CONFIG_FILE

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: pass a checkpoint or a work dir")
    resolved = os.path.join(path, RESOLVED_CONFIG_FILE)
    if os.path.isdir(path) and os.path.isfile(resolved):  # a work dir of tools/train.py
        found = recorded_checkpoint(path) or next(iter(list_checkpoints(path)), None)
        if found is None:
            raise FileNotFoundError(
                f"work dir {path} holds no checkpoint (no last_checkpoint, no epoch_N.pth / "
                "iter_N.pth): pass the checkpoint file itself with --configs CONFIG"
            )
        return config or resolved, found
    if config is None:
        raise ValueError(
            f"{path} is a checkpoint, not a work dir (no {RESOLVED_CONFIG_FILE} beside it): "
            "pass its training config with --configs, one per input in order"
        )
    return config, path


def describe(config: str) -> dict:
    """Method, network and K of a classification config, for the table's row and column."""
    from mmengine.config import Config

    model = Config.fromfile(config).get("model") or {}
    method = dict(model.get("method") or {"method": "e2e"})
    backbone = dict(model.get("backbone") or {})
    kind = method.get("method", "e2e")
    if "depth" in backbone and "resnet" in str(backbone.get("type", "")).lower():
        network = f"ResNet-{backbone['depth']}"
    else:
        network = str(backbone.get("type", "?"))
    return {
        "method": METHOD_NAMES.get(kind, kind),
        "network": network,
        "k": None if kind == "e2e" else method.get("k"),
    }


def evaluate(
    config: str, checkpoint: str, work_dir: str, extra: list[str], options: list[str]
) -> dict:
    """Metrics of ``tools/test.py CONFIG CHECKPOINT *extra``, run in its own process; its output
    goes to ``work_dir/test.log`` (the table stays readable), its tail shown if it fails."""
    os.makedirs(work_dir, exist_ok=True)
    out, log = os.path.join(work_dir, "metrics.json"), os.path.join(work_dir, "test.log")
    cmd = [sys.executable, os.path.join(TOOLS, "test.py"), config, checkpoint]
    cmd += ["--work-dir", work_dir, "--out", out, *extra]
    if options:
        cmd += ["--cfg-options", *options]
    print(f"testing {checkpoint} {' '.join(extra)} (log: {log})", flush=True)
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", metavar="CKPT_OR_WORKDIR")
    p.add_argument("--configs", nargs="+", help="one config per input, in order")
    p.add_argument("--data-root", help="folder holding stl10_binary/ (default data/stl10)")
    p.add_argument("--cifar10-root", help="also test on CIFAR-10 (folder of cifar-10-batches-py/)")
    p.add_argument("--work-root", default="work_dirs/generalization")
    p.add_argument("--cfg-options", nargs="+", default=[], help="key=value for every test run")
    p.add_argument("--out", required=True, help="the table as JSON")
    p.add_argument("--plot", required=True, help="the table as a PNG bar chart")
    args = p.parse_args()
    if args.configs and len(args.configs) != len(args.runs):
        p.error(
            f"--configs lists {len(args.configs)} configs for {len(args.runs)} inputs: give "
            "one per input, in order (or none, with work dirs)"
        )
    runs = []
    seen: dict[tuple[str, str], str] = {}
    for i, path in enumerate(args.runs):
        config, checkpoint = find_run(path, args.configs[i] if args.configs else None)
        run = {"input": path, "config": config, "checkpoint": checkpoint, **describe(config)}
        cell = (run["method"], run["network"])
        if cell in seen:
            raise ValueError(
                f"{path} and {seen[cell]} are both {cell[0]} {cell[1]}: one checkpoint per "
                "method and network (the table has one cell for each)"
            )
        seen[cell] = path
        runs.append(run)
    for i, run in enumerate(runs):
        name = f"{i}_{run['method']}_{run['network']}".replace("+", "_")
        work = os.path.join(args.work_root, name)
        stl = ["--test-dataset", "stl10"] + (
            ["--data-root", args.data_root] if args.data_root else []
        )
        run["stl10"] = evaluate(
            run["config"], run["checkpoint"], os.path.join(work, "stl10"), stl, args.cfg_options
        )
        run["cifar10"] = None
        if args.cifar10_root:
            run["cifar10"] = evaluate(
                run["config"],
                run["checkpoint"],
                os.path.join(work, "cifar10"),
                ["--data-root", args.cifar10_root],
                args.cfg_options,
            )
    report = {
        "protocol": (
            "CIFAR-10 checkpoints on the STL-10 test split, 96->32 by area, CIFAR-10 "
            "normalisation; STL car=CIFAR automobile, other classes by name. top1: 9 shared "
            "classes (monkey excluded, frog predictions wrong); top1_all: 10 classes, monkey "
            "always wrong; top1_naive: label index compared without the map "
            "(docs/generalization.md)"
        ),
        "paper": PAPER_TABLE5,
        "runs": runs,
        "table": table(runs),
    }
    for path in (args.out, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(format_table(report["table"]))
    plot(report["table"], args.plot)
    print(f"table: {args.out}; plot: {args.plot}")


def table(runs: list[dict]) -> dict:
    """``{method: {network: cell}}``, rows and columns in the paper's order, then the rest;
    each cell: our STL-10 (and CIFAR-10) top-1 under each protocol and the paper's."""
    cells: dict = {}
    for run in runs:
        cell = {key: run["stl10"].get(key) for key in STL_COLUMNS}
        cell["cifar10_top1"] = (run["cifar10"] or {}).get("top1")
        cell["k"] = run["k"]
        cell["paper_stl10"] = PAPER_TABLE5.get(run["method"], {}).get(run["network"])
        cells.setdefault(run["method"], {})[run["network"]] = cell
    methods = [m for m in PAPER_TABLE5 if m in cells] + [m for m in cells if m not in PAPER_TABLE5]
    return {m: cells[m] for m in methods}


def _networks(rows: dict) -> list[str]:
    found = {n for cells in rows.values() for n in cells}
    return [n for n in PAPER_K if n in found] + sorted(found - set(PAPER_K))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: dict) -> str:
    """Markdown: a row per method (with the K its runs used: the column headers carry the
    paper's); per network our STL-10 top-1 (9 classes, 10 classes, naive), the paper's, and
    CIFAR-10 where tested."""
    networks = _networks(rows)
    head, rule = ["method"], ["---"]
    for net in networks:
        k = f" K={PAPER_K[net]}" if net in PAPER_K else ""
        head += [f"{net}{k} STL {c}" for c in STL_COLUMNS.values()]
        head += [f"{net} paper", f"{net} CIFAR"]
        rule += ["---:"] * (len(STL_COLUMNS) + 2)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for method, cells in rows.items():
        ks = sorted({c["k"] for c in cells.values() if c.get("k")})
        row = [method + (f" (K={'/'.join(map(str, ks))})" if ks else "")]
        for net in networks:
            cell = cells.get(net, {})
            row += [_number(cell.get(key)) for key in STL_COLUMNS]
            paper = PAPER_TABLE5.get(method, {}).get(net)
            row += [_number(paper), _number(cell.get("cifar10_top1"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(rows: dict, path: str) -> str:
    """One panel per network: per method, our STL-10 top-1 under each protocol beside the
    paper's bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    networks, methods = _networks(rows), list(rows)
    series = [(key, f"ours, {label}") for key, label in STL_COLUMNS.items()]
    series.append(("paper_stl10", "paper"))
    fig, axes = plt.subplots(1, len(networks), figsize=(5.5 * len(networks), 4), squeeze=False)
    width = 0.8 / len(series)
    x = np.arange(len(methods))
    for ax, net in zip(axes[0], networks, strict=True):
        for j, (key, label) in enumerate(series):
            if key == "paper_stl10":  # the paper's bar even where we tested no checkpoint
                values = [PAPER_TABLE5.get(m, {}).get(net) for m in methods]
            else:
                values = [rows[m].get(net, {}).get(key) for m in methods]
            heights = [np.nan if v is None else v for v in values]
            hatch = "//" if key == "paper_stl10" else None
            ax.bar(
                x + (j - (len(series) - 1) / 2) * width, heights, width, label=label, hatch=hatch
            )
        k = f" (K={PAPER_K[net]})" if net in PAPER_K else ""
        ax.set_title(f"{net}{k}: CIFAR-10 -> STL-10")
        ax.set_xticks(x, methods)
        ax.set_ylabel("STL-10 test top-1 (%)")
        ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
