"""MNIST, Fashion-MNIST and CIFAR-10 read from a local root through torchvision (no download unless asked).

torchvision only downloads; it cannot tell "the archives are here but not extracted yet" from "nothing is
here". :meth:`TorchvisionDataModule.prepare_data` does: archives with the right MD5 are extracted with no
network access, a missing dataset raises :class:`DatasetNotFoundError` naming the root and the fix, and a
download is attempted only with ``download=True``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from torch.utils.data import Dataset, Subset

from lightning_regan.data.base import DatasetError, DatasetNotFoundError, GANDataModule

_SPLITS = ("train", "test")
ROOT_ENV = "REGAN_DATA_ROOT"


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.regan-prepare.lock`` (POSIX), so that the processes of one DDP job that
    all call ``validate()`` do not extract the same archives at the same time. A no-op where it cannot lock."""
    try:
        import fcntl

        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / ".regan-prepare.lock", "a")
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


class TorchvisionDataModule(GANDataModule):
    """A torchvision image dataset from ``root``, scaled to [-1, 1]; items ``(image (C, S, S), label)``.

    Subclasses name the torchvision class, the native shape and the archive layout.

    Args:
        root: Folder holding the dataset in torchvision's layout (see the subclass). ``None`` raises a clear
            error at :meth:`validate`/``prepare_data``/``setup``.
        download: Let torchvision download missing files (needs internet).
        image_size: Resize to ``S x S`` (e.g. 32 for model=resnet); ``None`` keeps the native size.
        reference_split: Split used for FID reference statistics, ``"train"`` or ``"test"``.
        max_samples: Use only the first ``max_samples`` images of the train split (for quick runs); also applies
            to the reference when ``reference_split="train"``.
        batch_size, num_workers, pin_memory, limit, classes: See :class:`GANDataModule`.
    """

    #: The torchvision dataset class name (``torchvision.datasets.<name>``).
    torchvision_class: ClassVar[str] = ""
    #: MNIST, Fashion-MNIST and CIFAR-10 all have 10 classes.
    num_classes = 10
    #: Human-readable name for messages.
    display_name: ClassVar[str] = ""
    native_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    #: Where the archives must be, relative to root, for messages.
    layout_hint: ClassVar[str] = ""

    def __init__(
        self,
        root: Optional[str | os.PathLike] = None,
        download: bool = False,
        image_size: Optional[int] = None,
        reference_split: str = "train",
        max_samples: Optional[int] = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        limit: Optional[Union[int, float]] = None,
        classes: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, limit=limit,
                         classes=classes)
        who = type(self).__name__
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"{who}: image_size must be a positive integer or null, got {image_size!r}.")
        if reference_split not in _SPLITS:
            raise ValueError(f"{who}: reference_split must be 'train' or 'test', got {reference_split!r}.")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"{who}: max_samples must be a positive integer or null, got {max_samples!r}.")
        self.root = None if root in (None, "") else Path(root).expanduser()
        self.download = bool(download)
        self.image_size = image_size
        self.reference_split = reference_split
        self.max_samples = max_samples
        channels, height, _ = self.native_shape
        side = image_size or height
        self.shape = (channels, side, side)
        self._splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ layout
    def _archives(self, root: Path) -> list[tuple[Path, str]]:
        """``(path, md5)`` of the archives torchvision extracts from."""
        raise NotImplementedError

    def _not_found(self, root: Optional[Path]) -> DatasetNotFoundError:
        where = f"data.root={root}" if root is not None else "data.root (not set)"
        detail = ""
        if root is not None and root.is_dir():
            absent = [str(path.relative_to(root)) for path, _ in self._archives(root) if not path.is_file()]
            detail = f" (missing: {', '.join(absent)})" if absent else ""
        elif root is not None:
            detail = " (no such folder)"
        return DatasetNotFoundError(
            f"{self.display_name} not found under {where}{detail}: point data.root at a folder containing "
            f"{self.layout_hint} (or export {ROOT_ENV}=<that folder>), or set data.download=true (needs internet)."
        )

    def _root(self) -> Path:
        if self.root is None:
            raise self._not_found(None)
        if not self.root.is_dir() and not self.download:
            raise self._not_found(self.root)
        return self.root

    def _tv_class(self) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_class)

    def _transform(self) -> Any:
        from torchvision import transforms

        channels, native, _ = self.native_shape
        steps: list[Any] = []
        if self.shape[-1] != native:
            steps.append(transforms.Resize((self.shape[-1], self.shape[-1]), antialias=True))
        steps += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
        return transforms.Compose(steps)

    def image_transform(self) -> Any:
        """PIL image -> ``(C, S, S)`` tensor in [-1, 1] as the dataset's images are prepared (resized to ``S x S``
        when it is another size; an image of the dataset's size is left as it is)."""
        from torchvision import transforms

        from lightning_regan.data.image_folder import ConvertMode

        side = self.shape[-1]
        return transforms.Compose([
            ConvertMode("L" if self.native_shape[0] == 1 else "RGB"),
            transforms.Resize((side, side), antialias=True),
            self._transform(),
        ])

    def _open(self, split: str, download: bool = False) -> Dataset:
        try:
            return self._tv_class()(str(self._root()), train=split == "train", transform=self._transform(), download=download)
        except RuntimeError as exc:
            if "not found" in str(exc).lower():  # torchvision: "Dataset not found or corrupted."
                raise
            raise self._damaged(exc) from exc
        except (ValueError, IndexError, OSError, EOFError) as exc:  # a file cut short or overwritten
            raise self._damaged(exc) from exc

    def _damaged_files(self, root: Path) -> list[Path]:
        """Files under ``root`` known to be damaged (subclasses that can tell override this)."""
        return []

    def _damaged(self, exc: BaseException) -> DatasetError:
        root = self._root()
        files = self._damaged_files(root)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        what = ", ".join(str(f) for f in files) if files else f"a file under data.root={root}"
        fix = ("delete it so that the verified archive is extracted again, or replace it with the original" if files
               else "replace the damaged files with the originals")
        return DatasetError(f"{self.display_name}: {what} is damaged ({type(exc).__name__}: {first}); {fix}.")

    def _load(self, split: str) -> Dataset:
        """The torchvision dataset of ``split``; raises :class:`DatasetNotFoundError` when it is not extracted."""
        if split not in self._splits:
            try:
                self._splits[split] = self._open(split)
            except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
                raise self._not_found(self.root) from exc
        return self._splits[split]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Make the dataset readable: extract verified local archives, download when asked, else raise.

        Raises:
            DatasetNotFoundError: nothing usable under ``root`` and ``download`` is false, or the download failed.
            DatasetError: an archive has the wrong MD5, or ``root`` is not writable for the extraction.
        """
        root = self._root()
        if all(self._readable(split) for split in {"train", self.reference_split}):
            return
        with _exclusive(root):
            self._prepare(root)

    def _prepare(self, root: Path) -> None:
        from torchvision.datasets.utils import check_integrity

        # Checked again under the lock: another process may have extracted the archives meanwhile.
        missing = [split for split in sorted({"train", self.reference_split}) if not self._readable(split)]
        if not missing:
            return
        archives = self._archives(root)
        if all(path.is_file() for path, _ in archives):
            for path, md5 in archives:
                if not check_integrity(str(path), md5):
                    raise DatasetError(
                        f"{self.display_name} archive {path} is corrupt or not the original (MD5 mismatch, expected {md5}); "
                        "replace it with the original file, or delete it and set data.download=true (needs internet)."
                    )
            try:  # torchvision finds the verified archives, skips the download and extracts them
                for split in missing:
                    self._open(split, download=True)
            except OSError as exc:
                raise DatasetError(
                    f"Could not extract the {self.display_name} archives under {root}: {exc}. "
                    "Point data.root at a writable copy of the folder."
                ) from exc
        elif self.download:
            try:
                for split in missing:
                    self._open(split, download=True)
            except Exception as exc:  # URLError, or torchvision's RuntimeError wrapping it
                raise DatasetNotFoundError(
                    f"Downloading {self.display_name} into data.root={root} failed ({exc}). Without internet, put "
                    f"{self.layout_hint} under data.root and set data.download=false."
                ) from exc
        else:
            raise self._not_found(root)
        for split in missing:
            self._load(split)

    def _readable(self, split: str) -> bool:
        try:
            self._load(split)
        except DatasetNotFoundError:
            return False
        return True

    def _limit(self, dataset: Dataset) -> Dataset:
        if self.max_samples is None or self.max_samples >= len(dataset):  # type: ignore[arg-type]
            return dataset
        return Subset(dataset, range(self.max_samples))

    def _build_train(self) -> Dataset:
        return self._limit(self._load("train"))

    def _build_reference(self) -> Dataset:
        dataset = self._load(self.reference_split)
        return self._limit(dataset) if self.reference_split == "train" else dataset

    def _identity(self) -> dict[str, Any]:
        limit = self.max_samples if self.reference_split == "train" else None
        return {"dataset": self.torchvision_class, "split": self.reference_split, "image_size": self.shape[-1], "max_samples": limit}


class _MNISTLike(TorchvisionDataModule):
    def _archives(self, root: Path) -> list[tuple[Path, str]]:
        raw = root / self.torchvision_class / "raw"
        return [(raw / filename, md5) for filename, md5 in self._tv_class().resources]

    def _damaged_files(self, root: Path) -> list[Path]:
        """Extracted IDX files whose size does not match their header (e.g. cut short)."""
        bad = []
        for archive, _ in self._archives(root):
            path = archive.with_suffix("")  # train-images-idx3-ubyte.gz -> train-images-idx3-ubyte
            if path.is_file() and not _idx_size_ok(path):
                bad.append(path)
        return bad


def _idx_size_ok(path: Path) -> bool:
    """Whether an uncompressed IDX file (MNIST's format, unsigned bytes) is as long as its header says."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(4)
        if len(header) < 4:
            return False
        ndim = header[3]
        dims = handle.read(4 * ndim)
    if len(dims) < 4 * ndim:
        return False
    count = 1
    for i in range(ndim):
        count *= int.from_bytes(dims[4 * i : 4 * i + 4], "big")
    return size == 4 + 4 * ndim + count


class MNISTDataModule(_MNISTLike):
    """MNIST (60,000 train / 10,000 test, 1x28x28) from ``root/MNIST/raw/*.gz``. See :class:`TorchvisionDataModule`."""

    torchvision_class = "MNIST"
    display_name = "MNIST"
    native_shape = (1, 28, 28)
    layout_hint = "MNIST/raw/*.gz (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)"
    name = "mnist"


class FashionMNISTDataModule(_MNISTLike):
    """Fashion-MNIST (60,000 / 10,000, 1x28x28) from ``root/FashionMNIST/raw/*.gz``. See :class:`TorchvisionDataModule`."""

    torchvision_class = "FashionMNIST"
    display_name = "Fashion-MNIST"
    native_shape = (1, 28, 28)
    layout_hint = "FashionMNIST/raw/*.gz (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)"
    name = "fashion_mnist"


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 (50,000 / 10,000, 3x32x32) from ``root/cifar-10-python.tar.gz`` or ``root/cifar-10-batches-py/``."""

    torchvision_class = "CIFAR10"
    display_name = "CIFAR-10"
    native_shape = (3, 32, 32)
    layout_hint = "cifar-10-python.tar.gz or cifar-10-batches-py/"
    name = "cifar10"

    def _archives(self, root: Path) -> list[tuple[Path, str]]:
        cls = self._tv_class()
        return [(root / cls.filename, cls.tgz_md5)]


__all__ = ["CIFAR10DataModule", "FashionMNISTDataModule", "MNISTDataModule", "ROOT_ENV", "TorchvisionDataModule"]
