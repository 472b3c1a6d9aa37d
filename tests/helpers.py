"""Small user-style networks and loaders for tests (deliberately not lightning_regan.models)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
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
