"""DataModules: shapes and scaling, deterministic reference data, cache keys, and clear errors for bad data."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from lightning_regan.config import compose_config
from lightning_regan.data import (
    CIFAR10DataModule,
    DatasetError,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    GaussianMixtureDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    mode_coverage,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- Gaussian mixtures
def test_ring_has_8_modes_on_radius_2():
    dm = GaussianMixtureDataModule(kind="ring")
    assert dm.shape == (2,) and dm.std == 0.02 and dm.centers.shape == (8, 2)
    assert torch.allclose(dm.centers.norm(dim=1), torch.full((8,), 2.0), atol=1e-6)
    angles = torch.atan2(dm.centers[:, 1], dm.centers[:, 0])
    gaps = torch.diff(torch.sort(angles).values)
    assert torch.allclose(gaps, torch.full((7,), 2 * math.pi / 8), atol=1e-5)


def test_grid_has_25_modes_spaced_2_in_minus4_4():
    dm = GaussianMixtureDataModule(kind="grid")
    assert dm.std == 0.05 and dm.centers.shape == (25, 2)
    coords = {(float(x), float(y)) for x, y in dm.centers}
    assert coords == {(float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    with pytest.raises(ValueError, match="square number"):
        GaussianMixtureDataModule(kind="grid", num_modes=10)
    with pytest.raises(ValueError, match="kind"):
        GaussianMixtureDataModule(kind="spiral")


@pytest.mark.parametrize("kind", ["ring", "grid"])
def test_mixture_samples_sit_on_their_modes(kind):
    dm = GaussianMixtureDataModule(kind=kind, n_samples=4000, batch_size=100)
    dm.validate()
    points, labels = dm.train_dataset().tensors
    assert points.shape == (4000, 2)
    dist = torch.cdist(points, dm.centers)
    assert torch.equal(dist.argmin(1), labels)
    assert float(dist.min(1).values.max()) < 6 * dm.std
    assert torch.bincount(labels, minlength=len(dm.centers)).min() > 0.5 * 4000 / len(dm.centers)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 2) and y.shape == (100,)


def test_mixture_is_seeded_and_reference_is_fixed():
    a, b, c = (GaussianMixtureDataModule(n_samples=500, batch_size=10, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.train_dataset().tensors[0], b.train_dataset().tensors[0])
    assert not torch.equal(a.train_dataset().tensors[0], c.train_dataset().tensors[0])
    ref_a, ref_b = a.reference_dataset(), b.reference_dataset()
    assert len(ref_a) == 10_000 and torch.equal(ref_a.tensors[0], ref_b.tensors[0])
    assert not torch.equal(ref_a.tensors[0][:500], a.train_dataset().tensors[0])


def test_mixture_cache_key_follows_identity_not_loader_settings():
    base = GaussianMixtureDataModule()
    assert base.cache_key() == GaussianMixtureDataModule(batch_size=7, num_workers=0).cache_key()
    assert base.cache_key().startswith("ring-")
    others = [GaussianMixtureDataModule(std=0.03), GaussianMixtureDataModule(seed=1),
              GaussianMixtureDataModule(kind="grid"), GaussianMixtureDataModule(n_reference=500)]
    assert len({base.cache_key(), *(o.cache_key() for o in others)}) == 5


# ---------------------------------------------------------------- mode coverage
def _at_modes(centers: torch.Tensor, modes: list[int], per_mode: int, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(modes).repeat_interleave(per_mode)
    return centers[idx] + std * torch.randn(len(idx), 2, generator=g)


def test_mode_coverage_counts_covered_modes_and_quality():
    centers = GaussianMixtureDataModule(kind="grid").centers
    full = mode_coverage(_at_modes(centers, list(range(25)), 100, 0.05), centers, 0.05)
    assert full["modes_covered"] == 25 and full["num_modes"] == 25 and full["hq_fraction"] > 0.98
    half = mode_coverage(_at_modes(centers, list(range(0, 25, 2)), 100, 0.05), centers, 0.05)
    assert half["modes_covered"] == 13
    assert sum(half["counts"][1::2]) == 0
    # Between the modes: nothing is high quality and no mode is covered.
    off = mode_coverage(centers[:24] + 1.0, centers, 0.05)
    assert off == {"modes_covered": 0, "num_modes": 25, "hq_fraction": 0.0, "counts": [0] * 25}


def test_mode_coverage_threshold_scales_with_sample_count():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    far = torch.full((1, 2), 100.0)

    def covered(n_at_mode1: int, total: int) -> int:
        pts = torch.cat([centers[1].repeat(n_at_mode1, 1), far.repeat(total - n_at_mode1, 1)])
        return mode_coverage(pts, centers, std=0.1)["modes_covered"]

    assert covered(20, 2500) == 1 and covered(19, 2500) == 0  # 20 of 2,500 (PacGAN)
    assert covered(40, 5000) == 1 and covered(39, 5000) == 0  # proportional
    pts = torch.cat([centers[1].repeat(5, 1), far.repeat(2495, 1)])
    assert mode_coverage(pts, centers, 0.1, min_count=5)["modes_covered"] == 1


def test_mode_coverage_treats_non_finite_samples_as_low_quality():
    centers = torch.tensor([[0.0, 0.0]])
    pts = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [float("inf"), 1.0], [0.01, 0.0]])
    out = mode_coverage(pts, centers, std=0.1, min_count=2)
    assert out["hq_fraction"] == 0.5 and out["modes_covered"] == 1


def test_mode_coverage_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        mode_coverage(torch.zeros(5, 3), torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="std"):
        mode_coverage(torch.zeros(5, 2), torch.zeros(2, 2), 0.0)


# ---------------------------------------------------------------- digits
def test_digits_are_1797_images_in_minus1_1():
    dm = DigitsDataModule(batch_size=64)
    assert dm.shape == (1, 8, 8) and dm.name == "digits"
    dm.validate()
    images, labels = dm.train_dataset().tensors
    assert images.shape == (1797, 1, 8, 8)
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    assert torch.equal(images * 8, (images * 8).round())  # the 17 grey levels, linearly mapped
    assert set(labels.tolist()) == set(range(10))
    batches = list(dm.train_dataloader())
    assert len(batches) == 1797 // 64 and all(b[0].shape == (64, 1, 8, 8) for b in batches)
    ref = dm.reference_dataset()
    assert torch.equal(ref[0][0], images[0]) and len(ref) == 1797


def test_digits_resize_and_cache_key():
    dm = DigitsDataModule(image_size=32)
    assert dm.shape == (1, 32, 32)
    x, _ = dm.reference_dataset()[0]
    assert x.shape == (1, 32, 32) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert dm.cache_key() != DigitsDataModule().cache_key()
    assert DigitsDataModule(batch_size=8).cache_key() == DigitsDataModule().cache_key()


def test_train_loader_shuffles_drops_last_and_keeps_workers():
    from torchdata.stateful_dataloader import StatefulDataLoader
    from torchdata.stateful_dataloader.sampler import RandomSampler

    loader = DigitsDataModule(batch_size=100, num_workers=1).train_dataloader()
    assert isinstance(loader, StatefulDataLoader)  # resumable mid-epoch (test_resume.py)
    assert isinstance(loader.sampler, RandomSampler) and loader.drop_last and loader.persistent_workers
    assert not DigitsDataModule(num_workers=0).train_dataloader().persistent_workers


def test_batch_larger_than_dataset_is_refused_before_training():
    with pytest.raises(DatasetError, match="batch_size"):
        DigitsDataModule(batch_size=5000).validate()
    with pytest.raises(ValueError, match="batch_size"):
        DigitsDataModule(batch_size=0)


# ---------------------------------------------------------------- torchvision datasets
@pytest.fixture(scope="module")
def vision_root(tmp_path_factory) -> Path:
    """A writable copy of ../shared/data's MNIST and Fashion-MNIST archives (not extracted yet)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATA} does not exist")
    root = tmp_path_factory.mktemp("vision")
    for name in ("MNIST", "FashionMNIST"):
        shutil.copytree(SHARED_DATA / name / "raw", root / name / "raw")
    return root


