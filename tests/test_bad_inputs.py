"""Every bad input to ``regan-train``, ``regan-eval`` and ``regan-sample`` is answered with one line on stderr and
exit code 2, naming the key or file (docs/errors.md lists them all).

Table-driven and in-process: exit code, exactly one stderr line, the key or file named, no warning raised before it.
A few representatives run as real console processes (two at a time), where a leaked warning or a usage block would
show on stderr; regan-eval's shape check is timed. How fast regan-train's torch-free answers come is measured by
``scripts/bench_cli.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
UNSAFE_HINTS = ("weights_only=False", "will likely succeed", "weights_only` set to `False")


class Evil:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _evil_ckpt(tmp: Path) -> str:
    path = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "regan": {}, "payload": Evil()}, path)
    return str(path)


def _junk_ckpt(tmp: Path) -> str:
    path = tmp / "notes.ckpt"
    path.write_text("these are my notes, not a checkpoint\n")
    return str(path)


def _nan_ckpt(tmp: Path) -> str:
    path = tmp / "nan.ckpt"
    weight = torch.randn(4, 4)
    weight[1, 2] = float("nan")
    torch.save({"state_dict": {"generator.w": torch.randn(4, 4), "ema_generator.module.w": weight},
                "regan": {"g_steps": 1, "d_steps": 1, "config": {}}}, path)
    return str(path)


def _file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("x")
    return path


def _idx(path: Path, dims: tuple[int, ...], body: int) -> None:
    """An uncompressed MNIST IDX file whose header says ``dims`` and whose body holds ``body`` bytes."""
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + bytes(body))


def _cut_mnist(tmp: Path) -> str:
    """Extracted MNIST files (as torchvision leaves them) with the training images cut short."""
    raw = tmp / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _idx(raw / "train-images-idx3-ubyte", (60000, 28, 28), 1000)
    _idx(raw / "train-labels-idx1-ubyte", (60000,), 60000)
    _idx(raw / "t10k-images-idx3-ubyte", (10000, 28, 28), 10000 * 28 * 28)
    _idx(raw / "t10k-labels-idx1-ubyte", (10000,), 10000)
    return str(tmp / "mnist")


def _raw_pickle(tmp: Path) -> str:
    """A plain pickle (not torch.save's format) named like a checkpoint."""
    path = tmp / "raw.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "note": "pickled by hand"}))
    return str(path)


def _ring_ckpt(tmp: Path) -> str:
    """A checkpoint whose stored config is the default one with data=gaussians model=mlp (as a ring run stores it)."""
    from omegaconf import OmegaConf

    from lightning_regan.cli.checks import RESUME_NODES
    from lightning_regan.config import compose_config, drop_unselected

    cfg = compose_config(["data=gaussians", "model=mlp"])
    drop_unselected(cfg)
    stored = {n: OmegaConf.to_container(cfg[n], resolve=True) for n in RESUME_NODES if n in cfg}
    stored.update(data_shape=[2], num_classes=None)
    path = tmp / "ring.ckpt"
    torch.save({"state_dict": {"generator.w": torch.zeros(2)}, "regan": {"g_steps": 4, "d_steps": 4, "config": stored}},
               path)
    return str(path)


def _symlink_loop(tmp: Path) -> str:
    (tmp / "loop").symlink_to(tmp / "loop")
    return str(tmp / "loop" / "run")


# (id, overrides built from tmp_path, text the line must contain)
CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("unknown group key", lambda t: ["modle=dcgan"], ["modle", "did you mean model?"]),
    ("unknown nested key", lambda t: ["module.ema_dcay=0.9"], ["module.ema_dcay", "did you mean module.ema_decay?"]),
    ("unknown top-level key", lambda t: ["max_g_step=10"], ["max_g_step", "did you mean max_g_steps?"]),
    ("unknown choice", lambda t: ["model=dcgna"], ["model=dcgna", "did you mean dcgan?", "mlp"]),
    ("unknown list choice", lambda t: ["regularizer=[r1,r9]"], ["regularizer=r9", "wgan_gp"]),
    ("override syntax", lambda t: ["max_g_steps=="], ["max_g_steps=="]),
    ("wrong type", lambda t: ["module.ema_decay=abc"], ["module.ema_decay", "number in (0, 1)", "'abc'"]),
    ("wrong int", lambda t: ["module.n_critic=1.5"], ["module.n_critic", "integer"]),
    ("lr not a number", lambda t: ["module.g_optimizer.lr=fast"], ["module.g_optimizer.lr", "number"]),
    ("run dir is a file", lambda t: [f"hydra.run.dir={_file(t)}"], ["hydra.run.dir=", "is a file"]),
    ("output_dir under a file", lambda t: [f"output_dir={_file(t)}/run"], ["output_dir=", "is a file"]),
    ("run dir unwritable", lambda t: ["hydra.run.dir=/proc/regan-run"], ["hydra.run.dir=/proc/regan-run", "not writable"]),
    ("missing checkpoint", lambda t: [f"ckpt_path={t}/none.ckpt"], ["ckpt_path=", "does not exist"]),
    ("not a checkpoint", lambda t: [f"ckpt_path={_junk_ckpt(t)}"], ["notes.ckpt", "not a checkpoint"]),
    ("malicious pickle", lambda t: [f"ckpt_path={_evil_ckpt(t)}"], ["evil.ckpt", "refused", "posix.system"]),
    ("non-finite weights", lambda t: [f"ckpt_path={_nan_ckpt(t)}"], ["nan.ckpt", "ema_generator.module.w", "non-finite"]),
    ("damaged MNIST file", lambda t: ["data=mnist", f"data.root={_cut_mnist(t)}"],
     ["train-images-idx3-ubyte", "damaged"]),
    # second round (issue 23)
    ("resume with another model", lambda t: ["data=gaussians", "model=dcgan", f"ckpt_path={_ring_ckpt(t)}"],
     ["ring.ckpt", "model.generator._target_", "MLPGenerator", "DCGANGenerator", "nothing was written"]),
    ("resume with other data", lambda t: ["data=digits", "model=mlp", f"ckpt_path={_ring_ckpt(t)}"],
     ["ring.ckpt", "data._target_", "GaussianMixtureDataModule"]),
    ("resume with another data setting", lambda t: ["data=gaussians", "model=mlp", "data.num_modes=4",
                                                    f"ckpt_path={_ring_ckpt(t)}"],
     ["ring.ckpt", "data.num_modes (checkpoint: 8, now: 4)"]),
    ("error inside a config target", lambda t: ["experiment=ring", "model=dcgan"],
     ["model.generator", "DCGANGenerator", "use model=mlp"]),
    ("value of a callback", lambda t: ["callbacks.fid.num_samples=1"], ["callbacks.fid.num_samples", "got 1"]),
    ("raw pickle as checkpoint", lambda t: [f"ckpt_path={_raw_pickle(t)}"], ["raw.ckpt", "raw pickle", "unsafe"]),
    ("output_dir under a symlink loop", lambda t: [f"output_dir={_symlink_loop(t)}"],
     ["output_dir=", "loop/run", "symbolic link"]),
    ("ckpt_path=last_required, none there", lambda t: ["ckpt_path=last_required"],
     ["ckpt_path=last_required", "checkpoints/last.ckpt"]),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, make, expected):
    from lightning_regan.cli import entry

    run = tmp_path / "run"
    overrides = make(tmp_path)
    args = [f"hydra.run.dir={run}", *overrides] if not any(o.startswith("hydra.run.dir") for o in overrides) else overrides
    monkeypatch.setattr(sys, "argv", ["regan-train", "trainer.enable_progress_bar=false", *args])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exited:
        warnings.simplefilter("always")
        entry.main()
    err = capsys.readouterr().err
    assert not caught, [str(w.message) for w in caught]
    lines = [line for line in err.splitlines() if line.strip()]
    assert exited.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("regan-train: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not any(hint in err for hint in UNSAFE_HINTS), err
    assert not (run / "summary.json").exists()


def test_console_entry_point_answers_config_errors_without_torch(tmp_path):
    """The real entry point in a fresh interpreter: one line, exit 2, and torch never imported."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['regan-train', 'modle=dcgan']\n"
        "try:\n"
        "    runpy.run_module('lightning_regan.cli.entry', run_name='__main__')\n"
        "finally:\n"
        "    print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "regan-train: error: unknown key modle; did you mean model?"
    assert "torch imported: False" in proc.stdout


def test_importing_the_package_does_not_import_torch():
    code = "import sys, lightning_regan; print('torch' in sys.modules); lightning_regan.GANModule; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["False", "True"]


def test_bf16_on_cpu_is_warned_in_one_line(capsys):
    from lightning_regan.cli.train import warn_slow_precision
    from lightning_regan.config import compose_config

    message = warn_slow_precision(compose_config(["trainer.precision=bf16-mixed"]))
    assert message is not None and "40x slower" in message
    assert capsys.readouterr().err.strip() == message
    assert warn_slow_precision(compose_config([])) is None
