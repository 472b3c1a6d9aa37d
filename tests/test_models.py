"""Architectures: shapes for each data shape, layout rules and errors, per-sample D, configs, gradient penalties."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.nn.utils import parametrize

from lightning_regan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    dcgan_layout,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def _sn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and parametrize.is_parametrized(m, "weight")]


def _cross_sample_grad(d: nn.Module, x: torch.Tensor) -> float:
    """Size of d(D(x)[0]) / d x[1:]: zero when D treats every sample on its own."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x)[0], x)
    return float(grad[1:].abs().max())


# ---------------------------------------------------------------- MLP
def test_mlp_points_are_linear_and_have_latent_dim():
    g = MLPGenerator(latent_dim=5, data_shape=(2,), hidden=[32])
    d = MLPDiscriminator(data_shape=[2], hidden=[32, 16])
    z = torch.randn(7, 5) * 50
    x = g(z)
    assert g.latent_dim == 5 and x.shape == (7, 2)
    assert not any(isinstance(m, nn.Tanh) for m in g.modules())
    assert d(x).shape == (7,)


def test_mlp_images_use_tanh_and_unflatten():
    g = MLPGenerator(latent_dim=8, data_shape=[1, 8, 8], hidden=[64, 64])
    x = g(torch.randn(4, 8) * 100)
    assert x.shape == (4, 1, 8, 8)
    assert x.abs().max() <= 1.0
    assert MLPDiscriminator((1, 8, 8))(x).shape == (4,)
    assert MLPGenerator(8, (1, 8, 8), output_activation="none")(torch.randn(64, 8) * 100).abs().max() > 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(latent_dim=0, data_shape=(2,)), "latent_dim"),
        (dict(latent_dim=4, data_shape=()), "data_shape"),
        (dict(latent_dim=4, data_shape=(2,), hidden=[]), "hidden"),
        (dict(latent_dim=4, data_shape=(2,), output_activation="relu"), "output_activation"),
    ],
)
def test_mlp_generator_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPGenerator(**kwargs)


def test_mlp_discriminator_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        MLPDiscriminator((2,), norm="instance")


# ---------------------------------------------------------------- DCGAN
@pytest.mark.parametrize("size, start, doublings", [(8, 4, 1), (16, 4, 2), (28, 7, 2), (32, 4, 3), (64, 4, 4), (12, 6, 1)])
def test_dcgan_layout(size, start, doublings):
    assert dcgan_layout((3, size, size)) == (3, start, doublings)


@pytest.mark.parametrize(
    "shape, match",
    [((3, 32, 16), "square"), ((3, 30, 30), "power of two"), ((1, 6, 6), "power of two"), ((2,), r"\(C, H, W\)")],
)
def test_dcgan_rejects_unsupported_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        DCGANGenerator(16, shape)
    with pytest.raises(ValueError, match=match):
        DCGANDiscriminator(shape)


@pytest.mark.parametrize("size", [8, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(size, channels):
    g = DCGANGenerator(16, [channels, size, size], channels=8)
    d = DCGANDiscriminator([channels, size, size], channels=8)
    x = g(torch.randn(3, 16))
    assert g.latent_dim == 16
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1.0
    assert d(x).shape == (3,)
    n_up = sum(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    n_down = sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in d.modules())
    assert n_up == n_down == dcgan_layout((channels, size, size))[2]


def test_dcgan_generator_has_batchnorm_discriminator_none_by_default():
    g, d = DCGANGenerator(8, (1, 16, 16)), DCGANDiscriminator((1, 16, 16))
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in d.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in DCGANDiscriminator((1, 16, 16), norm="layer").modules())
    with pytest.raises(ValueError, match="norm"):
        DCGANDiscriminator((1, 16, 16), norm="spectral")


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLPDiscriminator((1, 8, 8), hidden=[32, 32]),
        lambda: MLPDiscriminator((1, 8, 8), hidden=[32, 32], norm="layer"),
        lambda: DCGANDiscriminator((1, 8, 8), channels=8),
        lambda: DCGANDiscriminator((1, 8, 8), channels=8, norm="layer"),
    ],
)
def test_discriminators_are_per_sample_unless_batch_norm(make):
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    assert _cross_sample_grad(make().train(), x) == 0.0


