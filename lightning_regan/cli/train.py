"""``regan-train``: the Hydra training app. ``train(cfg)`` checks the config and hands it to
:mod:`lightning_regan.builders`; ``run`` is the body of the Hydra app whose torch-free shell, ``main``, lives in
:mod:`lightning_regan.cli.entry`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from lightning_regan.cli.checkpoints import CheckpointError, check_same_settings, resolve_resume, slurm_hpc_checkpoint
from lightning_regan.cli.checks import MAX_SEED, check_values, fail  # noqa: F401 (public names)
from lightning_regan.config import drop_unselected, has_target
from lightning_regan.data.base import DatasetError, DatasetNotFoundError
from lightning_regan.errors import ConfigError, PretrainedWeightsError
from lightning_regan.fid.weights import InceptionWeightsError

log = logging.getLogger(__name__)


# Errors that mean "fix your input", reported as one message (exit code 2) by regan-train.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, CheckpointError, DatasetError, DatasetNotFoundError, InceptionWeightsError, InstantiationException,
    PretrainedWeightsError,
)


#: Warnings regan-train's user cannot act on, each with the reason it is noise here.
QUIET_WARNINGS: tuple[str, ...] = (
    # torch 2.14 deprecates LeafSpec; Lightning 2.6's own _pytree.py still uses it (facts.md).
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Logging counts batches across epochs (a G-step budget spans many short epochs): logs are written anyway.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # Checkpoints are taken at the end of a G step, after the optimizers stepped: that state is the one wanted.
    r"Using ModelCheckpoint with manual optimization",
)
#: Info lines that are advertisements, not information about the run.
QUIET_INFO: tuple[str, ...] = ("Tip: For seamless cloud logging",)
#: Info lines the console leaves to regan-train's own last line (train.log keeps them): Lightning's
#: "`Trainer.fit` stopped: `max_steps=4000` reached" counts Lightning's steps, twice the G steps.
CONSOLE_QUIET_INFO: tuple[str, ...] = ("`Trainer.fit` stopped:",)


class _DropInfo(logging.Filter):
    def __init__(self, texts: tuple[str, ...] = QUIET_INFO) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def _console_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def log_file() -> Optional[Path]:
    """The file the root logger writes (Hydra's ``<hydra.runtime.output_dir>/train.log``), or ``None``."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def quiet_console() -> None:
    """Silence :data:`QUIET_WARNINGS` and :data:`QUIET_INFO`, and print each logged event once (Lightning's own
    console handler removed: :func:`~lightning_regan.cli.console.single_console`). The ``regan-train`` process only;
    a library user's own Trainer is left alone."""
    import warnings

    from lightning_regan.cli.console import single_console

    single_console()
    for handler in _console_handlers():
        if not any(isinstance(f, _DropInfo) for f in handler.filters):
            handler.addFilter(_DropInfo(CONSOLE_QUIET_INFO))
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropInfo())


def validate_config(cfg: DictConfig) -> None:
    """Check the values ``train`` relies on, with messages that say how to fix them.

    The torch-free checks (:func:`lightning_regan.cli.checks.check_values`, also run by ``regan-train`` before
    torch is imported), then the optimizers, built once on a dummy parameter.

    Raises:
        ConfigError: on the first wrong value.
    """
    check_values(cfg)
    for key in ("g_optimizer", "d_optimizer"):
        node = cfg.module.get(key)
        if has_target(node):
            # Build it once on a dummy parameter: torch.optim checks lr, betas, eps, ... with its own messages.
            try:
                instantiate(node, _convert_="partial")([torch.nn.Parameter(torch.zeros(1))])
            except Exception as exc:
                args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
                raise ConfigError(
                    f"module.{key} ({node._target_} with {args}) cannot build its optimizer: {type(exc).__name__}: {exc}"
                ) from exc


def _resolve_ckpt_path(cfg: DictConfig) -> Optional[str]:
    # The same check regan-train ran before Hydra started (cli.entry); here also for ckpt_path=last, whose folder
    # Hydra has now resolved, and for callers of train() that bypass the console entry point.
    path = resolve_resume(cfg, cfg.output_dir, announce=True)
    hpc = slurm_hpc_checkpoint(cfg.output_dir) if path is None else None
    if hpc is not None:  # a requeued SLURM job: Lightning resumes from it by itself, so it is checked the same way
        check_same_settings(hpc, cfg, "SLURM requeue checkpoint")
    return path


