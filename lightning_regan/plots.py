"""A run's pictures: loss, stop-metric and FID curves marking where and why training stopped, sample grids, 2-D
scatter plots.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed),
so plotting never changes the user's matplotlib backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lightning_regan.atomic import atomic_write, is_disk_full

log = logging.getLogger(__name__)

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
    # atomically: a full disk leaves the previous plot (or none), never a truncated PNG
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


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


def _draw_projection(ax: object, projection: Mapping[str, Any]) -> None:
    """The stop rule's last projection: its fitted power law over the window, followed to the end of the budget, the
    optimistic end value, and the band the best so far had to be beaten by."""
    start, now, end = (float(projection[k]) for k in ("from_g_step", "g_step", "end_g_step"))
    slope, intercept, t1 = (float(projection[k]) for k in ("slope", "intercept", "t1"))
    falling = min(slope, 0.0)
    steps = [start + (end - start) * i / 50 for i in range(51)]
    level = [math.exp(intercept + (slope if t <= now else falling) * math.log(t + t1)
                      + ((slope - falling) * math.log(now + t1) if t > now else 0.0)) for t in steps]
    ax.plot(steps, level, linestyle="--", color="tab:red", linewidth=1.2,
            label=f"{projection.get('rule', 'rule')}: trend to G step {end:.0f}")
    ax.plot([end], [float(projection["optimistic"])], marker="v", color="tab:red", linestyle="none",
            label=f"optimistic end {float(projection['optimistic']):.4g}")
    band = float(projection["best"]) * (1.0 - float(projection["tolerance"]))
    ax.axhline(band, color="tab:red", linestyle=":", linewidth=1.0,
               label=f"best x (1 - {float(projection['tolerance']):.0%}) = {band:.4g}")


def _metric_panel(ax: object, history: Sequence[Sequence[float]], metric: str, mode: str, stop: StopMark,
                  best: Optional[tuple[int, float]], color: str,
                  projection: Optional[Mapping[str, Any]] = None) -> None:
    """One metric's curve with its best starred and the stop marked (and, when given, the stop rule's projection);
    log axis when every value is positive."""
    steps = [int(row[0]) for row in history]
    values = [_finite_or_nan(row[1]) for row in history]
    ax.plot(steps, values, marker="o", markersize=3, label=metric, color=color)
    if projection is not None:
        _draw_projection(ax, projection)
    if best is not None and best[1] is not None and math.isfinite(best[1]):
        ax.plot([best[0]], [best[1]], marker="*", markersize=14, color="gold", markeredgecolor="black",
                linestyle="none", label=f"best {best[1]:.4g} (G step {best[0]})")
    _mark_stop(ax, stop)
    finite = [v for v in values if math.isfinite(v)]
    log_axis = bool(finite) and all(v > 0 for v in finite)  # an unbiased MMD² can dip below 0: then linear
    if log_axis:
        ax.set_yscale("log")
    ax.set_xlabel("generator step")
    ax.set_ylabel(f"{metric}{' (log scale)' if log_axis else ''}")
    ax.set_title(f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, which="both")


def plot_stop_metric(
    history: Sequence[Sequence[float]],
    path: PathLike,
    metric: str,
    mode: str = "min",
    stop: StopMark = None,
    best: Optional[tuple[int, float]] = None,
    fid_history: Optional[Sequence[Sequence[float]]] = None,
    fid_best: Optional[tuple[int, float]] = None,
    projection: Optional[Mapping[str, Any]] = None,
) -> Path:
    """The stop metric's curve (the number the run decided on) with its best and the stop marked; with
    ``fid_history``, the FID beside it in a second panel; with ``projection``, the stop rule's last projection.

    Args:
        history: Rows ``(g_step, value)`` of the stop metric.
        path: PNG file to write (parent folders are created).
        metric: Its name (``val/mmd``).
        mode: ``"min"`` or ``"max"`` (only the title says which is better).
        stop: ``(g_step, reason)`` of the stop, or ``None``.
        best: ``(g_step, value)`` of its best evaluation, or ``None``.
        fid_history: Rows ``(g_step, fid)``, or ``None`` (one panel).
        fid_best: ``(g_step, fid)`` of the best FID, or ``None``.
        projection: The deciding rule's last projection (``summary.json``'s ``early_termination.projection``:
            ``g_step``, ``from_g_step``, ``end_g_step``, ``slope``, ``intercept``, ``t1`` of its power law in log-log,
            ``optimistic``, ``best``, ``tolerance``), or ``None``.

    Returns:
        The written path.
    """
    two = bool(fid_history)
    fig = Figure(figsize=(11.0 if two else 7.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    _metric_panel(fig.add_subplot(1, 2 if two else 1, 1), history, metric, mode, stop, best, "tab:purple", projection)
    if two:
        _metric_panel(fig.add_subplot(1, 2, 2), fid_history, "val/fid", "min", stop, fid_best, "tab:green")
    return _save(fig, path)


def stop_metric_plot_name(metric: str) -> str:
    """``plots/<name>.png`` of a stop metric: its last path component, file-safe (``val/mmd`` -> ``mmd.png``)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(metric).rsplit("/", 1)[-1]) or "metric"
    return f"{name}.png"


