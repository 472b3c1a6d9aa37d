"""What experiment trackers get at the end of a run: its headline number and its pictures.

Lightning's loggers receive every logged metric as the run goes. At the end, :func:`publish_run` adds what a tracker's
run page leads with: the stop metric's best value as the run's summary metric (W&B: the run summary; MLflow: the
metric ``best/<metric>`` and the tags ``status``, ``stop_reason``, ``stop_metric``), and the plots and the last
sample grid as images (W&B) or artifacts (MLflow). Other loggers (CSV, TensorBoard) are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _headline(summary: Mapping[str, Any]) -> dict[str, float]:
    metric, value = summary.get("stop_metric"), summary.get("best_value")
    out = {f"best/{metric}": float(value)} if metric and isinstance(value, (int, float)) else {}
    if isinstance(summary.get("best_g_step"), int):
        out["best/g_step"] = float(summary["best_g_step"])
    if isinstance(summary.get("best_fid"), (int, float)) and metric != "val/fid":
        out["best/val/fid"] = float(summary["best_fid"])
    return out


def publish_run(loggers: Iterable[Any], summary: Mapping[str, Any], images: Sequence[Path]) -> list[str]:
    """Hand ``summary``'s headline and the ``images`` (PNG files) to the W&B and MLflow loggers among ``loggers``;
    returns the names of the loggers served. A tracker that fails is logged, never raised (the run's summary is
    already written)."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    headline = _headline(summary)
    tags = {key: str(summary.get(key)) for key in ("status", "stop_reason", "stop_metric") if summary.get(key)}
    images = [Path(p) for p in images if Path(p).is_file()]
    served = []
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run.summary.update({**headline, **tags})
                for path in images:
                    logger.log_image(key=f"{path.parent.name}/{path.stem}", images=[str(path)])
                served.append("wandb")
            elif isinstance(logger, MLFlowLogger):
                client, run_id = logger.experiment, logger.run_id
                for key, value in headline.items():
                    client.log_metric(run_id, key, value)
                for key, value in tags.items():
                    client.set_tag(run_id, key, value)
                for path in images:
                    client.log_artifact(run_id, str(path), artifact_path=path.parent.name)
                served.append("mlflow")
        except Exception as err:  # noqa: BLE001 - a tracker must not cost the run its outputs
            log.warning("Could not publish the run to %s: %s", type(logger).__name__, err)
    return served


__all__ = ["publish_run"]
