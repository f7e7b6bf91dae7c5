"""Human-readable summaries printed at the end of a run."""

from __future__ import annotations

import math
import os
import resource
from typing import Any

import torch
from mmengine.model import is_model_wrapper


def format_metrics_table(metrics: dict[str, float], title: str = "") -> str:
    """A two-column text table of metric name -> value."""
    return format_table({k: f"{v:.4f}" for k, v in metrics.items()}, title, ("metric", "value"))


def format_table(rows: dict[str, str], title: str = "", header: tuple[str, str] = ("", "")) -> str:
    """A two-column text table; values are right-aligned when they are numbers."""
    key_w = max([len(k) for k in rows] + [len(header[0]), 6])
    val_w = max([len(v) for v in rows.values()] + [len(header[1]), 10])
    rule = "+" + "-" * (key_w + 2) + "+" + "-" * (val_w + 2) + "+"
    lines = [title] if title else []
    if any(header):
        lines += [rule, f"| {header[0]:<{key_w}} | {header[1]:>{val_w}} |"]
    lines.append(rule)
    for key, value in rows.items():
        numeric = value.replace(".", "", 1).replace("-", "", 1).isdigit()
        cell = f"{value:>{val_w}}" if numeric else f"{value:<{val_w}}"
        lines.append(f"| {key:<{key_w}} | {cell} |")
    lines.append(rule)
    return "\n".join(lines)


def print_metrics_table(metrics: dict[str, float], title: str = "") -> None:
    print(format_metrics_table(metrics, title), flush=True)


def peak_memory_mib() -> tuple[float, str]:
    """(MiB, what was measured): CUDA max allocated on a GPU, else this process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


def _shown(path: str) -> str:
    """Relative to the current directory when inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def run_summary(runner, metrics: dict[str, float], wall_s: float) -> dict[str, Any]:
    """What a run did and where it left things: method, K, epochs, metrics, time, memory,
    checkpoint, logs, curves and TensorBoard folder."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    learner = getattr(model, "learner", None)
    summary: dict[str, Any] = {}
    if learner is not None:
        summary["method"] = learner.spec.method
        summary["K"] = learner.plan.k
    summary["epochs"] = runner.epoch
    summary["iterations"] = runner.iter
    summary.update({f"test {k}": round(float(v), 2) for k, v in metrics.items()})
    minutes, seconds = divmod(round(wall_s), 60)
    summary["wall time"] = f"{minutes} min {seconds:02d} s"
    mib, what = peak_memory_mib()
    summary[f"peak memory ({what})"] = f"{mib:.0f} MiB"
    work_dir = runner.work_dir
    last = os.path.join(work_dir, "last_checkpoint")
    if os.path.exists(last):
        with open(last) as f:
            summary["checkpoint"] = _shown(f.read().strip())
    summary["log"] = _shown(os.path.join(runner.log_dir, f"{runner.timestamp}.log"))
    curves = os.path.join(work_dir, "local_curves.png")
    if os.path.exists(curves):
        summary["curves"] = _shown(curves)
    summary["tensorboard"] = f"tensorboard --logdir {_shown(work_dir)}"
    return summary


def jsonable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON values: numbers (numpy scalars too: mmseg's IoUMetric returns
    ``np.float32``, which ``json.dump`` refuses) as JSON numbers, NaN as null."""
    return {key: _jsonable(value) for key, value in metrics.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int)) or not hasattr(value, "__float__"):
        return value
    number = float(value)
    return None if math.isnan(number) else number
