"""Shared fixtures: quiet Lightning, small deterministic pieces, the shared data folder."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("PYTHONWARNINGS", "ignore")
# One thread per process: on a loaded 2-core machine two spinning threads per test make training 3-10x slower,
# and subprocesses (regan-train, DDP ranks) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when it is absent (a user's machine has none)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep FID statistics / classifier caches of tests out of the user's cache, but share them across tests."""
    if "REGAN_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("REGAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "regan-cache"))