#: Exit codes of a run stopped by a signal (128 + the signal's number, as a shell reports a signalled process).
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _stopped(cfg: DictConfig, what: str, code: int) -> None:
    """One line saying the run was stopped and where it can resume; exits with ``code``."""
    summary_path = Path(cfg.output_dir) / "summary.json"
    where = ""
    try:
        where = f" at G step {json.loads(summary_path.read_text())['g_steps']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    resume = f"resume from {last} with ckpt_path=last" if last.is_file() else "no checkpoint was written yet"
    print(f"regan-train: stopped by {what}{where}; {resume} (exit code {code}).", file=sys.stderr, flush=True)
    raise SystemExit(code)


#: Precisions measured to be much slower than 32-true on a device type, with what was measured.
SLOW_PRECISIONS: dict[tuple[str, str], str] = {
    ("cpu", "bf16-mixed"): "about 40x slower than trainer.precision=32-true on a CPU (default run: 0.21 against "
                           "about 9 G steps/s on a 2-core CPU)",
}
_PRECISION_ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}


def warn_slow_precision(cfg: DictConfig) -> Optional[str]:
    """Print a one-line warning (rank zero) when ``trainer.precision`` is known to be slow on the chosen device;
    returns the warning."""
    node = cfg.get("trainer") or {}
    precision = str(node.get("precision", "32-true"))
    precision = _PRECISION_ALIASES.get(precision, precision)
    accelerator = str(node.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    why = SLOW_PRECISIONS.get(("cpu" if on_cpu else accelerator, precision))
    if why is None:
        return None
    message = f"regan-train: warning: trainer.precision={precision} is {why}."
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(message, file=sys.stderr, flush=True)
    return message


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a GAN as configured and return ``(results, objects)``: the run's results (:func:`builders.fit`: what
    ``summary.json`` holds, also when no ``RunSummary`` ran) and the built objects.

    Everything that can be checked is checked before the Trainer starts: config values, the checkpoint to resume,
    the dataset, the models (one forward pass), the callbacks' own arguments.
    """
    from lightning_regan import builders

    drop_unselected(cfg)
    validate_config(cfg)
    warn_slow_precision(cfg)
    from lightning_regan.run_lock import lock_run_folder, unlock_run_folder

    lock_run_folder(cfg.output_dir)  # one process per run folder (re-entrant: regan-train took it before Hydra)
    try:
        ckpt_path = _resolve_ckpt_path(cfg)
        ended = _judge_resume(cfg, ckpt_path)
        if ended is not None:
            return ended, {}
        # init_from (fine-tuning): read before the data is built; a resumed run takes its weights from ckpt_path.
        pretrained = builders.read_init_from(cfg) if ckpt_path is None else None
        import lightning as L

        L.seed_everything(cfg.seed, workers=True, verbose=False)
        from lightning_regan.cli.run_checks import check_before_trainer

        objects = builders.build_all(cfg, before_trainer=check_before_trainer)
        if pretrained is not None:
            builders.apply_init_from(cfg, objects["module"], pretrained)
        summary = builders.fit(objects, ckpt_path)
    finally:
        unlock_run_folder(cfg.output_dir)
    return summary, objects


def _judge_resume(cfg: DictConfig, ckpt_path: Optional[str]) -> Optional[dict[str, Any]]:
    """The ended run's summary when resuming it changes nothing (said in one line), else ``None`` (train)."""
    from lightning_regan.cli.ended_run import judge_resume

    verdict = judge_resume(cfg, ckpt_path, cfg.output_dir)
    if verdict.line and int(os.environ.get("LOCAL_RANK", 0)) == 0:
        print(verdict.line, file=sys.stderr, flush=True)
    if verdict.go:
        return None
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def run(cfg: DictConfig) -> float:
    """The body of ``regan-train`` (called by the Hydra app in :mod:`lightning_regan.cli.entry`); returns
    ``summary[optimized_metric]`` for Hydra sweepers."""
    with open_dict(cfg):
        cfg.output_dir = str(Path(cfg.output_dir).resolve())
    quiet_console()
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        summary, _ = train(cfg)
    except USER_ERRORS as exc:
        # A wrong value or missing file: the message says how to fix it; a traceback would only bury it.
        fail(exc)
    except SIGTERMException:  # a SystemExit with code None: a scheduler would count the run as a success
        _stopped(cfg, "SIGTERM", EXIT_SIGTERM)
    except OSError as exc:
        from lightning_regan.atomic import is_disk_full

        if not is_disk_full(exc):
            raise
        from lightning_regan.cli.disk_full import stop_on_full_disk

        stop_on_full_disk(cfg.output_dir, exc)  # one line, exit code 1; every file left is complete
    except SystemExit as exc:
        # Lightning answers Ctrl+C (KeyboardInterrupt) with sys.exit(1) after its graceful shutdown.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _stopped(cfg, "SIGINT (Ctrl+C)", EXIT_SIGINT)
        raise
    report_end(cfg, summary)
    return objective(cfg, summary)


