"""An ``argparse`` parser whose errors are one line (``prog: error: ...``, exit code 2), without the usage block."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reports a bad argument in one line on stderr and exits with code 2.

    argparse prints the whole usage block first, which buries the line that matters; ``--help`` still shows it.
    """

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


__all__ = ["OneLineParser"]
