"""Class-conditional GANs: labels reach G and D (and the regularizers) sample by sample, fake labels come from the
one overridable ``sample_labels``, the built-in conditional networks, per-class grids, ``regan-sample --class`` and
the class accuracy of generated samples."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.callbacks import CLASS_ACCURACY_KEY, FIDMonitor, SampleGrid
from lightning_regan.data import DigitsDataModule
from lightning_regan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
)
from lightning_regan.models.conditioning import ConditionalBatchNorm2d
from lightning_regan.module import class_inputs, seeded_inputs, seeded_noise
from lightning_regan.regularizers import R1, R2, WGANGP, DiscriminatorBatch, LeCam, Regularizer, spectral_norm

from helpers import LookupG, TinyCondD, TinyCondG, TinyD, TinyG, labelled_points, quiet_trainer

NUM_CLASSES = 5
REGAN_TRAIN = [shutil.which("regan-train") or "regan-train", "trainer.enable_progress_bar=false"]


# ---------------------------------------------------------------- label routing
class LabelInX(nn.Module):
    """A generator whose sample carries its label in coordinate 0 (the rest is learned), so a discriminator can
    check that the label it is given belongs to the sample."""

    def __init__(self, latent_dim: int = 4) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Linear(latent_dim, 1)
        self.calls = 0

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return torch.cat([y.to(z.dtype).unsqueeze(1), self.net(z)], dim=1)


class CheckingD(nn.Module):
    """A discriminator that fails when the labels it gets are not the ones in its samples' coordinate 0."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        self.embed = nn.Embedding(NUM_CLASSES, 1)
        self.calls = 0

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        assert y.dtype == torch.long and y.shape == (x.shape[0],)
        assert torch.equal(x[:, 0].detach().round().long(), y), "D got labels that do not belong to its samples"
        self.calls += 1
        return self.net(x).squeeze(1) + self.embed(y).squeeze(1)


class RealPoint(WGANGP):
    """WGAN-GP at the real end of the interpolation (eps = 1), so ``x_hat`` keeps the real sample's label."""

    def interpolation_weights(self, real: Tensor) -> Tensor:
        return torch.ones(real.shape[0], 1, dtype=real.dtype, device=real.device)


class LabelCheck(Regularizer):
    """Fails unless the batch carries the labels D was called with; counts its calls."""

    def __init__(self) -> None:
        super().__init__(weight=1.0)
        self.calls = 0

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        assert torch.equal(batch.real[:, 0].detach().round().long(), batch.real_labels)
        assert torch.equal(batch.fake[:, 0].detach().round().long(), batch.fake_labels)
        self.calls += 1
        return batch.d_real.sum() * 0


def labelled_loader(n: int = 96, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    x = torch.stack([y.float(), torch.randn(n, generator=g)], dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True)


def test_g_and_d_see_each_samples_own_labels_with_n_critic_lazy_terms_and_penalties():
    L.seed_everything(0)
    check = LabelCheck()
    regs = {"r1": R1(weight=1.0, every=2), "r2": R2(weight=1.0), "wgan_gp": RealPoint(weight=1.0),
            "lecam": LeCam(weight=0.1), "check": check}
    g, d = LabelInX(), CheckingD()
    module = GANModule(g, d, regularizers=regs, n_critic=3, num_classes=NUM_CLASSES, ema_decay=0.9)
    trainer = quiet_trainer(max_steps=max_steps_for(4, 3))
    trainer.fit(module, labelled_loader())
    assert (module.g_steps, module.d_steps) == (4, 12)
    # per D step: real, fake, WGAN-GP's x_hat; per G step: the fake
    assert d.calls == 12 * 3 + 4
    assert g.calls == 12 + 4
    assert check.calls == 12
    assert {"train/d_reg/r1", "train/d_reg/wgan_gp", "train/d_reg/lecam"} <= set(trainer.callback_metrics)


def test_fake_labels_come_from_the_one_overridable_sample_labels():
    seen: list[Tensor] = []

    class Recording(GANModule):
        def sample_labels(self, n: int) -> Tensor:
            labels = torch.full((n,), 3, dtype=torch.long, device=self.device)
            seen.append(labels)
            return labels

    module = Recording(LabelInX(), CheckingD(), num_classes=NUM_CLASSES)
    quiet_trainer(max_steps=max_steps_for(2)).fit(module, labelled_loader())
    assert len(seen) == 4  # one draw per D step and per G step
    z, labels = seeded_inputs(module, 7, seed=1)
    assert torch.equal(labels, torch.full((7,), 3))
    assert torch.equal(z, seeded_noise(module, 7, seed=1))  # noise first, the same as without labels
    assert module.generate(3)[:, 0].tolist() == [3.0, 3.0, 3.0]


def test_label_probs_and_uniform_sampling():
    module = GANModule(LabelInX(), CheckingD(), num_classes=NUM_CLASSES, label_probs=[0, 1, 0, 3, 0])
    labels = seeded_inputs(module, 4000, seed=0)[1]
    assert set(labels.tolist()) == {1, 3}
    assert abs((labels == 3).float().mean().item() - 0.75) < 0.03
    uniform = seeded_inputs(GANModule(LabelInX(), CheckingD(), num_classes=NUM_CLASSES), 5000, seed=0)[1]
    assert torch.bincount(uniform, minlength=NUM_CLASSES).min() > 900


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 3, "label_probs": [1, 1]}, "label_probs"),
    ({"num_classes": 3, "label_probs": [0, 0, 0]}, "label_probs"),
    ({"label_probs": [1, 1]}, "needs num_classes"),
])
def test_bad_conditioning_settings_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GANModule(LabelInX(), CheckingD(), **kwargs)


