"""A folder of images (flat, or one subfolder per class as torchvision's ImageFolder reads) as GAN data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor
from torch.utils.data import Dataset

from lightning_regan.data.base import DatasetError, DatasetNotFoundError, GANDataModule
from lightning_regan.validation import check_int

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_MODES = {1: "L", 3: "RGB"}


def list_images(root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[tuple[Path, int]]:
    """Image files under ``root`` (recursively, sorted) with a label: the index of their top-level subfolder
    among the sorted subfolders that hold images; files directly in ``root`` get label 0 (flat layout)."""
    exts = tuple(e.lower() for e in extensions)
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(exts) and not f.startswith(".")]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    groups = sorted({p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files})
    index = {g: i for i, g in enumerate(g for g in groups if g)}
    return [(p, index.get(p.relative_to(root).parts[0], 0) if len(p.relative_to(root).parts) > 1 else 0) for p in files]


def verify_images(paths: Sequence[Path], max_report: int = 5) -> None:
    """Check every file's image header and integrity with PIL (``Image.verify``) without decoding the pixels.

    Raises:
        DatasetError: naming the unreadable files (the first ``max_report``) and how many there are.
    """
    from PIL import Image

    bad: list[str] = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # PIL raises many types for broken files
            bad.append(f"{path} ({type(exc).__name__}: {exc})")
    if bad:
        shown = "; ".join(bad[:max_report]) + ("; ..." if len(bad) > max_report else "")
        raise DatasetError(
            f"{len(bad)} of {len(paths)} image files cannot be read: {shown}. Remove or replace them, or set "
            "data.verify=false to skip this check (unreadable files then fail when they are loaded)."
        )


class ConvertMode:
    """PIL image -> the same image in ``mode`` ("L", "RGB"); picklable, for DataLoader workers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Any) -> Any:
        return image.convert(self.mode)


def image_transform(image_size: Optional[int], channels: int) -> Any:
    """PIL image -> ``(channels, S, S)`` tensor in [-1, 1]: short side resized to ``S``, center crop, scaled
    (``image_size=None``: the image's own size, scaled only)."""
    from torchvision import transforms

    resize = [] if image_size is None else [transforms.Resize(image_size, antialias=True),
                                            transforms.CenterCrop(image_size)]
    return transforms.Compose([
        ConvertMode(_MODES[channels]),
        *resize,
        transforms.ToTensor(),
        transforms.Normalize([0.5] * channels, [0.5] * channels),
    ])


def common_size(paths: Sequence[Path]) -> tuple[int, int]:
    """``(height, width)`` shared by every image (read from the file headers only).

    Raises:
        DatasetError: two images differ in size (both named), or a file cannot be read.
    """
    from PIL import Image

    first: Optional[tuple[tuple[int, int], Path]] = None
    for path in paths:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except Exception as exc:  # PIL raises many types for broken files
            raise DatasetError(f"Cannot read image file {path}: {type(exc).__name__}: {exc}. Remove or replace it.") from exc
        if first is None:
            first = ((height, width), path)
        elif (height, width) != first[0]:
            (h0, w0), p0 = first
            raise DatasetError(
                f"data.image_size=null keeps the images' own size, but {p0} is {w0}x{h0} px and {path} is "
                f"{width}x{height} px; set data.image_size=N to resize them all to NxN."
            )
    assert first is not None
    return first[0]


class ImageFileDataset(Dataset):
    """Images from a list of ``(path, label)``: converted to ``channels``, resized and center-cropped to
    ``image_size`` (``None``: kept at their own size), scaled to [-1, 1]. Items are ``(image (C, S, S), label)``."""

    def __init__(self, items: Sequence[tuple[Path, int]], image_size: Optional[int], channels: int) -> None:
        self.items = list(items)
        self.mode = _MODES[channels]
        self.transform = image_transform(image_size, channels)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def targets(self) -> list[int]:
        """The items' labels, read without opening the images (``data.classes`` filters on them)."""
        return [label for _, label in self.items]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.items[index]
        try:
            with Image.open(path) as img:
                image = img.convert(self.mode)
        except Exception as exc:
            raise DatasetError(f"Cannot read image file {path}: {type(exc).__name__}: {exc}. Remove or replace it.") from exc
        return self.transform(image), label