#: What each stop reason means, in regan's words (a reason not listed is shown as it is; "fid_plateau" is the word
#: older runs recorded for "plateau").
REASON_WORDS: dict[str, str] = {
    "max_steps": "the G-step budget max_g_steps is spent",
    "max_epochs": "the epoch budget is spent",
    "fast_dev_run": "fast_dev_run",
    "plateau": "the stop metric is unlikely to improve by more than the tolerance",
    "fid_plateau": "the stop metric is unlikely to improve by more than the tolerance",
    "loss_plateau": "the losses stopped moving (no stop metric measured yet)",
    "divergence": "training diverged",
    "collapsed": "the generator collapsed (recall fell while the stop metric worsened)",
    "pruned": "the sweep's pruner stopped this trial",
    "trainer_should_stop": "a callback stopped the Trainer",
}


def end_lines(cfg: DictConfig, summary: dict[str, Any]) -> list[str]:
    """The lines ``regan-train`` ends on: where the outputs are, then what happened (status, reason, G step, best
    value of the stop metric and its G step, the best checkpoint)."""
    status, reason = summary.get("status", "?"), str(summary.get("stop_reason", "?"))
    g_step = summary.get("stopped_g_step", summary.get("g_steps"))
    budget = cfg.get("max_g_steps")
    words = REASON_WORDS.get(reason)
    why = f"{reason}: {words}" if words and words != reason else reason
    metric = summary.get("stop_metric")
    if metric and summary.get("best_value") is not None:
        best = f"best {metric} {summary['best_value']:.4g} at G step {summary['best_g_step']}"
    elif metric:
        best = f"no {metric} was measured"
    else:
        best = "no stop metric"
    ckpt = summary.get("checkpoint_best")
    where = f"best checkpoint {ckpt}" if ckpt else "no best checkpoint (nothing was evaluated)"
    logs = log_file()
    logs_where = "" if logs is None else (f", {logs.name}" if logs.parent == Path(cfg.output_dir) else
                                          f"; the full log in {logs}")
    return [
        f"Outputs in {cfg.output_dir}: summary.json, checkpoints/, samples/, plots/{logs_where}.",
        f"regan-train: {status} ({why}) at G step {g_step}{f' of {budget}' if budget else ''}; {best}; {where}.",
    ]


def report_end(cfg: DictConfig, summary: dict[str, Any]) -> None:
    """Log :func:`end_lines` (rank zero): the console and ``train.log`` end on them."""
    if int(os.environ.get("LOCAL_RANK", 0)) != 0 or int(os.environ.get("NODE_RANK", 0)) != 0:
        return
    for line in end_lines(cfg, summary):
        log.info(line)


def objective(cfg: DictConfig, summary: dict[str, Any]) -> float:
    """``summary[optimized_metric]`` (``best_value``, the best value of the stop metric, by default; a summary from
    before 0.4 without it: ``best_fid``), the value a Hydra sweeper optimizes. A run without it (diverged before any
    evaluation, evaluation off) gets the worst value: ``inf``, or ``-inf`` when it is ``best_value`` of a metric
    where higher is better (``stop_mode=max``: the sweep maximizes)."""
    key = cfg.get("optimized_metric") or "best_value"
    value = summary.get(key)
    if key == "best_value" and "best_value" not in summary and "stop_metric" not in summary:
        value = summary.get("best_fid")  # an old summary (before 0.4)
    if not isinstance(value, (int, float)):
        worst = float("-inf") if key == "best_value" and summary.get("stop_mode", cfg.get("stop_mode")) == "max" \
            else float("inf")
        log.warning("regan-train: the run has no %s (status %s); returning %s.", key, summary.get("status"), worst)
        return worst
    return float(value)


if __name__ == "__main__":  # python -m lightning_regan.cli.train: regan-train itself
    from lightning_regan.cli.entry import main

    main()