def test_conditional_module_needs_labelled_batches_and_labels_in_range():
    module = GANModule(LabelInX(), CheckingD(), num_classes=NUM_CLASSES)
    unlabelled = DataLoader(TensorDataset(torch.randn(32, 2)), batch_size=16)
    with pytest.raises(ValueError, match="needs labels"):
        quiet_trainer(max_steps=2).fit(module, unlabelled)
    bad = DataLoader(TensorDataset(torch.randn(32, 2), torch.full((32,), NUM_CLASSES)), batch_size=16)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        quiet_trainer(max_steps=2).fit(GANModule(LabelInX(), CheckingD(), num_classes=NUM_CLASSES), bad)
    with pytest.raises(ValueError, match="pass y="):
        module.generate(z=torch.randn(2, 4))


def test_unconditional_networks_ignore_the_labels_of_the_batch():
    module = GANModule(TinyG(), TinyD())
    assert not module.conditional
    loader = DataLoader(TensorDataset(torch.randn(64, 2), torch.zeros(64, dtype=torch.long)), batch_size=16)
    quiet_trainer(max_steps=max_steps_for(2)).fit(module, loader)
    assert module.g_steps == 2 and seeded_inputs(module, 3, 0)[1] is None


def test_a_users_own_conditional_networks_learn_the_class_centres():
    """G(z, y) and D(x, y) written by a user (one-hot concat; per-class logits) drop into GANModule and learn
    class-dependent outputs."""
    L.seed_everything(0)
    x, y = labelled_points(512, 3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, drop_last=True)
    module = GANModule(TinyCondG(num_classes=3), TinyCondD(num_classes=3), num_classes=3, regularizers=[R1(0.1)],
                       g_optimizer=lambda p: torch.optim.Adam(p, 3e-3, betas=(0.5, 0.99)),
                       d_optimizer=lambda p: torch.optim.Adam(p, 3e-3, betas=(0.5, 0.99)))
    quiet_trainer(max_steps=max_steps_for(400)).fit(module, loader)
    for c in range(3):
        out = module.generate(z=torch.randn(200, 4), y=torch.full((200,), c)).mean(0)
        torch.testing.assert_close(out, torch.tensor([2.0 * c, -1.0 * c]), atol=0.5, rtol=0)


# ---------------------------------------------------------------- built-in conditional networks
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_builtin_mlp_networks_take_labels(shape):
    g, d = MLPGenerator(8, shape, num_classes=4), MLPDiscriminator(shape, num_classes=4)
    y = torch.tensor([0, 1, 2, 3])
    x = g(torch.randn(4, 8), y)
    assert x.shape == (4, *shape) and d(x, y).shape == (4,)
    # the projection term makes D's output depend on the label, the class bias G's
    assert not torch.allclose(d(x, y), d(x, (y + 1) % 4))
    z = torch.randn(4, 8)
    assert not torch.allclose(g(z, y), g(z, (y + 1) % 4))
    with pytest.raises(ValueError, match="labels"):
        g(torch.randn(4, 8))
    with pytest.raises(ValueError, match="unconditional"):
        MLPDiscriminator(shape)(x, y)


def test_mlp_generator_joins_the_one_hot_label_to_z():
    """The first layer sees ``cat(z, one_hot(y))``: a per-class bias, the unconditional weights on ``z``."""
    torch.manual_seed(0)
    g = MLPGenerator(6, (2,), hidden=[5], num_classes=4, output_activation="none")
    first = g.net[0]
    assert first.in_features == 6 + 4
    z, y = torch.randn(7, 6), torch.tensor([0, 3, 1, 1, 2, 0, 3])
    h = torch.relu(z @ first.weight[:, :6].T + first.bias + first.weight[:, 6:].T[y])
    torch.testing.assert_close(g(z, y), g.net[-1](h))


