#!/usr/bin/env python
"""Fine-tuning study (issue 30): a GAN pretrained on MNIST digits 0-4, fine-tuned on 600 images of digits 5-9.

Design: one small DCGAN (width ``--width``, batch ``--batch``, non-saturating loss, R1, EMA of G 0.995:
``experiment=finetune`` with a smaller width) is pretrained once on digits 0-4 (all ~30,600 training images, no
augmentation, ``--pretrain-g-steps`` G steps, seed 100); its ``last.ckpt`` is the ``init_from`` of every fine-tune.
On the target, MNIST digits 5-9 limited to 600 training images (``data.classes=[5,6,7,8,9] data.limit=600``: the same
subset for every seed), each condition trains ``--max-g-steps`` G steps (equal budgets) without stopping, seeds 0-2:

- ``scratch``: from scratch, DiffAugment;
- ``finetune``: ``init_from`` (G, D and the EMA of G), DiffAugment: the preset;
- ``finetune_freezed``: the same with FreezeD on D's stem (``module.freeze_d_layers=1``);
  ``finetune_no_diffaugment``: the same as ``finetune`` without DiffAugment.

Ground truth, every ``--every`` G steps (a study-only grader): the Fréchet distance of ``--samples`` generated images
(EMA generator, fixed noise) to the TEST split's digits 5-9 (4,861 images), in the features of the package's small
classifier trained on the target's training digits 5-9 (TF-GAN's "MNIST Fréchet distance"; NOT Inception FID). The
product's ``FIDMonitor`` logs ``val/mmd`` (the stop metric) and ``val/fid`` at the same evaluations.

Early termination: the default rule set (``conf/early_stopping/default.yaml``, deciding on ``val/mmd``) is replayed
offline on each fine-tune's recorded metrics with the product's rule objects (training did not stop, so every
candidate sees the same run), as ``studies/stopping_study.py`` does; graded like it: the eps-oracle (eps 5 %, widened
to the grader's noise) is the first evaluation within tolerance of the run's best truth, lag = stop step / oracle
step (at least the first evaluation after G step 0, where a fine-tune's starting generator is evaluated), gap = (truth of the generator handed back - best truth) / best truth, the generator handed back being the
evaluation with the best ``val/mmd`` up to the stop (what ``callbacks.best_generator`` restores).

Reported (medians over seeds): ``finetune_over_scratch_best`` (best truth of ``finetune`` / of ``scratch``, same
seed), ``finetune_stop_lag`` and ``finetune_gap`` (the preset's fine-tunes), ``freezed_effect`` (``finetune_freezed``
/ ``finetune``) and ``diffaugment_effect`` (``finetune`` / ``finetune_no_diffaugment``): ratios of best truth, below 1
where the option helps.

Usage::

    nice -n 15 python studies/finetune_study.py --jobs 1 --work /tmp/finetune   # the study (13 trainings)
    python studies/finetune_study.py --quick --work /tmp/q --out /tmp/q/out    # seconds: a smoke test (CI)
    python studies/finetune_study.py --analyse --work /tmp/finetune            # rebuild the report from the runs

Writes ``<out>/finetune_study.json`` (every run's history), ``<out>/finetune_study.md`` and
``<out>/finetune_targets.json``. Finished runs are kept in ``<work>/runs/*/record.json`` and skipped when started again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("REGAN_SHARED_DATA") or next(
    (str(p) for p in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data") if p.is_dir()),
    str(REPO.parent / "shared" / "data")))
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
#: name -> (starts from the pretrained checkpoint, augment, module.freeze_d_layers)
CONDITIONS: dict[str, tuple[bool, str, int]] = {
    "scratch": (False, "diffaugment", 0),
    "finetune": (True, "diffaugment", 0),
    "finetune_freezed": (True, "diffaugment", 1),
    "finetune_no_diffaugment": (True, "none", 0),
}
FINETUNES = tuple(name for name, (init, _, _) in CONDITIONS.items() if init)
SEEDS = (0, 1, 2)
PRETRAIN_SEED = 100
EPSILON = 0.05
DEFAULTS = {"max_g_steps": 1000, "pretrain_g_steps": 2000, "every": 50, "samples": 10000, "width": 8, "batch": 32,
            "limit": 600}
QUICK = {"max_g_steps": 12, "pretrain_g_steps": 12, "every": 6, "samples": 64, "width": 4, "batch": 16, "limit": 200}
TARGETS_TEXT = {"finetune_over_scratch_best": "<= 0.7", "finetune_stop_lag": "<= 1.5", "finetune_gap": "<= 0.05"}


# ---------------------------------------------------------------------------------------------- configs
def overrides(spec: dict[str, Any]) -> list[str]:
    """The ``regan-train`` overrides of one training (pretraining or a condition)."""
    quick = spec["quick"]
    out = ["experiment=finetune", f"data={'digits' if quick else 'mnist'}", f"data.batch_size={spec['batch']}",
           f"model.generator.channels={spec['width']}", f"model.discriminator.channels={spec['width']}",
           f"seed={spec['seed']}", f"max_g_steps={spec['max_g_steps']}", "logger=none",
           "trainer.enable_progress_bar=false", f"output_dir={spec['run_dir']}"]
    if not quick:
        out.append(f"data.root={spec['data_root']}")
    if spec["name"] == "pretrain":
        return [*out, f"data.classes=[{','.join(map(str, SOURCE_CLASSES))}]", "data.limit=null", "augment=none",
                "module.freeze_d_layers=0", "early_stopping=none", "callbacks=[checkpoint]",
                "callbacks.checkpoint.monitor=null", "callbacks.checkpoint.save_top_k=0"]
    init, augment, freeze = CONDITIONS[spec["condition"]]
    out += [f"data.classes=[{','.join(map(str, TARGET_CLASSES))}]", f"data.limit={spec['limit']}", f"augment={augment}",
            f"module.freeze_d_layers={freeze}", f"callbacks.fid.every_n_g_steps={spec['every']}",
            "callbacks=[fid]", "early_stopping=none"]
    if quick:
        out.append("callbacks.fid.num_samples=64")
    if init:
        out.append(f"init_from={spec['init_from']}")
    return out


def rule_overrides(spec: dict[str, Any]) -> list[str]:
    """The same run with the preset's default stop rules (what is replayed)."""
    return [o for o in overrides(spec) if not o.startswith("early_stopping=")]