@pytest.mark.parametrize("make", [lambda: MLPDiscriminator((1, 8, 8), hidden=[32, 32], norm="batch"),
                                  lambda: DCGANDiscriminator((1, 8, 8), channels=8, norm="batch")])
def test_batch_norm_discriminator_mixes_samples(make):
    torch.manual_seed(0)
    assert _cross_sample_grad(make().train(), torch.randn(4, 1, 8, 8)) > 0.0


# ---------------------------------------------------------------- ResNet
def test_resnet_shapes_and_spectral_norm():
    g = ResNetGenerator(32, (3, 32, 32), channels=16)
    d = ResNetDiscriminator((3, 32, 32), channels=16)
    x = g(torch.randn(2, 32))
    assert g.latent_dim == 32 and x.shape == (2, 3, 32, 32) and x.abs().max() <= 1.0
    assert d(x).shape == (2,)
    convs_and_linears = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(_sn_layers(d)) == len(convs_and_linears) > 0
    assert _sn_layers(ResNetDiscriminator((1, 32, 32), channels=16, spectral_norm=False)) == []
    assert _cross_sample_grad(d.train(), torch.randn(3, 3, 32, 32)) == 0.0


def test_resnet_default_widths_match_sngan():
    # SNGAN's CIFAR-10 ResNet (Miyato et al. 2018): ~4.3M G and ~1.0M D parameters.
    g_params = sum(p.numel() for p in ResNetGenerator(128, (3, 32, 32)).parameters())
    d_params = sum(p.numel() for p in ResNetDiscriminator((3, 32, 32)).parameters())
    assert 4.2e6 < g_params < 4.4e6
    assert 1.0e6 < d_params < 1.1e6


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 64, 64), (2,)])
def test_resnet_rejects_other_sizes(shape):
    with pytest.raises(ValueError, match="image_size=32"):
        ResNetGenerator(8, shape)
    with pytest.raises(ValueError, match="image_size=32"):
        ResNetDiscriminator(shape)


# ---------------------------------------------------------------- gradient penalties need double backward
@pytest.mark.parametrize(
    "d",
    [
        MLPDiscriminator((1, 8, 8), hidden=[16]),
        DCGANDiscriminator((1, 8, 8), channels=8),
        ResNetDiscriminator((1, 32, 32), channels=8),
    ],
    ids=["mlp", "dcgan", "resnet_sn"],
)
def test_r1_double_backward_reaches_every_parameter(d):
    x = torch.randn(3, *d.data_shape, requires_grad=True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    grad.square().sum().backward()
    # Biases need not get a gradient (the output bias never changes dD/dx); every weight must.
    weights = [p for name, p in d.named_parameters() if "weight" in name and p.dim() > 1]
    assert weights and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in weights)


# ---------------------------------------------------------------- config files, as train() instantiates them
@pytest.mark.parametrize(
    "name, data_shape",
    [("mlp", [2]), ("mlp", [1, 8, 8]), ("dcgan", [1, 8, 8]), ("dcgan", [1, 28, 28]), ("resnet", [3, 32, 32])],
)
def test_model_configs_instantiate(name, data_shape):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert isinstance(cfg.latent_dim, int) and isinstance(cfg.spectral_norm, bool)
    g = instantiate(cfg.generator, latent_dim=cfg.latent_dim, data_shape=list(data_shape))
    d = instantiate(cfg.discriminator, data_shape=list(data_shape))
    with torch.no_grad():
        x = g.eval()(torch.randn(2, cfg.latent_dim))
        assert x.shape == (2, *data_shape)
        assert d(x).shape == (2,)
    assert g.latent_dim == cfg.latent_dim