def plot_augment(
    history: Sequence[Sequence[Optional[float]]],
    path: PathLike,
    stop: StopMark = None,
    target: Optional[float] = 0.6,
) -> Path:
    """Plot ADA's probability p and the overfitting heuristic r_t = E[sign(D(real))] against G steps.

    Args:
        history: Rows ``(g_step, ada_p, rt)``; a missing value is left as a gap (no ADA: no p curve).
        path: PNG file to write (parent folders are created).
        stop: ``(g_step, reason)`` of the stop, or ``None``.
        target: ADA's r_t target, drawn as a dotted line, or ``None``.

    Returns:
        The written path.
    """
    fig, ax = _new_figure()
    steps = [int(row[0]) for row in history]
    rts = [_finite_or_nan(row[2]) for row in history]
    ax.plot(steps, rts, label="r_t = E[sign(D(real))]", color="tab:purple", linewidth=0.8)
    ps = [_finite_or_nan(row[1]) for row in history]
    if any(math.isfinite(v) for v in ps):
        ax.plot(steps, ps, label="ADA p", color="tab:green", linewidth=1.6)
        if target is not None:
            ax.axhline(target, color="tab:gray", linestyle=":", linewidth=1.0, label=f"r_t target {target}")
    _mark_stop(ax, stop)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("generator step")
    ax.set_ylabel("value")
    ax.set_title("Discriminator overfitting (r_t) and augmentation probability")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_run(summary: Mapping[str, Any], loss_history: Sequence[Sequence[Optional[float]]],
             plot_dir: Path) -> dict[str, str]:
    """``losses.png``, the stop metric's ``<metric>.png`` (e.g. ``mmd.png``, FID beside it; for ``val/fid`` that is
    ``fid.png``), ``fid.png`` (with an FID history) and ``augment.png`` (when augmenting) of a run in ``plot_dir``,
    from its ``summary.json`` fields; returns the written plots relative to the run folder (``stop_metric``: the
    stop metric's). A plot that fails is logged, never raised, so it cannot cost the run its summary."""
    written: dict[str, str] = {}
    stop = (int(summary["stopped_g_step"]), str(summary["stop_reason"]))
    try:
        plot_losses(loss_history, plot_dir / "losses.png", stop=stop)
        written["losses"] = "plots/losses.png"
        if summary.get("augment_history"):
            plot_augment(summary["augment_history"], plot_dir / "augment.png", stop=stop)
            written["augment"] = "plots/augment.png"
        fid_best = None
        if summary.get("best_fid") is not None:
            fid_best = (int(summary["best_fid_step"]), float(summary["best_fid"]))
        metric = summary.get("stop_metric")
        if metric and metric != "val/fid" and summary.get("history"):
            best = None
            if summary.get("best_value") is not None:
                best = (int(summary["best_g_step"]), float(summary["best_value"]))
            name = stop_metric_plot_name(metric)
            projection = (summary.get("early_termination") or {}).get("projection")
            if projection is not None and projection.get("monitor") != metric:
                projection = None
            plot_stop_metric(summary["history"], plot_dir / name, metric, summary.get("stop_mode") or "min", stop=stop,
                             best=best, fid_history=summary.get("fid_history"), fid_best=fid_best,
                             projection=projection)
            written["stop_metric"] = f"plots/{name}"
        if summary["fid_history"]:
            best = fid_best
            plot_fid(summary["fid_history"], plot_dir / "fid.png", stop=stop, best=best,
                     smoothed=summary.get("fid_smoothed"), coverage=summary.get("coverage_history"))
            written["fid"] = "plots/fid.png"
            if metric == "val/fid":
                written["stop_metric"] = "plots/fid.png"
    except Exception as err:
        # a full disk is reported once, by whoever ends the run (regan-train: one line naming the folder)
        (log.debug if is_disk_full(err) else log.warning)("RunSummary: could not write plots into %s: %s", plot_dir, err)
    return written


