"""Where the real samples of the FID statistics come from (DataModule contract, duck-typed).

``reference_dataset()`` returns a map-style dataset whose items are samples in model space (``[-1, 1]`` images or
points) or ``(sample, label)``; ``cache_key()`` returns a string that changes whenever that data changes. Without
``reference_dataset`` the ``train_dataloader()`` is read; without ``cache_key`` nothing is cached on disk. Used by
the statistics (:mod:`lightning_regan.fid.stats`) and the classifier extractor, so neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Optional, Union

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_regan.inputs import batch_samples

RealSource = Union[Dataset, DataLoader, Tensor, Iterable]


def reference_dataset_of(datamodule: Any) -> Optional[Dataset]:
    """``datamodule.reference_dataset()`` when it has one, else ``None``."""
    fn = getattr(datamodule, "reference_dataset", None)
    return fn() if callable(fn) else None


def dataset_cache_key(datamodule: Any) -> Optional[str]:
    """``datamodule.cache_key()`` (a method or attribute), else ``None`` (no disk cache)."""
    key = getattr(datamodule, "cache_key", None)
    if callable(key):
        key = key()
    return str(key) if key else None


def real_source_of(datamodule: Any) -> Optional[RealSource]:
    """Where real samples come from: ``reference_dataset()``, else ``train_dataloader()``, else ``None``."""
    data = reference_dataset_of(datamodule)
    if data is not None:
        return data
    loader = getattr(datamodule, "train_dataloader", None)
    if callable(loader):
        try:
            return loader()
        except Exception:  # LightningDataModule's default raises when not implemented
            return None
    return None


def iter_real_batches(source: RealSource, num_samples: int, batch_size: int) -> Iterator[Tensor]:
    """Batches of the first ``num_samples`` real samples of a dataset, DataLoader, tensor or iterable of batches."""
    if isinstance(source, Tensor):
        batches: Iterable[Any] = source[:num_samples].split(batch_size)
    elif isinstance(source, Dataset):  # map-style or iterable: items, batched here
        batches = DataLoader(source, batch_size=batch_size, shuffle=False)
    else:
        batches = source
    seen = 0
    for batch in batches:
        x = batch_samples(batch)
        if seen + x.shape[0] > num_samples:
            x = x[: num_samples - seen]
        seen += x.shape[0]
        if x.shape[0]:
            yield x
        if seen >= num_samples:
            return


__all__ = ["RealSource", "dataset_cache_key", "iter_real_batches", "real_source_of", "reference_dataset_of"]
