"""``regan-sample``: a PNG grid (or a folder of PNGs) from a ``regan-train`` checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lightning_regan.atomic import atomic_write
from lightning_regan.cli.args import OneLineParser
from lightning_regan.cli.checkpoints import CheckpointError, read_checkpoint

from lightning_regan.inputs import class_inputs, seeded_inputs
from lightning_regan.module import CHECKPOINT_KEY, GANModule


def load_module(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[GANModule, DictConfig]:
    """Rebuild the GANModule of a ``regan-train`` checkpoint from the config stored in it.

    Returns:
        ``(module, cfg)`` with the module in eval mode on ``map_location``.

    Raises:
        CheckpointError: when the file is missing, unreadable, unsafe, not a lightning-regan checkpoint, holds a
            non-finite weight, or its weights do not fit the architecture its config describes.
    """
    from lightning_regan.builders import build_models, build_module

    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path, "checkpoint", map_location=map_location)  # safe, regan-train's, finite
    state = checkpoint[CHECKPOINT_KEY]
    if not state.get("config"):
        raise CheckpointError(
            f"{str(path)!r} is not a regan-train checkpoint (no stored run config). For a checkpoint of your own "
            "GANModule use GANModule.load_from_checkpoint(path, generator=..., discriminator=...)."
        )
    cfg = OmegaConf.create(state["config"])
    num_classes = cfg.get("num_classes", None)
    generator, discriminator = build_models(cfg, tuple(cfg.data_shape), num_classes)
    module = build_module(cfg, generator, discriminator, num_classes)
    module.on_load_checkpoint(checkpoint)  # first, as Lightning does: it upgrades older checkpoints
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"Checkpoint {str(path)!r} does not fit its stored architecture: {exc}") from exc
    return module.to(map_location).eval(), cfg


def to_unit_range(x: Tensor) -> Tensor:
    """Map model-space images in [-1, 1] to [0, 1] for saving."""
    return (x.float().clamp(-1, 1) + 1) / 2


def save_samples(samples: Tensor, out: Path, nrow: int = 8, folder: bool = False, min_side: int = 256) -> list[Path]:
    """Write images as one PNG grid (``folder=False``; enlarged nearest neighbour to at least ``min_side`` pixels a
    side) or one PNG per sample at the model's size; 2-D points as a scatter PNG.

    Files are written to a temporary name and renamed, so nothing half-written is left behind.
    """
    from torchvision.utils import save_image

    from lightning_regan.plots import save_image_grid, save_scatter

    out.parent.mkdir(parents=True, exist_ok=True)
    if samples.dim() == 2:  # points
        return [save_scatter(samples, out)]
    if folder:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for i, img in enumerate(to_unit_range(samples)):
            target = out / f"{i:06d}.png"
            atomic_write(target, lambda p, img=img: save_image(img, p, format="png"))
            written.append(target)
        return written
    return [save_image_grid(samples, out, nrow=nrow, min_side=min_side)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineParser(prog="regan-sample", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by regan-train (checkpoints/last.ckpt or best.ckpt)")
    parser.add_argument("-o", "--out", default="samples.png", help="PNG grid path, or a folder with --folder")
    parser.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    parser.add_argument("--nrow", type=int, default=8, help="images per grid row")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--min-side", type=int, default=256,
                        help="enlarge a smaller grid (nearest neighbour, whole factor) to at least this many pixels a "
                             "side; 0 keeps the model's size (--folder images always keep it)")
    parser.add_argument("--folder", action="store_true", help="write one PNG per sample into --out")
    parser.add_argument("--raw", action="store_true", help="use the trained G, not its EMA copy")
    parser.add_argument(
        "--class", dest="classes", type=int, action="append", metavar="K",
        help="class-conditional checkpoints: generate class K only (repeat for several classes, one row of --nrow "
             "samples each); default: labels drawn like training draws them",
    )
    args = parser.parse_args(argv)
    for flag, value, minimum in (("--num", args.num, 1), ("--nrow", args.nrow, 1), ("--min-side", args.min_side, 0)):
        if value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")
    try:
        module, _ = load_module(args.checkpoint)
    except CheckpointError as exc:
        print(f"regan-sample: {exc}", file=sys.stderr)
        return 2
    if args.classes is not None:
        if not module.conditional:
            print("regan-sample: --class needs a class-conditional checkpoint; this one is unconditional.", file=sys.stderr)
            return 2
        bad = [k for k in args.classes if not 0 <= k < module.num_classes]
        if bad:
            print(f"regan-sample: --class must lie in [0, {module.num_classes}), got {bad}.", file=sys.stderr)
            return 2
        # one class: --num samples of it; several: one row of --nrow samples per class
        per_class = args.num if len(args.classes) == 1 else args.nrow
        z, labels = class_inputs(module, per_class, args.seed, args.classes)
    else:
        z, labels = seeded_inputs(module, args.num, args.seed)  # the module's prior (sample_noise) under --seed
    if args.raw:
        module.generator.eval()
        with torch.no_grad():
            samples = module.run_generator(module.generator, z, labels)
    elif labels is None:
        samples = module.generate(z=z)
    else:
        samples = module.generate(z=z, y=labels)
    written = save_samples(samples, Path(args.out), nrow=args.nrow, folder=args.folder, min_side=args.min_side)
    print(written[0].parent if args.folder else written[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