def test_builtin_dcgan_networks_take_labels_and_spectral_norm_covers_the_projection():
    g, d = DCGANGenerator(8, (1, 8, 8), channels=8, num_classes=3), DCGANDiscriminator((1, 8, 8), channels=8, num_classes=3)
    y = torch.tensor([0, 1, 2])
    x = g(torch.randn(3, 8), y)
    assert x.shape == (3, 1, 8, 8) and d(x, y).shape == (3,)
    assert not torch.allclose(g(torch.zeros(3, 8), y)[0], g(torch.zeros(3, 8), y)[1])  # the label changes G's output
    spectral_norm(d)
    from torch.nn.utils import parametrize

    assert parametrize.is_parametrized(d.projection.embed, "weight")


def test_conditional_batch_norm_scales_and_shifts_each_sample_by_its_own_class():
    norm = ConditionalBatchNorm2d(4, 3)
    with torch.no_grad():
        norm.gamma.weight.copy_(torch.arange(12.0).view(3, 4))
        norm.beta.weight.copy_(-torch.arange(12.0).view(3, 4))
    x, y = torch.randn(6, 4, 2, 2), torch.tensor([2, 0, 1, 1, 0, 2])
    normalized = nn.functional.batch_norm(x, None, None, training=True)
    expected = normalized * norm.gamma.weight[y][:, :, None, None] + norm.beta.weight[y][:, :, None, None]
    torch.testing.assert_close(norm(x, y), expected)
    fresh = ConditionalBatchNorm2d(4, 3)  # starts as a plain BatchNorm2d
    torch.testing.assert_close(fresh(x, y), nn.BatchNorm2d(4)(x))


def test_builtin_resnet_routes_each_samples_label_cbn_in_g_projection_in_d():
    """Conditional SNGAN ResNet (Miyato & Koyama 2018): sample i's output depends on y[i] and on no other label, in
    G (class-conditional BatchNorm, eval mode so batch statistics do not mix samples) and in D (projection)."""
    torch.manual_seed(0)
    g = ResNetGenerator(8, (1, 32, 32), channels=8, num_classes=4).eval()
    d = ResNetDiscriminator((1, 32, 32), channels=8, num_classes=4).eval()  # eval: no power iteration per call
    with torch.no_grad():  # class-dependent BN scales, else the fresh CBN is label-blind
        for m in g.modules():
            if isinstance(m, ConditionalBatchNorm2d):
                m.gamma.weight.normal_(1.0, 0.5)
                m.beta.weight.normal_(0.0, 0.5)
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    other = y.clone()
    other[2] = 0
    with torch.no_grad():
        x, x_other = g(z, y), g(z, other)
        out, out_other = d(x, y), d(x, other)
    assert x.shape == (4, 1, 32, 32) and out.shape == (4,)
    changed = (x - x_other).flatten(1).abs().amax(1) > 1e-6
    assert changed.tolist() == [False, False, True, False]
    assert ((out - out_other).abs() > 1e-6).tolist() == [False, False, True, False]
    perm = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        torch.testing.assert_close(g(z[perm], y[perm]), x[perm])
        torch.testing.assert_close(d(x[perm], y[perm]), out[perm])
    from torch.nn.utils import parametrize

    assert parametrize.is_parametrized(d.projection.embed, "weight")  # spectral norm covers the projection
    with pytest.raises(ValueError, match="labels"):
        g(z)
    with pytest.raises(ValueError, match="unconditional"):
        ResNetDiscriminator((1, 32, 32), channels=8)(x, y)


def test_resnet_conditional_selected_in_hydra_trains_with_labels_reaching_g_and_d(tmp_path):
    """``model=resnet model.conditional=true`` builds the conditional ResNet with the data's classes, and GANModule
    steps call both networks with labels (wrapped to record them)."""
    from lightning_regan.builders import build_datamodule, build_models, conditioning_classes
    from lightning_regan.config import compose_config

    cfg = compose_config(["model=resnet", "model.conditional=true", "data=digits", "data.image_size=32",
                          "model.generator.channels=8", "model.discriminator.channels=8", f"output_dir={tmp_path}"])
    dm = build_datamodule(cfg)
    num_classes = conditioning_classes(cfg, dm)
    g, d = build_models(cfg, tuple(dm.shape), num_classes)
    assert num_classes == 10 and isinstance(g, ResNetGenerator) and g.num_classes == 10 and d.num_classes == 10
    seen: list[str] = []

    class Recording(nn.Module):
        def __init__(self, net: nn.Module, name: str) -> None:
            super().__init__()
            self.net, self.name, self.latent_dim = net, name, getattr(net, "latent_dim", None)

        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            assert y.dtype == torch.long and y.shape == (x.shape[0],) and int(y.max()) < 10
            seen.append(self.name)
            return self.net(x, y)

    module = GANModule(Recording(g, "G"), Recording(d, "D"), loss="hinge", num_classes=num_classes)
    dm.batch_size = 8
    quiet_trainer(max_steps=max_steps_for(2), limit_train_batches=2).fit(module, dm)
    assert module.g_steps == 2 and seen.count("G") == 4 and seen.count("D") == 6


