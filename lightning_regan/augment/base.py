"""``Augment``: the base of the differentiable augmentations D sees (tensor in, tensor out, never a backward)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_regan.validation import check_int


class Augment(nn.Module):
    """A random, differentiable, per-sample image augmentation ``(N, C, H, W) -> (N, C, H, W)``.

    The ``i``-th output is a transformed ``i``-th input, so labels of conditional models pass through unchanged.
    Randomness comes from the global random streams by default (``seed=None``): inside ``GANModule`` these are the
    module's streams, seeded per DDP rank and saved in checkpoints by ``RandomStreams``, so a resumed run augments
    exactly as the uninterrupted one. With a ``seed`` the module owns a CPU ``torch.Generator`` instead (standalone
    use, tests); its state is part of ``state_dict()``.

    Subclasses implement :meth:`forward` and draw with :meth:`rand`, :meth:`randn` and :meth:`randint`.

    Args:
        seed: Seed of an own generator, or ``None`` for the global streams.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__()
        self.seed = check_int(type(self).__name__, "seed", seed, 0, optional=True)
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ random draws
    def _draw(self, fn: Any, *args: Any, device: torch.device, dtype: Optional[torch.dtype] = None, **kw: Any) -> Tensor:
        if self.generator is None:
            return fn(*args, device=device, **({"dtype": dtype} if dtype is not None else {}), **kw)
        out = fn(*args, generator=self.generator, **({"dtype": dtype} if dtype is not None else {}), **kw)
        return out.to(device)

    def rand(self, *shape: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform ``[0, 1)`` draws of ``shape`` on ``device``."""
        return self._draw(torch.rand, shape, device=device, dtype=dtype)

    def randn(self, *shape: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal draws of ``shape`` on ``device``."""
        return self._draw(torch.randn, shape, device=device, dtype=dtype)

    def randint(self, low: int, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Integers in ``[low, high)`` of ``shape`` on ``device``."""
        return self._draw(torch.randint, low, high, shape, device=device)

    # ------------------------------------------------------------------ training hooks
    def observe(self, real_logits: Tensor) -> dict[str, Tensor]:
        """Called by ``GANModule`` after every D step with D's (detached) logits on the augmented reals; returns
        metrics to log under ``train/``. Fixed augmentations have nothing to learn: no metrics."""
        return {}

    def get_extra_state(self) -> Tensor:
        # A tensor (empty without an own generator), so state dicts stay tensor-valued for every consumer.
        return self.generator.get_state() if self.generator is not None else torch.zeros(0, dtype=torch.uint8)

    def set_extra_state(self, state: Any) -> None:
        if self.generator is not None and isinstance(state, Tensor) and state.numel() > 0:
            self.generator.set_state(state)


def check_images(owner: str, x: Tensor) -> None:
    """Raise a clear error unless ``x`` is a batch of images ``(N, C, H, W)``."""
    if x.dim() != 4:
        raise ValueError(
            f"{owner}: expects image batches of shape (N, C, H, W), got {tuple(x.shape)}; augmentation works on images "
            "only (use augment=none for point data)."
        )


__all__ = ["Augment", "check_images"]
