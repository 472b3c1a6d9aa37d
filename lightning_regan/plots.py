"""Loss and FID curves of a run, marking where and why training stopped.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed),
so plotting never changes the user's matplotlib backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PathLike = Union[str, Path]
StopMark = Optional[tuple[int, str]]


def _finite_or_nan(value: Optional[float]) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


def _new_figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(7.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _mark_stop(ax: object, stop: StopMark) -> None:
    if stop is None:
        return
    g_step, reason = stop
    ax.axvline(g_step, color="tab:red", linestyle="--", linewidth=1.2, label=f"stopped: {reason} (G step {g_step})")


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_losses(
    history: Sequence[Sequence[Optional[float]]],
    path: PathLike,
    stop: StopMark = None,
    title: str = "Training losses",
) -> Path:
    """Plot D and G losses against G steps.

    Args:
        history: Rows ``(g_step, d_loss, g_loss)``; a missing or non-finite loss is left as a gap.
        path: PNG file to write (parent folders are created).
        stop: ``(g_step, reason)`` of the stop, drawn as a vertical line, or ``None``.
        title: Figure title.

    Returns:
        The written path.
    """
    fig, ax = _new_figure()
    steps = [int(row[0]) for row in history]
    if steps:
        ax.plot(steps, [_finite_or_nan(row[1]) for row in history], label="D loss", color="tab:blue")
        ax.plot(steps, [_finite_or_nan(row[2]) for row in history], label="G loss", color="tab:orange")
    else:
        ax.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax.transAxes)
    _mark_stop(ax, stop)
    ax.set_xlabel("generator step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if steps or stop is not None:
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_fid(
    fid_history: Sequence[Sequence[float]],
    path: PathLike,
    stop: StopMark = None,
    best: Optional[tuple[int, float]] = None,
    smoothed: Optional[Sequence[Sequence[float]]] = None,
    metric: str = "FID",
    coverage: Optional[Sequence[Mapping[str, Optional[float]]]] = None,
) -> Path:
    """Plot FID against G steps on a log axis, with the best value and the stop point marked; with
    ``coverage``, precision and recall in a second panel beside it.

    The log axis keeps the late part of the curve readable: FID typically falls by orders of magnitude in the
    first evaluations, and on a linear axis everything after them is a flat line.

    Args:
        fid_history: Rows ``(g_step, fid)``.
        path: PNG file to write (parent folders are created).
        stop: ``(g_step, reason)`` of the stop, or ``None``.
        best: ``(g_step, fid)`` of the best evaluation, drawn as a star, or ``None``.
        smoothed: Rows ``(g_step, value)`` of the smoothed FID the stop rule used, drawn dashed, or ``None``.
        metric: Name on the y axis.
        coverage: Rows ``{"g_step", "precision", "recall"}`` (``FIDMonitor.extra_history``), or ``None``.

    Returns:
        The written path.
    """
    rows = [r for r in coverage or () if r.get("precision") is not None or r.get("recall") is not None]
    fig = Figure(figsize=(11.0 if rows else 7.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if rows else 1, 1)
    steps = [int(row[0]) for row in fid_history]
    values = [_finite_or_nan(row[1]) for row in fid_history]
    ax.plot(steps, values, marker="o", markersize=3, label=metric, color="tab:green")
    if smoothed:
        ax.plot([int(r[0]) for r in smoothed], [_finite_or_nan(r[1]) for r in smoothed], linestyle=":",
                color="tab:gray", label=f"smoothed {metric} (stop rule)")
    if best is not None and best[1] is not None and math.isfinite(best[1]):
        ax.plot([best[0]], [best[1]], marker="*", markersize=14, color="gold", markeredgecolor="black",
                linestyle="none", label=f"best {best[1]:.4g} (G step {best[0]})")
    _mark_stop(ax, stop)
    if any(math.isfinite(v) and v > 0 for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("generator step")
    ax.set_ylabel(f"{metric} (log scale)")
    ax.set_title(f"{metric} during training (lower is better)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3, which="both")
    if rows:
        cov = fig.add_subplot(1, 2, 2)
        g = [int(r["g_step"]) for r in rows]
        for key, color in (("precision", "tab:blue"), ("recall", "tab:orange")):
            cov.plot(g, [_finite_or_nan(r.get(key)) for r in rows], marker="o", markersize=3, label=key, color=color)
        _mark_stop(cov, stop)
        cov.set_ylim(-0.02, 1.02)
        cov.set_xlabel("generator step")
        cov.set_ylabel("share")
        cov.set_title("coverage: precision and recall (higher is better)")
        cov.legend(loc="best")
        cov.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["plot_fid", "plot_losses"]
