#!/usr/bin/env python
"""Early-termination study v6-v8: the stop decision graded on ground truth, with budget-free targets (issues 20, 29).

Design (one training per (setup, seed); every candidate replayed on it):

1. Each (setup, seed) is trained once for its budget with no stopping. The product's ``FIDMonitor`` logs what a
   user's run logs (``val/fid``, ``val/recall``, ``val/mmd``, ...). A study-only recorder scores the same generator at
   once on the **ground truth**, on samples the monitor never saw:
   - images: FID of 10,000 generated samples (other noise) against the whole test split (digits: all 1,797 images,
     sklearn has no split; the fine-tune: the test split's digits 5-9), classifier features;
   - points: MMD² of 10,000 generated points against 10,000 fresh real points (the truth the figures are graded
     on), and the share of samples within 3 std of a mode and the modes covered (ModeCoverageMonitor's measures).
   It also re-scores the stop metrics as the best-of confirmation would (``FIDMonitor.score`` with 4x the monitor's
   samples under the monitor's seed + 1: ``BestGenerator``'s defaults; v8), and runs the configured divergence rule
   every G step (without stopping) and notes where it fires. Its time (``recorder_s``, the confirmation's part in
   ``confirm_s``) is left out of the monitor's cost.
2. A run with stopping is the full run cut at the rule's stop step (same seed: training is identical up to there).
   Every candidate is replayed offline on the recorded metrics with the product's rule objects, instantiated from
   the run's own Hydra config (``early_stopping`` group) with ``stop_metric`` set to the candidate's signal and
   prepared as a fit prepares them (``EarlyTermination.prepare_states``: the budget, and ``init_from`` for the
   fine-tune), on the evaluations a user's run makes: those at the setup's own cadence
   (``callbacks.fid.every_n_g_steps`` of its config; the study may record more often, for the lag). What it hands
   back: the best-of confirmation's winner (``callbacks.best_generator``: the top 3 evaluations by the stop metric up
   to the stop, the best of them by the recorded confirmation score), graded as the product's figure; the best so far
   (``top_k=1``) is graded beside it (``best_so_far_*``). Records without confirmation scores (v7) hand back the best
   so far.
3. Grading, on ground truth only: the grader's noise is its value on real vs real data at its own sample size;
   a handed-over generator is "within" when its truth is within max(5 %, noise) of the full run's best truth; the
   eps-oracle (eps = 5 %, widened to the grader's noise the same way) stops at the first evaluation within it of the
   best; lag = stop step / oracle step on runs whose truth flattens (oracle step <= half the budget) or peaks (an
   oracle at a fine-tune's G step 0 counts as its first evaluation after it).
4. The candidate is chosen on the selection seeds (most healthy runs within, then the smaller median lag) and the
   targets reported on the held-out seeds. Training runs without stopping, so the recorded runs do not depend on the
   rules: v7 selected on seeds 10-14 and reported 15-17; v8 (the rule redesigned on public training curves, issue 29)
   selects on 10-17 and reports seeds 18-20, trained for v8, and adds ``finetune``: ``experiment=finetune`` without
   DiffAugment, started from ``studies/finetune_study.py``'s pretraining (digits 0-4), whose quality peaks early. The
   seeds are in the record (``seeds``); ``--selection-seeds``/``--held-out-seeds`` override them in a replay.
5. Monitor cost: its measured time per evaluation times the evaluations a run makes at the setup's own cadence, over
   the training's wall time; the measured share at the study's cadence is reported beside it.

Usage::

    # v8: the new runs (held-out seeds 18-20 of every setup first, then the fine-tune's 10-17; one core, ~90 min),
    # with v7's runs of seeds 10-17 taken as they are (the v7 record: git show d83d0eb:studies/results/stopping_study.json)
    nice -n 10 python studies/stopping_study.py --jobs 1 --work /tmp/i29v8/work --with-runs /tmp/i29v8/v7.json \
        --out /tmp/i29v8/out
    # ... or the report of the runs finished so far (the others listed in its "missing"), no training:
    python studies/stopping_study.py --no-train --work /tmp/i29v8/work --with-runs /tmp/i29v8/v7.json --out /tmp/i29v8/out
    # re-grade the committed record with the rules of conf/early_stopping now (seconds; no training): the figures
    python studies/stopping_study.py --replay studies/results/stopping_study.json --out studies/results
    python studies/stopping_study.py --quick --work /tmp/q/w --out /tmp/q   # a smoke test (a minute)

Writes ``<out>/stopping_study.json`` (every run's history and every candidate's replay), ``<out>/stopping_study.md``
and ``<out>/stopping_targets.json`` (the issue's target keys at the top level).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import platform
import statistics
import subprocess
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
EPSILON = 0.05
TRUTH_SAMPLES = 10_000
COMMON = ("logger=none", "trainer.enable_progress_bar=false", "~callbacks.samples", "~callbacks.checkpoint",
          "~callbacks.summary", "~callbacks.best_generator")
DCGAN16 = ("model=dcgan", "model.generator.channels=16", "model.discriminator.channels=16")
SMALL = ("model=dcgan", "model.generator.channels=8", "model.discriminator.channels=8", "regularizer=none",
         "augment=none", "data.batch_size=32")


@dataclass(frozen=True)
class Setup:
    """One training configuration."""

    kind: str  # healthy | collapsing | diverging
    description: str
    overrides: tuple[str, ...]
    max_g_steps: int
    every: int
    points: bool = False
    torchvision: bool = False
    #: A fine-tune: each run starts from the checkpoint of a pretraining (``init_from``; trained once per work folder).
    pretrained: bool = False


SETUPS: dict[str, Setup] = {
    "ring": Setup("healthy", "`experiment=ring` (MLP, non-saturating + R1, EMA 0.995): point data, stops on val/mmd",
                  ("experiment=ring",), 4000, 100, points=True),
    "digits": Setup("healthy", "DCGAN (width 32) on sklearn's 8x8 digits, non-saturating + R1, EMA 0.995",
                    ("data=digits", "model=dcgan", "model.generator.channels=32",
                     "model.discriminator.channels=32"), 6000, 200),
    "mnist_fast": Setup("healthy", "DCGAN (width 16) on MNIST, no regularizer, learning rates 2e-3 (flattens early)",
                        ("data=mnist", *DCGAN16, "regularizer=none", "module.d_optimizer.lr=2e-3",
                         "module.g_optimizer.lr=2e-3", "callbacks.fid.feature_extractor=classifier"),
                        3000, 100, torchvision=True),
    "fmnist_600": Setup("healthy", "DCGAN (width 8) on 600 Fashion-MNIST images (data.limit=600), no augmentation, "
                        "no regularizer: D memorizes, quality peaks then worsens",
                        ("data=fashion_mnist", "data.limit=600", *SMALL,
                         "callbacks.fid.feature_extractor=classifier"), 2000, 100, torchvision=True),
    "ring_collapse": Setup("collapsing", "`experiment=ring` with the saturating minimax loss, no regularizer, no EMA, "
                           "learning rates 2e-3", ("experiment=ring", "loss=minimax", "regularizer=none",
                                                   "module.ema_decay=null", "module.d_optimizer.lr=2e-3",
                                                   "module.g_optimizer.lr=2e-3"), 3000, 100, points=True),
    "diverging": Setup("diverging", "`experiment=diverging` (unconstrained Wasserstein critic, D lr 0.05, 5 critic "
                       "steps per G step)", ("experiment=diverging",), 400, 50, points=True),
    "finetune": Setup("healthy", "`experiment=finetune` without DiffAugment (augment=none): a DCGAN (width 8) pretrained "
                      "on MNIST digits 0-4 (studies/finetune_study.py's pretraining), fine-tuned (init_from) on 600 "
                      "images of digits 5-9; its quality peaks early and worsens (issue 30)",
                      ("experiment=finetune", "augment=none", "model.generator.channels=8",
                       "model.discriminator.channels=8", "data.batch_size=32"), 1000, 50, torchvision=True,
                      pretrained=True),
}
#: v6 chose on seeds 10-11 and reported 12-14; v7 (the image signal switched to val/mmd by the signal study) chose on
#: 10-14 and reported 15-17; v8 (the stop rule redesigned on public curves, issue 29) chooses on 10-17 and reports
#: seeds 18-20, trained after that redesign began. A replay takes the seeds a record names (``report["seeds"]``).
SELECTION_SEEDS = (10, 11, 12, 13, 14, 15, 16, 17)
HELD_OUT_SEEDS = (18, 19, 20)
#: Candidates: (early_stopping config, stop metric for images, stop metric for points). "product" is what each
#: setup's own config does (conf/train.yaml's stop_metric: val/fid for images, val/mmd for points).
CANDIDATES: dict[str, tuple[Optional[str], Optional[str], Optional[str]]] = {
    "product": (None, None, None),
    "trend/mmd": ("default", "val/mmd", "val/mmd"),
    "trend/fid": ("default", "val/fid", "val/fid"),
    "trend/fid_inf": ("default", "val/fid_inf", "val/fid"),
    "plateau/mmd": ("fid", "val/mmd", "val/mmd"),
    "plateau/fid": ("fid", "val/fid", "val/fid"),
}
#: The signals whose per-run rank agreement with the truth is reported (images; points log fid and mmd only).
SIGNALS = ("val/fid", "val/mmd", "val/fid_inf")


# ---------------------------------------------------------------------------------------------- training
def _overrides(setup: Setup, spec: dict[str, Any]) -> list[str]:
    out = [*setup.overrides, f"seed={spec['seed']}", f"max_g_steps={spec['max_g_steps']}",
           f"callbacks.fid.every_n_g_steps={spec['every']}", f"output_dir={spec['run_dir']}"]
    if not setup.points:
        out += ["callbacks.fid.mmd=true", "callbacks.fid.fid_inf=true"]
    if setup.torchvision:
        out.append(f"data.root={DATA_ROOT}")
    if spec.get("quick"):
        out.append("callbacks.fid.num_samples=200")
    if spec.get("init_from"):
        out.append(f"init_from={spec['init_from']}")
    return out


def pretrain_spec(work: Path, quick: bool = False) -> dict[str, Any]:
    """The pretraining of the fine-tune setup: ``studies/finetune_study.py``'s (digits 0-4, width 8, batch 32, seed 100,
    2,000 G steps), run by its worker into ``<work>/finetune-pretrain`` once; its last.ckpt is every seed's init_from."""
    finetune_study = _finetune_study()
    steps = 12 if quick else finetune_study.DEFAULTS["pretrain_g_steps"]
    return {**finetune_study.DEFAULTS, "quick": False, "data_root": DATA_ROOT, "name": "pretrain",
            "seed": finetune_study.PRETRAIN_SEED, "max_g_steps": steps, "pretrain_g_steps": steps,
            "run_dir": str(work / ("finetune-pretrain-quick" if quick else "finetune-pretrain"))}