# ---------------------------------------------------------------------------------------------- one training
def pretrain(spec: dict[str, Any]) -> dict[str, Any]:
    """Train the source GAN (digits 0-4) with ``train()``; its last.ckpt is every fine-tune's ``init_from``."""
    from lightning_regan.cli.train import train
    from lightning_regan.config import compose_config

    start = time.perf_counter()
    summary, _ = train(compose_config(overrides(spec)))
    return {"name": "pretrain", "g_steps": summary["g_steps"], "wall_s": time.perf_counter() - start,
            "checkpoint": str(Path(spec["run_dir"]) / "checkpoints" / "last.ckpt")}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (condition, seed) for its budget; grade it on the truth at every monitor evaluation."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    from lightning_regan import builders
    from lightning_regan.callbacks import FIDMonitor
    from lightning_regan.cli.train import validate_config
    from lightning_regan.config import compose_config, drop_unselected
    from lightning_regan.data.base import select_classes
    from lightning_regan.fid.extractors import ClassifierExtractor
    from lightning_regan.fid.metric import FeatureDistances
    from lightning_regan.fid.stats import compute_real_statistics, dataset_cache_key
    from lightning_regan.module import max_steps_for

    torch.set_num_threads(1)
    cfg = compose_config(overrides(spec))
    drop_unselected(cfg)
    validate_config(cfg)
    options = {"steps": 30} if spec["quick"] else {}
    # The classifier (the monitor's and the grader's) is trained or found in the cache before seeding, so that a run's
    # training does not depend on whether an earlier run cached it (small_data_study.py does the same).
    warm = builders.build_datamodule(cfg)
    with torch.random.fork_rng(devices=[]):
        ClassifierExtractor.fit(warm.reference_dataset(), dataset_key=dataset_cache_key(warm), **options)
    pretrained = builders.read_init_from(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    objects = builders.build_all(cfg)
    datamodule, module = objects["datamodule"], objects["module"]
    if pretrained is not None:
        builders.apply_init_from(cfg, module, pretrained)
    monitor = next(cb for cb in objects["callbacks"] if isinstance(cb, FIDMonitor))
    extractor = ClassifierExtractor.fit(datamodule.reference_dataset(), dataset_key=dataset_cache_key(datamodule),
                                        **options).eval()
    n = spec["samples"]
    with torch.random.fork_rng(devices=[]):
        # The truth's real side: the test split's target digits (sklearn's digits have no split: quick mode only).
        test = datamodule.reference_dataset() if spec["quick"] else select_classes(datamodule._load("test"),
                                                                                    TARGET_CLASSES)
        stats = compute_real_statistics(test, extractor, len(test))
        metric = FeatureDistances(stats.num_features)
        metric.set_real(stats)
        # The grader's noise: n training images of the target digits (not the 600) against the test split.
        train_all = datamodule._load("train") if not spec["quick"] else datamodule.reference_dataset()
        train_all = select_classes(train_all, TARGET_CLASSES)
        idx = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(spec["seed"]))[:n]
        real = compute_real_statistics(torch.utils.data.Subset(train_all, idx.tolist()), extractor, n,
                                       keep_features=True).features
        metric.update(real)
        grader_noise = float(metric.compute()["fid"])
        metric.reset_fake()
    noise = torch.randn(n, int(cfg.model.latent_dim), generator=torch.Generator().manual_seed(10_000 + spec["seed"]))

    class Grader(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.time_s = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if not monitor.history or (self.rows and self.rows[-1]["g_step"] == monitor.history[-1][0]):
                return
            start = time.perf_counter()
            logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            metric.reset_fake()
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                for z in noise.split(1000):
                    metric.update(extractor(pl_module.generate(z=z)))
                truth = float(metric.compute()["fid"])
            self.rows.append({"g_step": int(monitor.history[-1][0]), "metrics": logged, "truth": truth})
            self.time_s += time.perf_counter() - start

    grader = Grader()
    trainer = instantiate(cfg.trainer, max_steps=max_steps_for(spec["max_g_steps"], module.n_critic),
                          callbacks=[*objects["callbacks"], grader], logger=False, enable_checkpointing=False,
                          default_root_dir=spec["run_dir"])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return {"name": spec["name"], "condition": spec["condition"], "seed": spec["seed"], "spec": spec,
            "max_g_steps": spec["max_g_steps"], "g_steps": int(module.g_steps), "train_images": len(datamodule.train_dataset()),
            "init_from": module.initialized_from, "fit_wall_s": time.perf_counter() - start, "grader_s": grader.time_s,
            "grader_noise": grader_noise, "grader_noise_note": f"FID of {n} training images of digits 5-9 vs the test split",
            "evaluations": grader.rows}


# ---------------------------------------------------------------------------------------------- analysis
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _median(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def replay(run: dict[str, Any]) -> dict[str, Any]:
    """Where the preset's default stop rules stop ``run`` (replayed on its recorded metrics), and which evaluation's
    generator they hand back (the best stop metric so far)."""
    from hydra.utils import instantiate

    from lightning_regan.config import compose_config

    stopping = instantiate(compose_config(rule_overrides(run["spec"])).early_stopping)
    rules = {name: rule for name, rule in stopping.rules.items() if rule.cadence == "evaluation"}
    first = next(iter(rules.values()))
    decision, mode = first.monitor, first.mode
    # As at the start of the fit: the budget, and whether the module starts from trained weights (a fine-tune).
    rows = run["evaluations"]
    hit = stopping.replay(((row["g_step"], row["metrics"]) for row in rows), run["max_g_steps"],
                          run["spec"].get("init_from"))
    stop, reason = (run["g_steps"], "max_steps") if hit is None else (hit[0], hit[2].value)
    seen = [i for i, r in enumerate(rows) if r["g_step"] <= stop and _finite(r["metrics"].get(decision))]
    sign = 1.0 if mode == "min" else -1.0
    handed = min(seen, key=lambda i: sign * rows[i]["metrics"][decision]) if seen else None
    return {"stop_g_step": stop, "reason": reason, "handed_index": handed, "metric": decision}


def grade(run: dict[str, Any]) -> dict[str, Any]:
    """Best and last truth, the eps-oracle, and the replayed stop's lag and gap."""
    rows = [r for r in run["evaluations"] if _finite(r["truth"])]
    if not rows:
        return {"best_truth": None}
    best = min(rows, key=lambda r: r["truth"])
    tol = max(EPSILON * abs(best["truth"]), run["grader_noise"] or 0.0)
    oracle = next(r for r in rows if r["truth"] <= best["truth"] + tol)
    out = {"best_truth": best["truth"], "best_g_step": best["g_step"], "last_truth": run["evaluations"][-1]["truth"],
           "first_truth": run["evaluations"][0]["truth"], "tolerance": tol, "oracle_g_step": oracle["g_step"]}
    if run["condition"] in FINETUNES:
        outcome = replay(run)
        # A fine-tune is also evaluated at G step 0 (its starting generator): an oracle there counts as the first
        # evaluation after it, so that the lag stays a ratio of G steps trained.
        first_step = min((r["g_step"] for r in rows if r["g_step"] > 0), default=1)
        idx = outcome["handed_index"]
        handed = run["evaluations"][idx]["truth"] if idx is not None else None
        out.update(stop_g_step=outcome["stop_g_step"], stop_reason=outcome["reason"], stop_metric=outcome["metric"],
                   handed_g_step=run["evaluations"][idx]["g_step"] if idx is not None else None, handed_truth=handed,
                   lag=outcome["stop_g_step"] / max(oracle["g_step"], first_step),
                   gap=(handed - best["truth"]) / best["truth"] if _finite(handed) and best["truth"] else None,
                   saving=1 - outcome["stop_g_step"] / run["max_g_steps"])
    return out


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    graded = {r["name"]: {**grade(r), "condition": r["condition"], "seed": r["seed"]} for r in runs}
    by = {(g["condition"], g["seed"]): g for g in graded.values()}
    seeds = sorted({g["seed"] for g in graded.values()})

    def ratio(a: str, b: str) -> Optional[float]:
        values = [by[(a, s)]["best_truth"] / by[(b, s)]["best_truth"] for s in seeds
                  if (a, s) in by and (b, s) in by and by[(a, s)].get("best_truth") and by[(b, s)].get("best_truth")]
        return _median(values)

    table = {}
    for condition in CONDITIONS:
        cells = [g for g in graded.values() if g["condition"] == condition]
        if cells:
            table[condition] = {key: _median([c.get(key) for c in cells]) for key in
                                ("best_truth", "best_g_step", "last_truth", "first_truth", "oracle_g_step",
                                 "stop_g_step", "lag", "gap", "saving")}
            table[condition]["runs"] = len(cells)
    preset = [g for g in graded.values() if g["condition"] == "finetune"]
    keys = {
        "finetune_over_scratch_best": ratio("finetune", "scratch"),
        "finetune_stop_lag": _median([g.get("lag") for g in preset]),
        "finetune_gap": _median([g.get("gap") for g in preset]),
        "freezed_effect": ratio("finetune_freezed", "finetune"),
        "diffaugment_effect": ratio("finetune", "finetune_no_diffaugment"),
    }
    return {"graded": graded, "table": table, "targets": keys}


def _met(key: str, value: Optional[float]) -> str:
    if key not in TARGETS_TEXT:
        return "reported"
    if value is None:
        return "not measured"
    op, bound = TARGETS_TEXT[key].split()
    return "met" if (value <= float(bound) if op == "<=" else value >= float(bound)) else "NOT met"


def _f(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if pct else (f"{value:.4g}" if isinstance(value, float) else str(value))


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Fine-tuning study: digits 0-4 to 600 images of digits 5-9", "",
        f"Command: `{report['command']}`  ", f"Date: {report['date']}; wall time {report['wall_s']:.0f} s; machine: "
        f"{report['machine']['cpu_cores']} cores, torch {report['machine']['torch']}, shared with other jobs.  ",
        f"Setup: `experiment=finetune` with DCGAN width {s['width']}, batch {s['batch']}; pretrained {s['pretrain_g_steps']} "
        f"G steps on digits 0-4; every condition {s['max_g_steps']} G steps on {s['limit']} images of digits 5-9; truth "
        f"every {s['every']} G steps: classifier-feature FID of {s['samples']} samples vs the test split's digits 5-9.", "",
        "| key | value | target |", "|---|---|---|",
    ]
    for key, value in report["targets"].items():
        lines.append(f"| `{key}` | {_f(value, key == 'finetune_gap')} | {TARGETS_TEXT.get(key, 'reported')}: "
                     f"{_met(key, value)} |")
    lines += ["", "Medians over seeds:", "", "| condition | best truth | at G step | first | last | oracle | stop | lag | "
              "gap |", "|---|---|---|---|---|---|---|---|---|"]
    for condition, row in report["table"].items():
        lines.append(f"| {condition} | {_f(row['best_truth'])} | {_f(row['best_g_step'])} | {_f(row['first_truth'])} | "
                     f"{_f(row['last_truth'])} | {_f(row['oracle_g_step'])} | {_f(row['stop_g_step'])} | "
                     f"{_f(row['lag'])} | {_f(row['gap'], True)} |")
    lines += ["", "| run | best truth (G step) | last | oracle | stop (reason) | handed (truth) | lag | gap |",
              "|---|---|---|---|---|---|---|---|"]
    for name, g in report["graded"].items():
        lines.append(f"| {name} | {_f(g.get('best_truth'))} ({g.get('best_g_step')}) | {_f(g.get('last_truth'))} | "
                     f"{g.get('oracle_g_step')} | {g.get('stop_g_step', '-')} ({g.get('stop_reason', '-')}) | "
                     f"{g.get('handed_g_step', '-')} ({_f(g.get('handed_truth'))}) | {_f(g.get('lag'))} | "
                     f"{_f(g.get('gap'), True)} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_study.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "finetune_study.md").write_text(markdown(report))
    keyed = {**report["targets"], "targets": TARGETS_TEXT,
             "met": {k: _met(k, v) for k, v in report["targets"].items()},
             "command": report["command"], "date": report["date"], "seeds": report["seeds"]}
    (out / "finetune_targets.json").write_text(json.dumps(keyed, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- driver
def prepare_data(work: Path) -> Path:
    """A writable copy of the shared MNIST archives (torchvision extracts next to them)."""
    src, dst = SHARED_DATA / "MNIST" / "raw", work / "data" / "MNIST" / "raw"
    if not src.is_dir() and not dst.is_dir():
        raise SystemExit(f"{src} not found: set REGAN_SHARED_DATA to a folder holding MNIST/raw")
    if not dst.is_dir():
        dst.mkdir(parents=True)
        for f in src.glob("*.gz"):
            shutil.copy(f, dst / f.name)
    return work / "data"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="sklearn digits, a few G steps, in-process: a smoke test")
    parser.add_argument("--analyse", action="store_true", help="only rebuild the report from <work>/runs")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=value)
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune_study"))
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per training")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (one thread each)")
    args = parser.parse_args(argv)

    if args.worker:  # one training in this process; its record next to the spec
        spec = json.loads(Path(args.worker).read_text())
        record = pretrain(spec) if spec["name"] == "pretrain" else run_one(spec)
        Path(spec["run_dir"], "record.json").write_text(json.dumps(record, indent=1))
        return 0

    command = "python studies/finetune_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = QUICK if args.quick else {k: getattr(args, k) for k in DEFAULTS}
    data_root = str(work / "data" if args.quick else prepare_data(work))
    base = {"quick": args.quick, "data_root": data_root, **settings}
    start = time.perf_counter()

    def execute(spec: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Train one spec in its own process (in-process with --quick) unless its record exists."""
        record_path = Path(spec["run_dir"], "record.json")
        if not record_path.is_file() and not args.analyse:
            Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
            if args.quick:
                record = pretrain(spec) if spec["name"] == "pretrain" else run_one(spec)
                record_path.write_text(json.dumps(record))
            else:
                spec_path = Path(spec["run_dir"], "spec.json")
                spec_path.write_text(json.dumps(spec))
                env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
                with open(Path(spec["run_dir"], "log.txt"), "w") as log:
                    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], stdout=log,
                                          stderr=log, env=env, timeout=args.timeout, check=False)
                if proc.returncode != 0:
                    print(f"{spec['name']}: failed (exit {proc.returncode}), see {spec['run_dir']}/log.txt", flush=True)
        return json.loads(record_path.read_text()) if record_path.is_file() else None

    source = execute({**base, "name": "pretrain", "seed": PRETRAIN_SEED, "max_g_steps": settings["pretrain_g_steps"],
                      "run_dir": str(work / "runs" / "pretrain")})
    if source is None:
        print("the pretraining did not finish", file=sys.stderr)
        return 1
    print(f"pretrain: {source['g_steps']} G steps on digits 0-4, {source.get('wall_s', 0):.0f} s", flush=True)
    specs = [{**base, "name": f"{c}-s{s}", "condition": c, "seed": s, "init_from": source["checkpoint"],
              "run_dir": str(work / "runs" / f"{c}-s{s}")} for s in args.seeds for c in args.conditions]
    with ThreadPoolExecutor(max_workers=1 if args.quick else args.jobs) as pool:
        records = list(pool.map(execute, specs))
    runs = [r for r in records if r is not None]
    for r in runs:
        best = min(r["evaluations"], key=lambda e: e["truth"]) if r["evaluations"] else {}
        print(f"{r['name']}: best truth {best.get('truth', float('nan')):.4g} at {best.get('g_step')}, "
              f"{r['fit_wall_s']:.0f} s", flush=True)
    if not runs:
        print("no finished runs", file=sys.stderr)
        return 1
    import torch

    report = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_s": time.perf_counter() - start, "settings": settings, "seeds": args.seeds,
              "pretrain": source, "machine": {"cpu_cores": os.cpu_count(), "torch": torch.__version__,
                                              "python": platform.python_version()},
              **analyse(runs), "runs": runs}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