def test_unconditional_builtin_networks_keep_their_parameters():
    """Without num_classes the state dict is the one of before (checkpoints keep loading)."""
    assert not any("embed" in k or "projection" in k for k in MLPDiscriminator((2,)).state_dict())
    assert not any("embed" in k for k in DCGANGenerator(8, (1, 8, 8), channels=8).state_dict())
    assert not any("gamma" in k or "projection" in k for k in ResNetGenerator(8, (1, 32, 32), channels=8).state_dict())
    assert not any("projection" in k for k in ResNetDiscriminator((1, 32, 32), channels=8).state_dict())


# ---------------------------------------------------------------- outputs
def _digits_module(**kwargs) -> GANModule:
    return GANModule(MLPGenerator(8, (1, 8, 8), num_classes=10), MLPDiscriminator((1, 8, 8), num_classes=10),
                     num_classes=10, **kwargs)


def test_class_inputs_one_row_per_class_same_noise_per_column():
    module = _digits_module()
    z, y = class_inputs(module, 4, seed=0)
    assert y.tolist() == [c for c in range(10) for _ in range(4)]
    assert torch.equal(z[:4], z[4:8]) and torch.equal(z[:4], seeded_noise(module, 4, 0))
    z, y = class_inputs(module, 2, seed=0, classes=[7])
    assert y.tolist() == [7, 7]
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        class_inputs(module, 2, 0, classes=[10])


def test_sample_grid_has_one_row_per_class(tmp_path):
    module = _digits_module()
    grid = SampleGrid(tmp_path, every_n_g_steps=0, nrow=6)
    trainer = quiet_trainer(max_steps=max_steps_for(1), callbacks=[grid])
    trainer.fit(module, DigitsDataModule(batch_size=32))
    image = Image.open(grid.last_path)
    # torchvision's grid: 2 px padding around 8x8 cells, nrow columns, one row per class; enlarged 5x (nearest
    # neighbour) to at least 256 px a side
    assert image.size == (5 * (6 * 10 + 2), 5 * (10 * 10 + 2))
    image = image.resize((6 * 10 + 2, 10 * 10 + 2), Image.NEAREST)
    rows = torch.as_tensor(list(image.convert("L").getdata()), dtype=torch.float32).view(102, 62)
    cell = lambda r, c: rows[2 + 10 * r : 10 + 10 * r, 2 + 10 * c : 10 + 10 * c]  # noqa: E731
    z, y = class_inputs(module, 6, module.fixed_noise_seed)
    samples = ((module.generate(z=z, y=y).clamp(-1, 1) + 1) / 2 * 255).round()
    for r, c in [(0, 0), (3, 2), (9, 5)]:
        assert (cell(r, c) - samples[r * 6 + c, 0]).abs().max() <= 1.0


