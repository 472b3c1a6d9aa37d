#!/usr/bin/env python
"""Early-termination study v2: does a stop rule save compute without losing quality, graded honestly?

Design (one training per (setup, seed), every candidate rule replayed on it):

1. Each (setup, seed) is trained ONCE for its full budget with no stopping, in a worker process. The product's
   ``FIDMonitor`` logs the monitor FID (fixed noise seed, real statistics of the training split), its measurement
   noise (``val/fid_std``, bootstrap) and precision/recall at every evaluation. A study-only recorder callback
   re-measures the same generator at once on an independent evaluation (other noise seed, twice the samples,
   other real samples: the test split where one exists) and feeds the default ``Divergence`` rule every G step
   (without stopping), noting the first exploded/non-finite loss and where the rule fired.
2. A run with stopping is the full run cut at the rule's stop step (same seed: training is identical up to there;
   the stop rule does not perturb it), handing over the generator of its best monitor FID so far. So every
   candidate rule is REPLAYED offline on the recorded history with the same pure rule code the callback uses
   (:mod:`lightning_regan.stopping`), and its handed-over generator is graded by the recorded independent FID.
3. Gap = test_fid(with stopping) / test_fid(full run's best-by-monitor) - 1. The eps-oracle stops at the first
   evaluation whose monitor FID is within eps (5 %) of the full run's best; savings are reported as a share of the
   budget and as a share of the eps-oracle's saving.
4. The rule and its defaults are chosen on the selection seeds and the targets reported on the held-out seeds.

Usage::

    python studies/early_stopping_study.py --jobs 2 --work /tmp/study_v2     # the full study (committed table)
    python studies/early_stopping_study.py --quick --out /tmp/quick           # seconds: a smoke test (CI)
    python studies/early_stopping_study.py --replay studies/results/early_stopping_study.json   # re-analyse only

Writes ``<out>/early_stopping_study.json`` (every run's recorded history, every candidate's replay, the targets)
and ``<out>/early_stopping_study.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lightning_regan.stopping import (  # noqa: E402  (pure rules: no Lightning import)
    Collapse,
    Divergence,
    LogLinearTrend,
    NoisePlateau,
    Plateau,
    PowerLaw,
    StopRule,
)

DATA_ROOT = os.environ.get("REGAN_DATA_ROOT", str(REPO.parent / "shared" / "data"))
EPSILON = 0.05
FLATTENED = 3  # a healthy run "flattened" when its budget is at least this many times its eps-oracle step
# A run of a collapsing setup "collapsed" when its full run ends at least this many times worse (independent FID)
# than its best: judged on the full run alone, before any rule. Runs of those setups that kept improving (the MLP on
# MNIST with the minimax loss learns slowly in some seeds) cannot hand over a generator better than their last.
COLLAPSED_RATIO = 1.5
TUTORIAL_MLP = ("model=mlp", "model.generator.hidden=[128,256,512,1024]", "model.discriminator.hidden=[512,256]")
COMMON = ("logger=none", "trainer.enable_progress_bar=false", "~callbacks.samples", "~callbacks.checkpoint",
          "~callbacks.summary", "early_stopping=none", "callbacks.fid.noise_draws=10",
          "callbacks.fid.precision_recall=true")


@dataclass(frozen=True)
class Setup:
    """One training configuration of the study."""

    kind: str  # healthy | collapsing | diverging
    description: str
    overrides: tuple[str, ...]
    max_g_steps: int
    every: int
    num_samples: int
    quick_max_g_steps: int = 40
    quick_every: int = 10
    test_split: bool = True  # torchvision data: grade against the test split


DCGAN16 = ("model=dcgan", "model.generator.channels=16", "model.discriminator.channels=16")
SETUPS: dict[str, Setup] = {
    "mnist_dcgan": Setup(
        "healthy", "DCGAN (width 16) on MNIST 28x28, non-saturating loss, no regularizer, EMA of G 0.995",
        ("data=mnist", *DCGAN16, "regularizer=none", "callbacks.fid.feature_extractor=classifier"), 5000, 100, 1000),
    "fmnist_dcgan": Setup(
        "healthy", "the same DCGAN on Fashion-MNIST 28x28",
        ("data=fashion_mnist", *DCGAN16, "regularizer=none", "callbacks.fid.feature_extractor=classifier"), 5000, 100, 1000),
    "mnist_dcgan_fast": Setup(
        "healthy", "the same DCGAN on MNIST with learning rates 2e-3 (10x): it flattens early; v5 doubled its budget "
        "(v4: 4,000) so that the runs reach 3x their eps-oracle step",
        ("data=mnist", *DCGAN16, "regularizer=none", "callbacks.fid.feature_extractor=classifier",
         "module.d_optimizer.lr=2e-3", "module.g_optimizer.lr=2e-3"), 8000, 100, 1000),
    "digits": Setup(
        "healthy", "DCGAN (width 32) on sklearn's 8x8 digits, non-saturating loss + R1, EMA of G 0.995 (v4: 18,000 "
        "G steps)",
        ("data=digits", "model=dcgan", "model.generator.channels=32", "model.discriminator.channels=32"),
        36000, 200, 1000, test_split=False),
    "mnist_mlp": Setup(
        "healthy", "MLP GAN of Lightning's tutorial size (G 128-256-512-1024, D 512-256) on MNIST 28x28, "
        "non-saturating loss + R1, EMA of G 0.995",
        ("data=mnist", *TUTORIAL_MLP, "callbacks.fid.feature_extractor=classifier"), 4000, 100, 1000),
    "fmnist_mlp": Setup(
        "healthy", "the same MLP GAN on Fashion-MNIST 28x28",
        ("data=fashion_mnist", *TUTORIAL_MLP, "callbacks.fid.feature_extractor=classifier"), 4000, 100, 1000),
    "ring": Setup(
        "healthy", "`experiment=ring` (MLP on the 8-Gaussian ring, non-saturating + R1, EMA 0.995); exact "
        "Frechet distance of the 2-D points (v4: 5,000 G steps)",
        ("experiment=ring",), 15000, 100, 2000, test_split=False),
    "mnist_mlp_collapse": Setup(
        "collapsing", "the tutorial MLP GAN on MNIST with the saturating minimax loss, no regularizer, no EMA, "
        "learning rates 2e-3 (meant to collapse: seed 2 does, ending 1.9x worse than its best; the others learn "
        "slowly and end within 1.25x of theirs; v3 stopped it at 1,500 G steps)",
        ("data=mnist", *TUTORIAL_MLP, "callbacks.fid.feature_extractor=classifier", "regularizer=none",
         "loss=minimax", "module.ema_decay=null", "module.d_optimizer.lr=2e-3", "module.g_optimizer.lr=2e-3"),
        3000, 100, 1000),
    "ring_collapse": Setup(
        "collapsing", "`experiment=ring` with the saturating minimax loss, no regularizer, no EMA, learning rates "
        "2e-3: finds the ring, then in 5 of 7 seeds loses it (the full run ends 4.9-22x worse than its best)",
        ("experiment=ring", "loss=minimax", "regularizer=none", "module.ema_decay=null", "module.d_optimizer.lr=2e-3",
         "module.g_optimizer.lr=2e-3"), 3000, 100, 2000, test_split=False),
    "diverging": Setup(
        "diverging", "`experiment=diverging` (unconstrained Wasserstein critic, D learning rate 0.05, 5 critic "
        "steps per G step, on the 8-Gaussian ring)",
        ("experiment=diverging",), 400, 50, 500, quick_max_g_steps=120, test_split=False),
}
# Study v4: v3's seeds 0-4 (all of which earlier rule changes looked at) choose; seeds 5-6, trained after the last
# rule change (Collapse's min_recall), are held out; seeds 7-8 were trained after the choice was committed and its
# held-out figures on seeds 5-6 had been read (nothing about the rules or the scoring changed since). Study v5: the
# same seeds, with the budgets of mnist_dcgan_fast, digits and ring lengthened (their v4 runs continued from their
# last checkpoints), the selection replayed on the longer runs; the held-out runs' first legs had been read in v4.
SELECTION_SEEDS = (0, 1, 2, 3, 4)
HELD_OUT_SEEDS = (5, 6, 7, 8)
# Held-out seeds trained after the last change to the rules' code and v4's choice (v5 chose after their v4 legs
# had been read; their longer legs only after).
FRESH_SEEDS: tuple[int, ...] = (7, 8)
# Longest first: the runs of one setup share a worker process, and --jobs workers share the setups.
DEFAULT_SETUPS = ("mnist_dcgan", "fmnist_dcgan", "digits", "mnist_dcgan_fast", "mnist_mlp", "fmnist_mlp", "ring",
                  "mnist_mlp_collapse", "ring_collapse", "diverging")
# Setups whose evaluated generators are saved (G weights at every evaluation) for the real-Inception confirmation.
SNAPSHOT_SETUPS = ("mnist_dcgan",)


# ---------------------------------------------------------------------------------------------- worker
def _real_metric(source: Any, extractor: Any, num_samples: int) -> Any:
    """A ``FeatureDistances`` metric holding the statistics of ``num_samples`` real items of ``source``."""
    from lightning_regan.fid.metric import FeatureDistances
    from lightning_regan.fid.stats import compute_real_statistics

    stats = compute_real_statistics(source, extractor, num_samples)
    metric = FeatureDistances(stats.num_features)
    metric.set_real(stats)
    return metric


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (setup, seed) for the full budget and record every evaluation (runs in its own process)."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback
    from omegaconf import OmegaConf

    from lightning_regan.callbacks import FIDMonitor
    from lightning_regan.builders import build_callbacks, build_datamodule, build_models, build_module
    from lightning_regan.cli.train import validate_config
    from lightning_regan.config import compose_config, drop_unselected
    from lightning_regan.data.gaussians import sample_mixture
    from lightning_regan.fid.metric import FeatureDistances
    from lightning_regan.module import max_steps_for

    setup_name = spec["setup"]
    setup = SETUPS[setup_name]
    every, samples, budget = spec["every"], spec["num_samples"], spec["max_g_steps"]
    cfg = compose_config([
        *setup.overrides, *COMMON, f"seed={spec['seed']}", f"max_g_steps={budget}", f"callbacks.fid.every_n_g_steps={every}",
        f"callbacks.fid.num_samples={samples}", f"output_dir={spec['run_dir']}",
        *((f"data.root={DATA_ROOT}",) if setup.test_split else ()),
    ])
    divergence_node = (cfg.get("early_stopping") or {}).get("rules", {}).get("divergence")
    drop_unselected(cfg)
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    generator, discriminator = build_models(cfg, tuple(datamodule.shape))
    module = build_module(cfg, generator, discriminator)
    callbacks = build_callbacks(cfg)
    monitor = next(cb for cb in callbacks if isinstance(cb, FIDMonitor))
    default_divergence = compose_config(["early_stopping=default", "output_dir=/tmp"]).early_stopping.rules.divergence
    # early_stopping=none leaves only an experiment's partial overrides (e.g. experiment=diverging's thresholds)
    divergence: Divergence = instantiate(OmegaConf.merge(default_divergence, divergence_node or {}))
    divergence_state = divergence.new_state()

    class Recorder(Callback):
        """Independent re-measurement of each evaluated generator; divergence watched without stopping."""

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.test_metric: Optional[FeatureDistances] = None
            self.noise = torch.randn(2 * samples, int(cfg.model.latent_dim),
                                     generator=torch.Generator().manual_seed(10_000 + spec["seed"]))
            self.time_s = 0.0
            self.last_g = -1
            self.first_exploded: Optional[int] = None
            self.divergence_step: Optional[int] = None
            self.divergence_message = ""

        def _test_metric(self) -> FeatureDistances:
            if self.test_metric is None:
                if setup.test_split:
                    source = datamodule._load("test")
                elif getattr(datamodule, "centers", None) is not None:
                    points, _ = sample_mixture(datamodule.centers, datamodule.std, 2 * samples,
                                               torch.Generator().manual_seed(2_000_003 + spec["seed"]))
                    source = torch.utils.data.TensorDataset(points)
                else:  # sklearn digits: no split; all 1,797 images (the monitor uses the first 1,000)
                    source = datamodule.reference_dataset()
                with torch.random.fork_rng(devices=[]):
                    self.test_metric = _real_metric(source, monitor.extractor, 2 * samples)
            return self.test_metric

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            g = int(pl_module.g_steps)
            if g != self.last_g and g > 0:
                self.last_g = g
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in divergence.keys}
                exploded = any(not math.isfinite(v) for v in metrics.values())
                d, gl = metrics.get(divergence.d_loss_key), metrics.get(divergence.g_loss_key)
                if divergence.d_loss_ceiling is not None and d is not None and abs(d) > divergence.d_loss_ceiling:
                    exploded = True
                if divergence.g_loss_ceiling is not None and gl is not None and abs(gl) > divergence.g_loss_ceiling:
                    exploded = True
                if exploded and self.first_exploded is None:
                    self.first_exploded = g
                if self.divergence_step is None:
                    stop, message = divergence_state.update(g, metrics)
                    if stop:
                        self.divergence_step, self.divergence_message = g, message
            if not monitor.history or (self.rows and self.rows[-1]["g_step"] == monitor.history[-1][0]):
                return
            start = time.perf_counter()
            g_step, fid = monitor.history[-1]
            extra = monitor.extra_history[-1] if monitor.extra_history else {}
            metric = self._test_metric()
            metric.reset_fake()
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                for z in self.noise.split(500):
                    metric.update(monitor.extractor(pl_module.generate(z=z)))
                test_fid = metric.compute()["fid"]
            modes = trainer.callback_metrics.get("val/modes_covered")
            if setup_name in SNAPSHOT_SETUPS:
                snapshots = Path(spec["run_dir"], "snapshots")
                snapshots.mkdir(parents=True, exist_ok=True)
                torch.save(pl_module.eval_generator.state_dict(), snapshots / f"g{int(g_step)}.pt")
            self.rows.append({
                "g_step": int(g_step), "fid": fid, "fid_std": extra.get("fid_std"),
                "precision": extra.get("precision"), "recall": extra.get("recall"), "test_fid": test_fid,
                "modes": None if modes is None else int(float(modes)),
            })
            self.time_s += time.perf_counter() - start

    recorder = Recorder()
    earlier: dict[str, Any] = {}
    ckpt_path = None
    if spec.get("extend"):  # continue a finished shorter run of this (setup, seed) from its last checkpoint
        earlier = json.loads(Path(spec["run_dir"], "record.json").read_text())
        ckpt_path = spec["extend"]
        ckpt_step = torch.load(ckpt_path, map_location="cpu", weights_only=False)["global_step"]
        if ckpt_step != max_steps_for(earlier["g_steps"], module.n_critic):
            raise RuntimeError(f"{ckpt_path} is at Trainer step {ckpt_step}, not at the end of the recorded run "
                               f"({earlier['g_steps']} G steps)")
        recorder.rows = list(earlier["evaluations"])
        recorder.last_g = int(earlier["g_steps"])
        recorder.first_exploded = earlier["first_exploded_g_step"]
        recorder.divergence_step = earlier["divergence_g_step"]
        recorder.divergence_message = earlier["divergence_message"]
        if earlier.get("divergence_state"):
            divergence_state.load_state_dict(earlier["divergence_state"])
    trainer = instantiate(cfg.trainer, max_steps=max_steps_for(budget, module.n_critic), callbacks=[*callbacks, recorder],
                          logger=False, default_root_dir=spec["run_dir"])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start
    return {
        "setup": spec["setup"], "seed": spec["seed"], "kind": setup.kind, "max_g_steps": budget, "every": every,
        "num_samples": samples, "g_steps": int(module.g_steps), "extractor": monitor.extractor_name,
        "fit_wall_s": wall + earlier.get("fit_wall_s", 0.0), "recorder_s": recorder.time_s + earlier.get("recorder_s", 0.0),
        "monitor_eval_s": monitor.eval_time_s,  # restored from the checkpoint: the total over both legs
        "monitor_setup_s": monitor.setup_time_s + earlier.get("monitor_setup_s", 0.0), "evaluations": recorder.rows,
        "first_exploded_g_step": recorder.first_exploded, "divergence_g_step": recorder.divergence_step,
        "divergence_message": recorder.divergence_message, "divergence_rule": divergence.config(),
        "divergence_state": divergence_state.state_dict(),
        **({"extended_from": {"max_g_steps": earlier["max_g_steps"], "process_wall_s": earlier["process_wall_s"]}}
           if earlier else {}),
    }


# ---------------------------------------------------------------------------------------------- Inception check
def inception_confirmation(report: dict[str, Any], setup_name: str, seed: int, work: Path, num_samples: int,
                           threads: int) -> dict[str, Any]:
    """Real-Inception FID (torch-fidelity's network, offline weights) of the generators one run hands over.

    For one (setup, seed) of a finished study (its G snapshots saved in ``work``): the generator the chosen rule
    restores, the full run's best-by-monitor and its last, each on ``num_samples`` samples of a noise seed no
    monitor used, against as many images of the test split.
    """
    import torch

    from lightning_regan.builders import build_datamodule, build_models
    from lightning_regan.config import compose_config
    from lightning_regan.fid.extractors import build_extractor

    torch.set_num_threads(threads)
    setup = SETUPS[setup_name]
    chosen = report["analysis"]["chosen"]
    run = next(r for r in report["runs"] if r["setup"] == setup_name and r["seed"] == seed)
    graded = next(g for g in report["analysis"]["candidates"][chosen]["graded"]
                  if g["setup"] == setup_name and g["seed"] == seed)
    steps = {"restored (with stopping)": graded["restored_g_step"], "full run's best": graded["full_best_g_step"],
             "full run's last": run["evaluations"][-1]["g_step"]}
    cfg = compose_config([*setup.overrides, f"seed={seed}", f"data.root={DATA_ROOT}", "output_dir=/tmp"])
    datamodule = build_datamodule(cfg)
    generator, _ = build_models(cfg, tuple(datamodule.shape))
    generator.eval()
    extractor = build_extractor("inception")
    start = time.perf_counter()
    metric = _real_metric(datamodule._load("test"), extractor, num_samples)
    noise = torch.randn(num_samples, int(cfg.model.latent_dim), generator=torch.Generator().manual_seed(30_000 + seed))
    fids: dict[str, float] = {}
    for name, step in steps.items():
        if step in [steps[k] for k in fids]:
            fids[name] = fids[next(k for k in fids if steps[k] == step)]
            continue
        generator.load_state_dict(torch.load(work / f"{setup_name}-s{seed}" / "snapshots" / f"g{step}.pt"))
        metric.reset_fake()
        with torch.no_grad():
            for z in noise.split(100):
                metric.update(extractor(generator(z)))
        fids[name] = float(metric.compute()["fid"])
    return {"setup": setup_name, "seed": seed, "rule": chosen, "num_samples": num_samples, "g_steps": steps,
            "inception_fid": fids, "stop_g_step": graded["stop_g_step"], "reason": graded["reason"],
            "gap": fids["restored (with stopping)"] / fids["full run's best"] - 1,
            "classifier_gap": graded["gap"], "wall_s": time.perf_counter() - start, "threads": threads}


# ---------------------------------------------------------------------------------------------- driver
def run_specs(setups: list[str], seeds: list[int], quick: bool, work: Path,
              budgets: Optional[dict[str, int]] = None) -> list[dict[str, Any]]:
    specs = []
    for seed in seeds:  # seed-major: the selection seeds finish first
        for name in setups:
            setup = SETUPS[name]
            specs.append({
                "setup": name, "seed": seed, "run_dir": str(work / f"{name}-s{seed}"),
                "max_g_steps": (budgets or {}).get(name) or (setup.quick_max_g_steps if quick else setup.max_g_steps),
                "every": setup.quick_every if quick else setup.every,
                "num_samples": 200 if quick else setup.num_samples,
            })
    return specs


def _finished(spec: dict[str, Any]) -> Optional[dict[str, Any]]:
    record = Path(spec["run_dir"]) / "record.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("spec") == spec:
            return saved
    return None


def _extendable(spec: dict[str, Any]) -> Optional[str]:
    """The last checkpoint of a finished run of the same setup and seed with a smaller budget (else ``None``)."""
    record = Path(spec["run_dir"]) / "record.json"
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    same = {k: v for k, v in saved.get("spec", {}).items() if k != "max_g_steps"} == \
        {k: v for k, v in spec.items() if k not in ("max_g_steps", "extend")}
    if not same or saved["spec"]["max_g_steps"] >= spec["max_g_steps"] or saved["g_steps"] != saved["max_g_steps"]:
        return None
    ckpts = sorted(Path(spec["run_dir"], "checkpoints").glob("*.ckpt"),
                   key=lambda p: int(p.stem.rsplit("step=", 1)[-1]) if "step=" in p.stem else -1)
    return str(ckpts[-1]) if ckpts else None


def execute(specs: list[dict[str, Any]], resume: bool, timeout_s: int) -> list[dict[str, Any]]:
    """Run the runs of one setup in ONE worker process, one after the other (torch and Lightning are imported
    once: 10-20 s per process on a loaded 2-core machine); with ``resume``, finished runs are read back, and a
    finished run of a smaller budget is continued from its last checkpoint (the resume is bit-exact, so the longer
    run is the one a fresh training of the longer budget gives)."""
    todo = [spec for spec in specs if not (resume and _finished(spec))]
    if resume:
        todo = [{**spec, "extend": ckpt} if (ckpt := _extendable(spec)) else spec for spec in todo]
    if todo:
        work = Path(todo[0]["run_dir"]).parent
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        log_path = work / f"{todo[0]['setup']}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(todo)], env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout_s * len(todo), cwd=work)
        if proc.returncode != 0:
            raise RuntimeError(f"{todo[0]['setup']} failed (exit {proc.returncode}); see {log_path}")
    runs = []
    trained = [{k: v for k, v in spec.items() if k != "extend"} for spec in todo]
    for spec in specs:
        saved = _finished(spec)
        if saved is None:
            raise RuntimeError(f"{spec['setup']} seed {spec['seed']} left no record in {spec['run_dir']}")
        runs.append({**saved, "reused": spec not in trained})
    return runs


# ---------------------------------------------------------------------------------------------- replay
def _metrics(row: dict[str, Any]) -> dict[str, float]:
    out = {"val/fid": row["fid"]}
    if row.get("fid_std") is not None:
        out["val/fid_std"] = row["fid_std"]
    if row.get("recall") is not None:
        out["val/recall"] = row["recall"]
    return out


def replay_rule(run: dict[str, Any], make_rule: Optional[Callable[[], StopRule]],
                make_collapse: Optional[Callable[[], Collapse]] = None,
                use_divergence: bool = True) -> dict[str, Any]:
    """Where the rule (with the collapse and divergence rules) stops ``run`` and what it hands over.

    Returns ``{"stop_g_step", "reason", "restored_index"}``: the G step the run would end at (the budget when
    nothing fires), why, and the index of the evaluation whose generator is restored (best monitor FID so far).
    """
    rows = run["evaluations"]
    rule = make_rule().new_state() if make_rule else None
    if rule is not None and getattr(make_rule, "budget", True) and getattr(rule, "budget_g_steps", False) is None:
        rule.budget_g_steps = run["max_g_steps"]  # as EarlyTermination does from the Trainer's max_steps
    collapse = make_collapse().new_state() if make_collapse else None
    divergence_step = run.get("divergence_g_step") if use_divergence else None
    stop, reason = None, None
    for row in rows:
        if divergence_step is not None and divergence_step <= row["g_step"]:
            break
        metrics = _metrics(row)
        for candidate, name in ((collapse, "collapsed"), (rule, "fid_plateau")):
            if candidate is not None and candidate.update(row["g_step"], metrics)[0]:
                stop, reason = row["g_step"], name
                break
        if stop is not None:
            break
    if divergence_step is not None and (stop is None or divergence_step < stop):
        stop, reason = divergence_step, "divergence"
    if stop is None:
        stop, reason = run["g_steps"], "max_steps"
    seen = [i for i, r in enumerate(rows) if r["g_step"] <= stop and _finite(r["fid"])]
    restored = min(seen, key=lambda i: rows[i]["fid"]) if seen else None
    return {"stop_g_step": stop, "reason": reason, "restored_index": restored}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def run_reference(run: dict[str, Any], eps: float = EPSILON) -> dict[str, Any]:
    """The full run's best (by monitor), last, and the eps-oracle's stop."""
    rows = run["evaluations"]
    finite = [i for i, r in enumerate(rows) if _finite(r["fid"])]
    if not finite:
        return {"best_index": None, "oracle_g_step": run["g_steps"], "oracle_saving": 0.0}
    best = min(finite, key=lambda i: rows[i]["fid"])
    oracle = next(i for i in finite if rows[i]["fid"] <= (1 + eps) * rows[best]["fid"])
    return {"best_index": best, "best_g_step": rows[best]["g_step"], "best_fid": rows[best]["fid"],
            "best_test_fid": rows[best]["test_fid"], "last_test_fid": rows[-1]["test_fid"],
            "oracle_g_step": rows[oracle]["g_step"], "oracle_saving": 1 - rows[oracle]["g_step"] / run["max_g_steps"]}


def grade(run: dict[str, Any], outcome: dict[str, Any], floor: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Saving, share of the eps-oracle's saving and the independent-FID gap of one replayed run; with the setup's
    real-vs-real ``floor``, whether the handed-over generator's independent FID is within it."""
    ref = run_reference(run)
    rows = run["evaluations"]
    saving = 1 - outcome["stop_g_step"] / run["max_g_steps"]
    idx = outcome["restored_index"]
    test = rows[idx]["test_fid"] if idx is not None else None
    gap = None
    if test is not None and _finite(test) and ref.get("best_test_fid") and _finite(ref["best_test_fid"]):
        gap = test / ref["best_test_fid"] - 1
    share = saving / ref["oracle_saving"] if ref["oracle_saving"] > 0 else None
    return {"setup": run["setup"], "seed": run["seed"], "kind": run["kind"], "budget": run["max_g_steps"],
            "stop_g_step": outcome["stop_g_step"],
            "reason": outcome["reason"], "saving": saving, "oracle_saving": ref["oracle_saving"],
            "oracle_g_step": ref["oracle_g_step"], "oracle_share": share, "gap": gap, "restored_test_fid": test,
            "restored_g_step": rows[idx]["g_step"] if idx is not None else None,
            "full_best_test_fid": ref.get("best_test_fid"), "full_last_test_fid": ref.get("last_test_fid"),
            "full_best_g_step": ref.get("best_g_step"),
            "within_floor": bool(floor and test is not None and _finite(test) and test <= floor["p90"])}


def exploded_from(run: dict[str, Any]) -> int:
    """First G step with an exploded loss that the divergence rule may act on: its warmup ignores earlier ones
    (``experiment=diverging``'s critic is beyond its ceilings from G step 1; the rule looks from G step 100 on)."""
    return max(int(run["first_exploded_g_step"]), int(run["divergence_rule"].get("warmup_g_steps", 0)))


def _median(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(graded: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets over a set of graded runs."""
    healthy = [g for g in graded if g["kind"] == "healthy"]
    flat = [g for g in healthy if g["oracle_g_step"] * FLATTENED <= g["budget"]]
    gaps = [g["gap"] for g in healthy if g["gap"] is not None]
    shares = [min(g["oracle_share"], 10.0) for g in healthy if g["oracle_share"] is not None]
    diverging = [(g, r) for g, r in zip(graded, runs) if g["kind"] == "diverging"]
    collapsing = [g for g in graded if g["kind"] == "collapsing" and g["full_last_test_fid"] is not None
                  and g["full_best_test_fid"] is not None
                  and g["full_last_test_fid"] >= COLLAPSED_RATIO * g["full_best_test_fid"]]
    div_ok = [
        r.get("first_exploded_g_step") is not None and g["reason"] == "divergence"
        and g["stop_g_step"] - exploded_from(r) <= r["every"]
        for g, r in diverging
    ]
    out = {
        "healthy_pairs": len(healthy),
        "healthy_gap_within_eps": sum(g <= EPSILON for g in gaps),
        "healthy_gap_within_eps_share": sum(g <= EPSILON for g in gaps) / len(gaps) if gaps else None,
        "healthy_gap_within_eps_or_floor": sum(g["gap"] is not None and (g["gap"] <= EPSILON or g.get("within_floor"))
                                               for g in healthy),
        "healthy_within_floor": sum(bool(g.get("within_floor")) for g in healthy),
        "healthy_gap_median": _median(gaps),
        "healthy_gap_max": max(gaps) if gaps else None,
        "healthy_saving_median": _median([g["saving"] for g in healthy]),
        "healthy_oracle_saving_median": _median([g["oracle_saving"] for g in healthy]),
        "healthy_oracle_share_median": _median(shares),
        # Runs whose budget is >= 3x the eps-oracle's step: the curve flattened, so there was something to save.
        "healthy_flattened": len(flat),
        "flattened_oracle_share_median": _median([min(g["oracle_share"], 10.0) for g in flat
                                                  if g["oracle_share"] is not None]),
        "flattened_gap_within_eps": sum(g["gap"] is not None and g["gap"] <= EPSILON for g in flat),
        "healthy_called_diverged_or_collapsed": sum(g["reason"] in ("divergence", "collapsed") for g in healthy),
        "diverging_runs": len(diverging), "diverging_stopped_within_one_interval": sum(div_ok),
        "collapsing_setup_runs": sum(g["kind"] == "collapsing" for g in graded),
        "collapsing_runs": len(collapsing),
        "collapsing_stopped": sum(g["reason"] != "max_steps" for g in collapsing),
        "collapsing_restored_better_than_full_last": sum(
            g["reason"] != "max_steps" and g["restored_test_fid"] is not None and g["full_last_test_fid"] is not None
            and g["restored_test_fid"] < g["full_last_test_fid"] for g in collapsing),
    }
    out["targets"] = {
        "healthy gap <= 5 % in >= 90 % of pairs": out["healthy_gap_within_eps_share"] is not None
        and out["healthy_gap_within_eps_share"] >= 0.9,
        "healthy gap median <= 1 %": out["healthy_gap_median"] is not None and out["healthy_gap_median"] <= 0.01,
        "median saving >= 80 % of the eps-oracle's": out["healthy_oracle_share_median"] is not None
        and out["healthy_oracle_share_median"] >= 0.8,
        "diverging runs stopped within one evaluation interval": bool(diverging) and all(div_ok),
        "no healthy run called diverged or collapsed": out["healthy_called_diverged_or_collapsed"] == 0,
        "collapsing runs stopped with a better generator than the full run's last": bool(collapsing)
        and out["collapsing_restored_better_than_full_last"] == len(collapsing),
    }
    return out


def candidates() -> dict[str, dict[str, Any]]:
    """Every rule configuration replayed: name -> {"family", "args"}."""
    out: dict[str, dict[str, Any]] = {
        "patience (v1 rule)": {"family": "FIDPlateau",
                                       "args": {"patience": 4, "min_delta": 0.01, "window": 3, "warmup_g_steps": 500}},
    }
    for z in (1.0, 2.0):
        for patience in (0.2, 0.3, 0.4):
            out[f"noise z={z:g} patience={patience:g}"] = {"family": "FIDNoisePlateau",
                                                           "args": {"z": z, "patience": patience}}
    for family, horizons in (("FIDTrend", (0.5, 1.0, 2.0, 4.0)), ("FIDPowerLaw", (1.0, 2.0, 4.0))):
        for horizon in horizons:
            for window in (0.3, 0.5):
                for patience in (1, 2):
                    for budget in (True, False):
                        name = (f"{'trend' if family == 'FIDTrend' else 'powerlaw'} h={horizon:g} w={window:g} "
                                f"p={patience}{'' if budget else ' uncapped'}")
                        out[name] = {"family": family, "budget": budget,
                                     "args": {"horizon": horizon, "window": window, "patience": patience}}
    return out


# The families keep the rules' names of the time the records were made (and the records say "fid_plateau").
FAMILIES: dict[str, type] = {"FIDPlateau": Plateau, "FIDNoisePlateau": NoisePlateau, "FIDTrend": LogLinearTrend,
                             "FIDPowerLaw": PowerLaw}


def make(family: str, args: dict[str, Any], budget: bool = True) -> Callable[[], StopRule]:
    """A factory of the rule; ``budget=False``: the replay does not give it the run's budget (uncapped horizon)."""
    def factory() -> StopRule:
        return FAMILIES[family](**args)

    factory.budget = budget  # type: ignore[attr-defined]
    return factory


def measurement_floors(runs: list[dict[str, Any]], draws: int = 20) -> dict[str, dict[str, float]]:
    """Real-vs-real FID of the setups whose real data can be sampled afresh (the Gaussian mixtures), at the
    independent grader's sizes: the Frechet distance between two independent real samples of ``2 x num_samples``
    points each, over ``draws`` pairs (median and 90th percentile). A generator whose independent FID is at or below
    that floor cannot be told from the data by the grader: a ratio of two such FIDs measures noise."""
    import torch
    from hydra.utils import instantiate

    from lightning_regan.config import compose_config
    from lightning_regan.data.gaussians import sample_mixture

    floors = {}
    for name in dict.fromkeys(r["setup"] for r in runs):
        setup, n = SETUPS[name], 2 * next(r["num_samples"] for r in runs if r["setup"] == name)
        if setup.kind != "healthy":
            continue
        cfg = compose_config([*setup.overrides, "output_dir=/tmp"])
        if cfg.data.get("_target_", "").rsplit(".", 1)[-1] != "GaussianMixtureDataModule":
            continue
        datamodule = instantiate(cfg.data)
        values = []
        for k in range(draws):
            real, _ = sample_mixture(datamodule.centers, datamodule.std, n, torch.Generator().manual_seed(7_000 + k))
            other, _ = sample_mixture(datamodule.centers, datamodule.std, n, torch.Generator().manual_seed(8_000 + k))
            metric = _real_metric(torch.utils.data.TensorDataset(real), torch.nn.Identity(), n)
            metric.update(other)
            values.append(float(metric.compute()["fid"]))
        values.sort()
        floors[name] = {"samples": n, "draws": draws, "median": statistics.median(values),
                        "p90": values[min(draws - 1, math.ceil(0.9 * draws) - 1)]}
    return floors


def analyse(runs: list[dict[str, Any]], selection_seeds: tuple[int, ...], held_out_seeds: tuple[int, ...],
            chosen: Optional[str] = None, floors: Optional[dict[str, dict[str, float]]] = None) -> dict[str, Any]:
    """Replay every candidate on every run; choose on the selection seeds; grade on the held-out seeds."""
    table = {}
    for name, cand in candidates().items():
        rule = make(cand["family"], cand["args"], cand.get("budget", True))
        graded = [grade(run, replay_rule(run, rule, Collapse), (floors or {}).get(run["setup"])) for run in runs]
        table[name] = {
            **cand,
            "graded": graded,
            "selection": summarize(*_subset(graded, runs, selection_seeds)),
            "held_out": summarize(*_subset(graded, runs, held_out_seeds)),
            "fresh": summarize(*_subset(graded, runs, FRESH_SEEDS)),
            "all": summarize(graded, runs),
        }

    def score(name: str) -> tuple[float, ...]:
        # Safe first (the gap targets), then the most of the eps-oracle's saving, then the most saving, then the
        # most healthy runs within eps, then the smaller worst gap; ties keep the listed order.
        s = table[name]["selection"]
        safe = (s["healthy_gap_within_eps_share"] or 0) >= 0.9 and (s["healthy_gap_median"] or 0) <= 0.01 \
            and s["healthy_called_diverged_or_collapsed"] == 0
        return (float(safe), s["healthy_oracle_share_median"] or 0.0, s["healthy_saving_median"] or 0.0,
                s["healthy_gap_within_eps"], -(s["healthy_gap_max"] or 0.0))

    chosen = chosen or max(table, key=score)
    return {"candidates": table, "chosen": chosen, "selection_seeds": list(selection_seeds),
            "held_out_seeds": list(held_out_seeds)}


def _subset(graded: list[dict[str, Any]], runs: list[dict[str, Any]], seeds: tuple[int, ...]):
    keep = [i for i, r in enumerate(runs) if r["seed"] in seeds]
    return [graded[i] for i in keep], [runs[i] for i in keep]


# ---------------------------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f} %" if signed else f"{100 * value:.0f} %"


def _num(value: Optional[float]) -> str:
    return "-" if value is None or not _finite(value) else f"{value:.4g}"


def _row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {s['healthy_gap_within_eps']}/{s['healthy_pairs']} | {_pct(s['healthy_gap_median'], True)} | "
            f"{_pct(s['healthy_gap_max'], True)} | {_pct(s['healthy_saving_median'])} | "
            f"{_pct(s['healthy_oracle_share_median'])} | {s['healthy_called_diverged_or_collapsed']} | "
            f"{s['collapsing_stopped']}/{s['collapsing_runs']} | {s['diverging_stopped_within_one_interval']}/"
            f"{s['diverging_runs']} |")


HEADER = ("| rule | healthy gap <= 5 % | gap median | gap max | saving median | share of eps-oracle's saving "
          "(median) | healthy called diverged/collapsed | collapsing stopped | diverging stopped in 1 interval |\n"
          "|---|---|---|---|---|---|---|---|---|")


def _target_lines(held: dict[str, Any]) -> list[str]:
    """The issue's targets and the healthy runs' figures of one summary, as Markdown list items."""
    lines = [f"- {target}: **{'met' if met else 'NOT met'}**" for target, met in held["targets"].items()]
    return lines + [
        f"- healthy: gap <= 5 % in {held['healthy_gap_within_eps']} of {held['healthy_pairs']}, median gap "
        f"{_pct(held['healthy_gap_median'], True)}, max {_pct(held['healthy_gap_max'], True)}; median saving "
        f"{_pct(held['healthy_saving_median'])} of the budget, {_pct(held['healthy_oracle_share_median'])} of the "
        f"eps-oracle's (whose median saving is {_pct(held['healthy_oracle_saving_median'])})",
        f"- healthy gap <= 5 %, or the handed-over generator's independent FID within the real-vs-real floor (below): "
        f"{held['healthy_gap_within_eps_or_floor']} of {held['healthy_pairs']} ({held['healthy_within_floor']} within "
        "the floor)",
        f"- flattened healthy runs (budget >= {FLATTENED}x the eps-oracle's step): {held['healthy_flattened']} of "
        f"{held['healthy_pairs']}; gap <= 5 % in {held['flattened_gap_within_eps']}; median share of the eps-oracle's "
        f"saving {_pct(held['flattened_oracle_share_median'])}",
        f"- collapsing setups: {held['collapsing_setup_runs']} runs, of which {held['collapsing_runs']} collapsed (the "
        f"full run's last independent FID >= {COLLAPSED_RATIO:g}x its best); {held['collapsing_stopped']} of them "
        f"stopped, {held['collapsing_restored_better_than_full_last']} with a generator better than the full run's "
        "last",
    ]


def setup_table(graded: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    """Markdown rows of one rule's healthy runs on ``seeds``, a row per setup: where the targets are met or missed."""
    lines = ["| setup | runs | gap <= 5 % | flattened | saving (median) | eps-oracle's saving (median) | share of it "
             "(median) |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(g["setup"] for g in graded if g["kind"] == "healthy"):
        rows = [g for g in graded if g["setup"] == name and g["seed"] in seeds]
        if not rows:
            continue
        shares = [min(g["oracle_share"], 10.0) for g in rows if g["oracle_share"] is not None]
        lines.append(
            f"| {name} | {len(rows)} | {sum(g['gap'] is not None and g['gap'] <= EPSILON for g in rows)} | "
            f"{sum(g['oracle_g_step'] * FLATTENED <= g['budget'] for g in rows)} | "
            f"{_pct(_median([g['saving'] for g in rows]))} | {_pct(_median([g['oracle_saving'] for g in rows]))} | "
            f"{_pct(_median(shares))} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    a = report["analysis"]
    chosen = a["chosen"]
    m = report["machine"]
    lines = [
        "# Early-termination study v5", "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}; {report['date']}; "
        f"study wall time {report['wall_time_s'] / 60:.1f} min; the {len(report['runs'])} runs took "
        f"{sum(r.get('process_wall_s', 0) for r in report['runs']) / 60:.1f} min of process time "
        f"({report['jobs']} at a time)"
        + (f"; {sum(bool(r.get('reused')) for r in report['runs'])} of them were read back from `--work`, trained by "
           "earlier invocations of the same command (`--resume`)." if any(r.get("reused") for r in report["runs"])
           else "."), "",
        *([f"Analysis (replay of the recorded runs with the current rule code): `{report['analysis_command']}`", ""]
          if report.get("analysis_command") else []),
        f"Chosen rule (by the selection seeds {a['selection_seeds']}): **{chosen}**; targets below are on the held-out "
        f"seeds {[seed for seed in a['held_out_seeds'] if any(r['seed'] == seed for r in report['runs'])]}, which "
        "the choice was not made on.", "",
        "## Targets (held-out seeds, chosen rule)", "",
    ]
    fresh = [seed for seed in FRESH_SEEDS if any(r["seed"] == seed for r in report["runs"])]
    lines += _target_lines(a["candidates"][chosen]["held_out"])
    if fresh:
        lines += ["", f"Of them, the fresh held-out seeds {fresh} (trained after the last change to the rules' code; "
                  "docs/studies/early_stopping.md says what was read when):", ""]
        lines += _target_lines(a["candidates"][chosen]["fresh"])
    lines += [
        f"- monitor cost: {_pct(report['monitor_cost_share'])} of the training wall time (FID + noise + "
        "precision/recall, summed over all runs)", "",
        "Real-vs-real floors (the FID between two independent samples of the real data at the independent grader's "
        "size; not the issue's gap, an extra line beside it):", "",
        *[f"- `{name}`: {f['samples']} points each, median {_num(f['median'])}, 90th percentile {_num(f['p90'])} "
          f"({f['draws']} pairs)" for name, f in (report.get("floors") or {}).items()], "",
        "## Every candidate (replayed on the same runs)", "",
        "Selection seeds:", "", HEADER,
    ]
    for name, c in a["candidates"].items():
        lines.append(_row(("**" + name + "**") if name == chosen else name, c["selection"]))
    for title, key in (("Held-out seeds:", "held_out"), *((("Fresh held-out seeds:", "fresh"),) if fresh else ())):
        lines += ["", title, "", HEADER]
        for name, c in a["candidates"].items():
            lines.append(_row(("**" + name + "**") if name == chosen else name, c[key]))
    lines += ["", "## Chosen rule by healthy setup (held-out seeds)", "", *setup_table(a["candidates"][chosen]["graded"],
                                                                                      a["held_out_seeds"])]
    lines += ["", "## Per run (chosen rule)", "",
              "| setup | kind | seed | budget | stop (reason) | saving | eps-oracle step (saving) | restored step | "
              "test FID restored | full best (step) | full last | gap |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g, run in zip(a["candidates"][chosen]["graded"], report["runs"]):
        lines.append(
            f"| {g['setup']} | {g['kind']} | {g['seed']} | {run['max_g_steps']} | {g['stop_g_step']} ({g['reason']}) | "
            f"{_pct(g['saving'])} | {g['oracle_g_step']} ({_pct(g['oracle_saving'])}) | {g['restored_g_step']} | "
            f"{_num(g['restored_test_fid'])} | {_num(g['full_best_test_fid'])} ({g['full_best_g_step']}) | "
            f"{_num(g['full_last_test_fid'])} | {_pct(g['gap'], True)} |")
    lines += ["", "Setups:"]
    for name in dict.fromkeys(r["setup"] for r in report["runs"]):
        s = SETUPS[name]
        run = next(r for r in report["runs"] if r["setup"] == name)
        lines.append(f"- `{name}` ({s.kind}): {s.description}; {run['max_g_steps']} G steps, monitor FID every "
                     f"{run['every']} G steps on {run['num_samples']} samples ({run['extractor']} features), graded "
                     f"on {2 * run['num_samples']} samples of another noise seed against "
                     f"{'the test split' if s.test_split else 'other real samples'}.")
    return "\n".join(lines) + "\n"


def build_report(runs: list[dict[str, Any]], command: str, wall: float, jobs: int,
                 chosen: Optional[str] = None) -> dict[str, Any]:
    train_s = sum(r["fit_wall_s"] - r["recorder_s"] for r in runs)
    floors = measurement_floors(runs)
    return {
        "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "wall_time_s": wall, "jobs": jobs, "epsilon": EPSILON,
        "monitor_cost_share": sum(r["monitor_eval_s"] for r in runs) / train_s if train_s > 0 else None,
        "runs": runs, "floors": floors,
        "analysis": analyse(runs, SELECTION_SEEDS, HELD_OUT_SEEDS, chosen, floors),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the study itself")
    parser.add_argument("--setups", nargs="+", default=list(DEFAULT_SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[*SELECTION_SEEDS, *HELD_OUT_SEEDS])
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    parser.add_argument("--work", type=Path, default=None, help="folder of the runs (default: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs of the same spec in --work; continue shorter ones to the budget")
    parser.add_argument("--budget", nargs="+", default=[], metavar="SETUP=G_STEPS",
                        help="another budget for a setup (with --resume, its finished shorter runs are continued)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--chosen", default=None, help="report this candidate instead of the selection's pick")
    parser.add_argument("--replay", type=Path, default=None, metavar="JSON",
                        help="re-analyse the runs recorded in a study JSON (no training)")
    parser.add_argument("--inception", nargs=2, default=None, metavar=("SETUP", "SEED"),
                        help="with --replay and --work: real-Inception FID of one run's handed-over generators")
    parser.add_argument("--inception-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the Inception check")
    args = parser.parse_args(argv)
    budgets: dict[str, int] = {}
    for item in args.budget:
        name, _, steps = item.partition("=")
        if name not in SETUPS or not steps.isdigit() or int(steps) < 1:
            parser.error(f"--budget takes SETUP=G_STEPS with a setup of {sorted(SETUPS)} and G_STEPS >= 1, got {item!r}")
        budgets[name] = int(steps)

    if args.inception:
        if not (args.replay and args.work):
            parser.error("--inception needs --replay (the study JSON) and --work (its runs' G snapshots)")
        result = inception_confirmation(json.loads(args.replay.read_text()), args.inception[0], int(args.inception[1]),
                                        args.work, args.inception_samples, args.threads)
        result["command"] = "python studies/early_stopping_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "early_stopping_inception.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0

    if args.worker:
        for spec in json.loads(args.worker):
            start = time.perf_counter()
            record = _worker(spec)
            record["process_wall_s"] = time.perf_counter() - start
            if spec.get("extend"):
                record["process_wall_s"] += record["extended_from"]["process_wall_s"]
            spec = {k: v for k, v in spec.items() if k != "extend"}
            Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
            Path(spec["run_dir"], "record.json").write_text(json.dumps({"spec": spec, **record}) + "\n")
            print(f"done: {spec['setup']} seed {spec['seed']} ({record['process_wall_s']:.0f} s)", flush=True)
        return 0

    command = "python studies/early_stopping_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.replay:
        saved = json.loads(args.replay.read_text())
        report = build_report(saved["runs"], saved["command"], saved["wall_time_s"], saved["jobs"], args.chosen)
        report["date"] = saved["date"]
        report["machine"] = saved["machine"]
        report["analysis_command"] = command
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="es_study_"))
        specs = run_specs(args.setups, args.seeds, args.quick, work, budgets)
        groups = {name: [s for s in specs if s["setup"] == name] for name in args.setups}
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {name: pool.submit(execute, group, args.resume, args.timeout) for name, group in groups.items()}
            by_setup = {name: future.result() for name, future in futures.items()}
        runs = [run for seed in args.seeds for name in args.setups for run in by_setup[name] if run["seed"] == seed]
        report = build_report(runs, command, time.perf_counter() - start, args.jobs, args.chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_stopping_study.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "early_stopping_study.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
