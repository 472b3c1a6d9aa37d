"""The Optuna sweep (``hydra/sweeper=regan_optuna``): its table (one row per trial, the best trial, the G steps) and
the study's storage (:func:`open_storage`), shared by the sweeper, the table and the pruning callback of each trial
(:mod:`lightning_regan.sweep.pruning`, imported on its own: this module needs neither torch nor Lightning).

Built from the study alone (its storage holds each trial's parameters, state, intermediate FIDs and the fields
the sweeper copied from the job's ``summary.json``), so it can be rebuilt at any time, also for a killed sweep:
``python scripts/multirun_table.py <sweep dir>``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import yaml

#: Columns after the parameters, in this order: ``best_value`` is the best value of the run's stop metric (what the
#: sweep optimizes by default), ``best_fid`` the best FID beside it.
TRIAL_FIELDS = ("g_steps", "pruned_at", "best_value", "best_fid", "status")


def format_cell(value: Any) -> str:
    """A table cell: empty for ``None``, 4 significant digits for a finite float."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One record per trial that counts (trials a killed sweep left running and that ran again are left out).

    Fields: ``trial``, ``params``, ``g_steps`` (G steps the run took), ``pruned_at`` (G step of the pruning
    evaluation, else ``None``), ``stop_metric``, ``best_value`` (its best: summary.json's, else the best value the
    trial reported to the pruner, which reports the stop metric), ``best_fid``, ``status`` (summary.json's:
    completed, stopped_early, pruned, diverged, failed; else the Optuna state), ``max_g_steps``, ``output_dir``.
    Trials of studies before 0.4 (no ``best_value`` or ``stop_metric``; they reported FID) read as before.
    """
    requeued = set(study.user_attrs.get("requeued", []))
    pick = min if study.direction.name == "MINIMIZE" else max
    records = []
    for t in study.get_trials(deepcopy=False):
        if t.number in requeued or not t.state.is_finished():
            continue
        attrs = t.user_attrs
        pruned = t.state.name == "PRUNED"
        finite = [v for v in t.intermediate_values.values() if math.isfinite(v)]
        reported = pick(finite) if finite else None
        best_value = attrs.get("best_value", reported)
        best = attrs.get("best_fid")
        if best is None and attrs.get("stop_metric") in (None, "val/fid") and finite:
            best = min(finite)  # the trial reported FID (studies before 0.4, or stop_metric=val/fid)
        records.append({
            "trial": t.number,
            "params": dict(t.params),
            "g_steps": attrs.get("g_steps"),
            "pruned_at": (attrs.get("stopped_g_step") or t.last_step) if pruned else None,
            "stop_metric": attrs.get("stop_metric"),
            "best_value": best_value,
            "best_fid": best,
            "status": attrs.get("status") or t.state.name.lower(),
            "max_g_steps": attrs.get("max_g_steps"),
            "output_dir": attrs.get("output_dir"),
            "value": t.value,
        })
    return records


def g_step_totals(records: list[dict[str, Any]]) -> dict[str, Optional[int]]:
    """``run``: G steps the sweep took. ``unpruned_bound``: what it would have taken had no trial been pruned, each
    pruned trial counted at its ``max_g_steps`` (an upper bound: its own early termination might have stopped it)."""
    if any(r["g_steps"] is None for r in records):
        return {"run": None, "unpruned_bound": None}
    run = sum(int(r["g_steps"]) for r in records)
    bound = 0
    for r in records:
        if r["status"] == "pruned" and r["max_g_steps"] is not None:
            bound += int(r["max_g_steps"])
        else:
            bound += int(r["g_steps"])
    return {"run": run, "unpruned_bound": bound}


def best_record(study: Any, records: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The completed trial with the best value (Optuna's ``best_trial``), or ``None`` when none completed."""
    complete = [r for r in records if r["value"] is not None and r["status"] != "pruned" and math.isfinite(r["value"])]
    if not complete:
        return None
    sign = 1.0 if study.direction.name == "MINIMIZE" else -1.0
    return min(complete, key=lambda r: sign * r["value"])