#: Sample grids smaller than this many pixels a side are enlarged (nearest neighbour, whole factors) to at least it:
#: the default run's 8x8 digits make an 82x82 grid, too small to see.
MIN_GRID_SIDE = 256


def save_image_grid(images: Tensor, path: Union[str, Path], nrow: int = 8, min_side: int = MIN_GRID_SIDE) -> Path:
    """Save images ``(N, C, H, W)`` (or ``(N, H, W)``) in [-1, 1] as one PNG grid, atomically.

    A grid whose shorter side is under ``min_side`` pixels is enlarged by the smallest whole factor that reaches it,
    nearest neighbour (each pixel becomes a k x k block: nothing is smoothed or invented); ``0`` keeps it as is.
    """
    from torchvision.utils import make_grid
    from torchvision.utils import save_image

    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"save_image_grid: expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
    unit = (images.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1) + 1) / 2
    grid = make_grid(unit, nrow=nrow)
    side = min(grid.shape[-2:])
    if min_side and side < min_side:
        factor = -(-int(min_side) // int(side))  # ceil
        grid = grid.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return atomic_write(Path(path), lambda p: save_image(grid, p, format="png"))


def save_scatter(
    points: Tensor,
    path: Union[str, Path],
    real: Optional[Tensor] = None,
    centers: Optional[Tensor] = None,
    title: Optional[str] = None,
) -> Path:
    """Save a scatter PNG of generated 2-D ``points`` over ``real`` points (and mixture ``centers``), atomically."""
    if points.dim() != 2 or points.shape[1] < 2:
        raise ValueError(f"save_scatter: expected points of shape (N, 2), got {tuple(points.shape)}.")
    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if real is not None:
        r = real.detach().float().cpu()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="tab:gray", alpha=0.3, label="real")
    g = points.detach().float().cpu()
    ax.scatter(g[:, 0], g[:, 1], s=2, c="tab:blue", alpha=0.5, label="generated")
    if centers is not None:
        c = centers.detach().float().cpu()
        ax.scatter(c[:, 0], c[:, 1], s=12, c="tab:red", marker="x", linewidths=0.8, label="modes")
    if real is not None or centers is not None:  # frame on the data, so that far-off samples do not squash it
        ref = torch.cat([t.detach().float().cpu()[:, :2] for t in (real, centers) if t is not None])
        lo, hi = ref.min(0).values, ref.max(0).values
        pad = 0.25 * (hi - lo).clamp_min(1e-3)
        ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
        ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper right", fontsize=6, markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))


__all__ = ["plot_augment", "plot_fid", "plot_losses", "plot_run", "plot_stop_metric", "save_image_grid", "save_scatter",
           "stop_metric_plot_name"]