class ImageFolderDataModule(GANDataModule):
    """Every image under ``root`` (flat or in class subfolders), resized to ``image_size`` and in [-1, 1].

    Images are converted to greyscale (``channels=1``) or RGB (``channels=3``), resized so the short side is
    ``image_size`` and center-cropped to a square. The reference set is the same files in sorted order.

    Args:
        root: The image folder.
        image_size: Side ``S`` of the square images; ``None`` keeps the images' own size (all must agree), as
            FID tools such as torch-fidelity read a folder.
        channels: 1 (greyscale) or 3 (RGB).
        verify: Check every file with PIL during setup, so a corrupt image fails before training (naming the
            file) instead of in the middle of it.
        max_samples: Use only the first ``max_samples`` files in sorted order.
        extensions: File extensions counted as images.
        batch_size, num_workers, pin_memory, limit, classes: See :class:`GANDataModule` (labels: the class subfolders
            in sorted order, 0, 1, ...).
    """

    def __init__(
        self,
        root: Optional[str | os.PathLike] = None,
        image_size: Optional[int] = 64,
        channels: int = 3,
        verify: bool = True,
        max_samples: Optional[int] = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        limit: Optional[Union[int, float]] = None,
        classes: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, limit=limit,
                         classes=classes)
        check_int("ImageFolderDataModule", "image_size (null: the images' own size)", image_size, 1, optional=True)
        if channels not in _MODES:
            raise ValueError(f"ImageFolderDataModule: channels must be 1 (greyscale) or 3 (RGB), got {channels!r}.")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"ImageFolderDataModule: max_samples must be a positive integer or null, got {max_samples!r}.")
        self.root = None if root in (None, "") else Path(root).expanduser()
        self.image_size = image_size
        self.channels = channels
        self.verify = verify
        self.max_samples = max_samples
        self.extensions = tuple(extensions)
        self.name = "image_folder"
        self._native: Optional[tuple[int, int]] = None
        self._items: Optional[list[tuple[Path, int]]] = None
        self._verified = False

    def files(self) -> list[tuple[Path, int]]:
        """``(path, label)`` of the images used, sorted by path.

        Raises:
            DatasetNotFoundError: ``root`` is unset, missing, or holds no image files.
        """
        if self._items is None:
            if self.root is None:
                raise DatasetNotFoundError("ImageFolderDataModule needs data.root: pass data.root=/path/to/images.")
            if not self.root.is_dir():
                raise DatasetNotFoundError(f"Image folder data.root={self.root} does not exist or is not a folder; point data.root at a folder of images.")
            items = list_images(self.root, self.extensions)
            if not items:
                raise DatasetNotFoundError(
                    f"No image files ({', '.join(self.extensions)}) under data.root={self.root}; put images there, flat "
                    "or in one subfolder per class."
                )
            self._items = items[: self.max_samples] if self.max_samples else items
        return self._items

    @property  # type: ignore[override]
    def shape(self) -> tuple[int, int, int]:
        """``(channels, S, S)``, or ``(channels, H, W)`` of the images themselves when ``image_size`` is ``None``
        (read from the files' headers the first time it is asked)."""
        if self.image_size is not None:
            return (self.channels, self.image_size, self.image_size)
        if self._native is None:
            self._native = common_size([p for p, _ in self.files()])
        return (self.channels, *self._native)

    def prepare_data(self) -> None:
        """Check that ``root`` holds images and, with ``verify``, that every one of them can be read."""
        items = self.files()
        if self.verify and not self._verified:
            verify_images([p for p, _ in items])
            self._verified = True

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_data()  # prepare_data runs on one process per node only; the check is cheap enough to repeat
        super().setup(stage)

    @property
    def num_classes(self) -> Optional[int]:  # type: ignore[override]
        """Number of class subfolders holding images, or ``None`` for a flat folder (one label)."""
        count = len({label for _, label in self.files()})
        return count if count > 1 else None

    def _build_train(self) -> Dataset:
        return ImageFileDataset(self.files(), self.image_size, self.channels)

    def _build_reference(self) -> Dataset:
        return self._build_train()

    def image_transform(self) -> Any:
        return image_transform(self.image_size, self.channels)

    def _identity(self) -> dict[str, Any]:
        listing = hashlib.sha1()
        for path, label in self.files():
            listing.update(f"{path.relative_to(self.root).as_posix()}|{path.stat().st_size}|{label}\n".encode())
        return {"root": str(self.root.resolve()), "files": listing.hexdigest(), "count": len(self.files()),
                "image_size": self.image_size if self.image_size is not None else list(self.shape[1:]),
                "channels": self.channels}


__all__ = ["IMAGE_EXTENSIONS", "ImageFileDataset", "ImageFolderDataModule", "common_size", "image_transform", "list_images",
           "verify_images"]
