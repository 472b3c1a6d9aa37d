"""Replay stop configurations on real, long GAN training curves that their authors published.

Each curve (``../shared/curves/curves.json``: StyleGAN2-ADA ``fid50k_full`` logs, TransGAN, ...; its README says
where each came from) is fed, one evaluation at a time, to the product's own rule objects, composed from
``conf/early_stopping/<config>.yaml`` through Hydra and prepared exactly as ``EarlyTermination`` prepares them at the
start of a fit (:meth:`EarlyTermination.prepare_states`): the budget is the curve's length, and a curve with
``starts_from: trained`` is replayed as a fine-tune (``initialized_from`` set). The generator handed back is the best
so far at the stop, as ``BestGenerator`` hands it back. Graded on the curve itself (a low-noise FID of the run):

- ``gap``: handed-back value / the curve's best - 1; within when <= 5 %.
- the eps-oracle stops at the first evaluation within 5 % of the curve's best; a saving is the share of the
  curve's progress (kimg, iterations, epochs) after the stop.
- ``within_share``, ``captured_share`` (savings on the curves handed back within 5 %, over the eps-oracle's savings),
  ``finetune_decided_share`` (curves from a trained network whose oracle saves >= 30 %: stopped before the end and
  within 5 %), ``peaked_stopped_share`` (best before the last 20 % of the curve and the last value >= 5 % worse:
  stopped before the end and within 5 %).

Usage::

    python studies/real_curves.py --out studies/results                        # default and the 0.3 rule
    python studies/real_curves.py --curves more.json --config default --out /tmp/rc
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CURVES = ROOT.parent / "shared" / "curves" / "curves.json"
EPSILON = 0.05
PEAK_SHARE = 0.8
FINETUNE_ORACLE_SAVING = 0.3
#: Curve x (kimg, iterations, epochs) -> G steps: an integer count, whatever the unit (the rules are scale-free).
STEPS_PER_UNIT = 1000
MONITOR = "val/mmd"
TARGETS = {"within_share": (">=", 0.95), "captured_share": (">=", 0.5), "finetune_decided_share": (">=", 0.8),
           "peaked_stopped_share": ("==", 1.0)}


def load_curves(path: Path) -> list[dict[str, Any]]:
    """The curves of ``path``, each with at least three finite points sorted by x (else a ``ValueError``)."""
    curves = json.loads(Path(path).read_text())
    for curve in curves:
        xs = [p[0] for p in curve["points"]]
        if len(xs) < 3 or xs != sorted(xs):
            raise ValueError(f"{path}: curve {curve.get('id')!r} needs >= 3 points sorted by x.")
        if curve.get("direction", "lower_is_better") != "lower_is_better":
            raise ValueError(f"{path}: curve {curve['id']!r} is not lower-is-better; only distances are replayed.")
    return curves


@functools.lru_cache(maxsize=None)
def _stopping_config(config: str, overrides: tuple[str, ...]) -> Any:
    from lightning_regan.config import compose_config

    return compose_config([f"early_stopping={config}", f"stop_metric={MONITOR}", *overrides]).early_stopping


def stopping_callback(config: str, overrides: tuple[str, ...] = ()) -> Any:
    """A new ``EarlyTermination`` of ``early_stopping=<config>``, deciding on :data:`MONITOR` (fresh rule states)."""
    from hydra.utils import instantiate

    return instantiate(_stopping_config(config, tuple(overrides)))


def replay(curve: dict[str, Any], config: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Where ``early_stopping=<config>`` stops ``curve``, why, and what it hands back."""
    stopping = stopping_callback(config, overrides)
    if not hasattr(stopping, "replay"):  # early_stopping=none: no EarlyTermination
        stopping = None
    points = curve["points"]
    x0, x_end = points[0][0], points[-1][0]
    steps = [round(x * STEPS_PER_UNIT) for x, _ in points]
    trained = curve.get("starts_from") == "trained"
    hit = None if stopping is None else stopping.replay(
        ((g_step, {MONITOR: float(value)}) for g_step, (_, value) in zip(steps, points)), steps[-1],
        "trained" if trained else None)
    stop_index, reason, message = (None, "max_steps", "") if hit is None else (steps.index(hit[0]), hit[2].value, hit[3])
    last = stop_index if stop_index is not None and stop_index < len(points) - 1 else len(points) - 1
    stopped = last < len(points) - 1
    handed = min(range(last + 1), key=lambda i: points[i][1])
    best = min(range(len(points)), key=lambda i: points[i][1])
    oracle = next(i for i, p in enumerate(points) if p[1] <= (1 + EPSILON) * points[best][1])
    span = x_end - x0
    peaked = points[best][0] < x0 + PEAK_SHARE * span and points[-1][1] >= (1 + EPSILON) * points[best][1]
    return {
        "id": curve["id"], "starts_from": curve.get("starts_from"), "x_unit": curve.get("x_unit"),
        "evaluations": len(points), "budget_x": x_end, "stop_x": points[last][0] if stopped else None,
        "stop_reason": reason if stopped else "max_steps", "stop_message": message if stopped else "",
        "handed_back_x": points[handed][0], "handed_back_value": points[handed][1],
        "best_x": points[best][0], "best_value": points[best][1],
        "gap": points[handed][1] / points[best][1] - 1.0,
        "saving": (x_end - points[last][0]) / span if stopped else 0.0,
        "oracle_x": points[oracle][0], "oracle_saving": (x_end - points[oracle][0]) / span, "peaked": peaked,
    }