def _finetune_study() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_study", Path(__file__).with_name("finetune_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrain(work: Path, quick: bool = False) -> str:
    """The fine-tune setup's starting checkpoint, trained by finetune_study.py's worker unless already there."""
    spec = pretrain_spec(work, quick)
    checkpoint = Path(spec["run_dir"], "checkpoints", "last.ckpt")
    if not checkpoint.is_file():
        Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
        spec_path = Path(spec["run_dir"], "spec.json")
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        with open(Path(spec["run_dir"], "log.txt"), "w") as log:
            subprocess.run([sys.executable, str(Path(__file__).with_name("finetune_study.py")), "--worker",
                            str(spec_path)], env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return str(checkpoint)


def _truth_reference(setup: Setup, datamodule: Any, extractor: Any, seed: int, n: int) -> dict[str, Any]:
    """The ground truth's real side and its real-vs-real value (the grader's noise)."""
    import torch

    from lightning_regan.data.base import select_classes
    from lightning_regan.data.gaussians import sample_mixture
    from lightning_regan.fid.metric import FeatureDistances
    from lightning_regan.fid.mmd import RBFReference
    from lightning_regan.fid.stats import compute_real_statistics

    with torch.random.fork_rng(devices=[]):
        if setup.points:
            draw = lambda s: sample_mixture(datamodule.centers, datamodule.std, n,  # noqa: E731
                                            torch.Generator().manual_seed(s))[0]
            reference = RBFReference.of(draw(2_000_003 + seed))
            noise = [abs(float(reference.mmd2(draw(3_000_017 + seed + k)))) for k in range(3)]
            return {"rbf": reference, "noise": max(noise), "noise_note": "max |MMD²| of 3 real vs real draws"}
        classes = getattr(datamodule, "classes", None)

        def split(name: str) -> Any:  # a torchvision split, restricted to the data's classes (the fine-tune's 5-9)
            data = datamodule._load(name)
            return data if classes is None else select_classes(data, classes)

        test = split("test") if setup.torchvision else datamodule.reference_dataset()
        size = len(test)
        stats = compute_real_statistics(test, extractor, size)
        metric = FeatureDistances(stats.num_features)
        metric.set_real(stats)
        if setup.torchvision:  # real vs real: as many training images as the grader's generated samples
            train = split("train")
            idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
            other, note = torch.utils.data.Subset(train, idx.tolist()), f"FID of {n} training images vs the test split"
        else:  # no split (digits): n images drawn with replacement from the set, i.e. a perfect model of it
            idx = torch.randint(size, (n,), generator=torch.Generator().manual_seed(seed))
            other, note = torch.utils.data.Subset(test, idx.tolist()), f"FID of {n} images resampled from the set vs the set"
        feats = compute_real_statistics(other, extractor, n, keep_features=True).features
        metric.update(feats)
        noise = float(metric.compute()["fid"])
        metric.reset_fake()
        return {"metric": metric, "noise": noise, "noise_note": note, "real_size": size}


def train_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (setup, seed) for its budget and record the monitor's metrics and the truth at every evaluation."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    from lightning_regan.builders import (apply_init_from, build_callbacks, build_datamodule, build_models, build_module,
                                          read_init_from)
    from lightning_regan.callbacks import EarlyTermination, FIDMonitor
    from lightning_regan.callbacks.best_generator import CONFIRM_FACTOR
    from lightning_regan.cli.train import validate_config
    from lightning_regan.config import compose_config, drop_unselected
    from lightning_regan.data.gaussians import mode_coverage
    from lightning_regan.fid.extractors import build_extractor
    from lightning_regan.module import max_steps_for

    torch.set_num_threads(1)
    setup = SETUPS[spec["setup"]]
    n = spec["truth_samples"]
    stopping: EarlyTermination = instantiate(compose_config(_overrides(setup, spec)).early_stopping)
    divergence = next(r for r in stopping.rules.values() if r.reason.value == "divergence")
    divergence_state = divergence.new_state()
    cfg = compose_config([*_overrides(setup, spec), *COMMON, "early_stopping=none"])
    drop_unselected(cfg)
    validate_config(cfg)
    pretrained = read_init_from(cfg)  # the fine-tune setup: init_from, as regan-train reads it
    if not setup.points:  # the monitor's classifier trained or found in its cache before seeding and timing (v8)
        warm = build_datamodule(cfg)
        warm.setup("fit")
        with torch.random.fork_rng(devices=[]):
            build_extractor(cfg.callbacks.fid.get("feature_extractor", "auto"), warm)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, *build_models(cfg, tuple(datamodule.shape)))
    if pretrained is not None:
        apply_init_from(cfg, module, pretrained, tuple(datamodule.shape))
    callbacks = build_callbacks(cfg)
    monitor = next(cb for cb in callbacks if isinstance(cb, FIDMonitor))
    noise = torch.randn(n, int(cfg.model.latent_dim), generator=torch.Generator().manual_seed(10_000 + spec["seed"]))

    class Recorder(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.reference: Optional[dict[str, Any]] = None
            self.time_s = 0.0
            self.confirm_s = 0.0
            self.last_g = -1
            self.divergence_step: Optional[int] = None
            self.first_exploded: Optional[int] = None

        def truth(self, pl_module: Any) -> dict[str, float]:
            if self.reference is None:
                self.reference = _truth_reference(setup, datamodule, monitor.extractor, spec["seed"], n)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                fake = torch.cat([pl_module.generate(z=z) for z in noise.split(1000)])
                if setup.points:
                    cover = mode_coverage(fake, datamodule.centers, datamodule.std)
                    return {"truth": float(self.reference["rbf"].mmd2(fake)), "hq_fraction": cover["hq_fraction"],
                            "modes": cover["modes_covered"]}
                metric = self.reference["metric"]
                metric.reset_fake()
                for chunk in fake.split(1000):
                    metric.update(monitor.extractor(chunk))
                return {"truth": float(metric.compute()["fid"])}

        def confirm(self, trainer: Any, pl_module: Any) -> dict[str, float]:
            """The stop metrics re-scored as ``BestGenerator``'s confirmation would (its default sample and seed)."""
            start = time.perf_counter()
            values = monitor.score(trainer, pl_module, CONFIRM_FACTOR * monitor.num_samples, monitor.seed + 1)
            self.confirm_s += time.perf_counter() - start
            return values

        def record(self, trainer: Any, pl_module: Any) -> None:
            """The monitor's latest evaluation (if not recorded yet), with the truth and the confirmation's score."""
            if not monitor.history or (self.rows and self.rows[-1]["g_step"] == monitor.history[-1][0]):
                return
            start = time.perf_counter()
            logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.rows.append({"g_step": int(monitor.history[-1][0]), "metrics": logged,
                              "confirm": self.confirm(trainer, pl_module), **self.truth(pl_module)})
            self.time_s += time.perf_counter() - start

        def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.record(trainer, pl_module)  # a fine-tune's starting generator, evaluated at G step 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            g = int(pl_module.g_steps)
            if g != self.last_g and g > 0:
                self.last_g = g
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in divergence.keys}
                if self.first_exploded is None and any(
                        not math.isfinite(v) or (ceiling is not None and abs(v) > ceiling)
                        for v, ceiling in ((metrics.get(divergence.d_loss_key), divergence.d_loss_ceiling),
                                           (metrics.get(divergence.g_loss_key), divergence.g_loss_ceiling))
                        if v is not None):
                    self.first_exploded = g
                if self.divergence_step is None and divergence_state.update(g, metrics)[0]:
                    self.divergence_step = g
            self.record(trainer, pl_module)

    recorder = Recorder()
    trainer = instantiate(cfg.trainer, max_steps=max_steps_for(spec["max_g_steps"], module.n_critic),
                          callbacks=[*callbacks, recorder], logger=False, enable_checkpointing=False,
                          default_root_dir=spec["run_dir"])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - start
    ref = recorder.reference or {}
    return {
        "spec": spec, "setup": spec["setup"], "seed": spec["seed"], "kind": setup.kind,
        "max_g_steps": spec["max_g_steps"], "every": spec["every"], "g_steps": int(module.g_steps),
        "extractor": monitor.extractor_name, "monitor_samples": monitor.num_samples, "fit_wall_s": wall,
        "recorder_s": recorder.time_s, "confirm_s": recorder.confirm_s,
        "confirm_samples": CONFIRM_FACTOR * monitor.num_samples, "confirm_seed": monitor.seed + 1,
        "init_from": None if module.initialized_from is None else str(spec.get("init_from")),
        "monitor_s": monitor.eval_time_s + monitor.setup_time_s, "monitor_setup_s": monitor.setup_time_s,
        "grader_noise": ref.get("noise"), "grader_noise_note": ref.get("noise_note"),
        "grader_real_size": ref.get("real_size", n), "evaluations": recorder.rows,
        "divergence_g_step": recorder.divergence_step, "first_exploded_g_step": recorder.first_exploded,
        "divergence_warmup": int(getattr(divergence, "warmup_g_steps", 0)),
    }


