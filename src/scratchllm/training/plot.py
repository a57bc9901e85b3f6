"""The book's loss figure (ch. 5.2): training and validation loss against steps, tokens seen on top."""

from __future__ import annotations

from pathlib import Path


def plot_losses(evals: list[dict], path: str | Path) -> Path | None:
    """`evals`: records with step, tokens_seen, train_loss, val_loss. Returns None without matplotlib.

    Draws on a bare `Figure` rather than through pyplot, so the caller's matplotlib backend and open
    figures (a notebook's, say) are left alone.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not evals:
        return None
    steps = [e["step"] for e in evals]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(steps, [e["train_loss"] for e in evals], label="Training loss")
    if all("val_loss" in e for e in evals):  # a run without a validation split has none
        ax.plot(steps, [e["val_loss"] for e in evals], linestyle="-.", label="Validation loss")
    ax.set_xlabel("Steps")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right")
    top = ax.twiny()  # a second x-axis with tokens seen, aligned to the same points
    top.plot([e["tokens_seen"] for e in evals], [e["train_loss"] for e in evals], alpha=0)
    top.set_xlabel("Tokens seen")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