def _share(rows: list[dict[str, Any]], ok: Any) -> Optional[float]:
    return sum(1 for r in rows if ok(r)) / len(rows) if rows else None


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The target keys over ``rows`` (one per curve) and the counts they come from."""
    within = [r for r in rows if r["gap"] <= EPSILON + 1e-12]
    oracle_total = sum(r["oracle_saving"] for r in rows)
    finetunes = [r for r in rows if r["starts_from"] == "trained" and r["oracle_saving"] >= FINETUNE_ORACLE_SAVING]
    peaked = [r for r in rows if r["peaked"]]
    decided = lambda r: r["stop_x"] is not None and r["gap"] <= EPSILON + 1e-12  # noqa: E731
    return {
        "curves": len(rows), "within": len(within), "within_share": _share(rows, lambda r: r in within),
        "captured_share": sum(r["saving"] for r in within) / oracle_total if oracle_total else None,
        "saving_total": sum(r["saving"] for r in within), "oracle_saving_total": oracle_total,
        "saving_median": statistics.median(r["saving"] for r in rows),
        "finetunes": len(finetunes), "finetune_decided_share": _share(finetunes, decided),
        "peaked": len(peaked), "peaked_stopped_share": _share(peaked, decided),
        "gap_median": statistics.median(r["gap"] for r in rows), "gap_max": max(r["gap"] for r in rows),
        "stopped": sum(1 for r in rows if r["stop_x"] is not None),
    }


def study(curves: list[dict[str, Any]], configs: list[str]) -> dict[str, Any]:
    """Every configuration replayed on every curve."""
    report: dict[str, Any] = {"epsilon": EPSILON, "monitor": MONITOR, "configs": {}}
    for config in configs:
        rows = [replay(curve, config) for curve in curves]
        report["configs"][config] = {"totals": totals(rows), "curves": rows}
    return report


def targets(report: dict[str, Any], config: str = "default") -> dict[str, Any]:
    """The issue's target keys for ``config``, each with its value and whether it is met."""
    got = report["configs"][config]["totals"]
    out: dict[str, Any] = {"config": config, "curves": got["curves"]}
    for key, (op, bound) in TARGETS.items():
        value = got[key]
        met = value is not None and (value >= bound if op == ">=" else abs(value - bound) < 1e-12)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "met": met}
    return out


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def markdown(report: dict[str, Any]) -> str:
    """A readable account of ``report``."""
    lines = [f"# Stop rules replayed on real training curves ({report['source']})", "",
             f"Command: `{report['command']}`", ""]
    lines += ["| config | within 5 % | captured | fine-tunes decided | peaked stopped | median saving | stopped |",
              "|---|---|---|---|---|---|---|"]
    for config, part in report["configs"].items():
        t = part["totals"]
        lines.append(f"| {config} | {t['within']}/{t['curves']} ({_pct(t['within_share'])}) | "
                     f"{_pct(t['captured_share'])} | {_pct(t['finetune_decided_share'])} of {t['finetunes']} | "
                     f"{_pct(t['peaked_stopped_share'])} of {t['peaked']} | {_pct(t['saving_median'])} | "
                     f"{t['stopped']} |")
    for config, part in report["configs"].items():
        lines += ["", f"## {config}", "", "| curve | from | stop / budget | gap | saving | oracle (saving) |",
                  "|---|---|---|---|---|---|"]
        for r in part["curves"]:
            stop = "-" if r["stop_x"] is None else f"{r['stop_x']:g}"
            lines.append(f"| {r['id']}{' (peaked)' if r['peaked'] else ''} | {r['starts_from']} | {stop} / "
                         f"{r['budget_x']:g} {r['x_unit']} | {r['gap']:+.1%} | {_pct(r['saving'])} | "
                         f"{r['oracle_x']:g} ({_pct(r['oracle_saving'])}) |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=Path, default=DEFAULT_CURVES, help="curves JSON (default: %(default)s)")
    parser.add_argument("--config", action="append", help="conf/early_stopping/ name(s) (default: default, trend_v5)")
    parser.add_argument("--out", type=Path, required=True, help="folder for real_curves.{json,md} and the targets")
    args = parser.parse_args(argv)
    if not args.curves.is_file():
        print(f"real_curves: no curves at {args.curves}; pass --curves PATH.", file=sys.stderr)
        return 2
    configs = args.config or ["default", "trend_v5"]
    report = study(load_curves(args.curves), configs)
    resolved = args.curves.resolve()
    source = str(args.curves)
    for base in (ROOT, ROOT.parent):  # the repo's own data, or ../shared
        if resolved.is_relative_to(base):
            source = str(resolved.relative_to(base))
            break
    report = {"source": source, "command": "python studies/real_curves.py " + " ".join(argv or sys.argv[1:]),
              **report}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_curves.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "real_curves.md").write_text(markdown(report))
    (args.out / "real_curves_targets.json").write_text(json.dumps(targets(report, configs[0]), indent=1) + "\n")
    for config, part in report["configs"].items():
        t = part["totals"]
        print(f"{config}: within {_pct(t['within_share'])}, captured {_pct(t['captured_share'])}, fine-tunes decided "
              f"{_pct(t['finetune_decided_share'])}, peaked stopped {_pct(t['peaked_stopped_share'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
