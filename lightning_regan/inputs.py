"""The networks' inputs, free of Lightning: samples and labels from a batch, label checks, seeded noise and labels.

``GANModule`` uses these in its step; the evaluation callbacks, ``regan-eval`` and ``regan-sample`` draw their fixed
inputs with :func:`seeded_inputs` / :class:`FixedInputs` / :func:`class_inputs`, so they go through the module's own
``sample_noise`` and ``sample_labels``, and decode them with :func:`generate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn


def batch_samples(batch: Any) -> Tensor:
    """The samples of a batch: a tensor, ``(x, y, ...)`` or a mapping with ``image(s)``/``x``."""
    if isinstance(batch, Mapping):
        for key in ("image", "images", "x"):
            if key in batch:
                batch = batch[key]
                break
        else:
            raise ValueError(f"Batch mapping has no 'image'/'images'/'x' key (keys: {sorted(batch)}).")
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"Expected the batch to hold a tensor of samples, got {type(batch).__name__}.")
    return batch


def batch_labels(batch: Any) -> Optional[Tensor]:
    """The labels of a batch, or ``None``: ``(x, y, ...)`` or a mapping with ``label(s)``/``y``."""
    if isinstance(batch, Mapping):
        return next((batch[key] for key in ("label", "labels", "y") if key in batch), None)
    if isinstance(batch, (list, tuple)) and len(batch) > 1 and isinstance(batch[1], Tensor):
        return batch[1]
    return None


def label_distribution(label_probs: Optional[Sequence[float]], num_classes: Optional[int]) -> Optional[Tensor]:
    """``label_probs`` checked and normalized to a float tensor of ``num_classes`` entries (``None``: uniform)."""
    if label_probs is None:
        return None
    if num_classes is None:
        raise ValueError("GANModule: label_probs needs num_classes (it is for class-conditional GANs).")
    probs = torch.as_tensor(list(label_probs), dtype=torch.float64)
    if probs.shape != (num_classes,) or not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()) \
            or float(probs.sum()) <= 0:
        raise ValueError(
            f"GANModule: label_probs must hold num_classes={num_classes} finite non-negative weights, not all "
            f"zero; got {list(label_probs)!r}."
        )
    return (probs / probs.sum()).float()


def check_labels(labels: Optional[Tensor], n: int, num_classes: Optional[int],
                 device: Union[str, torch.device]) -> Optional[Tensor]:
    """``labels`` as a long tensor on ``device`` when ``num_classes`` is set (clear errors otherwise), else ``None``."""
    if num_classes is None:
        if labels is not None:
            raise ValueError("GANModule: labels were given but the module is unconditional (set num_classes=...).")
        return None
    if labels is None:
        raise ValueError(
            f"GANModule: the module is class-conditional (num_classes={num_classes}) and needs labels; pass y=... "
            "or use a loader that yields (images, labels)."
        )
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"GANModule: labels must be {n} integer class indices, got shape {tuple(labels.shape)} ({labels.dtype})."
        )
    return labels.long()


def seeded_inputs(module: nn.Module, n: int, seed: int) -> tuple[Tensor, Optional[Tensor]]:
    """``(module.sample_noise(n), module.sample_labels(n))`` drawn under a fixed seed without disturbing the global
    random streams; the labels are ``None`` for an unconditional module.

    The one path for fixed evaluation and sampling inputs (FID, sample grids, ``regan-eval``, ``regan-sample``), so a
    custom prior (an overridden ``sample_noise`` or ``sample_labels``) is evaluated on the distribution it trains on.
    Every rank gets the same inputs, and a run draws the same training noise with or without the callbacks that call
    this. The noise is drawn first, so it does not depend on whether labels follow.
    """
    device = getattr(module, "device", torch.device("cpu"))
    devices = [] if device.type != "cuda" else [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        z = module.sample_noise(n).detach()
        labels = module.sample_labels(n) if getattr(module, "conditional", False) else None
        return z, labels


def seeded_noise(module: nn.Module, n: int, seed: int) -> Tensor:
    """The noise of :func:`seeded_inputs` alone (``module.sample_noise(n)`` under ``seed``)."""
    return seeded_inputs(module, n, seed)[0]


class FixedInputs:
    """The inputs of :func:`seeded_inputs` (``n`` under ``seed``), drawn at the first call and kept on the CPU: what an
    evaluation decodes every time."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self._inputs: Optional[tuple[Tensor, Optional[Tensor]]] = None

    def __call__(self, module: nn.Module) -> tuple[Tensor, Optional[Tensor]]:
        if self._inputs is None:
            z, labels = seeded_inputs(module, self.n, self.seed)
            self._inputs = z.cpu(), None if labels is None else labels.cpu()
        return self._inputs


def generate(module: nn.Module, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
    """``module.generate(z=z, y=labels)`` on the module's device, ``y`` passed only with labels (so a user module
    whose ``generate`` takes no ``y`` works when unconditional)."""
    if labels is None:
        return module.generate(z=z.to(module.device))
    return module.generate(z=z.to(module.device), y=labels.to(module.device))


def class_inputs(module: nn.Module, per_class: int, seed: int,
                 classes: Optional[Sequence[int]] = None) -> tuple[Tensor, Tensor]:
    """Inputs of a per-class grid: ``per_class`` noise vectors (:func:`seeded_noise`) repeated for each class of
    ``classes`` (default all ``module.num_classes``), labels ``[c0]*per_class + [c1]*per_class + ...``.

    Row ``i`` of a grid with ``per_class`` columns is class ``classes[i]``; a column keeps the same noise.
    """
    num_classes = getattr(module, "num_classes", None)
    if num_classes is None:
        raise ValueError("class_inputs: the module is unconditional (num_classes=None).")
    classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise ValueError(f"class_inputs: classes must lie in [0, {num_classes}), got {classes}.")
    z = seeded_noise(module, per_class, seed)
    labels = torch.tensor(classes, device=z.device).repeat_interleave(per_class)
    return z.repeat(len(classes), *([1] * (z.dim() - 1))), labels


__all__ = ["FixedInputs", "batch_labels", "batch_samples", "check_labels", "class_inputs", "generate",
           "label_distribution", "seeded_inputs", "seeded_noise"]
