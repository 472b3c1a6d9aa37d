"""FIDMonitor: the evaluation callback that logs ``val/fid`` (and ``val/mmd``, ``val/kid``, ``val/fid_inf``) every few
generator steps.

Evaluation only: it measures and logs; deciding to stop is :class:`~lightning_regan.callbacks.EarlyTermination`'s
job. The feature extractor and the metric live in the callback, never in the LightningModule, so no Inception
weights end up in checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_regan.callbacks.g_step import EVALUATION, GStepCallback, check_int, g_steps_of, is_due, publish_metrics
from lightning_regan.fid.coverage import knn_radii, noise_and_coverage
from lightning_regan.fid.extractors import (
    EXTRACTOR_CHOICES,
    ClassifierExtractor,
    build_extractor,
    extractor_name,
    extractor_num_features,
    resolve_extractor_spec,
)
from lightning_regan.fid.intra import IntraClassFID, load_or_compute_class_statistics
from lightning_regan.fid.data import RealSource, dataset_cache_key, real_source_of
from lightning_regan.fid.metric import FeatureDistances, sqrtm_psd
from lightning_regan.fid.mmd import DEFAULT_SCALES, check_scales
from lightning_regan.fid.stats import few_real_samples_warning, RealStatistics, real_side_from_payload, real_side_payload
from lightning_regan.fid.weights import PathLike
from lightning_regan.inputs import FixedInputs, generate, seeded_inputs
from lightning_regan.validation import check_bool

log = logging.getLogger(__name__)

FID_KEY = "val/fid"
KID_KEY = "val/kid"
#: Unbiased RBF-mixture MMD² of the same samples (:mod:`lightning_regan.fid.mmd`): the decision metric of point
#: data, where the Fréchet distance of identity features sees only means and covariances.
MMD_KEY = "val/mmd"
#: FID extrapolated to infinitely many samples from subsets of the same features (Chong & Forsyth 2020).
FID_INF_KEY = "val/fid_inf"
#: The G step the latest ``val/fid`` (and ``val/kid``) was measured at, logged with it.
FID_STEP_KEY = "val/fid_g_step"
#: Share of class-conditional samples that the FID classifier assigns to the class they were generated for.
CLASS_ACCURACY_KEY = "val/class_accuracy"
#: The FID's measurement noise (bootstrap standard deviation) and the coverage of the real data, logged with it.
FID_STD_KEY = "val/fid_std"
PRECISION_KEY = "val/precision"
RECALL_KEY = "val/recall"
#: Intra-class FID of class-conditional modules (mean of per-class FIDs), with ``intra_fid=True``.
INTRA_FID_KEY = "val/intra_fid"
#: The logged key of each value an evaluation publishes (``FeatureDistances`` names the mean KID ``kid_mean``).
LOGGED = {"fid": FID_KEY, "kid_mean": KID_KEY, "mmd": MMD_KEY, "fid_inf": FID_INF_KEY,
          "class_accuracy": CLASS_ACCURACY_KEY, "fid_std": FID_STD_KEY, "precision": PRECISION_KEY,
          "recall": RECALL_KEY, "intra_fid": INTRA_FID_KEY}
#: Values logged with their own ``<key>_g_step`` (the G step they were measured at), so a stop rule can read them.
SIGNALS = ("kid_mean", "mmd", "fid_inf", "intra_fid")
STATE_VERSION = 1


class FIDMonitor(GStepCallback):
    """Log the FID of the generator against real data every ``every_n_g_steps`` generator steps.

    At ``setup`` rank zero builds the feature extractor and the real statistics (from the disk cache when the
    DataModule has a ``cache_key()``) and broadcasts them. Each evaluation decodes ``num_samples`` FIXED inputs
    (``pl_module.sample_noise`` under ``seed``) with ``pl_module.generate`` (EMA generator when on), split over the
    ranks and reduced exactly through torchmetrics' state sync, so every rank publishes the same ``val/fid``
    (``val/kid``) with ``val/fid_g_step``, the G step it was measured at, into ``trainer.callback_metrics`` and every
    logger: ``ModelCheckpoint(monitor="val/fid")``, ``EarlyStopping`` and ``EarlyTermination`` read them there.

    For a class-conditional module (``pl_module.conditional``) the fixed inputs include labels
    (``pl_module.sample_labels`` under the same seed), and with classifier features the monitor also logs
    ``val/class_accuracy``: the share of generated samples that the classifier (trained on the real labels) assigns
    to the class they were generated for.

    Args:
        every_n_g_steps: Evaluate every this many G steps (``0`` never, except ``evaluate_on_train_end``).
        num_samples: Generated samples per evaluation.
        num_real_samples: Real samples for the statistics (the first ones of the reference data); default
            ``num_samples``.
        feature_extractor: ``"auto"`` (the DataModule's ``fid_feature_extractor``, else ``"identity"`` for
            points and ``"inception"`` for images), ``"inception"``, ``"classifier"``, ``"identity"`` or an
            ``nn.Module`` with ``num_features``.
        batch_size: Samples generated and encoded per batch.
        kid: Also log ``val/kid`` (mean over subsets).
        kid_subset_size: KID subset size (clipped to the sample counts).
        kid_subsets: Number of KID subsets.
        mmd: Also log ``val/mmd``, the unbiased MMD² with a mixture of RBF kernels (bandwidths ``mmd_scales`` times
            the real features' median pairwise distance) of the same generated samples to the real ones; the real
            side's kernel term is computed once per run. On by default: it is the configs' decision metric
            (``stop_metric: val/mmd``), for points (where FID of 2-D features is blind to modes) and images (where
            FID at the monitor's sample size floors on its bias; docs/studies/signal.md).
        mmd_scales: Bandwidths of ``val/mmd`` as multiples of the real features' median pairwise distance.
        fid_inf: Also log ``val/fid_inf``, the FID extrapolated to infinitely many samples from subsets of the same
            features (:func:`~lightning_regan.fid.metric.fid_infinity`; no extra generator pass).
        cache_dir: Folder of the statistics / classifier cache (default ``$REGAN_CACHE_DIR`` or
            ``~/.cache/lightning_regan``).
        seed: Seed of the fixed evaluation noise (and of KID's subsets).
        evaluate_on_train_end: Also evaluate when training ends (unless the last G step was just evaluated).
        evaluate_on_train_start: Also evaluate the starting generator, at G step 0, before the first training step;
            ``None``: when the module starts from trained weights (``pl_module.initialized_from`` is not ``None``, a
            fine-tune), so that the stop rule sees where it starts and ``BestGenerator`` can hand the starting
            generator back when the fine-tune never beats it.
        real_data: Real samples to use instead of the DataModule's (dataset, DataLoader or tensor); not cached
            on disk unless ``dataset_key`` is given.
        dataset_key: Cache key of ``real_data``.
        weights_path: Inception weights file (else found by ``resolve_inception_weights``).
        allow_download: Let torch-fidelity download the Inception weights when none is on disk.
        noise_draws: Also log ``val/fid_std``, the FID's measurement noise: the standard deviation over this many
            bootstrap resamples of the generated features (``0`` off).
        precision_recall: Also log ``val/precision`` and ``val/recall`` (Kynkäänniemi et al. 2019, ``k=pr_k``)
            of the generated against the real features (keeps the real features in memory).
        pr_k: Neighbourhood size of precision/recall.
        intra_fid: Class-conditional modules: also log ``val/intra_fid`` (and ``val/intra_fid_g_step``), the mean
            over classes of the FID of the samples generated for class k to the real samples of class k
            (:mod:`lightning_regan.fid.intra`; per-class real statistics from the first ``num_real_samples`` labelled
            real samples, cached). Ignored for unconditional modules.

    Attributes:
        history: ``[(g_step, fid), ...]``; ``kid_history`` likewise when ``kid``; ``signal_history``:
            ``{"mmd": [(g_step, value), ...], "fid_inf": [...]}`` for those that are on; ``extra_history``:
            ``[{"g_step", "fid_std", "precision", "recall"}, ...]`` when ``noise_draws`` or ``precision_recall``.
        eval_time_s: Total seconds spent in evaluations (not counting the real statistics, see ``setup_time_s``).
        last_fid: Latest FID or ``None``. ``evaluations``: number of evaluations.
        extractor: The feature extractor (after setup); ``extractor_name`` says which one was used.
    """

    stage = EVALUATION

    def __init__(
        self,
        every_n_g_steps: int = 1000,
        num_samples: int = 1000,
        num_real_samples: Optional[int] = None,
        feature_extractor: Union[str, nn.Module] = "auto",
        batch_size: int = 100,
        kid: bool = False,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        cache_dir: Optional[PathLike] = None,
        seed: int = 0,
        evaluate_on_train_end: bool = False,
        evaluate_on_train_start: Optional[bool] = None,
        real_data: Optional[RealSource] = None,
        dataset_key: Optional[str] = None,
        weights_path: Optional[PathLike] = None,
        allow_download: Optional[bool] = None,
        verbose: bool = True,
        noise_draws: int = 0,
        precision_recall: bool = False,
        pr_k: int = 3,
        intra_fid: bool = False,
        mmd: bool = True,
        mmd_scales: Sequence[float] = DEFAULT_SCALES,
        fid_inf: bool = False,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("every_n_g_steps", every_n_g_steps, 0), ("num_samples", num_samples, 2), ("batch_size", batch_size, 1),
            ("num_real_samples", num_samples if num_real_samples is None else num_real_samples, 2),
            ("kid_subset_size", kid_subset_size, 2), ("kid_subsets", kid_subsets, 1), ("pr_k", pr_k, 1),
            ("noise_draws", noise_draws, 0 if noise_draws == 0 else 2),
        ):
            check_int("FIDMonitor", name, value, minimum)
        if not isinstance(precision_recall, bool):
            raise ValueError(f"FIDMonitor: precision_recall must be true or false, got {precision_recall!r}.")
        if not isinstance(fid_inf, bool):
            raise ValueError(f"FIDMonitor: fid_inf must be true or false, got {fid_inf!r}.")
        self.mmd_scales = check_scales("FIDMonitor", mmd_scales)
        if not isinstance(feature_extractor, nn.Module) and feature_extractor not in EXTRACTOR_CHOICES:
            raise ValueError(
                f"FIDMonitor: feature_extractor must be one of {EXTRACTOR_CHOICES} or an nn.Module, got {feature_extractor!r}."
            )
        self.every_n_g_steps = every_n_g_steps
        self.num_samples = num_samples
        self.num_real_samples = num_real_samples if num_real_samples is not None else num_samples
        self.feature_extractor = feature_extractor
        self.batch_size = batch_size
        self.kid = bool(kid)
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.cache_dir = cache_dir
        self.seed = seed
        self.evaluate_on_train_end = evaluate_on_train_end
        if evaluate_on_train_start is not None and not isinstance(evaluate_on_train_start, bool):
            raise ValueError(f"FIDMonitor: evaluate_on_train_start must be true, false or null, got "
                             f"{evaluate_on_train_start!r}.")
        self.evaluate_on_train_start = evaluate_on_train_start
        self._start_due = False
        self.real_data = real_data
        self.dataset_key = dataset_key
        self.weights_path = weights_path
        self.allow_download = allow_download
        self.verbose = verbose
        self.noise_draws = noise_draws
        self.precision_recall = precision_recall
        self.pr_k = pr_k
        self.intra_fid = bool(intra_fid)
        self._intra: Optional[IntraClassFID] = None
        self.mmd = check_bool("FIDMonitor", "mmd", mmd)
        self.fid_inf = fid_inf
        self.signal_history: dict[str, list[tuple[int, float]]] = {}

        self.extra_history: list[dict[str, Any]] = []
        self.history: list[tuple[int, float]] = []
        self.kid_history: list[tuple[int, float]] = []
        self.eval_time_s = 0.0
        self.setup_time_s = 0.0
        self.last_fid: Optional[float] = None
        self.last_kid: Optional[float] = None
        self.evaluations = 0
        self.extractor: Optional[nn.Module] = None
        self.extractor_name: Optional[str] = None
        self.real_stats: Optional[RealStatistics] = None
        self._metric: Optional[FeatureDistances] = None
        self._real_constants: Optional[dict[str, Optional[Tensor]]] = None
        self._fixed_inputs = FixedInputs(num_samples, seed)
        #: ``[(g_step, class_accuracy), ...]`` for class-conditional modules with classifier features.
        self.class_accuracy_history: list[tuple[int, float]] = []
        self._last_eval_step: Optional[int] = None

    @property
    def state_key(self) -> str:
        spec = self.feature_extractor if isinstance(self.feature_extractor, str) else type(self.feature_extractor).__name__
        return self._generate_state_key(every_n_g_steps=self.every_n_g_steps, num_samples=self.num_samples, feature_extractor=spec)

    # ------------------------------------------------------------------ preparation
    @property
    def active(self) -> bool:
        """Whether it evaluates at all (``every_n_g_steps=0`` without ``evaluate_on_train_end``: never, and nothing
        is prepared for it)."""
        return self.every_n_g_steps > 0 or self.evaluate_on_train_end

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._metric is not None or not self.active:
            return
        datamodule = getattr(trainer, "datamodule", None)
        source = self.real_data if self.real_data is not None else real_source_of(datamodule)
        if source is None:
            return  # plain DataLoaders passed to fit(): prepared in on_train_start from trainer.train_dataloader
        self._prepare(trainer, datamodule, source)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if self._metric is None:
            self._prepare(trainer, getattr(trainer, "datamodule", None), trainer.train_dataloader)
        start = time.perf_counter()
        self._metric = self._metric.to(pl_module.device)
        self._metric.prepare(pl_module.device)  # square root of the real covariance, once per run
        self.extractor = self.extractor.to(pl_module.device)
        self.setup_time_s += time.perf_counter() - start
        wanted = self.evaluate_on_train_start
        if wanted is None:
            wanted = getattr(pl_module, "initialized_from", None) is not None
        self._start_due = bool(wanted) and self.every_n_g_steps > 0 and g_steps_of(trainer, pl_module) == 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The starting generator, before the first step (logged from a batch hook, as every evaluation is).
        if self._start_due:
            self._start_due = False
            self._record(trainer, pl_module, 0, self.evaluate(trainer, pl_module), in_training=True)

    def _prepare(self, trainer: L.Trainer, datamodule: Any, source: Optional[RealSource]) -> None:
        """Build the extractor and the real statistics (rank zero computes, the others receive them)."""
        start = time.perf_counter()
        if source is None:
            raise ValueError(
                "FIDMonitor: no real data. Use a DataModule with reference_dataset() (or train_dataloader()), or pass "
                "real_data=... to FIDMonitor."
            )
        strategy, is_zero = trainer.strategy, trainer.is_global_zero
        key = self.dataset_key
        if key is None and self.real_data is None:
            key = dataset_cache_key(datamodule)
        spec = resolve_extractor_spec(self.feature_extractor, datamodule)
        keep_features = self.kid or self.precision_recall or self.mmd or self.fid_inf
        extractor: Optional[nn.Module] = None
        payload: Optional[dict[str, Any]] = None
        error: Optional[BaseException] = None
        # DataLoader iterators draw a seed from the global RNG: keep training's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            try:
                if spec != "classifier" or is_zero:  # Inception weights are looked up on every rank (fail fast)
                    extractor = build_extractor(
                        spec, datamodule, reference=self.real_data if spec == "classifier" else None,
                        weights_path=self.weights_path, allow_download=self.allow_download, cache=self.cache_dir,
                        dataset_key=key,
                    )
                if is_zero:
                    payload = real_side_payload(
                        source, extractor.to(strategy.root_device), self.num_real_samples, dataset_key=key,
                        cache=self.cache_dir, batch_size=self.batch_size,
                        keep_features=keep_features, device=strategy.root_device,
                    )
                    module = trainer.lightning_module
                    if self.intra_fid and getattr(module, "conditional", False):
                        payload["intra"] = IntraClassFID(load_or_compute_class_statistics(
                            source, extractor, module.num_classes, self.num_real_samples, dataset_key=key,
                            cache=self.cache_dir, batch_size=self.batch_size, device=strategy.root_device)).to_payload()
            except Exception as exc:  # re-raised below, after telling the other ranks (no rank left waiting)
                error = exc
        if trainer.world_size > 1:
            if strategy.reduce_boolean_decision(error is not None, all=False):
                raise error or RuntimeError("FIDMonitor: preparing the FID failed on another rank; see its error.")
            payload = strategy.broadcast(payload, src=0)
        elif error is not None:
            raise error
        assert payload is not None
        # the classifier on the other ranks: rank zero's, from the payload
        self.extractor, self.real_stats = real_side_from_payload(payload, extractor)
        self.extractor_name = extractor_name(self.extractor)
        self._intra = IntraClassFID.from_payload(payload["intra"]) if "intra" in payload else None
        self._real_constants = None
        num_features = extractor_num_features(self.extractor)
        self._metric = FeatureDistances(num_features, kid=self.kid, kid_subsets=self.kid_subsets,
                                        kid_subset_size=self.kid_subset_size, seed=self.seed, fid_inf=self.fid_inf,
                                        mmd=self.mmd, mmd_scales=self.mmd_scales, num_samples=self.num_samples)
        self._metric.set_real(self.real_stats)
        self.setup_time_s += time.perf_counter() - start
        few = few_real_samples_warning(self.real_stats.num_samples, "raise callbacks.fid.num_real_samples, or use "
                                       "more real data")
        if few is not None and trainer.is_global_zero:
            log.warning("FIDMonitor: %s", few)
        if self.verbose:
            rank_zero_info(
                f"FIDMonitor: {self.extractor_name} features ({num_features}-d), real statistics of "
                f"{self.real_stats.num_samples} samples ({self.real_stats.source}, {self.setup_time_s:.1f} s)."
            )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Compute the FID (and KID) of ``pl_module.generate`` now. Collective under DDP: call on every rank."""
        if self._metric is None or self.extractor is None:
            raise RuntimeError("FIDMonitor.evaluate called before setup (run it inside trainer.fit).")
        start = time.perf_counter()
        rank, world = trainer.global_rank, trainer.world_size
        device = pl_module.device
        self._metric = self._metric.to(device)
        self.extractor = self.extractor.to(device)
        self._metric.reset_fake()
        noise, labels = self._fixed_inputs(pl_module)
        batches = noise[rank::world].split(self.batch_size)
        label_batches = [None] * len(batches) if labels is None else labels[rank::world].split(self.batch_size)
        # class accuracy: a conditional module with the features of a classifier of its classes
        with_classes = getattr(pl_module, "conditional", False) and isinstance(self.extractor, ClassifierExtractor)
        classifier = self.extractor.classifier if with_classes else None
        head = classifier.head if classifier is not None and classifier.num_classes == pl_module.num_classes else None
        correct = torch.zeros(2, dtype=torch.float64, device=device)  # [correct, total]
        kept: list[Tensor] = []
        with torch.random.fork_rng(devices=[]):  # a generator with noise layers must not move training's RNG
            for z, y in zip(batches, label_batches):
                features = self.extractor(generate(pl_module, z, y))
                self._metric.update(features)
                if self.noise_draws or self.precision_recall or self._intra is not None:
                    kept.append(features)
                if head is not None:
                    correct[0] += (head(features).argmax(1) == y.to(device)).sum()
                    correct[1] += y.numel()
        values = self._metric.compute()
        if head is not None:
            if world > 1:
                correct = trainer.strategy.reduce(correct, reduce_op="sum")
            values["class_accuracy"] = float(correct[0] / correct[1])
        if kept:  # labels in all_gather's order: rank 0's shard, then rank 1's, ...
            order = torch.cat([labels[r::world] for r in range(world)]) if labels is not None else None
            values.update(self._extras(trainer, torch.cat(kept), order))
        self.eval_time_s += time.perf_counter() - start
        self.evaluations += 1
        return values

    @property
    def scored_metrics(self) -> tuple[str, ...]:
        """The logged keys :meth:`score` returns (``val/fid``, and ``val/mmd``, ``val/kid``, ``val/fid_inf`` when on);
        empty when the monitor never evaluates (:attr:`active` false)."""
        if not self.active:
            return ()
        names = ("fid",) + (("mmd",) if self.mmd else ()) + (("kid_mean",) if self.kid else ()) \
            + (("fid_inf",) if self.fid_inf else ())
        return tuple(LOGGED[name] for name in names)

    @torch.no_grad()
    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, num_samples: int, seed: int) -> dict[str, float]:
        """The metrics of :attr:`scored_metrics` of ``pl_module.generate`` now, on ``num_samples`` inputs drawn under
        ``seed``, with the features and real side of the logged evaluations.

        Nothing is logged or recorded (no history, not counted in :attr:`eval_time_s`): what a decision callback
        calls to re-measure a generator with another sample (``BestGenerator``'s confirmation). Collective under DDP:
        call on every rank with the same arguments; every rank gets the same values.

        Returns:
            ``{"val/fid": ..., "val/mmd": ..., ...}`` keyed as logged.
        """
        if self._metric is None or self.extractor is None:
            raise RuntimeError("FIDMonitor.score called before setup (run it inside trainer.fit).")
        check_int("FIDMonitor.score", "num_samples", num_samples, 2)
        rank, world = trainer.global_rank, trainer.world_size
        device = pl_module.device
        self._metric = self._metric.to(device)
        self.extractor = self.extractor.to(device)
        self._metric.reset_fake()
        noise, labels = seeded_inputs(pl_module, num_samples, seed)
        noise = noise.cpu()
        labels = None if labels is None else labels.cpu()
        batches = noise[rank::world].split(self.batch_size)
        label_batches = [None] * len(batches) if labels is None else labels[rank::world].split(self.batch_size)
        with torch.random.fork_rng(devices=[]):
            for z, y in zip(batches, label_batches):
                self._metric.update(self.extractor(generate(pl_module, z, y)))
        values = self._metric.compute()
        self._metric.reset_fake()
        return {LOGGED[name]: float(values[name]) for name in ("fid", "mmd", "kid_mean", "fid_inf") if name in values}

    def _extras(self, trainer: L.Trainer, features: Tensor, labels: Optional[Tensor]) -> dict[str, float]:
        """Measurement noise, precision/recall and intra-class FID on all ranks' generated features (collective
        under DDP)."""
        if trainer.world_size > 1:
            features = trainer.strategy.all_gather(features).reshape(-1, features.shape[-1])
        if self._real_constants is None:  # the real side is fixed for the run: its moments, root and radii once
            real = self.real_stats
            real_features = real.features.to(features.device).double() if self.precision_recall else None
            self._real_constants = {
                "real_mean": real.mean(), "real_cov": real.cov(), "real_features": real_features,
                "sqrt_real_cov": sqrtm_psd(real.cov().double()) if self.noise_draws else None,
                "real_radii": knn_radii(real_features, self.pr_k) if real_features is not None else None,
            }
        out = noise_and_coverage(fake=features, num_draws=self.noise_draws, k=self.pr_k, seed=self.seed,
                                 **self._real_constants)
        if self._intra is not None and labels is not None:
            out["intra_fid"] = self._intra(features, labels)
        return out

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int, values: dict[str, float],
                in_training: bool) -> None:
        # float32 precision everywhere, so history, callback_metrics and the loggers hold the very same number
        values = {k: float(torch.tensor(v, dtype=torch.float32)) for k, v in values.items() if k in LOGGED}
        self.history.append((g_step, values["fid"]))
        self.last_fid = values["fid"]
        self._last_eval_step = g_step
        metrics = {LOGGED[name]: value for name, value in values.items()}
        metrics[FID_STEP_KEY] = float(g_step)
        for name in SIGNALS:  # EarlyTermination(fid_monitor="val/mmd") etc. read the G step of their value
            if name in values:
                metrics[f"{LOGGED[name]}_g_step"] = float(g_step)
        if "kid_mean" in values:
            self.last_kid = values["kid_mean"]
            self.kid_history.append((g_step, self.last_kid))
        for name in ("mmd", "fid_inf"):
            if name in values:
                self.signal_history.setdefault(name, []).append((g_step, values[name]))
        if "class_accuracy" in values:
            self.class_accuracy_history.append((g_step, values["class_accuracy"]))
        extras = {name: values[name] for name in ("fid_std", "precision", "recall", "intra_fid") if name in values}
        if extras:
            self.extra_history.append({"g_step": g_step, **extras})
        publish_metrics(trainer, pl_module, metrics, in_training)
        if self.verbose:
            others = "".join(f", {LOGGED[k].split('/')[-1]} {v:.4g}" for k, v in values.items() if k != "fid")
            rank_zero_info(f"FIDMonitor: G step {g_step}: FID ({self.extractor_name}) {self.last_fid:.4g}{others}.")

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        if is_due(g_step, self.every_n_g_steps) and g_step != self._last_eval_step:
            self._record(trainer, pl_module, g_step, self.evaluate(trainer, pl_module), in_training=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.evaluate_on_train_end or self._metric is None:
            return
        g = g_steps_of(trainer, pl_module)
        if g == self._last_eval_step:
            return
        self._record(trainer, pl_module, g, self.evaluate(trainer, pl_module), in_training=False)

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The FID part of ``summary.json``: history, best value and its G step, evaluation time, and
        ``coverage_history`` (FID noise, precision, recall per evaluation) when measured."""
        finite = [(f, g) for g, f in self.history if math.isfinite(f)]
        best_fid, best_step = min(finite) if finite else (None, None)
        return {
            "fid_history": [[int(g), float(f)] for g, f in self.history], "best_fid": best_fid,
            "best_fid_step": best_step, "fid_eval_time_s": float(self.eval_time_s),
            "fid_extractor": self.extractor_name,
            **({"class_accuracy_history": [[int(g), float(a)] for g, a in self.class_accuracy_history]}
               if self.class_accuracy_history else {}),
            **({"coverage_history": [dict(row) for row in self.extra_history]} if self.extra_history else {}),
            **{f"{name}_history": [[int(g), float(v)] for g, v in rows] for name, rows in self.signal_history.items()},
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "history": [[g, f] for g, f in self.history],
            "kid_history": [[g, k] for g, k in self.kid_history],
            "class_accuracy_history": [[g, a] for g, a in self.class_accuracy_history],
            "extra_history": [dict(row) for row in self.extra_history],
            "signal_history": {name: [[g, v] for g, v in rows] for name, rows in self.signal_history.items()},
            "eval_time_s": self.eval_time_s,
            "evaluations": self.evaluations,
            "last_fid": self.last_fid,
            "last_kid": self.last_kid,
            "last_eval_step": self._last_eval_step,
            "extractor": self.extractor_name,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(g), float(f)) for g, f in state_dict.get("history") or []]
        self.kid_history = [(int(g), float(k)) for g, k in state_dict.get("kid_history") or []]
        self.class_accuracy_history = [(int(g), float(a)) for g, a in state_dict.get("class_accuracy_history") or []]
        self.extra_history = [dict(row) for row in state_dict.get("extra_history") or []]
        self.signal_history = {str(name): [(int(g), float(v)) for g, v in rows]
                               for name, rows in (state_dict.get("signal_history") or {}).items()}
        self.eval_time_s = float(state_dict.get("eval_time_s", 0.0))
        self.evaluations = int(state_dict.get("evaluations", len(self.history)))
        self.last_fid = state_dict.get("last_fid")
        self.last_kid = state_dict.get("last_kid")
        self._last_eval_step = state_dict.get("last_eval_step")
        saved = state_dict.get("extractor")
        if saved and self.extractor_name and saved != self.extractor_name:
            log.warning("FIDMonitor: resumed FID history was measured with %s features, now %s.", saved, self.extractor_name)


__all__ = ["CLASS_ACCURACY_KEY", "FIDMonitor", "FID_INF_KEY", "FID_KEY", "FID_STD_KEY", "FID_STEP_KEY", "INTRA_FID_KEY",
           "KID_KEY", "MMD_KEY", "PRECISION_KEY", "RECALL_KEY"]
