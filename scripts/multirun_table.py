#!/usr/bin/env python
"""One comparison table (CSV + Markdown) and one FID-curve plot for a Hydra multirun of ``regan-train``.

Usage::

    python scripts/multirun_table.py outputs/train/multiruns/2026-11-25_10-00-00 [--out DIR]

Every job directory below the multirun directory that holds a ``summary.json`` becomes one row: the job's
Hydra overrides (from ``.hydra/overrides.yaml``, one column per overridden key) and the summary's fields.
Writes ``runs.csv``, ``runs.md`` and ``fid_curves.png`` into ``--out`` (default: the multirun directory)
and prints their paths. Works for any launcher (basic, joblib, submitit) and for Optuna sweeps; for a
``hydra/sweeper=regan_optuna`` sweep (an ``optuna.journal`` in the directory) it also rebuilds ``sweep.md``,
``sweep.csv`` and ``best_trial.yaml`` from the study (see ``lightning_regan.sweep``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning_regan.stopping.base import normalize_reason
from lightning_regan.sweep import format_cell

#: summary.json fields copied into the table, in this order.
SUMMARY_FIELDS = (
    "status", "stop_reason", "g_steps", "d_steps", "stop_metric", "best_value", "best_g_step", "best_fid",
    "best_fid_step", "final_fid",
    "wall_time_s", "fid_eval_time_s", "world_size",
)


#: Overrides the regan_optuna sweeper adds to each job (which Optuna trial it is), left out of the table.
SWEEPER_KEYS = ("optuna_trial.",)


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_overrides(job_dir: Path) -> dict[str, str]:
    """``{key: value}`` of the job's Hydra overrides (empty when Hydra wrote no ``.hydra/overrides.yaml``)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key.startswith(SWEEPER_KEYS):
            continue  # the trial's address in the study, not a parameter
        out[key] = value if sep else ""
    return out


def collect_runs(multirun_dir: Path) -> list[dict[str, Any]]:
    """One record per job: ``job``, ``overrides``, the summary's fields and its ``fid_history``.

    Raises:
        FileNotFoundError: ``multirun_dir`` does not exist or holds no ``summary.json``.
    """
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise FileNotFoundError(f"multirun directory {str(multirun_dir)!r} does not exist; pass the sweep dir Hydra printed.")
    runs = []
    for path in multirun_dir.rglob("summary.json"):
        if any(part.startswith(".") for part in path.relative_to(multirun_dir).parts[:-1]):
            continue  # .submitit/, .hydra/ ...
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); was the job killed while writing it?") from err
        job_dir = path.parent
        history = [(int(g), float(f)) for g, f in summary.get("fid_history") or [] if f is not None]
        record = {
            "job": job_dir.relative_to(multirun_dir).as_posix() or ".",
            "overrides": read_overrides(job_dir),
            "fid_history": history,
            "stopped_g_step": summary.get("stopped_g_step", summary.get("g_steps")),
            "error": summary.get("error"),
        }
        for field in SUMMARY_FIELDS:
            record[field] = summary.get(field)  # summaries before 0.4 have no stop_metric/best_value/best_g_step
        record["stop_reason"] = normalize_reason(record["stop_reason"])  # older summaries: fid_plateau
        record["stop_mode"] = summary.get("stop_mode")
        record["final_fid"] = history[-1][1] if history else None
        runs.append(record)
    if not runs:
        raise FileNotFoundError(
            f"no summary.json below {str(multirun_dir)!r}: the jobs have not finished, or this is not a regan-train "
            "multirun directory."
        )
    runs.sort(key=lambda r: _natural_key(r["job"]))
    return runs


