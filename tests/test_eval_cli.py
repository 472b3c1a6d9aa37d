"""``regan-eval`` and ``regan-sample``: FID that agrees with torch-fidelity, both sides prepared alike, data module
options from the command line, and damaged inputs refused (non-finite weights, non-finite FID)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from lightning_regan import max_steps_for
from lightning_regan.cli import evaluate as ev

from test_fid_inception import _find

PER_SIDE = 10  # Inception runs at ~4 images/s on a 2-core CPU


@pytest.fixture(scope="module")
def inception_weights() -> Path:
    path = _find("weights")
    if path is None:
        pytest.skip("converted Inception weights not available offline (run `regan-fid-weights` once)")
    return path


def _copy_digits(src: Path, digits: tuple[str, ...], dest: Path) -> Path:
    dest.mkdir()
    files = [f for d in digits for f in sorted((src / d).glob("*.png"))[: PER_SIDE // len(digits)]]
    for i, f in enumerate(files):
        shutil.copy(f, dest / f"{i:03d}.png")
    return dest


def test_images_fid_agrees_with_torch_fidelity(tmp_path, shared_data, inception_weights):
    """Two folders of 28x28 MNIST digits (0/1 against 7/8): regan-eval --images with its defaults (the images' own
    size: no resizing to the image_folder training default of 64 px) against torch-fidelity's FID on the same files
    with the same converted weights."""
    torch_fidelity = pytest.importorskip("torch_fidelity")
    real = _copy_digits(shared_data / "mnist-test-png", ("0", "1"), tmp_path / "real")
    fake = _copy_digits(shared_data / "mnist-test-png", ("7", "8"), tmp_path / "fake")
    out = tmp_path / "fid.json"
    code = ev.main(["--images", str(fake), "--data", "image_folder", "--data-root", str(real), "--feature-extractor",
                    "inception", "--weights", str(inception_weights),
                    "--cache-dir", str(tmp_path / "cache"), "--batch-size", str(PER_SIDE), "--no-progress",
                    "--json", str(out)])
    assert code == 0
    ours = json.loads(out.read_text())
    assert ours["num_samples"] == ours["num_real_samples"] == PER_SIDE and ours["image_size"] == [28, 28]
    reference = torch_fidelity.calculate_metrics(
        input1=str(fake), input2=str(real), fid=True, cuda=False, verbose=False, cache=False, save_cpu_ram=True,
        batch_size=PER_SIDE, feature_extractor_weights_path=str(inception_weights),
    )["frechet_inception_distance"]
    assert ours["fid"] == pytest.approx(reference, rel=0.005)


def _png_folder(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    folder.mkdir()
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels, mode="RGB").save(folder / f"{i:02d}.png")
    return folder


def test_generated_images_are_prepared_like_the_real_ones(tmp_path):
    """The generated side goes through the data module's own transform: the same file gives the same tensor."""
    folder = _png_folder(tmp_path / "imgs", 3, (28, 20))
    datamodule = ev.build_datamodule("image_folder", str(folder))  # image_size 64: resized, center-cropped
    assert datamodule.shape == (3, 64, 64)
    ours = ev.load_images(sorted(folder.glob("*.png")), 3, None, datamodule.image_transform())
    theirs = torch.stack([datamodule.reference_dataset()[i][0] for i in range(3)])
    assert ours.shape == (3, 3, 64, 64) and torch.equal(ours, theirs)


def test_data_options_reach_the_data_module(tmp_path, capsys):
    folder = _png_folder(tmp_path / "imgs", 3, (16, 16))
    dm = ev.build_datamodule("image_folder", str(folder), ["data.image_size=16", "data.channels=1"])
    assert dm.shape == (1, 16, 16)
    code = ev.main(["--images", str(folder), "--data", "image_folder", "--data-root", str(folder),
                    "--data-option", "image_sise=16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "did you mean data.image_size?" in err
    with pytest.raises(SystemExit):
        ev.main(["--images", str(folder), "--data", "image_folder", "--data-option", "image_size"])


def test_non_finite_fid_is_an_error_naming_the_cause(tmp_path):
    from lightning_regan.data import GaussianMixtureDataModule

    datamodule = GaussianMixtureDataModule(n_samples=64, n_reference=64, batch_size=8)
    datamodule.setup("fit")
    fake = torch.randn(16, 2)
    fake[3, 1] = float("nan")
    with pytest.raises(ev.EvaluationError, match="1 of the 16 generated samples hold NaN"):
        ev.evaluate(iter([fake]), datamodule, "identity", num_real_samples=64, cache_dir=str(tmp_path))


@pytest.fixture(scope="module")
def damaged_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    """A regan-train checkpoint (digits, MLP, EMA) whose EMA generator tensor was overwritten with NaN in place."""
    from omegaconf import OmegaConf, open_dict

    from lightning_regan.builders import build_datamodule, build_models, build_module
    from lightning_regan.config import compose_config

    tmp = tmp_path_factory.mktemp("damaged")
    cfg = compose_config(["data=digits", "model=mlp", "max_g_steps=2"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp / "run")
    datamodule = build_datamodule(cfg)
    generator, discriminator = build_models(cfg, tuple(datamodule.shape))
    module = build_module(cfg, generator, discriminator)
    module.run_config = {**OmegaConf.to_container(cfg, resolve=True), "data_shape": list(datamodule.shape)}
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps_for(2, 1), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    path = tmp / "damaged.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("ema_generator.") and k.endswith("weight"))
    checkpoint["state_dict"][name].fill_(float("nan"))  # same size, so it still "fits" the architecture
    torch.save(checkpoint, path)
    return path, name


@pytest.mark.parametrize("tool", ["regan-eval", "regan-sample"])
def test_damaged_weights_are_refused_naming_the_tensor(damaged_checkpoint, tool, tmp_path, capsys):
    from lightning_regan.cli import sample

    path, name = damaged_checkpoint
    if tool == "regan-eval":
        code = ev.main([str(path), "-n", "20", "--cache-dir", str(tmp_path), "--no-progress"])
    else:
        code = sample.main([str(path), "-o", str(tmp_path / "grid.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert name in err and "non-finite" in err and str(path) in err
    assert not (tmp_path / "grid.png").exists()
    assert "FID" not in capsys.readouterr().out


def test_progress_bars_count_real_and_generated_samples(tmp_path, capsys, monkeypatch):
    from tqdm import tqdm

    from lightning_regan.data import GaussianMixtureDataModule

    counts: dict[str, int] = {}
    original = tqdm.update

    def update(self, n=1):
        counts[self.desc] = counts.get(self.desc, 0) + n
        return original(self, n)

    monkeypatch.setattr(tqdm, "update", update)
    datamodule = GaussianMixtureDataModule(n_samples=64, n_reference=48, batch_size=8)
    datamodule.setup("fit")
    result = ev.evaluate(iter(torch.randn(30, 2).split(10)), datamodule, "identity", num_real_samples=100,
                         cache_dir=str(tmp_path), progress=True, num_generated=30, batch_size=16)
    assert math.isfinite(result["fid"])
    assert counts == {"real features": 48, "generated features": 30}
