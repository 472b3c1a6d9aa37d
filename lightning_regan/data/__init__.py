"""LightningDataModules of lightning-regan: images in [-1, 1] as ``(C, H, W)``, 2-D points as ``(2,)``."""

from lightning_regan.data.base import DatasetError, DatasetNotFoundError, GANDataModule
from lightning_regan.data.digits import DigitsDataModule
from lightning_regan.data.gaussians import GaussianMixtureDataModule, mode_coverage
from lightning_regan.data.image_folder import ImageFolderDataModule
from lightning_regan.data.torchvision import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "CIFAR10DataModule",
    "DatasetError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "GANDataModule",
    "GaussianMixtureDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "TorchvisionDataModule",
    "mode_coverage",
]
