"""Small user-style networks and loaders for tests (deliberately not lightning_regan.models)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class TinyG(nn.Module):
    def __init__(self, latent_dim: int = 4, out_dim: int = 2) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, 16), nn.ReLU(), nn.Linear(16, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TinyD(nn.Module):
    def __init__(self, in_dim: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class Identity2D(nn.Module):
    """A feature extractor of our own: the points themselves (exact Frechet distance on 2-D data)."""

    num_features = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class TinyCondG(nn.Module):
    """A user's class-conditional generator ``G(z, y)``: one-hot labels concatenated to ``z``."""

    def __init__(self, latent_dim: int = 4, num_classes: int = 3, out_dim: int = 2) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(latent_dim + num_classes, 16), nn.ReLU(), nn.Linear(16, out_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, nn.functional.one_hot(y, self.num_classes).to(z.dtype)], dim=1))


class TinyCondD(nn.Module):
    """A user's class-conditional discriminator ``D(x, y)``: one logit per class, the one of ``y`` is returned."""

    def __init__(self, num_classes: int = 3, in_dim: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).gather(1, y.unsqueeze(1)).squeeze(1)


def labelled_points(n: int = 256, num_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D points around one centre per class, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    centres = torch.tensor([[2.0 * c, -1.0 * c] for c in range(num_classes)])
    return centres[labels] + 0.1 * torch.randn(n, 2, generator=g), labels


def point_loader(n: int = 256, batch_size: int = 32, seed: int = 0, labels: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) * 0.5 + 1.0
    ds = TensorDataset(x, torch.zeros(n, dtype=torch.long)) if labels else TensorDataset(x)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=True)


def quiet_trainer(**kw) -> L.Trainer:
    opts = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    opts.update(kw)
    return L.Trainer(**opts)


class LookupG(nn.Module):
    """A "generator" that returns a real digit of class ``(y + shift) % 10``: class accuracy near the classifier's
    accuracy with shift 0, near zero with shift 1; with shift 1 every class's samples are another class's digits, so
    the overall FID is that of shift 0 but the intra-class FID is large."""

    def __init__(self, images: Tensor, labels: Tensor, shift: int) -> None:
        super().__init__()
        self.latent_dim = 4
        self.shift = shift
        self.register_buffer("bank", torch.stack([images[labels == c][:50] for c in range(10)]))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        idx = (z[:, 0].abs() * 1000).long() % 50
        return self.bank[(y + self.shift) % 10, idx] + 0 * self.w


def load_script(path: Path, name: str) -> ModuleType:
    """Import a study or benchmark script (not a package module) from its path, registered as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