def override_columns(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys in first-seen order, the ones that vary between jobs first."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run["overrides"] if k not in keys)
    varying = [k for k in keys if len({run["overrides"].get(k) for run in runs}) > 1]
    return varying + [k for k in keys if k not in varying]


def table_rows(runs: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and flat rows (overrides as columns, then the summary fields)."""
    keys = override_columns(runs)
    header = ["job", *keys, *SUMMARY_FIELDS]
    rows = []
    for run in runs:
        row = {"job": run["job"], **{k: run["overrides"].get(k, "") for k in keys}}
        row.update({f: run.get(f) for f in SUMMARY_FIELDS})
        rows.append(row)
    return header, rows



def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_run(runs: Sequence[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The run with the best finite ``best_value`` of the stop metric (lowest, or highest for ``stop_mode`` max),
    among the runs that share the first run's ``stop_metric``; runs whose summaries have no stop metric (before 0.4)
    by the lowest finite ``best_fid``. ``None`` when no run has one."""
    metric = next((r["stop_metric"] for r in runs if r.get("stop_metric") and _finite(r.get("best_value"))), None)
    if metric is not None:
        scored = [r for r in runs if r.get("stop_metric") == metric and _finite(r.get("best_value"))]
        sign = -1.0 if scored[0].get("stop_mode") == "max" else 1.0
        return min(scored, key=lambda r: sign * r["best_value"])
    scored = [r for r in runs if _finite(r.get("best_fid"))]
    return min(scored, key=lambda r: r["best_fid"]) if scored else None


def failed_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs whose ``summary.json`` says ``failed`` (an exception or a signal stopped them)."""
    return [r for r in runs if r.get("status") == "failed"]


def write_csv(runs: Sequence[dict[str, Any]], path: Path) -> Path:
    header, rows = table_rows(runs)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


def write_markdown(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    header, rows = table_rows(runs)
    best = best_run(runs)
    lines = [f"# {title}", "", f"{len(runs)} runs. Steps are generator updates (G steps).", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for run, row in zip(runs, rows):
        cells = [format_cell(row[h]) for h in header]
        if best is not None and run is best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None and best.get("stop_metric") and _finite(best.get("best_value")):
        lines += ["", f"Best {best['stop_metric']}: job `{best['job']}` ({_describe(best)}), "
                      f"best_value={format_cell(best['best_value'])} at G step {best['best_g_step']} "
                      f"(best_fid={format_cell(best['best_fid'])})."]
    elif best is not None:
        lines += ["", f"Best FID: job `{best['job']}` ({_describe(best)}), best_fid={format_cell(best['best_fid'])} "
                      f"at G step {best['best_fid_step']}."]
    failed = failed_runs(runs)
    if failed:
        lines += ["", f"Failed: {len(failed)} of {len(runs)} runs."]
        varying = [k for k in override_columns(runs) if len({run["overrides"].get(k) for run in runs}) > 1]
        lines += [f"- job `{r['job']}` ({_describe(r, varying or None)}) at G step {r['g_steps']}: "
                  f"{(r.get('error') or r.get('stop_reason') or '?').splitlines()[0][:300]}" for r in failed]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _describe(run: dict[str, Any], keys: Optional[Sequence[str]] = None) -> str:
    keys = list(run["overrides"]) if keys is None else keys
    return ", ".join(f"{k}={run['overrides'][k]}" for k in keys if k in run["overrides"]) or "defaults"


def plot_fid_curves(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Optional[Path]:
    """Every run's FID curve in one figure; a cross marks where a run stopped early or diverged, a dot its best.

    Returns ``None`` (and writes nothing) when no run evaluated FID.
    """
    if not any(run["fid_history"] for run in runs):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    varying = [k for k in override_columns(runs) if len({r["overrides"].get(k) for r in runs}) > 1]
    fig = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for run in runs:
        if not run["fid_history"]:
            continue
        steps, fids = zip(*run["fid_history"])
        label = f"{run['job']}: {_describe(run, varying or None)} ({run.get('stop_reason') or run.get('status')})"
        (line,) = ax.plot(steps, fids, marker=".", label=label)
        if isinstance(run.get("best_fid_step"), int) and run.get("best_fid") is not None:
            ax.plot([run["best_fid_step"]], [run["best_fid"]], "o", color=line.get_color(), markersize=7)
        if run.get("status") in ("stopped_early", "diverged", "pruned"):
            ax.plot([steps[-1]], [fids[-1]], "x", color=line.get_color(), markersize=10, markeredgewidth=2)
    ax.plot([], [], "o", color="0.4", label="best FID of a run")
    ax.plot([], [], "x", color="0.4", markeredgewidth=2, label="stopped early / pruned / diverged")
    ax.set_xlabel("generator step")
    ax.set_ylabel("FID")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def build(multirun_dir: Path, out_dir: Optional[Path] = None) -> dict[str, Optional[Path]]:
    """Write ``runs.csv``, ``runs.md`` and ``fid_curves.png``; returns their paths (``png`` may be ``None``)."""
    multirun_dir = Path(multirun_dir)
    runs = collect_runs(multirun_dir)
    out_dir = Path(out_dir) if out_dir is not None else multirun_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"regan-train multirun {multirun_dir.name}"
    paths = {
        "csv": write_csv(runs, out_dir / "runs.csv"),
        "markdown": write_markdown(runs, out_dir / "runs.md", title),
        "plot": plot_fid_curves(runs, out_dir / "fid_curves.png", title),
    }
    journal = multirun_dir / "optuna.journal"
    if journal.is_file():  # a regan_optuna sweep: its table (trials, pruning, G steps, best trial) from the study
        from lightning_regan.sweep import load_study, write_sweep_report

        report = write_sweep_report(load_study(str(journal)), out_dir)
        paths.update(sweep=report["markdown"], best_trial=report["best"])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="the sweep directory of a regan-train multirun")
    parser.add_argument("--out", type=Path, default=None, help="where to write the outputs (default: multirun_dir)")
    args = parser.parse_args(argv)
    try:
        paths = build(args.multirun_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"multirun_table: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path if path is not None else '(no FID evaluations: no plot)'}")
    failed = failed_runs(collect_runs(args.multirun_dir))
    if failed:
        print(f"multirun_table: {len(failed)} run(s) failed: {', '.join(r['job'] for r in failed)} (see runs.md)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