def test_mnist_extracts_local_archives_and_scales_images(vision_root):
    dm = MNISTDataModule(root=vision_root, reference_split="test", batch_size=32)
    assert dm.shape == (1, 28, 28)
    dm.validate()
    train, ref = dm.train_dataset(), dm.reference_dataset()
    assert len(train) == 60_000 and len(ref) == 10_000
    x, y = train[0]
    assert x.shape == (1, 28, 28) and y == 5  # MNIST's first training digit is a 5
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    xb, _ = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 1, 28, 28)


def test_mnist_resize_subset_and_cache_key(vision_root):
    dm = MNISTDataModule(root=vision_root, image_size=32, max_samples=100, batch_size=10)
    dm.validate()
    assert dm.shape == (1, 32, 32) and len(dm.train_dataset()) == 100 and len(dm.reference_dataset()) == 100
    assert dm.train_dataset()[0][0].shape == (1, 32, 32)
    keys = {MNISTDataModule(root=vision_root).cache_key(), dm.cache_key(),
            MNISTDataModule(root=vision_root, image_size=32).cache_key(),
            MNISTDataModule(root=vision_root, reference_split="test").cache_key(),
            FashionMNISTDataModule(root=vision_root).cache_key()}
    assert len(keys) == 5
    assert MNISTDataModule(root="/elsewhere", batch_size=3).cache_key() == MNISTDataModule(root=vision_root).cache_key()


