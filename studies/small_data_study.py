#!/usr/bin/env python
"""Small-data study: does augmenting what D sees (DiffAugment, ADA) stop a GAN on 600 images from overfitting?

Design: a small DCGAN (width ``--width``, batch ``--batch``, non-saturating loss, no regularizer, EMA of G 0.995) is
trained for a fixed G-step budget on MNIST and Fashion-MNIST limited to 600 training images (``data.limit=600``: a
deterministic subset, the same for every seed), and on all 60,000 Fashion-MNIST images, with ``augment=none``,
``diffaugment`` and ``ada``, over several seeds. Every ``--every`` G steps a grader callback (study-only) measures the
Fréchet distance of ``--samples`` generated images (EMA generator, fixed noise) to ``--samples`` images of the TEST
split, in the features of the package's small classifier trained on that dataset (TF-GAN's "MNIST Fréchet distance";
NOT Inception FID), records ADA's ``p`` and ``r_t``, and D's overfitting gap (its mean logit on 512 training reals
minus on 512 test-split reals, what ``OverfittingMonitor`` logs as ``val/d_gap``). Reported per run: best FID, last
FID, the G step of the best, final p, the gap at the best and at the end; per (data, augment): medians over seeds;
and the issue's targets.

Usage::

    nice -n 15 python studies/small_data_study.py --jobs 2 --work /tmp/small_data   # the full study (27 runs)
    python studies/small_data_study.py --quick --out /tmp/quick              # seconds: a smoke test (CI)
    python studies/small_data_study.py --analyse --work /tmp/small_data      # rebuild the report from the runs

Writes ``<out>/small_data_study.json`` (every run's history), ``<out>/small_data_study.md`` and
``<out>/small_data_targets.json`` (the issue's target keys). Finished runs are kept in ``<work>/runs/*.json`` and
skipped when the study is started again; ``--jobs`` runs train side by side, one thread each.
"""

from __future__ import annotations

import argparse
import json
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

