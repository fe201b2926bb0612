"""``plot_history``: a PNG of the per-epoch curves of a ``fit`` history (matplotlib optional)."""

from __future__ import annotations

import os

from .io import write_atomic

__all__ = ["plot_history"]


def _series(history, where) -> dict:
    if not isinstance(history, dict) or not history:
        raise TypeError(f"{where}: history must be the non-empty dict returned by fit, got {type(history).__name__}")
    out = {}
    for key, values in history.items():
        if not isinstance(key, str) or not isinstance(values, (list, tuple)):
            raise TypeError(f"{where}: history[{key!r}] must be a list of numbers"[:290])
        try:
            out[key] = [float(v) for v in values]
        except (TypeError, ValueError):
            raise TypeError(f"{where}: history[{key!r}] must be a list of numbers"[:290]) from None
    return out


def plot_history(history, path, title=None) -> str:
    """Write a PNG of the history's curves per epoch; returns ``path``.

    One panel per quantity: ``loss`` with ``val_loss``, ``accuracy`` with
    ``val_accuracy``, and any other key except ``time`` (e.g. ``lr`` from a
    CSV log) on its own.  Written atomically.  Needs matplotlib
    (``pip install matplotlib``); without it an ImportError says so.
    """
    where = "plot_history"
    series = _series(history, where)
    path = os.fspath(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"{where} needs matplotlib: pip install matplotlib") from exc
    panels = []
    for key in series:
        if key == "time" or key.startswith("val_") and key[4:] in series:
            continue
        panels.append([k for k in (key, f"val_{key}") if k in series])
    if not panels:
        raise ValueError(f"{where}: history has nothing to plot besides time (keys {sorted(series)})")
    fig = Figure(figsize=(4.5 * len(panels), 3.4))
    FigureCanvasAgg(fig)
    for i, keys in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key in keys:
            values = series[key]
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(keys[0])
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(str(title))
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=100), where)
    return path