def write_sweep_report(study: Any, sweep_dir: Path) -> dict[str, Optional[Path]]:
    """Write ``sweep.csv``, ``sweep.md`` and ``best_trial.yaml`` (the best trial's parameters and whole config)
    into ``sweep_dir``; returns their paths (``best`` is ``None`` when no trial completed)."""
    sweep_dir = Path(sweep_dir)
    records = trial_records(study)
    keys: list[str] = []
    for r in records:
        keys.extend(k for k in r["params"] if k not in keys)
    header = ["trial", *keys, *TRIAL_FIELDS]
    rows = [[r["trial"], *(r["params"].get(k) for k in keys), *(r[f] for f in TRIAL_FIELDS)] for r in records]

    csv_path = sweep_dir / "sweep.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])

    best = best_record(study, records)
    totals = g_step_totals(records)
    n_pruned = sum(r["status"] == "pruned" for r in records)
    metric = next((r["stop_metric"] for r in records if r["stop_metric"]), None)
    objective = f"best_value is the best {metric}; " if metric else ""
    lines = [f"# Sweep {study.study_name}", "",
             f"{len(records)} trials, {n_pruned} pruned. Steps are generator updates (G steps). {objective}the sweep "
             f"{study.direction.name.lower()}s each trial's returned value.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r, row in zip(records, rows):
        cells = [format_cell(v) for v in row]
        if best is not None and r is best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if totals["run"] is not None:
        share = totals["run"] / totals["unpruned_bound"] if totals["unpruned_bound"] else float("nan")
        lines.append(f"G steps: {totals['run']:,} run; {totals['unpruned_bound']:,} without pruning (pruned trials "
                     f"counted at their max_g_steps): {share:.0%}.")
    best_path: Optional[Path] = None
    if best is not None:
        params = ", ".join(f"{k}={format_cell(v)}" for k, v in best["params"].items())
        score = (f"best {best['stop_metric']} {format_cell(best['best_value'])}, " if best["stop_metric"] else "")
        lines.append(f"Best trial: {best['trial']} ({params}), {score}best FID {format_cell(best['best_fid'])}; its "
                     f"config: best_trial.yaml.")
        config = None
        if best["output_dir"] and (Path(best["output_dir"]) / ".hydra" / "config.yaml").is_file():
            config = yaml.safe_load((Path(best["output_dir"]) / ".hydra" / "config.yaml").read_text())
        best_path = sweep_dir / "best_trial.yaml"
        best_path.write_text(yaml.safe_dump({
            "trial": best["trial"], "value": best["value"], "stop_metric": best["stop_metric"],
            "best_value": best["best_value"], "best_fid": best["best_fid"], "params": best["params"],
            "output_dir": best["output_dir"], "config": config,
        }, sort_keys=False))
    else:
        lines.append("No trial completed: no best trial.")
    md_path = sweep_dir / "sweep.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"csv": csv_path, "markdown": md_path, "best": best_path}


def open_storage(storage: str) -> Any:
    """An Optuna storage from a URL (``sqlite:///...``, ``postgresql://...``) or a journal file path.

    A journal file (``optuna.storages.JournalStorage`` on ``JournalFileBackend``) needs no server and works
    on any folder all jobs share (NFS included); a URL is handed to Optuna as it is.
    """
    import optuna

    if not isinstance(storage, str) or not storage.strip():
        raise ValueError(f"Optuna storage must be a URL or a journal file path, got {storage!r}.")
    if "://" in storage:
        return optuna.storages.get_storage(storage)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(storage)))


def load_study(storage: str, study_name: Optional[str] = None) -> Any:
    """Load a study from a storage URL or journal file (the only study there when ``study_name`` is ``None``)."""
    import optuna

    backend = open_storage(storage)
    if study_name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(backend)]
        if len(names) != 1:
            raise ValueError(f"{storage} holds studies {names}; name one.")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=backend)


__all__ = ["best_record", "format_cell", "g_step_totals", "load_study", "open_storage", "trial_records",
           "write_sweep_report"]
