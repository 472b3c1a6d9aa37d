"""scikit-learn's handwritten digits (1,797 real 8x8 images): the embedded default dataset, no download."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from lightning_regan.data.base import GANDataModule
from lightning_regan.validation import check_int


def load_digits_tensor(image_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(images (N, 1, S, S) in [-1, 1], labels (N,))`` in scikit-learn's order.

    The 17 grey levels 0..16 map linearly to [-1, 1]; ``image_size`` resizes with antialiased bilinear
    interpolation (8 by default).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    if image_size is not None and image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        images = images.clamp(-1.0, 1.0)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


class DigitsDataModule(GANDataModule):
    """scikit-learn ``load_digits``: 1,797 greyscale 8x8 digits in [-1, 1], items ``(image (1, S, S), label)``.

    The training and reference sets are the whole dataset (it has no split); the reference keeps
    scikit-learn's order.

    Args:
        image_size: Resize to ``S x S`` (e.g. 32 for model=resnet); ``None`` keeps 8x8.
        batch_size, num_workers, pin_memory, limit, classes: See :class:`GANDataModule`.
    """

    fid_feature_extractor = "classifier"
    num_classes = 10

    def __init__(self, image_size: Optional[int] = None, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 limit: Optional[Union[int, float]] = None, classes: Optional[Sequence[int]] = None) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, limit=limit,
                         classes=classes)
        check_int("DigitsDataModule", "image_size", image_size, 1, optional=True)
        self.image_size = image_size
        self.name = "digits"
        side = image_size or 8
        self.shape = (1, side, side)
        self._data: Optional[TensorDataset] = None

    def _dataset(self) -> TensorDataset:
        if self._data is None:
            self._data = TensorDataset(*load_digits_tensor(self.image_size))
        return self._data

    def _build_train(self) -> Dataset:
        return self._dataset()

    def _build_reference(self) -> Dataset:
        return self._dataset()

    def _identity(self) -> dict[str, Any]:
        return {"image_size": self.shape[-1]}


__all__ = ["DigitsDataModule", "load_digits_tensor"]
