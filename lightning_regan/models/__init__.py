"""Generator/discriminator architectures: ``G(latent_dim, data_shape, **kw)``, ``D(data_shape, **kw)``.

Every generator exposes ``latent_dim``; every discriminator returns logits of shape ``(N,)``.
"""

from lightning_regan.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_layout
from lightning_regan.models.mlp import MLPDiscriminator, MLPGenerator
from lightning_regan.models.resnet import ResNetDiscriminator, ResNetGenerator

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "dcgan_layout",
]