#: The read-only MNIST / Fashion-MNIST archives (copied into <work>/data, where torchvision may extract them).
SHARED_DATA = Path(os.environ.get("REGAN_SHARED_DATA") or next(
    (str(p) for p in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data") if p.is_dir()),
    str(REPO.parent / "shared" / "data")))
#: name -> (data config, data.limit)
DATASETS: dict[str, tuple[str, Optional[int]]] = {
    "mnist_600": ("mnist", 600),
    "fmnist_600": ("fashion_mnist", 600),
    "fmnist_60k": ("fashion_mnist", None),
}
AUGMENTS = ("none", "diffaugment", "ada")
SEEDS = (0, 1, 2)
#: ADA's speed in the study: None keeps conf/augment/ada.yaml's (100 kimg: p can move by at most ~0.5 in the ~50k
#: images of the budget). A first ADA run at 20 kimg (p reached 0.74 by G step 500, FID then rose 2.8x) was discarded
#: in favour of grading what a user gets from augment=ada.
ADA_SPEED_KIMG: Optional[float] = None
#: Training and held-out reals D scores at each evaluation (the overfitting gap).
GAP_SAMPLES = 512
DEFAULTS = {"max_g_steps": 1500, "every": 250, "samples": 5000, "width": 8, "batch": 32}
QUICK = {"max_g_steps": 12, "every": 6, "samples": 64, "width": 4, "batch": 16}


# ---------------------------------------------------------------------------------------------- one run
def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (data, augment, seed) and grade it every ``every`` G steps; returns its record."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    from lightning_regan.builders import build_datamodule, build_models, build_module
    from lightning_regan.callbacks.overfitting import mean_logit, take_samples
    from lightning_regan.cli.train import validate_config
    from lightning_regan.config import compose_config, drop_unselected
    from lightning_regan.fid.extractors import ClassifierExtractor
    from lightning_regan.fid.metric import FeatureDistances
    from lightning_regan.fid.stats import compute_real_statistics, dataset_cache_key
    from lightning_regan.module import max_steps_for

    torch.set_num_threads(spec.get("threads", 1))
    data, limit = spec["data"], spec["limit"]
    w, every, samples = spec["width"], spec["every"], spec["samples"]
    overrides = [
        f"data={data}", f"data.limit={'null' if limit is None else limit}", f"data.batch_size={spec['batch']}",
        "model=dcgan", f"model.generator.channels={w}", f"model.discriminator.channels={w}", "regularizer=none",
        f"augment={spec['augment']}", "early_stopping=none", "callbacks=[]", "logger=none",
        "trainer.enable_progress_bar=false", f"seed={spec['seed']}", f"max_g_steps={spec['max_g_steps']}",
        f"output_dir={spec['run_dir']}",
    ]
    if data != "digits":
        overrides.append(f"data.root={spec['data_root']}")
    if spec["augment"] == "ada" and spec.get("ada_speed_kimg", ADA_SPEED_KIMG) is not None:
        overrides.append(f"module.augment.speed_kimg={spec.get('ada_speed_kimg', ADA_SPEED_KIMG)}")
    cfg = compose_config(overrides)
    drop_unselected(cfg)
    validate_config(cfg)
    classifier_options = {"steps": 30} if spec.get("quick") else {}
    # Train the grader's classifier (or find it cached) before seeding: below, every run then loads it from the cache.
    # Training it in the run would leave the global RNG elsewhere than loading it does (building the network draws
    # from it), so a run's training would depend on whether an earlier run had cached the classifier.
    warm = build_datamodule(cfg)
    with torch.random.fork_rng(devices=[]):
        ClassifierExtractor.fit(warm.reference_dataset(), dataset_key=dataset_cache_key(warm), **classifier_options)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, *build_models(cfg, tuple(datamodule.shape)))
    # The grader: a classifier of the dataset (the package's FID classifier, cached per dataset) and the test split.
    reference = datamodule.reference_dataset()
    extractor = ClassifierExtractor.fit(reference, dataset_key=dataset_cache_key(datamodule), **classifier_options).eval()
    test = datamodule._load("test") if data != "digits" else reference  # digits: no split (quick mode only)
    with torch.random.fork_rng(devices=[]):
        stats = compute_real_statistics(test, extractor, samples)
    metric = FeatureDistances(stats.num_features)
    metric.set_real(stats)
    noise = torch.randn(samples, int(cfg.model.latent_dim), generator=torch.Generator().manual_seed(10_000 + spec["seed"]))
    # D's overfitting (OverfittingMonitor's measurement): its mean logit on training reals vs test-split reals it never
    # trained on, the same fixed images at every evaluation (the test split is the held-out set at 60,000 images too).
    n_gap = min(GAP_SAMPLES, samples)
    gap_reals = (take_samples(datamodule.train_dataset(), n_gap, seed=1), take_samples(test, n_gap, seed=1))

    class Grader(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.time_s = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            g = int(pl_module.g_steps)
            if not pl_module.g_step_taken or g % every:
                return
            start = time.perf_counter()
            metric.reset_fake()
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                for z in noise.split(500):
                    metric.update(extractor(pl_module.generate(z=z)))
                fid = float(metric.compute()["fid"])
            d_train, d_heldout = (mean_logit(pl_module, x, y) for x, y in gap_reals)
            m = pl_module.last_step_metrics
            self.rows.append({"g_step": g, "fid": fid, "ada_p": float(m["ada_p"]) if "ada_p" in m else None,
                              "rt": float(m["rt"]) if "rt" in m else None, "d_train": d_train,
                              "d_heldout": d_heldout, "d_gap": d_train - d_heldout})
            self.time_s += time.perf_counter() - start

    grader = Grader()
    trainer = instantiate(cfg.trainer, max_steps=max_steps_for(cfg.max_g_steps, module.n_critic), callbacks=[grader],
                          logger=False, enable_checkpointing=False, default_root_dir=spec["run_dir"])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - start
    rows = grader.rows
    best = min(rows, key=lambda r: r["fid"]) if rows else None
    return {
        "name": spec["name"], "data": spec["dataset"], "augment": spec["augment"], "seed": spec["seed"],
        "train_images": len(datamodule.train_dataset()), "g_steps": int(module.g_steps), "history": rows,
        "best_fid": best["fid"] if best else None, "best_g_step": best["g_step"] if best else None,
        "last_fid": rows[-1]["fid"] if rows else None,
        "gap_at_best": best.get("d_gap") if best else None, "gap_last": rows[-1].get("d_gap") if rows else None,
        "final_ada_p": float(module.augment.p) if spec["augment"] == "ada" else None,
        "ada_speed_kimg": float(module.augment.speed_kimg) if spec["augment"] == "ada" else None,
        "fit_wall_s": wall, "grader_s": grader.time_s, "classifier_accuracy": float(extractor.accuracy),
    }


# ---------------------------------------------------------------------------------------------- analysis
def _median(values: list[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians over seeds per (data, augment)."""
    table: dict[str, dict[str, Any]] = {}
    for data in dict.fromkeys(r["data"] for r in runs):
        for aug in AUGMENTS:
            group = [r for r in runs if r["data"] == data and r["augment"] == aug and r["best_fid"] is not None]
            if not group:
                continue
            table[f"{data}/{aug}"] = {
                "data": data, "augment": aug, "seeds": sorted(r["seed"] for r in group),
                "best_fid": _median([r["best_fid"] for r in group]),
                "last_fid": _median([r["last_fid"] for r in group]),
                "best_g_step": _median([r["best_g_step"] for r in group]),
                "last_over_best": _median([r["last_fid"] / r["best_fid"] for r in group]),
                "final_ada_p": _median([r["final_ada_p"] for r in group]),
                "gap_at_best": _median([r.get("gap_at_best") for r in group]),
                "gap_last": _median([r.get("gap_last") for r in group]),
            }
    return table


def targets(table: dict[str, dict[str, Any]], bench: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target figures from the medians (``None`` where a group is missing)."""
    def cell(data: str, aug: str, key: str) -> Optional[float]:
        return (table.get(f"{data}/{aug}") or {}).get(key)

    small = ("mnist_600", "fmnist_600")

    def reduction(aug: str) -> Optional[float]:
        values = []
        for data in small:
            base, other = cell(data, "none", "best_fid"), cell(data, aug, "best_fid")
            if base is None or other is None:
                return None
            values.append(1 - other / base)
        return min(values)

    def worst(values: list[Optional[float]], pick: Any) -> Optional[float]:
        return None if any(v is None for v in values) else pick(values)

    full_ratio = [None if cell("fmnist_60k", "none", "best_fid") is None or cell("fmnist_60k", a, "best_fid") is None
                  else cell("fmnist_60k", a, "best_fid") / cell("fmnist_60k", "none", "best_fid")
                  for a in ("diffaugment", "ada")]
    return {
        "best_fid_reduction_diffaugment_600": reduction("diffaugment"),
        "best_fid_reduction_ada_600": reduction("ada"),
        "noaug_last_over_best_600": worst([cell(d, "none", "last_over_best") for d in small], min),
        "aug_last_over_best_600": worst([cell(d, a, "last_over_best") for d in small for a in ("diffaugment", "ada")], max),
        "full_data_best_ratio": worst(full_ratio, max),
        "ada_p_600": worst([cell(d, "ada", "final_ada_p") for d in small], statistics.median),
        "ada_p_full": cell("fmnist_60k", "ada", "final_ada_p"),
        "step_ratio_diffaugment": (bench or {}).get("step_ratio_diffaugment"),
        "step_ratio_ada": (bench or {}).get("step_ratio_ada"),
    }


TARGETS_TEXT = {
    "best_fid_reduction_diffaugment_600": ">= 0.30", "best_fid_reduction_ada_600": ">= 0.30",
    "noaug_last_over_best_600": ">= 1.3", "aug_last_over_best_600": "<= 1.1", "full_data_best_ratio": "<= 1.05",
    "ada_p_600": "> 0.3", "ada_p_full": "< 0.2", "step_ratio_diffaugment": "<= 1.15", "step_ratio_ada": "<= 1.35",
}


def _met(key: str, value: Optional[float]) -> str:
    if value is None:
        return "not measured"
    op, bound = TARGETS_TEXT[key].split()
    ok = {">=": value >= float(bound), "<=": value <= float(bound), ">": value > float(bound), "<": value < float(bound)}[op]
    return "met" if ok else "NOT met"


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_at_end": list(os.getloadavg())}


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Small-data study: DiffAugment and ADA at 600 images", "",
        f"Command: `{report['command']}`  ", f"Date: {report['date']}; wall time {report['wall_s']:.0f} s; machine: "
        f"{report['machine']['cpu_cores']} cores ({report['machine']['cpu']}), torch {report['machine']['torch']}, "
        "shared with other jobs (niced).  ",
        f"Setup: DCGAN width {s['width']}, batch {s['batch']}, non-saturating loss, no regularizer, EMA of G 0.995, "
        f"{s['max_g_steps']} G steps; graded every {s['every']} G steps on {s['samples']} generated vs {s['samples']} "
        "TEST-split images in the features of the package's small classifier of each dataset (not Inception FID). "
        f"ADA: conf/augment/ada.yaml (target 0.6, interval 4, speed {sorted({r.get('ada_speed_kimg') for r in report['runs'] if r['augment'] == 'ada'})} kimg). Seeds: {report['seeds']}. Runs: {len(report['runs'])}.",
        "", "| data | augment | seeds | best FID (median) | last FID | last / best | G step of best | final ADA p | "
        "D gap at best | D gap last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f="{:.3g}": "-" if v is None else f.format(v)  # noqa: E731
    for row in report["table"].values():
        lines.append(f"| {row['data']} | {row['augment']} | {len(row['seeds'])} | {fmt(row['best_fid'])} | "
                     f"{fmt(row['last_fid'])} | {fmt(row['last_over_best'], '{:.2f}')} | {fmt(row['best_g_step'], '{:.0f}')} | "
                     f"{fmt(row['final_ada_p'], '{:.2f}')} | {fmt(row.get('gap_at_best'), '{:.2f}')} | "
                     f"{fmt(row.get('gap_last'), '{:.2f}')} |")
    lines += ["", "D gap: D's mean logit on 512 training reals minus on 512 test-split reals it never trained on "
              "(OverfittingMonitor's `val/d_gap`), at the evaluation of the best FID and at the last one."]
    lines += ["", "## Targets (issue 21)", "", "| figure | value | target | |", "|---|---|---|---|"]
    for key, value in report["targets"].items():
        if key in TARGETS_TEXT:
            lines.append(f"| `{key}` | {fmt(value, '{:.3f}')} | {TARGETS_TEXT[key]} | {_met(key, value)} |")
    lines += ["", "The real-Inception check at 600 images: `studies/small_data_inception.py` "
              "(`studies/results/small_data_inception.json`).", ""]
    return "\n".join(lines)


def build_report(runs: list[dict[str, Any]], command: str, wall: float, settings: dict[str, Any], seeds: list[int],
                 bench_path: Path) -> dict[str, Any]:
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    table = summarize(runs)
    return {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": wall,
            "seeds": seeds, "settings": settings, "machine": machine(), "table": table,
            "targets": targets(table, bench), "runs": runs}


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "small_data_study.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "small_data_study.md").write_text(markdown(report))
    keyed = {**report["targets"], "command": report["command"], "date": report["date"], "seeds": report["seeds"],
             "runs": len(report["runs"]), "wall_s": report["wall_s"],
             "note": "classifier-feature FID on the test split (not Inception); medians over seeds"}
    (out / "small_data_targets.json").write_text(json.dumps(keyed, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- driver
def prepare_data(work: Path) -> Path:
    """A writable copy of the shared MNIST / Fashion-MNIST archives (torchvision extracts next to them)."""
    root = work / "data"
    for name in ("MNIST", "FashionMNIST"):
        src, dst = SHARED_DATA / name / "raw", root / name / "raw"
        if not src.is_dir() and not dst.is_dir():
            raise SystemExit(f"{src} not found: set REGAN_SHARED_DATA to a folder holding MNIST/raw and FashionMNIST/raw")
        if src.is_dir() and not dst.is_dir():
            dst.mkdir(parents=True)
            for f in src.iterdir():
                shutil.copy(f, dst / f.name)
    return root


def make_specs(args: argparse.Namespace, work: Path, data_root: Path) -> list[dict[str, Any]]:
    settings = QUICK if args.quick else {k: getattr(args, k) for k in DEFAULTS}
    datasets = {"digits_200": ("digits", 200)} if args.quick else {k: DATASETS[k] for k in args.datasets}
    specs = []
    for dataset, (data, limit) in datasets.items():  # 600-image runs first: they carry the main targets
        for seed in args.seeds:
            for aug in args.augments:
                name = f"{dataset}-{aug}-s{seed}"
                specs.append({"name": name, "dataset": dataset, "data": data, "limit": limit, "augment": aug,
                              "seed": seed, "run_dir": str(work / "runs" / name), "data_root": str(data_root),
                              "quick": args.quick, **settings})
    return specs


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="digits, a few G steps, in-process: a smoke test")
    parser.add_argument("--analyse", action="store_true", help="only rebuild the report from <work>/runs/*.json")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--augments", nargs="+", default=list(AUGMENTS), choices=list(AUGMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=value)
    parser.add_argument("--work", type=Path, default=Path("/tmp/small_data_study"))
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    parser.add_argument("--bench", type=Path, default=REPO / "bench" / "results" / "bench_augment.json")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (one thread each)")
    args = parser.parse_args(argv)

    if args.worker:  # one run in this process; its record next to the spec
        spec = json.loads(Path(args.worker).read_text())
        record = run_one(spec)
        Path(spec["run_dir"], "record.json").write_text(json.dumps(record, indent=1))
        return 0

    command = "python studies/small_data_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data_root = work / "data" if args.quick else prepare_data(work)
    specs = make_specs(args, work, data_root)
    settings = QUICK if args.quick else {k: getattr(args, k) for k in DEFAULTS}
    start = time.perf_counter()

    def train(spec: dict[str, Any]) -> None:
        """Train one spec in its own process (unless its record exists); failures are reported, not raised."""
        record_path = Path(spec["run_dir"], "record.json")
        if record_path.is_file() or args.analyse:
            return
        Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
        if args.quick:
            record_path.write_text(json.dumps(run_one(spec)))
            return
        spec_path = Path(spec["run_dir"], "spec.json")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        with open(Path(spec["run_dir"], "log.txt"), "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], stdout=log, stderr=log,
                                  env=env, timeout=args.timeout, check=False)
        if proc.returncode != 0:
            print(f"{spec['name']}: failed (exit {proc.returncode}), see {spec['run_dir']}/log.txt", flush=True)

    with ThreadPoolExecutor(max_workers=1 if args.quick else args.jobs) as pool:
        list(pool.map(train, specs))
    runs: list[dict[str, Any]] = []
    for spec in specs:
        record_path = Path(spec["run_dir"], "record.json")
        if record_path.is_file():
            runs.append(json.loads(record_path.read_text()))
            r = runs[-1]
            print(f"{r['name']}: best {r['best_fid']:.4g} at {r['best_g_step']}, last {r['last_fid']:.4g}, "
                  f"p {r['final_ada_p']}, {r['fit_wall_s']:.0f} s", flush=True)
    if runs:
        write_report(build_report(runs, command, time.perf_counter() - start, settings, args.seeds, args.bench), args.out)
    if not runs:
        print("no finished runs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
