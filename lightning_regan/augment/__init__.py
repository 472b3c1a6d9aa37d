"""Differentiable augmentations of every image D sees (real and fake, D step and G step): DiffAugment and ADA.

Pass one as ``GANModule(augment=...)`` (or ``augment=diffaugment`` / ``augment=ada`` on the command line). They are
tensor-in/tensor-out ``nn.Module`` s that never call backward; see ``docs/augmentation.md``.
"""

from lightning_regan.augment.ada import ADA, GROUPS, AdaptiveAugment
from lightning_regan.augment.base import Augment
from lightning_regan.augment.diffaugment import POLICY_OPS, DiffAugment

__all__ = ["ADA", "AdaptiveAugment", "Augment", "DiffAugment", "GROUPS", "POLICY_OPS"]
