"""G steps and Lightning's steps: the one place that converts between them, and the G-step cadences.

A GAN run is counted in generator updates (G steps); Lightning's ``global_step`` counts every optimizer step, D and
G, so one G update costs ``n_critic + 1`` of them. No Lightning import: the trainer and module are read by attribute.
"""

from __future__ import annotations

from typing import Any, Optional


def max_steps_for(g_steps: int, n_critic: int = 1) -> int:
    """Trainer ``max_steps`` giving exactly ``g_steps`` generator updates."""
    if g_steps < 0 or n_critic < 1:
        raise ValueError(f"max_steps_for: need g_steps >= 0 and n_critic >= 1, got {g_steps}, {n_critic}.")
    return g_steps * (n_critic + 1)


def g_steps_of(trainer: Any, pl_module: Any) -> int:
    """G steps taken so far: ``pl_module.g_steps`` (GANModule), else ``trainer.global_step``."""
    g_steps = getattr(pl_module, "g_steps", None)
    return int(trainer.global_step if g_steps is None else g_steps)


def g_step_budget(trainer: Any, pl_module: Any) -> Optional[int]:
    """The run's budget in G steps, from the Trainer's ``max_steps`` (``None`` when it sets none)."""
    if trainer.max_steps is None or trainer.max_steps < 0:
        return None
    if getattr(pl_module, "g_steps", None) is None:
        return int(trainer.max_steps)
    return int(trainer.max_steps) // (int(getattr(pl_module, "n_critic", 1)) + 1)


def is_due(g_step: int, every: int) -> bool:
    """Whether a cadence of ``every`` G steps (``0``: never) fires at ``g_step`` (never at 0)."""
    return every > 0 and g_step > 0 and g_step % every == 0