def grader_noise(record: dict[str, Any]) -> dict[str, Any]:
    """The grader's real-vs-real noise of a recorded run, computed again (no training): what the worker records."""
    import torch

    from lightning_regan.builders import build_datamodule
    from lightning_regan.config import compose_config
    from lightning_regan.fid.extractors import build_extractor

    torch.set_num_threads(1)
    setup, spec = SETUPS[record["setup"]], record["spec"]
    cfg = compose_config([*_overrides(setup, spec), *COMMON])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    extractor = None if setup.points else build_extractor(cfg.callbacks.fid.get("feature_extractor", "auto"), datamodule)
    ref = _truth_reference(setup, datamodule, extractor, spec["seed"], spec["truth_samples"])
    return {"grader_noise": ref["noise"], "grader_noise_note": ref["noise_note"]}


def _worker(specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        record = train_one(spec)
        Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
        Path(spec["run_dir"], "record.json").write_text(json.dumps(record))
        print(f"{spec['setup']} seed {spec['seed']}: {record['fit_wall_s']:.0f} s", flush=True)


def _finished(spec: dict[str, Any]) -> Optional[dict[str, Any]]:
    path = Path(spec["run_dir"], "record.json")
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("spec") == spec:
            return saved
    return None


def execute(groups: list[list[dict[str, Any]]], jobs: int) -> list[dict[str, Any]]:
    """Each group (the runs of one setup) in one worker process, ``jobs`` processes at a time; finished runs are
    read back, so an interrupted study continues where it stopped."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

    def run(group: list[dict[str, Any]]) -> None:
        todo = [s for s in group if _finished(s) is None]
        if not todo:
            return
        work = Path(todo[0]["run_dir"]).parent
        work.mkdir(parents=True, exist_ok=True)
        with open(work / f"{todo[0]['setup']}-{todo[0]['seed']}.log", "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(todo)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=work)
        if proc.returncode:
            raise RuntimeError(f"{todo[0]['setup']} failed (exit {proc.returncode}); see {log.name}")

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, groups))
    runs = []
    for spec in (s for g in groups for s in g):
        saved = _finished(spec)
        if saved is None:
            raise RuntimeError(f"{spec['setup']} seed {spec['seed']} left no record")
        runs.append(saved)
    return runs


# ---------------------------------------------------------------------------------------------- replay
@functools.lru_cache(maxsize=None)
def _candidate_rules(setup_name: str, candidate: str, spec_json: str) -> Any:
    from hydra.utils import instantiate

    from lightning_regan.config import compose_config

    group, image_metric, point_metric = CANDIDATES[candidate]
    setup = SETUPS[setup_name]
    spec = json.loads(spec_json)
    extra = [] if group is None else [f"early_stopping={group}"]
    metric = point_metric if setup.points else image_metric
    if metric is not None:
        extra.append(f"stop_metric={metric}")
    cfg = compose_config([*_overrides(setup, spec), *extra])
    return instantiate(cfg.early_stopping)


def candidate_rules(run: dict[str, Any], candidate: str) -> Any:
    """The ``EarlyTermination`` of the run's own config for ``candidate`` (the product's rule objects; composed once
    per setup and budget: the seed and the run's folder do not reach the rules, and replay only reads them)."""
    spec = {k: v for k, v in run["spec"].items() if k not in ("seed", "run_dir")}
    return _candidate_rules(run["setup"], candidate, json.dumps({**spec, "seed": 0, "run_dir": "/tmp/unused"},
                                                                sort_keys=True))


def product_rows(run: dict[str, Any], every: Optional[int] = None) -> list[int]:
    """Indices of the evaluations a user's run makes: those at multiples of the setup's own cadence (``every``, default
    :func:`default_cadence`; the study may evaluate more often, for the lag), and G step 0 (a fine-tune's start)."""
    every = default_cadence(run["setup"]) if every is None else every
    if every <= run["every"] or run["spec"].get("quick"):  # --quick: tiny budgets, every evaluation
        return list(range(len(run["evaluations"])))
    return [i for i, r in enumerate(run["evaluations"]) if r["g_step"] % every == 0]


def confirmed_winner(rows: list[dict[str, Any]], seen: list[int], decision: str, mode: str,
                     top_k: int = 3) -> tuple[Optional[int], bool]:
    """What ``BestGenerator(top_k, confirm_samples=4 x monitor)`` hands back among the evaluations ``seen``: the
    ``top_k`` best by the logged ``decision`` metric (earlier first among equals), re-scored by the recorded
    confirmation score (``row["confirm"][decision]``), the best of them. Returns (index, whether confirmed): unconfirmed
    (the best so far) when the rows carry no confirmation score (records before v8) or fewer than two candidates."""
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted(seen, key=lambda i: (sign * rows[i]["metrics"][decision], i))[:top_k]
    if not ranked:
        return None, False
    scores = [(rows[i].get("confirm") or {}).get(decision) for i in ranked]
    if len(ranked) < 2 or not any(_finite(v) for v in scores):
        return ranked[0], False
    best = ranked[0]
    for i, v in zip(ranked, scores):  # as BestGenerator._confirm: the first candidate unless another beats it
        current = (rows[best].get("confirm") or {}).get(decision)
        if _finite(v) and (not _finite(current) or sign * v < sign * current):
            best = i
    return best, True


def replay(run: dict[str, Any], candidate: str, every: Optional[int] = None) -> dict[str, Any]:
    """Where ``candidate`` stops ``run``, why, and which evaluation's generator it hands over: the best so far
    (``handed_index``) and the best-of confirmation's winner (``confirmed_index``, what the product hands back).

    The rules see the evaluations a user's run makes (:func:`product_rows`, at ``every`` G steps, default the setup's
    own cadence) and are prepared as at the start of the fit (:meth:`EarlyTermination.prepare_states`): the budget,
    and whether the run starts from trained weights (``init_from``: a fine-tune)."""
    stopping = candidate_rules(run, candidate)
    rules = {name: rule for name, rule in stopping.rules.items() if rule.cadence == "evaluation"}
    decision = next(iter(rules.values())).monitor
    mode = next(iter(rules.values())).mode
    every_rows = run["evaluations"]
    rows = [every_rows[i] for i in product_rows(run, every)]
    div = run["divergence_g_step"]
    hit = stopping.replay(((row["g_step"], row["metrics"]) for row in rows if div is None or row["g_step"] < div),
                          run["max_g_steps"], run.get("init_from") or run["spec"].get("init_from"))
    stop, reason = (None, "max_steps") if hit is None else (hit[0], hit[2].value)
    if div is not None and (stop is None or div < stop):
        stop, reason = div, "divergence"
    if stop is None:
        stop = run["g_steps"]
    index = {id(r): i for i, r in enumerate(every_rows)}
    seen = [index[id(r)] for r in rows if r["g_step"] <= stop and _finite(r["metrics"].get(decision))]
    sign = 1.0 if mode == "min" else -1.0
    handed = min(seen, key=lambda i: (sign * every_rows[i]["metrics"][decision], i)) if seen else None
    confirmed, checked = confirmed_winner(every_rows, seen, decision, mode)
    return {"stop_g_step": stop, "reason": reason, "handed_index": handed, "metric": decision,
            "confirmed_index": confirmed, "confirmed": checked}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def truth_reference(run: dict[str, Any]) -> dict[str, Any]:
    """The full run's best truth, its tolerance (max(eps, grader noise)), the eps-oracle and whether it peaked."""
    rows = [r for r in run["evaluations"] if _finite(r["truth"])]
    if not rows:
        return {"best": None, "oracle_g_step": None, "flattened": False, "peaked": False}
    best = min(rows, key=lambda r: r["truth"])
    tol = max(EPSILON * abs(best["truth"]), run["grader_noise"] or 0.0)
    oracle = next(r for r in rows if r["truth"] <= best["truth"] + tol)
    last = run["evaluations"][-1]["truth"]
    peaked = not _finite(last) or last > best["truth"] + tol
    return {"best": best["truth"], "best_g_step": best["g_step"], "tolerance": tol, "oracle_g_step": oracle["g_step"],
            "flattened": oracle["g_step"] <= run["max_g_steps"] / 2 or peaked, "peaked": peaked, "last": last}


def spearman(a: list[float], b: list[float]) -> Optional[float]:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if _finite(x) and _finite(y)]
    if len(pairs) < 3:
        return None
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if not _finite(float(rho)) else float(rho)


