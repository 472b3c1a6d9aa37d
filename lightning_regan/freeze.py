"""FreezeD (Mo et al. 2020): fine-tune a GAN with the discriminator's first blocks frozen.

A discriminator takes part by listing its blocks, input side first, in a method ``freezable_blocks()`` (the shipped
DCGAN, ResNet and MLP discriminators do; the output head is not listed, so it always trains)::

    class MyD(nn.Module):
        def freezable_blocks(self) -> list[nn.Module]:
            return [self.stem, self.down1, self.down2]

Frozen blocks have ``requires_grad`` off, are left out of D's optimizer and stay in eval mode (no BatchNorm
statistics or spectral-norm power iterations move their function): their weights are those the run started from.
"""

from __future__ import annotations

from torch import nn

from lightning_regan.validation import check_int

HOOK = "freezable_blocks"


def freezable_blocks(discriminator: nn.Module) -> list[nn.Module]:
    """The blocks ``discriminator.freezable_blocks()`` lists, input side first.

    Raises:
        ValueError: the discriminator has no such method, or it returns something other than modules.
    """
    hook = getattr(discriminator, HOOK, None)
    name = type(discriminator).__name__
    if not callable(hook):
        raise ValueError(
            f"freeze_d_layers needs a discriminator that lists its blocks: {name} has no {HOOK}() method (return "
            "its blocks as a list of modules, input side first; docs/finetuning.md)."
        )
    blocks = list(hook())
    if not all(isinstance(b, nn.Module) for b in blocks):
        raise ValueError(f"{name}.{HOOK}() must return a list of torch.nn.Module blocks, got {blocks!r}.")
    return blocks


def freeze_d_blocks(discriminator: nn.Module, k: int) -> list[nn.Module]:
    """Freeze the first ``k`` blocks of ``discriminator`` (``requires_grad`` off, eval mode); returns them.

    Raises:
        ValueError: ``k`` is not an integer >= 0, the discriminator lists no blocks, or ``k`` exceeds their number.
    """
    check_int("GANModule", "freeze_d_layers", k, 0)
    if k == 0:
        return []
    blocks = freezable_blocks(discriminator)
    if k > len(blocks):
        raise ValueError(
            f"GANModule: freeze_d_layers={k} exceeds the {len(blocks)} blocks of {type(discriminator).__name__} "
            f"(its {HOOK}()); choose 0..{len(blocks)}."
        )
    frozen = blocks[:k]
    keep_frozen(frozen)
    return frozen


def keep_frozen(blocks: list[nn.Module]) -> None:
    """(Re)apply the freeze: ``requires_grad`` off and eval mode."""
    for block in blocks:
        block.requires_grad_(False)
        block.eval()


__all__ = ["HOOK", "freezable_blocks", "freeze_d_blocks", "keep_frozen"]
