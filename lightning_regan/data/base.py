"""``GANDataModule``: the LightningDataModule contract shared by every dataset of lightning-regan."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import torch

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_regan.validation import check_int, is_int, is_number

# torchdata 0.11 calls a torch API that torch 2.14 deprecates, once per iterator: noise for our users.
warnings.filterwarnings("ignore", message=".*'set_vital' is deprecated.*", category=UserWarning)

#: Bump when a change of the data pipeline changes the pixels or points a module yields (invalidates cached
#: real FID statistics keyed by :meth:`GANDataModule.cache_key`).
PIPELINE_VERSION = 1


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the config says; the message names the path and how to fix it."""


class DatasetError(ValueError):
    """The dataset is there but cannot be used (corrupt file, no images, wrong value)."""


class _DistributedSamplerIterator(Iterator[int]):
    """One epoch of a :class:`StatefulDistributedSampler`: remembers which epoch's order it walks and how far."""

    def __init__(self, sampler: "StatefulDistributedSampler") -> None:
        self.sampler = sampler
        self._start(sampler.epoch, 0)

    def _start(self, epoch: int, yielded: int) -> None:
        saved, self.sampler.epoch = self.sampler.epoch, epoch
        try:
            self.indices = list(DistributedSampler.__iter__(self.sampler))
        finally:
            self.sampler.epoch = saved
        self.epoch, self.yielded = epoch, yielded

    def __iter__(self) -> "_DistributedSamplerIterator":
        return self

    def __next__(self) -> int:
        if self.yielded >= len(self.indices):
            raise StopIteration
        self.yielded += 1
        return self.indices[self.yielded - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start(int(state["epoch"]), int(state["yielded"]))


class StatefulDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` whose position is saved by ``StatefulDataLoader``.

    Lightning restores a loader's state before it sets the sampler's epoch, so a plain ``DistributedSampler``
    resumed mid-epoch would fast-forward through epoch 0's order; this one stores the epoch it was walking.
    """

    def __iter__(self) -> Iterator[int]:
        return _DistributedSamplerIterator(self)


class GANDataModule(L.LightningDataModule):
    """Base class of the datasets: images in [-1, 1] with shape ``(C, H, W)``, or points with shape ``(D,)``.

    Subclasses set :attr:`name` and :attr:`shape` in ``__init__`` and implement :meth:`_build_train`,
    :meth:`_build_reference` and :meth:`_identity`; they may override :meth:`prepare_data` for downloads and
    checks. ``setup`` is idempotent, so :meth:`validate` can run before ``Trainer.fit`` calls it again.

    Args:
        batch_size: Training batch size (the last incomplete batch is dropped).
        num_workers: DataLoader worker processes (persistent when > 0).
        pin_memory: Pin host memory (useful on GPU).
        limit: Train on a deterministic subset: ``N`` images (an integer >= 1) or a fraction in (0, 1) of the
            training set (:func:`limit_indices`, the same subset for every seed and rank). ``None``: all of it. The FID
            reference set is not limited (it measures the distribution, not the subset).
        classes: Keep only the samples of these labels (e.g. ``[5, 6, 7, 8, 9]``), in the training, held-out and
            reference sets alike (labels keep their values); applied before ``limit``. Needs labelled data.
            ``None``: every class.
    """

    #: Short dataset name, e.g. ``"mnist"``.
    name: str = "data"
    #: Shape of one sample, known right after ``__init__``.
    shape: tuple[int, ...] = ()
    #: Feature extractor suggested for FID with ``feature_extractor="auto"``: ``"inception"`` (real images),
    #: ``"classifier"`` (small data with a cheap trained classifier) or ``"identity"`` (2-D points).
    fid_feature_extractor: str = "inception"
    #: Number of classes of the labels the training items carry (``(sample, label)`` with labels in
    #: ``[0, num_classes)``), or ``None`` for unlabelled data; class-conditional models read it.
    num_classes: Optional[int] = None

    def __init__(self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 limit: Optional[Union[int, float]] = None, classes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        known = getattr(type(self), "num_classes", None)  # a class attribute (a property may need the data first)
        self.classes = check_classes(type(self).__name__, classes, known if is_int(known) else None)
        if limit is not None and not (is_int(limit) and limit >= 1 or is_number(limit) and 0 < limit < 1):
            raise ValueError(
                f"{type(self).__name__}: limit must be a number of training images (an integer >= 1), a fraction in "
                f"(0, 1), or null, got {limit!r} (e.g. data.limit=600 or data.limit=0.01)."
            )
        self.limit = limit
        check_int(type(self).__name__, "batch_size (e.g. data.batch_size=64)", batch_size, 1)
        check_int(type(self).__name__, "num_workers", num_workers, 0)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._train: Optional[Dataset] = None
        self._heldout: Optional[Dataset] = None
        self._reference: Optional[Dataset] = None

    # ------------------------------------------------------------------ subclass hooks
    def _build_train(self) -> Dataset:
        """The training dataset (items: a sample tensor or ``(sample, label)``)."""
        raise NotImplementedError

    def _build_reference(self) -> Dataset:
        """The dataset of real samples for FID statistics, in a fixed order."""
        raise NotImplementedError

    def _identity(self) -> dict[str, Any]:
        """JSON-able description of everything that decides which samples :meth:`reference_dataset` yields."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        """Build the training dataset (once) and check that it fills at least one batch."""
        if self._train is None:
            self._train = self._build_train()
            if self.classes is not None:
                self._train = select_classes(self._train, self.classes, type(self).__name__)
            if self.limit is not None:
                total = len(self._train)  # type: ignore[arg-type]
                if is_int(self.limit) and self.limit > total:
                    self._train = None
                    raise DatasetError(
                        f"{type(self).__name__}: data.limit={self.limit} is more than the training set's {total} "
                        f"samples; use data.limit={total} or less, a fraction (e.g. data.limit=0.5), or data.limit=null "
                        "for all of it."
                    )
                full, kept = self._train, limit_indices(total, self.limit)  # type: ignore[arg-type]
                self._train = Subset(full, kept)
                left_out = sorted(set(range(len(full))) - set(kept))  # type: ignore[arg-type]
                self._heldout = Subset(full, left_out) if left_out else None
            n = len(self._train)  # type: ignore[arg-type]
            if n < self.batch_size:
                self._train = self._heldout = None
                raise DatasetError(
                    f"{type(self).__name__}: the training set has {n} samples, fewer than batch_size={self.batch_size}; "
                    "lower data.batch_size or add data."
                )

    def validate(self) -> None:
        """Check that the data can be read (``prepare_data`` then ``setup('fit')``); call before training.

        Raises:
            DatasetNotFoundError: the data is missing.
            DatasetError: the data is unusable.
        """
        self.prepare_data()
        self.setup("fit")

    def train_dataset(self) -> Dataset:
        """The training dataset (sets the module up when needed)."""
        if self._train is None:
            self.setup("fit")
        assert self._train is not None
        return self._train

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of :attr:`batch_size` with the last incomplete batch dropped.

        A torchdata ``StatefulDataLoader``: Lightning saves its position (and the epoch's shuffle) in checkpoints and
        restores it, so a run resumed in the middle of an epoch sees the same batches as the uninterrupted run.
        """
        dataset = self.train_dataset()
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            # What Lightning would inject (same seed), but with a position that survives a resume.
            sampler = StatefulDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=True,
                seed=int(os.getenv("PL_GLOBAL_SEED", 0)),
            )
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def heldout_dataset(self) -> Optional[Dataset]:
        """Real samples of the training distribution that D never trains on: with :attr:`limit`, the training samples
        left out of the subset; ``None`` when D trains on all of them (``OverfittingMonitor`` reads it)."""
        self.train_dataset()
        return self._heldout

    def image_transform(self) -> Optional[Any]:
        """The transform from a PIL image to a ``(C, H, W)`` tensor in [-1, 1] that this module applies to its own
        images, for preprocessing other images (e.g. generated ones read from a folder) alike; ``None`` when the
        module does not read images from files."""
        return None

    def reference_dataset(self) -> Dataset:
        """Real samples for FID statistics, in a deterministic order, scaled like the training data.

        Items are sample tensors or ``(sample, label)`` pairs.
        """
        if self._reference is None:
            reference = self._build_reference()
            if self.classes is not None:
                reference = select_classes(reference, self.classes, type(self).__name__)
            self._reference = reference
        return self._reference

    def cache_key(self) -> str:
        """A file-name-safe key that changes whenever the reference samples would change.

        Built from :meth:`_identity` (dataset, split, transform, size) and :data:`PIPELINE_VERSION`.
        """
        identity = {"class": type(self).__name__, "pipeline": PIPELINE_VERSION, **self._identity()}
        if self.classes is not None:  # only when set: the keys of unfiltered data (and their caches) do not change
            identity["classes"] = list(self.classes)
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return f"{self.name}-{digest}"


def check_classes(owner: str, classes: Optional[Sequence[int]], num_classes: Optional[int]) -> Optional[tuple[int, ...]]:
    """``classes`` as a sorted tuple of distinct labels (``None`` stays ``None``).

    Raises:
        ValueError: not a non-empty list of distinct integers in ``[0, num_classes)``.
    """
    if classes is None:
        return None
    values = list(classes) if isinstance(classes, Sequence) and not isinstance(classes, str) else None
    bound = f" in [0, {num_classes})" if num_classes is not None else " >= 0"
    if (not values or not all(is_int(c) and c >= 0 and (num_classes is None or c < num_classes) for c in values)
            or len(set(values)) != len(values)):
        raise ValueError(
            f"{owner}: classes must be a non-empty list of distinct labels{bound} or null, got {classes!r} "
            "(e.g. data.classes=[5,6,7,8,9])."
        )
    return tuple(sorted(int(c) for c in values))


def dataset_labels(dataset: Dataset) -> Optional[torch.Tensor]:
    """The labels of a map-style dataset's items as a 1-D tensor, or ``None`` when its items carry no labels.

    Read without decoding images where the dataset allows: a ``Subset`` through its parent, a ``TensorDataset``'s
    second tensor, a torchvision dataset's ``targets``; otherwise item by item (``(sample, label)`` items).
    """
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long() if len(dataset.tensors) > 1 else None
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long()
    labels = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            return None
        labels.append(int(item[1]))
    return torch.as_tensor(labels, dtype=torch.long)


def select_classes(dataset: Dataset, classes: Sequence[int], owner: str = "data") -> Dataset:
    """The items of ``dataset`` whose label is in ``classes``, in their order (a ``Subset``).

    Raises:
        DatasetError: the items carry no labels, or none has one of ``classes``.
    """
    labels = dataset_labels(dataset)
    if labels is None:
        raise DatasetError(f"{owner}: classes={list(classes)} needs labelled data, but its items carry no labels.")
    keep = torch.isin(labels, torch.as_tensor(list(classes), dtype=torch.long)).nonzero().flatten().tolist()
    if not keep:
        raise DatasetError(f"{owner}: no sample has a label in classes={list(classes)}.")
    return Subset(dataset, keep)


def limit_indices(n: int, limit: Union[int, float], seed: int = 0) -> list[int]:
    """Indices of a deterministic subset of ``range(n)``: ``limit`` items (an integer) or ``round(limit * n)`` (a
    fraction in (0, 1)), drawn without replacement by a generator seeded with ``seed`` and sorted. A random subset
    keeps the class mix of the full set (the first ``N`` items of a sorted dataset would not); a limit of ``n`` or
    more keeps everything."""
    k = int(limit) if is_int(limit) else max(1, round(float(limit) * n))
    if k >= n:
        return list(range(n))
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    return sorted(chosen.tolist())


__all__ = ["DatasetError", "check_classes", "dataset_labels", "limit_indices", "select_classes", "DatasetNotFoundError", "GANDataModule", "PIPELINE_VERSION", "StatefulDistributedSampler"]