def test_fashion_mnist_loads(vision_root):
    dm = FashionMNISTDataModule(root=vision_root, max_samples=64)
    dm.validate()
    x, y = dm.train_dataset()[0]
    assert x.shape == (1, 28, 28) and y == 9  # Fashion-MNIST's first training item is an ankle boot


def test_concurrent_preparation_waits_for_the_extraction_lock(tmp_path, shared_data):
    """The processes of a DDP job all call validate(); only one extracts, the others wait for it."""
    from lightning_regan.data.torchvision import _exclusive

    # Only the archives: the shared folder may already hold extracted files, and then nothing would be extracted.
    shutil.copytree(shared_data / "MNIST" / "raw", tmp_path / "MNIST" / "raw",
                    ignore=lambda _dir, names: [n for n in names if not n.endswith(".gz")])
    done = threading.Event()
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            MNISTDataModule(root=tmp_path, max_samples=64).validate()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    with _exclusive(tmp_path):  # another process is extracting
        worker = threading.Thread(target=prepare)
        worker.start()
        assert not done.wait(1.0), "prepare_data did not wait for the lock"
    worker.join(60)
    assert done.is_set() and not errors
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_torchvision_data_names_root_and_fix(tmp_path, monkeypatch):
    for root in (tmp_path, tmp_path / "nope"):
        with pytest.raises(DatasetNotFoundError, match="data.root=") as err:
            MNISTDataModule(root=root).validate()
        assert "MNIST/raw" in str(err.value) and "data.download=true" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="REGAN_DATA_ROOT"):
        MNISTDataModule(root=None).validate()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        CIFAR10DataModule(root=tmp_path).setup("fit")


def test_corrupt_archive_is_reported_without_download(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes(b"not the archive")
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    with pytest.raises(DatasetError, match="MD5") as err:
        MNISTDataModule(root=tmp_path).validate()
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_torchvision_bad_arguments():
    with pytest.raises(ValueError, match="reference_split"):
        MNISTDataModule(root="x", reference_split="val")
    with pytest.raises(ValueError, match="image_size"):
        CIFAR10DataModule(root="x", image_size=0)
    assert CIFAR10DataModule(root="x").shape == (3, 32, 32)


# ---------------------------------------------------------------- image folders
def _png(path: Path, size=(12, 10), mode="RGB", value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    arr = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(arr, mode=mode).save(path)
    return path


def test_image_folder_flat_and_class_subfolders(tmp_path):
    for i in range(6):
        _png(tmp_path / "flat" / f"{i}.png", value=255 if i % 2 else 0)
    dm = ImageFolderDataModule(root=tmp_path / "flat", image_size=8, channels=3, batch_size=4)
    assert dm.shape == (3, 8, 8)
    dm.validate()
    ds = dm.train_dataset()
    assert len(ds) == 6
    x0, y0 = ds[0]
    x1, _ = ds[1]
    assert x0.shape == (3, 8, 8) and y0 == 0
    assert torch.all(x0 == -1.0) and torch.all(x1 == 1.0)
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 8, 8)

    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "classes" / cls / f"{i}.jpg", mode="L")
    dm = ImageFolderDataModule(root=tmp_path / "classes", image_size=6, channels=1, batch_size=2)
    dm.validate()
    assert [y for _, y in dm.reference_dataset()] == [0, 0, 0, 1, 1, 1]
    assert dm.reference_dataset()[0][0].shape == (1, 6, 6)