def test_regan_sample_class_option(tmp_path):
    """regan-train a conditional MLP on digits for a few steps, then regan-sample --class K draws class K only."""
    out = tmp_path / "run"
    subprocess.run(REGAN_TRAIN + ["model=mlp", "model.conditional=true", "max_g_steps=3", "callbacks=[checkpoint,summary]",
                                 "logger=none", f"output_dir={out}", "callbacks.checkpoint.every_n_train_steps=2"],
                   check=True, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 10 and summary["label_sampling"] == "uniform"
    ckpt = out / "checkpoints" / "last.ckpt"
    from lightning_regan.cli.sample import load_module, main

    module, _ = load_module(ckpt)
    assert module.num_classes == 10
    png = tmp_path / "seven.png"
    assert main([str(ckpt), "--class", "7", "-n", "5", "--nrow", "5", "-o", str(png), "--seed", "3"]) == 0
    z, y = class_inputs(module, 5, 3, classes=[7])
    expected = ((module.generate(z=z, y=y).clamp(-1, 1) + 1) / 2 * 255).round()
    assert Image.open(png).size == (22 * 52, 22 * 12)  # enlarged by the whole factor that takes 12 px to >= 256
    assert main([str(ckpt), "--class", "7", "-n", "5", "--nrow", "5", "-o", str(png), "--seed", "3",
                 "--min-side", "0"]) == 0
    image = torch.as_tensor(list(Image.open(png).convert("L").getdata()), dtype=torch.float32).view(12, 52)
    for c in range(5):
        assert (image[2:10, 2 + 10 * c : 10 + 10 * c] - expected[c, 0]).abs().max() <= 1.0
    # the labels matter: another class gives other images
    other = module.generate(z=z, y=torch.full((5,), 1))
    assert not torch.allclose(other, module.generate(z=z, y=y))
    # regan-eval decodes the same fixed (noise, labels) as FIDMonitor: seeded_inputs under --seed
    from lightning_regan.cli.evaluate import checkpoint_batches

    z, y = seeded_inputs(module, 10, 4)
    assert len(set(y.tolist())) > 1
    torch.testing.assert_close(torch.cat(list(checkpoint_batches(module, 10, 4, batch_size=4))), module.generate(z=z, y=y))
    assert main([str(ckpt), "--class", "10", "-o", str(png)]) == 2
    assert main([str(ckpt), "--class", "0", "--class", "9", "--nrow", "3", "-o", str(tmp_path / "two.png")]) == 0
    assert Image.open(tmp_path / "two.png").size == (12 * (3 * 10 + 2), 12 * (2 * 10 + 2))


def test_regan_sample_class_on_an_unconditional_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    subprocess.run(REGAN_TRAIN + ["model=mlp", "max_g_steps=2",
                    "callbacks=[checkpoint]", "logger=none", f"output_dir={out}",
                    "callbacks.checkpoint.every_n_train_steps=2"], check=True, capture_output=True, text=True)
    from lightning_regan.cli.sample import main

    assert main([str(out / "checkpoints" / "last.ckpt"), "--class", "1", "-o", str(tmp_path / "x.png")]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_conditional_with_an_unconditional_architecture_is_refused_before_training(tmp_path):
    proc = subprocess.run(REGAN_TRAIN + ["model=mlp", "model.conditional=true", "model.discriminator._target_=torch.nn.Linear",
                           "logger=none", f"output_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2 and "takes no num_classes" in proc.stderr


# ---------------------------------------------------------------- class accuracy of generated samples
@pytest.mark.parametrize("shift, lo, hi", [(0, 0.85, 1.0), (1, 0.0, 0.15)])
def test_fid_monitor_logs_class_accuracy_of_generated_samples(tmp_path, shift, lo, hi):
    dm = DigitsDataModule(batch_size=32)
    images, labels = dm.train_dataset().tensors
    module = GANModule(LookupG(images, labels, shift), MLPDiscriminator((1, 8, 8), num_classes=10), num_classes=10)
    fid = FIDMonitor(every_n_g_steps=1, num_samples=300, feature_extractor="classifier", verbose=False)
    trainer = quiet_trainer(max_steps=max_steps_for(1), callbacks=[fid])
    trainer.fit(module, dm)
    accuracy = float(trainer.callback_metrics[CLASS_ACCURACY_KEY])
    assert lo <= accuracy <= hi
    assert fid.summary_fields(trainer, module)["class_accuracy_history"] == [[1, pytest.approx(accuracy)]]


def test_class_accuracy_drives_lightnings_stock_early_stopping(tmp_path):
    # Higher is better, so the FID rules do not take it; Lightning's EarlyStopping(mode="max") does, from
    # callback_metrics. min_delta above any change: no evaluation improves, so it stops after `patience` epochs.
    from lightning.pytorch.callbacks import EarlyStopping

    dm = DigitsDataModule(batch_size=64)
    images, labels = dm.train_dataset().tensors
    module = GANModule(LookupG(images, labels, 0), MLPDiscriminator((1, 8, 8), num_classes=10), num_classes=10)
    fid = FIDMonitor(every_n_g_steps=10, num_samples=200, feature_extractor="classifier", verbose=False)
    stop = EarlyStopping(monitor=CLASS_ACCURACY_KEY, mode="max", patience=2, min_delta=2.0, check_on_train_epoch_end=True)
    trainer = quiet_trainer(max_steps=max_steps_for(1000), callbacks=[fid, stop])
    trainer.fit(module, dm)
    assert stop.stopped_epoch == 2 and 0 < module.g_steps < 1000
    assert float(stop.best_score) >= 0.85  # the accuracy it watched: the lookup G draws real digits of class y
