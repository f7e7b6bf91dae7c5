"""Per-module local losses and validation metrics over training: the picture of a local run.

``LocalLossCurvesHook`` averages each local module's loss on each level (independent,
cascade) over ``interval`` iterations, sends the means to the visualizer's backends
(TensorBoard under ``local/``), keeps the history in the checkpoint (a resumed run continues
its curves) and writes ``local_curves.json`` and ``local_curves.png`` to the work dir.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from hpff_dist.registry import HOOKS

LEVEL_TITLES = {"ind": "independent level", "cas": "cascade level"}


@HOOKS.register_module()
class LocalLossCurvesHook(Hook):
    """Curves of the local losses ('m03/ind': module 3's independent head) and val metrics.

    Args:
        interval: iterations averaged into one point.
        plot: write ``local_curves.png`` after every validation and at the end of training.
    """

    priority = "LOW"

    def __init__(self, interval: int = 25, plot: bool = True) -> None:
        if interval < 1:
            raise ValueError(f"LocalLossCurvesHook interval must be >= 1, got {interval}")
        self.interval = interval
        self.plot = plot
        self.losses: list[dict[str, Any]] = []  # {"iter", "epoch", "values": {key: mean}}
        self.metrics: list[dict[str, Any]] = []  # {"iter", "epoch", "values": {name: value}}
        self._sums: dict[str, Any] = {}
        self._count = 0
        self._last_iter = 0  # 1-based iteration of the last step summed

    # ------------------------------------------------------------------ collect
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        step_losses = getattr(model, "local_losses", None)
        if not step_losses:
            return
        for key, value in step_losses.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
        self._count += 1
        self._last_iter = runner.iter + 1
        if self._count >= self.interval:
            self._flush(runner)

    def _flush(self, runner, final: bool = False) -> None:
        # At the end, a remainder of under half a window is dropped: one or two steps'
        # average would draw a noisy last point unlike the rest of the curve.
        if not self._count or (final and self._count < self.interval / 2):
            self._sums, self._count = {}, 0
            return
        means = {k: float(v) / self._count for k, v in sorted(self._sums.items())}
        self._sums, self._count = {}, 0
        point = {"iter": self._last_iter, "epoch": runner.epoch, "values": means}
        self.losses.append(point)
        runner.visualizer.add_scalars(
            {f"local/{k}": v for k, v in means.items()}, step=point["iter"]
        )

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        if metrics:
            values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            self.metrics.append({"iter": runner.iter, "epoch": runner.epoch, "values": values})
        self._write(runner)

    def after_train(self, runner) -> None:
        self._flush(runner, final=True)
        self._write(runner)

    # ------------------------------------------------------------------ resume
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})["local_curves"] = {
            "losses": list(self.losses),
            "metrics": list(self.metrics),
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """On resume, continue the checkpoint's curves (``load_from`` alone starts new ones).

        The checkpoint is written before its epoch's validation, so that point is taken from
        the work dir's ``local_curves.json`` when it is there (up to the checkpoint's step).
        """
        if not getattr(runner, "_resume", False):
            return
        saved = checkpoint.get("meta", {}).get("local_curves")
        if not saved:
            return
        self.losses, self.metrics = list(saved["losses"]), list(saved["metrics"])
        at = int(checkpoint.get("meta", {}).get("iter", 0))
        path = os.path.join(runner.work_dir, "local_curves.json")
        if os.path.exists(path):
            with open(path) as f:
                written = json.load(f).get("metrics", [])
            known = {p["iter"] for p in self.metrics}
            self.metrics += [p for p in written if p["iter"] <= at and p["iter"] not in known]

    # ------------------------------------------------------------------ output
    def _write(self, runner) -> None:
        if runner.rank != 0 or not (self.losses or self.metrics):
            return
        history = {"losses": self.losses, "metrics": self.metrics}
        with open(os.path.join(runner.work_dir, "local_curves.json"), "w") as f:
            json.dump(history, f, indent=1)
        if self.plot:
            title = getattr(runner, "experiment_name", "")
            plot_local_curves(history, os.path.join(runner.work_dir, "local_curves.png"), title)


def metric_series(metrics: list[dict[str, Any]]) -> tuple[str, dict[str, list[tuple]]]:
    """The validation lines to draw: (x-axis name, {metric: [(x, value), ...]}).

    Summary metrics only: per-class values ('IoU.Coat', 'Acc.Bag') stay in the JSON, nineteen
    more lines would hide the curves a reader looks for. Iteration-based runs validate several
    times in one pass, so their x axis is the iteration.
    """
    epochs = [p["epoch"] for p in metrics]
    x_key = "epoch" if len(set(epochs)) == len(epochs) else "iter"
    names = sorted({k for point in metrics for k in point["values"] if "." not in k})
    series = {
        name: [(p[x_key], p["values"][name]) for p in metrics if name in p["values"]]
        for name in names
    }
    return ("epoch" if x_key == "epoch" else "iteration"), series


def plot_local_curves(history: dict[str, list], path: str, title: str = "") -> None:
    """One panel per level with a line per module (colour = depth), and one of the metrics."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    losses, metrics = history["losses"], history["metrics"]
    keys = sorted({k for point in losses for k in point["values"]})
    modules = sorted({int(k.split("/")[0][1:]) for k in keys})
    level_names = {k.split("/", 1)[1] for k in keys}
    levels = [lv for lv in LEVEL_TITLES if lv in level_names]
    levels += sorted(level_names - set(LEVEL_TITLES))
    panels = len(levels) + (1 if metrics else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.2 * max(panels, 1), 4), squeeze=False)
    norm = colors.Normalize(vmin=min(modules, default=0), vmax=max(modules, default=1))
    cmap = matplotlib.colormaps["viridis"]
    for ax, level in zip(axes[0], levels, strict=False):
        for m in modules:
            key = f"m{m:02d}/{level}"
            pts = [(p["iter"], p["values"][key]) for p in losses if key in p["values"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), color=cmap(norm(m)), lw=1.2)
        name = LEVEL_TITLES.get(level, f"level {level!r}")
        ax.set(title=f"{name} loss per module", xlabel="iteration", ylabel="loss")
        ax.grid(alpha=0.3)
        bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="local module")
        bar.locator = matplotlib.ticker.MaxNLocator(integer=True)
        bar.update_ticks()
    if metrics:
        ax = axes[0][len(levels)]
        x_label, series = metric_series(metrics)
        for name, pts in series.items():
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
            last_epoch, last_value = pts[-1]
            ax.annotate(
                f"{last_value:.2f}",
                (last_epoch, last_value),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
            )
        ax.set(title="validation", xlabel=x_label, ylabel="%")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