def test_image_folder_corrupt_file_is_named_before_training(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png")
    bad = tmp_path / "2.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError, match="2 of 5") as err:
        ImageFolderDataModule(root=tmp_path, image_size=8).validate()
    assert str(bad) in str(err.value) and "junk.jpg" in str(err.value) and "data.verify=false" in str(err.value)

    lazy = ImageFolderDataModule(root=tmp_path, image_size=8, verify=False, batch_size=1)
    lazy.validate()  # no up-front check: the bad file fails when loaded, still named
    files = [p for p, _ in lazy.files()]
    with pytest.raises(DatasetError, match="junk.jpg"):
        lazy.train_dataset()[files.index(tmp_path / "junk.jpg")]


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        ImageFolderDataModule(root=None).validate()
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderDataModule(root=tmp_path / "nope").validate()
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match="No image files"):
        ImageFolderDataModule(root=tmp_path).validate()
    with pytest.raises(ValueError, match="channels"):
        ImageFolderDataModule(root=tmp_path, channels=4)


def test_image_folder_cache_key_tracks_files_and_transform(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    key = ImageFolderDataModule(root=tmp_path, image_size=8).cache_key()
    assert key == ImageFolderDataModule(root=tmp_path, image_size=8, batch_size=3).cache_key()
    assert key != ImageFolderDataModule(root=tmp_path, image_size=16).cache_key()
    assert key != ImageFolderDataModule(root=tmp_path, image_size=8, channels=1).cache_key()
    _png(tmp_path / "3.png")
    assert key != ImageFolderDataModule(root=tmp_path, image_size=8).cache_key()


def test_image_folder_reads_mnist_test_pngs(shared_data):
    root = shared_data / "mnist-test-png"
    if not root.is_dir():
        pytest.skip(f"{root} does not exist")
    dm = ImageFolderDataModule(root=root, image_size=28, channels=1)
    dm.validate()
    ds = dm.train_dataset()
    assert len(ds) == 10_000 and dm.shape == (1, 28, 28)
    labels = [label for _, label in dm.files()]
    assert sorted(set(labels)) == list(range(10))
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        assert x.shape == (1, 28, 28) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert dm.files()[i][0].parent.name == str(y)


# ---------------------------------------------------------------- Hydra data configs
@pytest.mark.parametrize(
    "choice, extractor, kind",
    [("gaussians", "identity", "ring"), ("gaussians_grid", "identity", "grid"), ("digits", "classifier", None)],
)
def test_embedded_data_configs_instantiate(choice, extractor, kind):
    cfg = compose_config([f"data={choice}"])
    dm = instantiate(cfg.data)
    assert dm.fid_feature_extractor == extractor
    dm.validate()
    if kind is not None:
        assert dm.kind == kind and dm.shape == (2,)
    else:
        assert dm.shape == (1, 8, 8)


@pytest.mark.parametrize("choice", ["mnist", "fashion_mnist", "cifar10", "image_folder"])
def test_file_data_configs_fail_clearly_without_root(choice, monkeypatch):
    monkeypatch.delenv("REGAN_DATA_ROOT", raising=False)
    cfg = compose_config([f"data={choice}"])
    dm = instantiate(cfg.data)
    assert dm.fid_feature_extractor == "inception"
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        dm.validate()


def test_mnist_config_reads_root_from_environment(vision_root, monkeypatch):
    monkeypatch.setenv("REGAN_DATA_ROOT", str(vision_root))
    cfg = compose_config(["data=mnist", "data.max_samples=128"])
    dm = instantiate(cfg.data)
    dm.validate()
    assert len(dm.train_dataset()) == 128
