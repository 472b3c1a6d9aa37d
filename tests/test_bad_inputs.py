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
    """An untrained regan-train checkpoint of ``data=gaussians model=mlp`` (networks, stored config), as a ring run
    writes it, without training."""
    from omegaconf import OmegaConf, open_dict

    from lightning_regan.builders import build_models, build_module
    from lightning_regan.config import compose_config, drop_unselected

    cfg = compose_config(["data=gaussians", "model=mlp", "model.generator.hidden=[8]", "model.discriminator.hidden=[8]"])
    drop_unselected(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(tmp / "ring-run")
    module = build_module(cfg, *build_models(cfg, (2,)))
    module.run_config = {**OmegaConf.to_container(cfg, resolve=True), "data_shape": [2], "num_classes": None}
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    path = tmp / "ring.ckpt"
    torch.save(checkpoint, path)
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
    ("resume with other data", lambda t: ["data=digits", "model=mlp", "model.generator.hidden=[8]",
                                          "model.discriminator.hidden=[8]", f"ckpt_path={_ring_ckpt(t)}"],
     ["ring.ckpt", "data._target_", "GaussianMixtureDataModule"]),
    ("resume with another data setting", lambda t: ["data=gaussians", "model=mlp", "data.num_modes=4",
                                                    "model.generator.hidden=[8]", "model.discriminator.hidden=[8]",
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
    """The real entry point in a fresh interpreter: one line each, exit 2, and torch never imported (a wrong key,
    and a callback's value that the value alone decides)."""
    probe = (
        "import sys, runpy\n"
        "for args in (['modle=dcgan'], ['callbacks.fid.num_samples=1']):\n"
        "    sys.argv = ['regan-train', *args]\n"
        "    try:\n"
        "        runpy.run_module('lightning_regan.cli.entry', run_name='__main__')\n"
        "    except SystemExit as exc:\n"
        "        print('exit', exc.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["exit 2", "exit 2"], proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "regan-train: error: unknown key modle; did you mean model?",
        "regan-train: error: callbacks.fid.num_samples must be an integer >= 2, got 1 (e.g. callbacks.fid.num_samples=2).",
    ]
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


# ----------------------------------------------------------------------------------- regan-eval and regan-sample
def _images(folder: Path, n: int, side: int, seed: int) -> Path:
    """``n`` random greyscale PNGs of ``side`` x ``side`` px."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L").save(folder / f"{i:03d}.png")
    return folder


def _no_inception(tmp: Path, monkeypatch) -> list[str]:
    """No Inception weights anywhere regan-eval looks; an image folder evaluated with Inception."""
    monkeypatch.delenv("REGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("REGAN_INCEPTION_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("REGAN_CACHE_DIR", str(tmp / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp / "empty-torch-home"))
    return ["--images", str(_images(tmp / "fake", 4, 8, 0)), "--data", "image_folder", "--data-root",
            str(_images(tmp / "real", 4, 8, 1)), "--feature-extractor", "inception", "--no-progress"]


# (id, tool, arguments built from (tmp_path, monkeypatch), text the line must contain, seconds it may take or None)
TOOL_CASES = [
    ("eval: data of another shape", "regan-eval", lambda t, m: [_ring_ckpt(t), "--data", "mnist", "--data-root",
                                                                str(t / "no-mnist"), "--no-progress"],
     ["ring.ckpt", "shape (2,)", "--data mnist", "(1, 28, 28)"], 3.0),
    ("eval: one sample", "regan-eval", lambda t, m: [_ring_ckpt(t), "-n", "1"], ["--num-samples", "got 1"], None),
    ("eval: bad number", "regan-eval", lambda t, m: [_ring_ckpt(t), "--batch-size", "x"], ["--batch-size", "'x'"], None),
    ("eval: missing Inception weights", "regan-eval", _no_inception,
     ["Inception weights", "regan-fid-weights", "empty-cache"], None),
    ("eval: raw pickle", "regan-eval", lambda t, m: [_raw_pickle(t)], ["raw.ckpt", "raw pickle"], None),
    ("eval: bad data option", "regan-eval", lambda t, m: ["--images", str(_images(t / "a", 2, 8, 0)), "--data",
                                                          "image_folder", "--data-root", str(_images(t / "b", 2, 8, 1)),
                                                          "--data-option", "channels=2"],
     ["data", "channels", "2"], None),
    ("sample: zero samples", "regan-sample", lambda t, m: [_ring_ckpt(t), "-n", "0"], ["--num", "got 0"], None),
    ("sample: raw pickle", "regan-sample", lambda t, m: [_raw_pickle(t)], ["raw.ckpt", "raw pickle"], None),
    ("sample: missing file", "regan-sample", lambda t, m: [str(t / "nope.ckpt")], ["nope.ckpt", "does not exist"], None),
]


def _tool_main(tool: str) -> Callable[[list[str]], int]:
    from lightning_regan.cli import evaluate, sample

    return {"regan-eval": evaluate.main, "regan-sample": sample.main}[tool]


@pytest.mark.parametrize(("tool", "make", "expected", "seconds"), [c[1:] for c in TOOL_CASES],
                         ids=[c[0] for c in TOOL_CASES])
def test_tool_bad_input_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, tool, make, expected, seconds):
    args = make(tmp_path, monkeypatch)
    main = _tool_main(tool)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(args)
        except SystemExit as exc:  # argparse errors
            code = exc.code
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: "), err
    assert "usage:" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not caught, [str(w.message) for w in caught]
    if seconds is not None:
        assert took < seconds, f"{took:.1f} s"


def test_image_folders_are_compared_at_their_own_size_unless_told(tmp_path, capsys):
    """Two folders of 8x8 images: the default keeps 8x8 (and says so); the training default would resize."""
    from lightning_regan.cli import evaluate

    fake, real = _images(tmp_path / "fake", 12, 8, 0), _images(tmp_path / "real", 12, 8, 1)
    base = ["--images", str(fake), "--data", "image_folder", "--data-root", str(real), "--feature-extractor",
            "identity", "--no-progress", "--json"]
    results = {}
    for name, extra in (("default", []), ("8", ["--data-option", "image_size=8"]),
                        ("16", ["--data-option", "image_size=16"])):
        assert evaluate.main([*base, str(tmp_path / f"{name}.json"), *extra]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
        results[name]["line"] = capsys.readouterr().out.strip()
    assert results["default"]["image_size"] == [8, 8] and "at 8x8 px" in results["default"]["line"]
    assert results["default"]["fid"] == pytest.approx(results["8"]["fid"], rel=1e-6)
    assert results["16"]["image_size"] == [16, 16] and "at 16x16 px" in results["16"]["line"]
    assert results["16"]["fid"] != pytest.approx(results["default"]["fid"], rel=1e-3)


# ----------------------------------------------------------------------------------- real console processes
def _console(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)  # a warning printed before the line must show
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


CONSOLE_CASES = [
    # (id, arguments after the interpreter, (tmp, ring, raw) -> ..., prefix of the line, texts it names)
    ("train: raw pickle (torch warned first)", lambda t, ring, raw: [
        "-m", "lightning_regan.cli.entry", f"hydra.run.dir={t / 'r1'}", f"ckpt_path={raw}"],
     "regan-train: error: ", ["raw.ckpt", "raw pickle"]),
    ("sample: -n 0 (argparse printed its usage)", lambda t, ring, raw: [
        "-m", "lightning_regan.cli.sample", ring, "-n", "0"], "regan-sample: error: ", ["--num must be >= 1, got 0"]),
    ("train: resume with another model", lambda t, ring, raw: [
        "-m", "lightning_regan.cli.entry", f"hydra.run.dir={t / 'r2'}", "data=gaussians", "model=dcgan",
        f"ckpt_path={ring}"], "regan-train: error: ", ["model.generator._target_"]),
    ("eval: data of another shape", lambda t, ring, raw: [
        "-m", "lightning_regan.cli.evaluate", ring, "--data", "mnist", "--data-root", str(t)],
     "regan-eval: ", ["shape (2,)"]),
]
#: Real processes cost a torch import each (10-40 s on a loaded 2-core machine): two in the default suite.
FAST_CONSOLE = 2


@pytest.mark.parametrize("cases", [
    pytest.param(CONSOLE_CASES[:FAST_CONSOLE], id="fast"),
    pytest.param(CONSOLE_CASES[FAST_CONSOLE:], id="rest", marks=pytest.mark.slow),
])
def test_console_tools_answer_in_one_line_without_warnings_or_usage(tmp_path, cases):
    """Real processes, two at a time, with Python's warnings on: stderr is exactly the one line."""
    ring, raw = _ring_ckpt(tmp_path), _raw_pickle(tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _console(c[1](tmp_path, ring, raw), tmp_path)[0], cases))
    for (name, _, prefix, expected), proc in zip(cases, results):
        assert proc.returncode == 2, (name, proc.stderr[-3000:])
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(prefix), (name, proc.stderr)
        for text in expected:
            assert text in proc.stderr, (name, text, proc.stderr)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()  # Hydra never started
