"""The declared seam between the callbacks and the module: ``GANModuleLike``.

GANModule satisfies it, and a user's own LightningModule that implements it (written here, sharing no code with
GANModule) trains with FIDMonitor, EarlyTermination and SampleGrid in a plain Trainer.
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from torch import Tensor, nn

from helpers import Identity2D, TinyD, TinyG, point_loader, quiet_trainer
from lightning_regan import BestGenerator, Divergence, EarlyTermination, FIDMonitor, GANModule, Plateau, SampleGrid
from lightning_regan.protocol import GANModuleLike


class UserGAN(L.LightningModule):
    """A user's own GAN: non-saturating loss, one D and one G update per batch, its own counters and sampling."""

    def __init__(self, latent_dim: int = 4) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = TinyG(latent_dim), TinyD()
        self.latent_dim = latent_dim
        self.g_steps = self.d_steps = 0
        self.n_critic = 1
        self.g_step_taken = False
        self.ema_generator: Optional[nn.Module] = None
        self.num_classes: Optional[int] = None
        self.label_probs: Optional[Tensor] = None
        self.fixed_noise_seed = 0

    @property
    def eval_generator(self) -> nn.Module:
        return self.generator

    @property
    def conditional(self) -> bool:
        return False

    @property
    def fixed_noise(self) -> Tensor:
        g = torch.Generator().manual_seed(self.fixed_noise_seed)
        return torch.randn(16, self.latent_dim, generator=g).to(self.device)

    def sample_noise(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    def sample_labels(self, n: int) -> Tensor:
        raise RuntimeError("unconditional")

    @torch.no_grad()
    def generate(self, n: Optional[int] = None, z: Optional[Tensor] = None, y: Optional[Tensor] = None) -> Tensor:
        z = self.sample_noise(n) if z is None else z
        return self.generator(z.to(self.device))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.generator.parameters(), lr=1e-3, betas=(0.5, 0.999)),
                torch.optim.Adam(self.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))]

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real = batch[0]
        g_opt, d_opt = self.optimizers()
        softplus = nn.functional.softplus
        fake = self.generator(self.sample_noise(len(real)))
        d_loss = softplus(-self.discriminator(real)).mean() + softplus(self.discriminator(fake.detach())).mean()
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        self.d_steps += 1
        g_loss = softplus(-self.discriminator(fake)).mean()
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.g_steps += 1
        self.g_step_taken = True
        self.log_dict({"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach()})


def test_gan_module_satisfies_the_protocol_and_a_plain_lightning_module_does_not():
    assert isinstance(GANModule(TinyG(), TinyD()), GANModuleLike)
    assert isinstance(UserGAN(), GANModuleLike)
    assert not isinstance(L.LightningModule(), GANModuleLike)


def test_a_user_module_implementing_the_protocol_works_with_the_callbacks(tmp_path):
    L.seed_everything(0, verbose=False)
    module = UserGAN()
    assert not isinstance(module, GANModule)
    fid = FIDMonitor(every_n_g_steps=4, num_samples=64, batch_size=32, feature_extractor=Identity2D(),
                     real_data=torch.randn(128, 2) * 0.5 + 1.0, verbose=False)
    early = EarlyTermination(rules=[Plateau(patience=100), Divergence()], verbose=False)
    best = BestGenerator(monitor="val/fid", verbose=False)
    grid = SampleGrid(tmp_path / "samples", every_n_g_steps=6, num_points=64, num_real_points=0)
    trainer = quiet_trainer(max_steps=2 * 12, max_epochs=-1, callbacks=[fid, early, best, grid])
    trainer.fit(module, point_loader(n=128, batch_size=32))
    assert module.g_steps == 12 and module.d_steps == 12
    assert [g for g, _ in fid.history] == [4, 8, 12]  # the G-step clock is the module's own counter
    assert float(trainer.callback_metrics["val/fid_g_step"]) == 12.0
    best_fid, best_step = min((f, g) for g, f in fid.history)
    assert early.status == "completed" and best.best_value == best_fid and best.best_g_step == best_step
    assert [g for g, _ in grid.written] == [6, 12] and all(p.is_file() for _, p in grid.written)
    assert (tmp_path / "samples" / "last.png").is_file()
