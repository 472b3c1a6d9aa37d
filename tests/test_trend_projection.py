"""The stop rule's projection, published in summary.json (EarlyTermination) and drawn on plots/<metric>.png."""

from __future__ import annotations

import json
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_regan import EarlyTermination, Trend
from lightning_regan.plots import _metric_panel, plot_run


def _stopped_callback() -> EarlyTermination:
    # Falls as a power law, then flat: Trend judges at every evaluation; its last projection is kept.
    et = EarlyTermination(rules={"metric_plateau": Trend(monitor="val/mmd", min_progress=0.0)}, verbose=False)
    et.prepare_states(budget_g_steps=6000)
    state = et.states["metric_plateau"]
    values = [1.0 / math.sqrt(i) for i in range(1, 21)] + [1.0 / math.sqrt(20)] * 40
    for i, value in enumerate(values):
        if state.update((i + 1) * 100, {"val/mmd": value})[0]:
            break
    return et


def test_early_termination_publishes_the_last_projection_of_its_trend_rule():
    assert EarlyTermination(rules=[Trend(monitor="val/mmd")]).describe()["projection"] is None  # not judged yet
    projection = _stopped_callback().describe()["projection"]
    assert projection["rule"] == "metric_plateau" and projection["monitor"] == "val/mmd"
    assert projection["tolerance"] == 0.05 and projection["end_g_step"] == 6000
    assert projection["from_g_step"] < projection["g_step"] <= projection["end_g_step"]
    level = math.exp(projection["intercept"] + projection["slope"] * math.log(projection["g_step"] + projection["t1"]))
    assert level == projection["level"] and projection["optimistic"] <= projection["end"] <= projection["level"] * 1.001
    json.dumps(projection)  # summary.json material


def test_the_plot_draws_the_projection_and_the_tolerance_band(tmp_path):
    projection = _stopped_callback().describe()["projection"]
    history = [[(i + 1) * 100, 1.0 / math.sqrt(i + 1)] for i in range(30)]
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _metric_panel(ax, history, "val/mmd", "min", None, None, "tab:purple", projection)
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("metric_plateau: trend to G step 6000") for label in labels)
    assert any(label.startswith("optimistic end") for label in labels)
    assert any(label.startswith("best x (1 - 5%)") for label in labels)
    trend = next(line for line in ax.get_lines() if line.get_label().startswith("metric_plateau"))
    xs, ys = trend.get_xdata(), trend.get_ydata()
    assert xs[0] == projection["from_g_step"] and xs[-1] == 6000
    assert math.isclose(ys[-1], projection["end"], rel_tol=1e-9)  # followed to the budget, as the rule did

    summary = {"stopped_g_step": 3000, "stop_reason": "plateau", "stop_metric": "val/mmd", "stop_mode": "min",
               "history": history, "best_value": history[-1][1], "best_g_step": 3000, "fid_history": [],
               "early_termination": {"projection": projection}}
    written = plot_run(summary, [], tmp_path)
    assert written["stop_metric"] == "plots/mmd.png" and (tmp_path / "mmd.png").stat().st_size > 0