def _hand_back(rows: list[dict[str, Any]], idx: Optional[int], ref: dict[str, Any]) -> dict[str, Any]:
    """The truth of the generator handed back (evaluation ``idx``), its gap to the run's best and whether within."""
    handed = rows[idx]["truth"] if idx is not None else None
    gap = within = None
    if handed is not None and ref["best"] is not None and _finite(handed):
        gap = (handed - ref["best"]) / abs(ref["best"]) if ref["best"] else None
        within = handed <= ref["best"] + ref["tolerance"]
    elif ref["best"] is not None:
        within = False
    return {"g_step": rows[idx]["g_step"] if idx is not None else None, "truth": handed, "gap": gap, "within": within}


def grade(run: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """The outcome graded on the truth. ``handed_*``, ``gap`` and ``within`` are the generator the product hands back:
    the best-of confirmation's winner where the record has its scores (v8), else the best so far; ``best_so_far_*``
    the best logged value's generator (what the product hands back with ``callbacks.best_generator.top_k=1``)."""
    ref = truth_reference(run)
    rows = run["evaluations"]
    best_so_far = _hand_back(rows, outcome["handed_index"], ref)
    confirmed = _hand_back(rows, outcome.get("confirmed_index", outcome["handed_index"]), ref)
    # A fine-tune is evaluated at G step 0 too: an oracle there counts as the first evaluation after it, so that the
    # lag stays a ratio of G steps trained (as in finetune_study.py).
    oracle = ref["oracle_g_step"]
    if oracle == 0:
        oracle = min((r["g_step"] for r in rows if r["g_step"] > 0), default=None)
    lag = outcome["stop_g_step"] / oracle if oracle else None
    return {"setup": run["setup"], "seed": run["seed"], "kind": run["kind"], "budget": run["max_g_steps"],
            "stop_g_step": outcome["stop_g_step"], "reason": outcome["reason"], "metric": outcome["metric"],
            "confirmed": bool(outcome.get("confirmed")), "handed_g_step": confirmed["g_step"],
            "handed_truth": confirmed["truth"], "gap": confirmed["gap"], "within": confirmed["within"],
            "best_so_far_g_step": best_so_far["g_step"], "best_so_far_truth": best_so_far["truth"],
            "best_so_far_gap": best_so_far["gap"], "best_so_far_within": best_so_far["within"],
            "best_truth": ref["best"], "best_g_step": ref.get("best_g_step"), "last_truth": ref.get("last"),
            "oracle_g_step": ref["oracle_g_step"], "tolerance": ref.get("tolerance"), "flattened": ref["flattened"],
            "peaked": ref["peaked"], "lag": lag, "saving": 1 - outcome["stop_g_step"] / run["max_g_steps"]}


def _median(values: list[Any]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def signal_fidelity(runs: list[dict[str, Any]], signal_of: dict[str, str]) -> dict[str, Any]:
    """Per setup, the median over runs of the Spearman correlation of each signal with the truth."""
    out: dict[str, Any] = {}
    for name in sorted({r["setup"] for r in runs if r["kind"] == "healthy"}):
        own = [r for r in runs if r["setup"] == name]
        per = {}
        for signal in SIGNALS:
            rhos = [spearman([e["metrics"].get(signal) for e in r["evaluations"]],
                             [e["truth"] for e in r["evaluations"]]) for r in own]
            if any(v is not None for v in rhos):
                per[signal] = {"median": _median(rhos), "runs": rhos}
        out[name] = {"decision_signal": signal_of[name], "signals": per}
    return out


def summarize(graded: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    healthy = [g for g in graded if g["kind"] == "healthy"]
    lagged = [g for g in healthy if g["flattened"] and g["lag"] is not None]
    peaked = [g for g in healthy if g["peaked"]]
    diverging = [g for g in graded if g["kind"] == "diverging"]
    by_run = {(r["setup"], r["seed"]): r for r in runs}

    def on_time(g: dict[str, Any]) -> bool:
        run = by_run[(g["setup"], g["seed"])]
        if run["first_exploded_g_step"] is None:
            return g["reason"] == "divergence"
        start = max(run["first_exploded_g_step"], run["divergence_warmup"])
        return g["reason"] == "divergence" and g["stop_g_step"] - start <= run["every"]

    collapsing = [g for g in graded if g["kind"] == "collapsing" and g["peaked"]]

    def hand_back(prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}gap_within_share": (sum(bool(g[f"{prefix}within"]) for g in healthy) / len(healthy)) if healthy
            else None,
            f"{prefix}gap_median": _median([max(g[f"{prefix}gap"], 0.0) if g[f"{prefix}gap"] is not None else None
                                            for g in healthy]),
            f"{prefix}peaked_stopped_share": (sum(g["stop_g_step"] < g["budget"] and bool(g[f"{prefix}within"])
                                                  for g in peaked) / len(peaked)) if peaked else None,
        }

    return {
        "healthy_runs": len(healthy), "lag_runs": len(lagged), "lag_median": _median([g["lag"] for g in lagged]),
        "lag_max": max((g["lag"] for g in lagged), default=None),
        **hand_back(""), **hand_back("best_so_far_"), "confirmed_runs": sum(g["confirmed"] for g in healthy),
        "peaked_runs": len(peaked),
        "diverging_within_one_share": (sum(on_time(g) for g in diverging) / len(diverging)) if diverging else None,
        "healthy_called_diverged_or_collapsed": sum(g["reason"] in ("divergence", "collapsed") for g in healthy),
        "collapsing_runs": len(collapsing),
        "collapsing_better_than_last": sum(
            g["handed_truth"] is not None and _finite(g["handed_truth"]) and
            (not _finite(g["last_truth"]) or g["handed_truth"] < g["last_truth"]) for g in collapsing),
        "saving_median": _median([g["saving"] for g in healthy]),
    }


def seed_sets(report: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(selection, held-out) seeds of a record: its ``seeds`` (v8), its targets' (v7), else the module's constants."""
    seeds = report.get("seeds") or (report.get("targets") or {}).get("seeds") or {}
    return (tuple(seeds.get("selection", SELECTION_SEEDS)), tuple(seeds.get("held_out", HELD_OUT_SEEDS)))


def analyse(runs: list[dict[str, Any]], seeds: Optional[tuple[tuple[int, ...], tuple[int, ...]]] = None) -> dict[str, Any]:
    selection_seeds, held_out_seeds = seeds or (SELECTION_SEEDS, HELD_OUT_SEEDS)
    graded = {c: [grade(r, replay(r, c)) for r in runs] for c in CANDIDATES}

    def part(rows: list[dict[str, Any]], seeds: tuple[int, ...]) -> dict[str, Any]:
        return summarize([g for g in rows if g["seed"] in seeds], [r for r in runs if r["seed"] in seeds])

    selection = {c: part(rows, selection_seeds) for c, rows in graded.items()}
    # The choice, on the selection seeds only: most healthy runs within tolerance, then the smaller median lag.
    chosen = min(CANDIDATES, key=lambda c: (-(selection[c]["gap_within_share"] or 0),
                                            selection[c]["lag_median"] or math.inf))
    held_out = {c: part(rows, held_out_seeds) for c, rows in graded.items()}
    signal_of = {}
    for r in runs:
        signal_of.setdefault(r["setup"], next(g["metric"] for g in graded["product"] if g["setup"] == r["setup"]))
    held_runs = [r for r in runs if r["seed"] in held_out_seeds]
    fidelity = signal_fidelity(held_runs, signal_of)
    selection_runs = [r for r in runs if r["seed"] in selection_seeds]
    return {"graded": graded, "selection": selection, "held_out": held_out, "chosen": chosen,
            "fidelity_held_out": fidelity, "fidelity_selection": signal_fidelity(selection_runs, signal_of),
            "fidelity_all": signal_fidelity(runs, signal_of)}


@functools.lru_cache(maxsize=None)
def default_cadence(setup_name: str) -> int:
    """``callbacks.fid.every_n_g_steps`` of the setup's own config (the study evaluates more often, for the lag)."""
    from lightning_regan.config import compose_config

    cfg = compose_config([*SETUPS[setup_name].overrides, "output_dir=/tmp/unused"])
    return int(cfg.callbacks.fid.every_n_g_steps)


def monitor_share(run: dict[str, Any], every: Optional[int] = None) -> float:
    """The monitor's share of the training's wall time (the recorder's time left out), as measured at the study's
    cadence, or at ``every`` G steps: the measured cost per evaluation times the evaluations of a run at ``every``."""
    monitor = run["monitor_s"]
    # recorder_s: the truth and (v8) the confirmation's re-scoring (confirm_s), both study-only
    train = max(run["fit_wall_s"] - run["recorder_s"] - monitor, 1e-9)
    if every is not None:
        at_start = bool(run["evaluations"]) and run["evaluations"][0]["g_step"] == 0  # a fine-tune's G step 0
        setup = run.get("monitor_setup_s", 0.0)  # once per run (v8 records it apart; before, it was scaled too)
        monitor = setup + (monitor - setup) * (run["g_steps"] // every + at_start) / max(len(run["evaluations"]), 1)
    return monitor / (train + monitor)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    analysis, runs = report["analysis"], report["runs"]
    chosen = analysis["chosen"]
    held = analysis["held_out"][chosen]
    fid = analysis["fidelity_held_out"]
    medians = {s: v["signals"].get(v["decision_signal"], {}).get("median") for s, v in fid.items()}
    selection_seeds, held_out_seeds = seed_sets(report)
    held_runs = [r for r in runs if r["seed"] in held_out_seeds]
    healthy = [r for r in held_runs if r["kind"] == "healthy"]
    cost = [monitor_share(r) for r in healthy]
    cost_default = [monitor_share(r, default_cadence(r["setup"])) for r in healthy]
    return {
        "chosen": chosen,
        "signal_spearman_min_setup_median": min((v for v in medians.values() if v is not None), default=None),
        "signal_spearman_by_setup": medians,
        "lag_median": held["lag_median"], "lag_max": held["lag_max"],
        "gap_within_share": held["gap_within_share"], "gap_median": held["gap_median"],
        "peaked_stopped_share": held["peaked_stopped_share"],
        "hand_back": "confirmed" if held.get("confirmed_runs") else "best so far",
        "best_so_far_gap_within_share": held.get("best_so_far_gap_within_share"),
        "best_so_far_gap_median": held.get("best_so_far_gap_median"),
        "best_so_far_peaked_stopped_share": held.get("best_so_far_peaked_stopped_share"),
        "diverging_within_one_share": held["diverging_within_one_share"],
        "healthy_called_diverged_or_collapsed": held["healthy_called_diverged_or_collapsed"],
        "collapsing_better_than_last": f"{held['collapsing_better_than_last']} of {held['collapsing_runs']}",
        "monitor_cost_share": _median(cost_default), "monitor_cost_share_max": max(cost_default, default=None),
        "monitor_cost_share_by_setup": {name: _median([c for r, c in zip(healthy, cost_default) if r["setup"] == name])
                                        for name in sorted({r["setup"] for r in healthy})},
        "monitor_cost_share_study_cadence": _median(cost),
        "command": report["command"], "date": report["date"], "seeds": {"selection": list(selection_seeds),
                                                                          "held_out": list(held_out_seeds)},
    }


# ---------------------------------------------------------------------------------------------- report
def _f(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{100 * value:.1f} %" if pct else f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    a, t = report["analysis"], report["targets"]
    selection_seeds, held_out_seeds = seed_sets(report)
    lines = [f"# Stop decision graded on ground truth (study {report.get('version', 'v7')})", "",
             f"Command: `{report['command']}`; {report['date']}; wall {report['wall_time_s'] / 60:.0f} min on "
             f"{report['machine']['cpus']} CPUs ({report['jobs']} workers). Chosen on the selection seeds "
             f"{list(selection_seeds)}: **{a['chosen']}**; held-out seeds {list(held_out_seeds)}. The generator "
             "handed back: the best-of confirmation's winner (top 3 by the stop metric re-scored with 4x the "
             "monitor's samples) where the runs recorded its scores (v8), else the best so far.", "",
             "## Setups", ""]
    lines += [f"- `{name}` ({s.kind}, {s.max_g_steps} G steps, recorded every {s.every}, the rule replayed every "
              f"{default_cadence(name)} as a user's run evaluates): {s.description}"
              for name, s in SETUPS.items() if any(r["setup"] == name for r in report["runs"])]
    lines += ["", "## Targets (held-out seeds, chosen candidate)", "", "| target | figure |", "|---|---|"]
    lines += [f"| {k} | {_f(v) if not isinstance(v, dict) else json.dumps({s: _f(x) for s, x in v.items()})} |"
              for k, v in t.items() if k not in ("command", "date", "seeds")]
    head = ("| candidate | healthy within tol. | gap median | best so far: within, gap median | lag median | lag max "
            "| peaked stopped | diverging on time | healthy called diverged/collapsed | saving median |")
    for title, table in (("held-out seeds", a["held_out"]), ("selection seeds", a["selection"])):
        lines += ["", f"## Candidates, {title}", "", head, "|---|---|---|---|---|---|---|---|---|---|"]
        for c, s in table.items():
            lines.append(f"| {c} | {_f(s['gap_within_share'], True)} of {s['healthy_runs']} | {_f(s['gap_median'], True)} "
                         f"| {_f(s.get('best_so_far_gap_within_share'), True)}, "
                         f"{_f(s.get('best_so_far_gap_median'), True)} "
                         f"| {_f(s['lag_median'])} ({s['lag_runs']} runs) | {_f(s['lag_max'])} | "
                         f"{_f(s['peaked_stopped_share'], True)} of {s['peaked_runs']} | "
                         f"{_f(s['diverging_within_one_share'], True)} | {s['healthy_called_diverged_or_collapsed']} | "
                         f"{_f(s['saving_median'], True)} |")
    for title, key in (("held-out seeds", "fidelity_held_out"), ("selection seeds: the signal's choice", "fidelity_selection")):
        lines += ["", f"## Signal fidelity ({title}): median per-run Spearman with the truth", "",
                  "| setup | decision signal | " + " | ".join(SIGNALS) + " |", "|---|---|" + "---|" * len(SIGNALS)]
        for name, v in a[key].items():
            lines.append(f"| {name} | {v['decision_signal']} | " + " | ".join(
                _f(v["signals"].get(s, {}).get("median")) for s in SIGNALS) + " |")
    lines += ["", "## Runs (chosen candidate)", "",
              "| setup | seed | stop | reason | handed (G step, truth) | best so far (G step, truth) | best truth (G step) "
              "| last truth | oracle | lag | gap | within | grader noise |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    noise = {(r["setup"], r["seed"]): r["grader_noise"] for r in report["runs"]}
    for g in a["graded"][a["chosen"]]:
        lines.append(f"| {g['setup']} | {g['seed']} | {g['stop_g_step']} | {g['reason']} | {g['handed_g_step']}, "
                     f"{_f(g['handed_truth'])}{'' if g.get('confirmed') else ' (unconfirmed)'} | "
                     f"{g.get('best_so_far_g_step')}, {_f(g.get('best_so_far_truth'))} | "
                     f"{_f(g['best_truth'])} ({g['best_g_step']}) | {_f(g['last_truth'])} | "
                     f"{g['oracle_g_step']} | {_f(g['lag'])} | {_f(g['gap'], True)} | {g['within']} | "
                     f"{_f(noise[(g['setup'], g['seed'])])} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["analysis"] = analyse(report["runs"], seed_sets(report))
    report["targets"] = targets(report)
    (out / "stopping_study.json").write_text(json.dumps(report, indent=1))
    (out / "stopping_study.md").write_text(markdown(report))
    (out / "stopping_targets.json").write_text(json.dumps(report["targets"], indent=1))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/stopping_study"))
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--quick", action="store_true", help="tiny budgets and samples (a smoke test)")
    parser.add_argument("--replay", type=Path, help="re-analyse a committed stopping_study.json (no training)")
    parser.add_argument("--renoise", nargs="+", default=[], choices=list(SETUPS),
                        help="with --replay: compute these setups' grader noise again (no training)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"seeds to train (default: selection {list(SELECTION_SEEDS)} and held-out "
                             f"{list(HELD_OUT_SEEDS)}; held-out seeds train first)")
    parser.add_argument("--selection-seeds", nargs="+", type=int, default=None,
                        help="the seeds the candidate is chosen on (default: the record's, else "
                             f"{list(SELECTION_SEEDS)})")
    parser.add_argument("--held-out-seeds", nargs="+", type=int, default=None,
                        help=f"the seeds the targets are reported on (default: the record's, else {list(HELD_OUT_SEEDS)})")
    parser.add_argument("--with-runs", type=Path, default=None,
                        help="a stopping_study.json whose runs are taken as they are (not trained again) where this "
                             "study's work folder has none of that (setup, seed), e.g. v7's seeds 10-17")
    parser.add_argument("--no-train", action="store_true",
                        help="assemble the report from the finished runs in --work (and --with-runs) only; the runs "
                             "not trained yet are listed in the report's 'missing'")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    override = {**({"selection": args.selection_seeds} if args.selection_seeds else {}),
                **({"held_out": args.held_out_seeds} if args.held_out_seeds else {})}
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    if args.replay:
        report = json.loads(args.replay.read_text())
        if override:
            selection, held_out = seed_sets(report)
            report["seeds"] = {"selection": list(selection), "held_out": list(held_out), **override}
        for run in report["runs"]:
            if run["setup"] in args.renoise:
                run.update(grader_noise(run))
        if args.renoise:
            report["command"] += (f" && python studies/stopping_study.py --replay {args.replay} --renoise "
                                  f"{' '.join(args.renoise)} --out {args.out}")
        write(report, args.out)
        print((args.out / "stopping_study.md").read_text())
        return 0
    selection, held_out = ((0,), (1,)) if args.quick else (SELECTION_SEEDS, HELD_OUT_SEEDS)
    seeds = {"selection": list(selection), "held_out": list(held_out), **override}
    wanted = args.seeds or [*seeds["held_out"], *seeds["selection"]]
    earlier = json.loads(args.with_runs.read_text())["runs"] if args.with_runs else []
    start = time.perf_counter()
    init_from = pretrain(args.work, args.quick) if any(SETUPS[n].pretrained for n in args.setups) else None
    # One run per group, in this order: the held-out seeds of every setup first, the heaviest setups last.
    order = ("finetune", "ring", "fmnist_600", "digits", "diverging", "ring_collapse", "mnist_fast")
    groups, reused = [], []
    for seed in sorted(wanted, key=lambda s: (s not in seeds["held_out"], s)):
        for name in sorted(args.setups, key=lambda n: order.index(n) if n in order else len(order)):
            s = SETUPS[name]
            spec = {"setup": name, "seed": seed, "run_dir": str(args.work / f"{name}-s{seed}"),
                    "max_g_steps": 12 if args.quick else s.max_g_steps, "every": 4 if args.quick else s.every,
                    "truth_samples": 300 if args.quick else TRUTH_SAMPLES, **({"quick": True} if args.quick else {}),
                    **({"init_from": init_from} if s.pretrained else {})}
            old = next((r for r in earlier if (r["setup"], r["seed"]) == (name, seed)), None)
            if old is not None and _finished(spec) is None:
                reused.append(old)
            else:
                groups.append([spec])
    missing = []
    if args.no_train:
        missing = [f"{g[0]['setup']}-s{g[0]['seed']}" for g in groups if _finished(g[0]) is None]
        groups = [g for g in groups if _finished(g[0]) is not None]
    runs = [*reused, *execute(groups, args.jobs)]
    runs.sort(key=lambda r: ([*SETUPS].index(r["setup"]) if r["setup"] in SETUPS else len(SETUPS), r["seed"]))
    command = "python studies/stopping_study.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    report = {"command": command.strip(), "version": "v8", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "jobs": args.jobs, "wall_time_s": time.perf_counter() - start,
              "epsilon": EPSILON, "truth_samples": TRUTH_SAMPLES, "seeds": seeds, "runs": runs,
              "runs_reused_from": str(args.with_runs) if args.with_runs else None, "missing": missing}
    write(report, args.out)
    print((args.out / "stopping_study.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
