"""The book's training curves (ch. 5.2, 6.7): a metric on the training and validation splits against steps,
with tokens seen on a second axis."""

from __future__ import annotations

from pathlib import Path


def plot_curves(evals: list[dict], path: str | Path, metric: str = "loss") -> Path | None:
    """`evals`: records with step, tokens_seen, train_<metric> (and val_<metric> when there is a validation
    split). Returns None without matplotlib or without the metric.

    Draws on a bare `Figure` rather than through pyplot, so the caller's matplotlib backend and open
    figures (a notebook's, say) are left alone.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    evals = [e for e in evals if f"train_{metric}" in e]
    if not evals:
        return None
    steps = [e["step"] for e in evals]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(steps, [e[f"train_{metric}"] for e in evals], label=f"Training {metric}")
    if all(f"val_{metric}" in e for e in evals):  # a run without a validation split has none
        ax.plot(steps, [e[f"val_{metric}"] for e in evals], linestyle="-.", label=f"Validation {metric}")
    ax.set_xlabel("Steps")
    ax.set_ylabel(metric.capitalize())
    ax.legend(loc="best")
    top = ax.twiny()  # a second x-axis with tokens seen, aligned to the same points
    top.plot([e["tokens_seen"] for e in evals], [e[f"train_{metric}"] for e in evals], alpha=0)
    top.set_xlabel("Tokens seen")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
