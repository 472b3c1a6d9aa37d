"""Torch-free shells of ``regan-sample`` and ``regan-eval``: the numbers the value alone decides (``-n 0``) are
answered before torch is imported (in about a second instead of 10 s on a loaded CPU), with the same one line and
exit code 2 as the full parsers; everything else is left to them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from lightning_regan.cli.args import OneLineParser

#: (flags, dest, minimum, why) of each tool's integer options with a minimum.
_SAMPLE = ((("-n", "--num"), "num", 1, ""), (("--nrow",), "nrow", 1, ""))
_EVAL = ((("-n", "--num-samples"), "num_samples", 2, " (FID needs 2 samples)"), (("--batch-size",), "batch_size", 1, ""),
         (("--kid-subsets",), "kid_subsets", 1, ""), (("--kid-subset-size",), "kid_subset_size", 2, ""),
         (("--num-real-samples",), "num_real_samples", 2, " (FID needs 2 samples)"))


def precheck(prog: str, argv: Sequence[str], specs: Sequence[tuple[tuple[str, ...], str, int, str]]) -> None:
    """Exit with code 2 and one line when an option of ``specs`` is not an integer or below its minimum."""
    if any(a in ("-h", "--help") for a in argv):
        return
    parser = OneLineParser(prog=prog, add_help=False, allow_abbrev=False)
    for flags, dest, _, _ in specs:
        parser.add_argument(*flags, dest=dest, type=int)
    known, _ = parser.parse_known_args(list(argv))
    for flags, dest, minimum, why in specs:
        value = getattr(known, dest)
        if value is not None and value < minimum:
            parser.error(f"{flags[-1]} must be >= {minimum}{why}, got {value}")


def sample_main(argv: Optional[Sequence[str]] = None) -> int:
    """``regan-sample``'s console entry point (:func:`lightning_regan.cli.sample.main` after the quick checks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    precheck("regan-sample", args, _SAMPLE)
    from lightning_regan.cli.sample import main

    return main(args)


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """``regan-eval``'s console entry point (:func:`lightning_regan.cli.evaluate.main` after the quick checks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    precheck("regan-eval", args, _EVAL)
    from lightning_regan.cli.evaluate import main

    return main(args)


__all__ = ["eval_main", "precheck", "sample_main"]
