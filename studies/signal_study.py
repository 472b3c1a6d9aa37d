#!/usr/bin/env python
"""Signal study (issue 20): which quality signal should the stop rule read?

For each (setup, seed) the setup is trained once with no monitor and no stopping, saving the evaluation generator
(EMA of G) every ``every`` G steps. Each snapshot is then scored:

* images (classifier features, the monitor's default on these data): the candidates at the monitor's cost (its
  ``num_samples`` generated samples against its ``num_samples`` first real reference samples), each on ``draws``
  independent noise draws: ``fid`` (today's FID at N), ``kid`` (unbiased polynomial-kernel MMD², torchmetrics'
  maths), ``fid_inf`` (FID extrapolated to infinite N from subsets of the same features, Chong & Forsyth 2020,
  :func:`~lightning_regan.fid.metric.fid_infinity`), and ``mmd`` (the RBF-mixture MMD² of
  :mod:`lightning_regan.fid.mmd` on the classifier features); the reference is the FID of ``reference_samples``
  (>= 10,000) generated samples against the whole test split (sklearn digits: the whole dataset, it has no split).
* points (the ring): the monitor's identity FID and ``val/mmd`` on its 2,000 samples, against ground truth on
  ``reference_samples`` samples: the share of samples within 3 std of a mode (``hq_fraction``), modes covered, and
  MMD² against a fresh real sample of that size.

Per run: Spearman correlation between each candidate (one draw, as the monitor sees it; median over draws) and the
reference across snapshots, and the smallest relative change of the reference each candidate resolves: twice the
standard deviation of the difference of two draws, divided by the local slope of the candidate's mean against the
reference, relative to the reference (median over the snapshots of the second half of the run, where a stop
decision is made).

Usage::

    nice -n 10 python studies/signal_study.py --out studies/results        # the committed study (~40 min, 2 cores)
    python studies/signal_study.py --quick --out /tmp/signal_quick          # seconds: smoke test (default test suite)

Writes ``<out>/signal_study.json`` (every snapshot's scores) and ``<out>/signal_study.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA_ROOT = os.environ.get("REGAN_DATA_ROOT", str(REPO.parent / "shared" / "data"))
CANDIDATES = ("fid", "kid", "fid_inf", "mmd")
POINT_SIGNALS = ("fid", "mmd")
POINT_TRUTHS = ("hq_fraction", "modes", "mmd_10k")
COMMON = ("logger=none", "trainer.enable_progress_bar=false", "callbacks=[]", "early_stopping=none")


@dataclass(frozen=True)
class Setup:
    kind: str  # images | points
    overrides: tuple[str, ...]
    max_g_steps: int
    every: int
    num_samples: int  # the monitor's sample count
    test_split: bool = True


DCGAN16 = ("model=dcgan", "model.generator.channels=16", "model.discriminator.channels=16")
SETUPS = {
    "digits": Setup("images", ("data=digits", "model=dcgan", "model.generator.channels=32",
                               "model.discriminator.channels=32"), 4000, 250, 1000, test_split=False),
    "mnist_dcgan_fast": Setup("images", ("data=mnist", *DCGAN16, "regularizer=none", "module.d_optimizer.lr=2e-3",
                                         "module.g_optimizer.lr=2e-3"), 3000, 250, 1000),
    "ring": Setup("points", ("experiment=ring",), 3000, 100, 2000, test_split=False),
}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant or has NaN."""
    import torch

    if len(a) < 3 or any(not math.isfinite(v) for v in (*a, *b)):
        return math.nan

    def ranks(v: list[float]) -> "torch.Tensor":
        t = torch.tensor(v, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in t.unique():  # ties: average rank
            mask = t == value
            r[mask] = r[mask].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else math.nan


def median(values: list[float]) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


# ---------------------------------------------------------------------------------------------- training
def train(setup_name: str, seed: int, max_g_steps: int, every: int, work: Path, fit: bool = True) -> dict[str, Any]:
    """Train one (setup, seed) and save the evaluation generator every ``every`` G steps; returns the objects.
    ``fit=False`` builds the objects only (to score the snapshots an earlier, possibly cut, training saved)."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    from lightning_regan.builders import build_datamodule, build_models, build_module
    from lightning_regan.config import compose_config, drop_unselected
    from lightning_regan.module import max_steps_for

    setup = SETUPS[setup_name]
    run_dir = work / f"{setup_name}-s{seed}"
    snapshots = run_dir / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([*setup.overrides, *COMMON, f"seed={seed}", f"max_g_steps={max_g_steps}",
                          f"output_dir={run_dir}", *((f"data.root={DATA_ROOT}",) if setup.test_split else ())])
    drop_unselected(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    generator, discriminator = build_models(cfg, tuple(datamodule.shape))
    module = build_module(cfg, generator, discriminator)

    class Snapshots(Callback):
        def __init__(self) -> None:
            self.last = -1

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            g = int(pl_module.g_steps)
            if g != self.last and g > 0 and g % every == 0:
                self.last = g
                torch.save(pl_module.eval_generator.state_dict(), snapshots / f"g{g}.pt")

    done = (snapshots / f"g{max_g_steps}.pt").is_file() or not fit
    start = time.perf_counter()
    if not done:
        trainer = instantiate(cfg.trainer, max_steps=max_steps_for(max_g_steps, module.n_critic),
                              callbacks=[Snapshots()], logger=False, default_root_dir=str(run_dir),
                              enable_checkpointing=False)
        trainer.fit(module, datamodule=datamodule)
    return {"cfg": cfg, "datamodule": datamodule, "module": module, "snapshots": snapshots,
            "fit_wall_s": time.perf_counter() - start, "trained": not done}


# ---------------------------------------------------------------------------------------------- scoring
def _features(extractor: Any, module: Any, noise: Any, batch: int = 500) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([extractor(module.generate(z=z)) for z in noise.split(batch)])


def score_images(objs: dict[str, Any], setup: Setup, draws: int, reference_samples: int, seed: int) -> list[dict]:
    """Every snapshot's candidates (``draws`` noise draws at the monitor's cost) and its large-sample reference."""
    import torch

    from lightning_regan.fid.extractors import build_extractor
    from lightning_regan.fid.metric import fid_infinity, frechet_distance, kernel_inception_distance
    from lightning_regan.fid.mmd import KernelMMD
    from lightning_regan.fid.stats import compute_real_statistics

    datamodule, module = objs["datamodule"], objs["module"]
    n = setup.num_samples
    with torch.random.fork_rng(devices=[]):
        extractor = build_extractor("classifier", datamodule)
        monitor_real = compute_real_statistics(datamodule.reference_dataset(), extractor, n, keep_features=True)
        test_source = datamodule._load("test") if setup.test_split else datamodule.reference_dataset()
        test = compute_real_statistics(test_source, extractor, 10 ** 9)
    real_features = monitor_real.features.double()
    mmd = KernelMMD()
    mmd.set_real(monitor_real.features)
    test_mean, test_cov = test.mean(), test.cov()
    latent = int(objs["cfg"].model.latent_dim)
    rows = []
    for path in sorted(objs["snapshots"].glob("g*.pt"), key=lambda p: int(p.stem[1:])):
        g_step = int(path.stem[1:])
        module.eval_generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        gen = torch.Generator().manual_seed(1_000_000 + seed)
        with torch.random.fork_rng(devices=[]):
            ref = _features(extractor, module, torch.randn(reference_samples, latent, generator=gen)).double()
            row: dict[str, Any] = {"g_step": g_step, "reference": float(frechet_distance(
                test_mean, test_cov, ref.mean(0), torch.cov(ref.T))), **{c: [] for c in CANDIDATES}}
            for d in range(draws):
                fake = _features(extractor, module, torch.randn(n, latent, generator=gen)).double()
                row["fid"].append(float(frechet_distance(real_features.mean(0), torch.cov(real_features.T),
                                                         fake.mean(0), torch.cov(fake.T))))
                row["kid"].append(kernel_inception_distance(real_features, fake, subsets=1, subset_size=n)[0])
                row["fid_inf"].append(fid_infinity(real_features, fake, seed=d)[0])
                mmd.reset()
                mmd.update(fake)
                row["mmd"].append(float(mmd.compute()))
        rows.append(row)
    return rows


def score_points(objs: dict[str, Any], setup: Setup, draws: int, reference_samples: int, seed: int) -> list[dict]:
    """Every snapshot's monitor signals (identity FID, MMD² on the monitor's samples) and ground truth."""
    import torch

    from lightning_regan.data.gaussians import mode_coverage, sample_mixture
    from lightning_regan.fid.metric import frechet_distance
    from lightning_regan.fid.mmd import KernelMMD

    datamodule, module = objs["datamodule"], objs["module"]
    n = setup.num_samples
    centers, std = datamodule.centers, datamodule.std
    real = sample_mixture(centers, std, n, torch.Generator().manual_seed(7))[0].double()
    big_real = sample_mixture(centers, std, reference_samples, torch.Generator().manual_seed(8))[0]
    mmd, big_mmd = KernelMMD(), KernelMMD()
    mmd.set_real(real)
    big_mmd.set_real(big_real)
    latent = int(objs["cfg"].model.latent_dim)
    rows = []
    for path in sorted(objs["snapshots"].glob("g*.pt"), key=lambda p: int(p.stem[1:])):
        g_step = int(path.stem[1:])
        module.eval_generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        gen = torch.Generator().manual_seed(1_000_000 + seed)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            big = module.generate(z=torch.randn(reference_samples, latent, generator=gen))
            cov = mode_coverage(big, centers, std)
            big_mmd.reset()
            big_mmd.update(big)
            row: dict[str, Any] = {"g_step": g_step, "hq_fraction": float(cov["hq_fraction"]),
                                   "modes": int(cov["modes_covered"]), "mmd_10k": float(big_mmd.compute()),
                                   "fid": [], "mmd": []}
            for _ in range(draws):
                fake = module.generate(z=torch.randn(n, latent, generator=gen)).double()
                row["fid"].append(float(frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0),
                                                         torch.cov(fake.T))))
                mmd.reset()
                mmd.update(fake)
                row["mmd"].append(float(mmd.compute()))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- analysis
def resolution(rows: list[dict], name: str, truth: str) -> float:
    """Smallest relative change of ``truth`` that ``name`` resolves late in the run: over the second half of the
    snapshots (where a stop decision is made), the local slope ``b`` of the candidate's mean against ``truth``
    (least squares); at each of those snapshots ``2 sqrt(2) sigma / (|b| truth)`` (two draws differing by two
    standard deviations of their difference); the median."""
    import torch

    late = rows[len(rows) // 2:]
    if len(late) < 3:
        return math.nan
    xs = torch.tensor([r[truth] for r in late], dtype=torch.float64)
    means = torch.tensor([sum(r[name]) / len(r[name]) for r in late], dtype=torch.float64)
    if not bool(torch.isfinite(means).all()) or float(xs.std()) == 0:
        return math.nan
    slope = float(((xs - xs.mean()) * (means - means.mean())).sum() / (xs - xs.mean()).square().sum())
    out = []
    for r in late:
        values = torch.tensor(r[name], dtype=torch.float64)
        sigma = float(values.std()) if len(values) > 1 else math.nan
        out.append(abs(2 * math.sqrt(2) * sigma / (slope * r[truth])) if slope and r[truth] else math.nan)
    return median(out)


def analyse(run: dict[str, Any]) -> dict[str, Any]:
    """Per (signal, truth): Spearman over all snapshots and over the second half (median and min over draws), and
    the late resolution."""
    rows = run["snapshots"]
    if run["kind"] == "images":
        signals, truths = CANDIDATES, ("reference",)
    else:
        signals, truths = POINT_SIGNALS, POINT_TRUTHS
    out: dict[str, Any] = {}
    late = rows[len(rows) // 2:]
    for truth in truths:
        sign = -1.0 if truth in ("hq_fraction", "modes") else 1.0  # higher is better there; signals are lower-better
        for name in signals:
            draws = len(rows[0][name]) if rows else 0
            rhos = [spearman([r[name][d] for r in rows], [sign * r[truth] for r in rows]) for d in range(draws)]
            late_rhos = [spearman([r[name][d] for r in late], [sign * r[truth] for r in late]) for d in range(draws)]
            out[f"{name}~{truth}"] = {
                "spearman_median": median(rhos), "spearman_min": min(rhos, default=math.nan),
                "spearman_late_median": median(late_rhos), "spearman_late_min": min(late_rhos, default=math.nan),
                "resolution": resolution(rows, name, truth) if truth != "modes" else None}
    return out


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = ["# Signal study (issue 20)", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; {report['date']}; wall time {report['wall_time_s'] / 60:.1f} min.", ""]
    for kind, header in (("images", "Images: candidates at the monitor's cost vs the large-sample reference"),
                         ("points", "Points: monitor signals vs ground truth")):
        runs = [r for r in report["runs"] if r["kind"] == kind]
        if not runs:
            continue
        lines += [f"## {header}", "", "Spearman: per noise draw across the run's snapshots, median (min) over the draws; "
                  "late: the second half of the snapshots. Resolution: the smallest relative change of the truth a "
                  "single evaluation resolves late in the run (2 sigma of a difference, local slope).", "",
                  "| run | signal ~ truth | Spearman | late Spearman | late resolution |", "|---|---|---|---|---|"]
        for r in runs:
            for pair, v in r["analysis"].items():
                res = v["resolution"]
                lines.append(f"| {r['setup']} s{r['seed']} | {pair} | {v['spearman_median']:.3f} "
                             f"({v['spearman_min']:.3f}) | {v['spearman_late_median']:.3f} "
                             f"({v['spearman_late_min']:.3f}) | {'-' if res is None else f'{100 * res:.1f} %'} |")
        lines.append("")
        lines += ["Per snapshot (mean over draws):", ""]
        for r in runs:
            keys = [k for k in r["snapshots"][0] if k != "g_step"] if r["snapshots"] else []
            lines += [f"{r['setup']} seed {r['seed']}:", "", "| G step | " + " | ".join(keys) + " |",
                      "|" + "---|" * (len(keys) + 1)]
            for s in r["snapshots"]:
                cells = [f"{(sum(s[k]) / len(s[k])) if isinstance(s[k], list) else s[k]:.4g}" for k in keys]
                lines.append(f"| {s['g_step']} | " + " | ".join(cells) + " |")
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the harness")
    parser.add_argument("--out", default=str(REPO / "studies" / "results"))
    parser.add_argument("--work", default=None, help="folder of the runs' snapshots (default <out>/signal_work)")
    parser.add_argument("--setups", nargs="+", default=None, choices=list(SETUPS),
                        help="default: all; with --quick, digits and ring (no dataset files needed)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--draws", type=int, default=8, help="noise draws per snapshot at the monitor's cost")
    parser.add_argument("--reference-samples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-g-steps", type=int, default=None, help="override the setups' budgets")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="no runs: merge these reports' runs (re-analysed) into <out>/signal_study.{json,md}")
    parser.add_argument("--score-only", action="store_true",
                        help="no training: score the snapshots in --work (e.g. of a training cut short)")
    parser.add_argument("--every", type=int, default=None, help="override the setups' snapshot interval")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "signal_work"
    if args.merge:
        reports = [json.loads(Path(p).read_text()) for p in args.merge]
        runs = [{**run, "analysis": analyse(run)} for rep in reports for run in rep["runs"]]
        report = {"command": " ; ".join(rep["command"] for rep in reports),
                  "date": max(rep["date"] for rep in reports), "machine": reports[0]["machine"],
                  "wall_time_s": max(rep["wall_time_s"] for rep in reports), "runs": runs,
                  "note": "merged from runs that ran concurrently; wall time: the longest of them"}
        (out / "signal_study.json").write_text(json.dumps(report, indent=1) + "\n")
        write_markdown(report, out / "signal_study.md")
        return 0
    start = time.perf_counter()
    runs = []
    setups = args.setups or (["digits", "ring"] if args.quick else list(SETUPS))
    for name in setups:
        setup = SETUPS[name]
        if args.quick:
            setup = Setup(setup.kind, setup.overrides, 40, 10, 100 if setup.kind == "images" else 200,
                          setup.test_split)
        elif args.max_g_steps or args.every:
            setup = Setup(setup.kind, setup.overrides, args.max_g_steps or setup.max_g_steps,
                          args.every or setup.every, setup.num_samples, setup.test_split)
        SETUPS[name] = setup
        for seed in args.seeds:
            objs = train(name, seed, setup.max_g_steps, setup.every, work, fit=not args.score_only)
            t0 = time.perf_counter()
            refs = 400 if args.quick else args.reference_samples
            draws = 2 if args.quick else args.draws
            score = score_images if setup.kind == "images" else score_points
            rows = score(objs, setup, draws, refs, seed)
            run = {"setup": name, "seed": seed, "kind": setup.kind, "max_g_steps": setup.max_g_steps,
                   "every": setup.every, "num_samples": setup.num_samples, "reference_samples": refs,
                   "draws": draws, "fit_wall_s": objs["fit_wall_s"], "score_wall_s": time.perf_counter() - t0,
                   "snapshots": rows}
            run["analysis"] = analyse(run)
            runs.append(run)
            print(f"{name} s{seed}: " + ", ".join(f"{k} {v['spearman_median']:.3f}" for k, v in run["analysis"].items()),
                  flush=True)
            write_report(args, argv, out, runs, time.perf_counter() - start)  # after each run: partial results kept
    return 0


def write_report(args: argparse.Namespace, argv: Optional[list[str]], out: Path, runs: list[dict],
                 wall_s: float) -> None:
    import torch

    report = {
        "command": "python studies/signal_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), Python "
                   f"{platform.python_version()}, torch {torch.__version__}, {args.threads} thread(s)",
        "wall_time_s": wall_s, "runs": runs,
    }
    (out / "signal_study.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, out / "signal_study.md")


if __name__ == "__main__":
    raise SystemExit(main())
