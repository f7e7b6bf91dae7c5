"""Human-readable summaries printed at the end of a run."""

from __future__ import annotations


def format_metrics_table(metrics: dict[str, float], title: str = "") -> str:
    """A two-column text table of metric name -> value."""
    width = max([len(k) for k in metrics] + [6])
    rule = "+" + "-" * (width + 2) + "+" + "-" * 12 + "+"
    lines = [title] if title else []
    lines += [rule, f"| {'metric':<{width}} | {'value':>10} |", rule]
    lines += [f"| {k:<{width}} | {v:>10.4f} |" for k, v in metrics.items()]
    lines.append(rule)
    return "\n".join(lines)


def print_metrics_table(metrics: dict[str, float], title: str = "") -> None:
    print(format_metrics_table(metrics, title), flush=True)
