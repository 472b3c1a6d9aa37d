"""``regan-eval``: FID (and KID, and the RBF MMD² the runs decide on) of a ``regan-train`` checkpoint or of an image
folder against a dataset.

Uses the same feature extractors and the same cached real statistics as the ``FIDMonitor`` callback, and the
same fixed noise (``module.sample_noise(n)`` drawn under ``--seed``, ``seeded_noise``). For a checkpoint the
sample counts, seed, batch size, feature extractor and MMD bandwidths default to the run's own ``FIDMonitor``
settings (``callbacks.fid`` in the config the checkpoint stores), so it reproduces the ``val/fid`` and (``--mmd``)
``val/mmd`` the run logged at that checkpoint. Prints the result and optionally writes it as JSON.

Examples::

    regan-eval outputs/train/runs/.../checkpoints/best.ckpt --mmd
    regan-eval --images generated/ --data mnist --data-root ../shared/data --feature-extractor classifier --json fid.json
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from lightning_regan.atomic import write_json_atomic
from lightning_regan.cli.args import OneLineParser

from lightning_regan.fid.extractors import EXTRACTOR_CHOICES, build_extractor, extractor_name, extractor_num_features, resolve_extractor_spec
from lightning_regan.fid.metric import FeatureDistances
from lightning_regan.fid.mmd import DEFAULT_SCALES
from lightning_regan.fid.stats import dataset_cache_key, load_or_compute_real_statistics, real_source_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ROOT_KEYS = ("root", "data_root", "path")


class EvaluationError(ValueError):
    """Bad input to ``regan-eval`` (folder, dataset, shapes); the message says how to fix it."""


# ---------------------------------------------------------------------------------------------- inputs
def build_datamodule(name: str, root: Optional[str] = None, overrides: Sequence[str] = (),
                     native_size: bool = False, expect: Optional[Callable[[Any], None]] = None) -> Any:
    """Instantiate the ``conf/data/<name>.yaml`` DataModule (``root`` sets its data folder; ``overrides`` are
    Hydra overrides such as ``data.image_size=28``).

    Args:
        native_size: Keep the images' own size (``data.image_size=null``) unless ``overrides`` set an image size:
            how folders of images are evaluated, so that FID agrees with tools that read the files as they are.
        expect: Called with the DataModule before its data is read (e.g. a shape check), so that a mismatch is
            answered before any work.
    """
    from lightning_regan.cli.checks import compose_checked
    from lightning_regan.errors import ConfigError
    from lightning_regan.builders import build_datamodule as _build

    try:
        # batch_size=1 first: evaluation batches on its own (--batch-size), so a small folder is not refused for
        # holding fewer images than a training batch; an explicit data.batch_size=... still wins.
        cfg = compose_checked([f"data={name}", "data.batch_size=1", *overrides])  # one line, with a did-you-mean
    except ConfigError as exc:
        raise EvaluationError(f"--data {name} {' '.join(overrides)}: {exc}".replace("  ", " ")) from None
    if native_size and "image_size" in cfg.data and not any(o.startswith("data.image_size=") for o in overrides):
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.data.image_size = None
    return _datamodule_from_cfg(cfg, root, _build, expect)


def _datamodule_from_cfg(cfg: Any, root: Optional[str], build: Any,
                         expect: Optional[Callable[[Any], None]] = None) -> Any:
    from omegaconf import open_dict

    if root is not None:
        key = next((k for k in ROOT_KEYS if k in cfg.data), None)
        if key is None:
            raise EvaluationError(f"Dataset config {cfg.data.get('_target_')} takes no data folder; drop --data-root.")
        with open_dict(cfg):
            cfg.data[key] = str(root)
    datamodule = build(cfg, validate=False)
    if expect is not None:
        expect(datamodule)
    for step in ("validate", "setup"):  # validate: prepare_data + setup("fit"), with clear errors
        hook = getattr(datamodule, step, None)
        if callable(hook):
            hook() if step == "validate" else hook("fit")
    return datamodule


def cli_spelling(message: str) -> str:
    """``message`` with the Python spellings of options that regan-eval has as flags in regan-eval's spelling
    (``feature_extractor='identity'`` -> ``--feature-extractor identity``)."""
    message = re.sub(r"feature_extractor='(\w+)'", r"--feature-extractor \1", message)
    message = re.sub(r"\(or '(identity|classifier|inception)'", r"(or --feature-extractor \1", message)
    return message.replace("allow_download=True or ", "")


def check_fits(module: Any, cfg: Any, source: str, data_flag: Optional[str] = None) -> Callable[[Any], None]:
    """A check that a DataModule holds samples of the shape (and classes) the checkpoint's generator makes
    (``data_flag``: the ``--data`` value the user gave, named in the messages as given).

    Raises (when called):
        EvaluationError: in one line, before any statistics are computed.
    """
    want = tuple(int(d) for d in cfg.data_shape)
    trained_on = (cfg.get("data") or {}).get("_target_", "?").rsplit(".", 1)[-1]

    def check(datamodule: Any) -> None:
        got = tuple(int(d) for d in getattr(datamodule, "shape", ()) or ())
        name = getattr(datamodule, "name", type(datamodule).__name__)
        data = f"--data {data_flag}" if data_flag else f"data {name!r}"
        if got != want:
            raise EvaluationError(
                f"{source} generates samples of shape {want} (trained on {trained_on}), but {data} has "
                f"samples of shape {got}; evaluate against the data it was trained on (drop --data) or a dataset of "
                "that shape (e.g. --data-option image_size=N)."
            )
        classes = getattr(module, "num_classes", None)
        if getattr(module, "conditional", False) and getattr(datamodule, "num_classes", None) != classes:
            raise EvaluationError(
                f"{source} is class-conditional with {classes} classes, but {data} has "
                f"{getattr(datamodule, 'num_classes', None)}; evaluate against labelled data with {classes} classes."
            )

    return check


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise EvaluationError(f"--images {str(folder)!r} is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise EvaluationError(f"--images {str(folder)!r} holds {len(files)} images ({'/'.join(IMAGE_SUFFIXES)}); need >= 2.")
    return files


def load_images(files: Sequence[Path], channels: int, size: Optional[tuple[int, int]] = None,
                transform: Optional[Callable[[Any], Tensor]] = None) -> Tensor:
    """Read images as ``(N, channels, H, W)`` floats in ``[-1, 1]``.

    Args:
        files: Image files.
        channels: 1 (greyscale) or 3 (RGB).
        size: Required ``(H, W)`` after ``transform`` (``None``: any, as long as all agree).
        transform: The dataset's own PIL-to-tensor preprocessing (``datamodule.image_transform()``), so that the
            images are prepared exactly like the real ones; ``None`` scales the pixels only.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise EvaluationError(f"Image folders need a 1- or 3-channel dataset, got {channels} channels.")
    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                image = img.convert(mode)
                if transform is not None:
                    t = transform(image)
                else:
                    arr = np.asarray(image, dtype=np.float32)
                    t = torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1) / 127.5 - 1
        except (OSError, UnidentifiedImageError) as exc:
            raise EvaluationError(f"Cannot read image {str(path)!r}: {exc}") from exc
        if size is not None and tuple(t.shape[1:]) != tuple(size):
            raise EvaluationError(
                f"{str(path)!r} is {t.shape[2]}x{t.shape[1]} px, the dataset's images are {size[1]}x{size[0]} px; this "
                "feature extractor needs the dataset's size (Inception resizes by itself)."
            )
        out.append(t)
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise EvaluationError(f"The images have different sizes {sorted(shapes)}; resize them to one size first.")
    return torch.stack(out)


def folder_batches(files: Sequence[Path], channels: int, size: Optional[tuple[int, int]], batch_size: int,
                   transform: Optional[Callable[[Any], Tensor]] = None) -> Iterator[Tensor]:
    for i in range(0, len(files), batch_size):
        yield load_images(files[i : i + batch_size], channels, size, transform)


def checkpoint_batches(module: Any, num: int, seed: int, batch_size: int, raw: bool = False) -> Iterator[Tensor]:
    """Samples of ``module`` from its fixed inputs: ``module.sample_noise(num)`` (and ``module.sample_labels(num)``
    when class-conditional) drawn under ``seed``, as FIDMonitor draws them."""
    from lightning_regan.inputs import generate, seeded_inputs

    noise, labels = seeded_inputs(module, num, seed)
    label_batches = labels.split(batch_size) if labels is not None else [None] * len(noise.split(batch_size))
    for z, y in zip(noise.split(batch_size), label_batches):
        if raw:
            module.generator.eval()
            with torch.no_grad():
                yield module.run_generator(module.generator, z.to(module.device), y)
        else:
            yield generate(module, z, y)


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(
    batches: Iterator[Tensor],
    datamodule: Any,
    feature_extractor: str = "auto",
    num_real_samples: int = 1000,
    kid: bool = False,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    batch_size: int = 100,
    seed: int = 0,
    weights_path: Optional[str] = None,
    cache_dir: Optional[str] = None,
    device: str = "cpu",
    extractor: Any = None,
    progress: bool = False,
    num_generated: Optional[int] = None,
    mmd: bool = False,
    mmd_scales: Sequence[float] = DEFAULT_SCALES,
) -> dict[str, Any]:
    """FID (and KID, and with ``mmd`` the unbiased RBF MMD² at ``mmd_scales``, as ``FIDMonitor`` logs ``val/mmd``) of
    generated ``batches`` against ``datamodule``'s cached real statistics.

    With ``progress``, tqdm bars (on stderr, shown once an evaluation has run for 2 s) count the real and the
    generated samples encoded (``num_generated``: the expected count, for the bar's total).

    Raises:
        EvaluationError: fewer than 2 generated samples, or a FID that is not finite (the cause named).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    key = dataset_cache_key(datamodule)
    if extractor is None:
        extractor = build_extractor(feature_extractor, datamodule, weights_path=weights_path, cache=cache_dir, dataset_key=key)
    extractor = extractor.to(device).eval()
    real = real_source_of(datamodule)
    total = min(num_real_samples, len(real)) if hasattr(real, "__len__") else num_real_samples
    with tqdm(total=total, desc="real features", unit="img", delay=2, disable=not progress,
              file=sys.stderr) as bar:
        stats = load_or_compute_real_statistics(
            real, extractor, num_real_samples, dataset_key=key, cache=cache_dir,
            batch_size=batch_size, keep_features=kid or mmd, device=device, progress=bar.update,
        )
    metric = FeatureDistances(extractor_num_features(extractor), kid=kid, kid_subsets=kid_subsets,
                              kid_subset_size=kid_subset_size, seed=seed, mmd=mmd, mmd_scales=mmd_scales).to(device)
    metric.set_real(stats)
    num = nonfinite = 0
    with torch.no_grad(), tqdm(total=num_generated, desc="generated features", unit="img", delay=2,
                               disable=not progress, file=sys.stderr) as bar:
        for x in batches:
            nonfinite += int((~torch.isfinite(x)).flatten(1).any(1).sum())
            metric.update(extractor(x.to(device)))
            num += x.shape[0]
            bar.update(x.shape[0])
    if num < 2:
        raise EvaluationError(f"FID needs at least 2 generated samples, got {num}.")
    result: dict[str, Any] = dict(metric.compute())
    if "mmd" in result:  # rounded to float32 as FIDMonitor logs it, so the logged val/mmd compares with ==
        result["mmd"] = float(torch.tensor(result["mmd"], dtype=torch.float32))
    if not math.isfinite(float(result["fid"])):
        cause = (f"{nonfinite} of the {num} generated samples hold NaN or inf values" if nonfinite else
                 "the features' statistics are not finite (the feature extractor returned NaN/inf)")
        raise EvaluationError(f"FID is {float(result['fid'])}: {cause}; no FID is reported.")
    result.update(
        feature_extractor=extractor_name(extractor), extractor_key=getattr(extractor, "cache_key", None),
        num_samples=num, num_real_samples=stats.num_samples, real_statistics=stats.source,
        seconds=round(time.perf_counter() - start, 3),
    )
    accuracy = getattr(extractor, "accuracy", None)
    if accuracy is not None and not math.isnan(accuracy):
        result["classifier_accuracy"] = accuracy
    return result


#: FIDMonitor's arguments that set what an evaluation measures, with regan-eval's option of each.
MONITOR_SETTINGS = {"num_samples": "num_samples", "num_real_samples": "num_real_samples", "seed": "seed",
                    "batch_size": "batch_size", "feature_extractor": "feature_extractor", "mmd_scales": "mmd_scales"}
#: Defaults when neither the command line nor the checkpoint's config sets them (FIDMonitor's own).
EVAL_DEFAULTS = {"num_samples": 1000, "num_real_samples": None, "seed": 0, "batch_size": 100,
                 "feature_extractor": "auto", "mmd_scales": DEFAULT_SCALES}


def monitor_settings(cfg: Any) -> dict[str, Any]:
    """The settings of the ``FIDMonitor`` of a run's config (``callbacks.fid``) that decide its values: sample
    counts, seed, batch size (the extractor's batches), feature extractor, MMD bandwidths. Empty when the run had no
    FID monitor."""
    from omegaconf import OmegaConf

    node = (cfg.get("callbacks") or {}).get("fid") if cfg is not None else None
    if node is None or not str(node.get("_target_", "")).endswith("FIDMonitor"):
        return {}
    node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    out = {key: node[key] for key in MONITOR_SETTINGS if node.get(key) is not None}
    if not isinstance(out.get("feature_extractor", "auto"), str):
        out.pop("feature_extractor")  # a module given from Python: not in a config
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineParser(prog="regan-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a .ckpt written by regan-train (or use --images)")
    parser.add_argument("--images", type=Path, help="a folder of generated images to evaluate instead of a checkpoint")
    parser.add_argument("--data", help="dataset config name (digits, mnist, fashion_mnist, ...); default: the checkpoint's")
    parser.add_argument("--data-root", help="folder of the dataset files (for torchvision datasets / image folders)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a DataModule option as in regan-train's data.KEY=VALUE (repeatable), e.g. image_size=28")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--feature-extractor", default=None, choices=EXTRACTOR_CHOICES,
                        help="auto: the dataset's choice (identity for points, inception for images unless it says "
                             "otherwise); default: the run's FID monitor's, else auto")
    parser.add_argument("-n", "--num-samples", type=int, default=None,
                        help="generated samples (checkpoint), or max images read; default: the run's FID monitor's, "
                             "else 1000")
    parser.add_argument("--num-real-samples", type=int, default=None,
                        help="real samples (default: the run's FID monitor's, else --num-samples)")
    parser.add_argument("--mmd", action="store_true",
                        help="also compute the unbiased RBF-kernel MMD² (val/mmd, the runs' stop metric) as the "
                             "run's FID monitor did (its bandwidths)")
    parser.add_argument("--kid", action="store_true", help="also compute KID")
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per batch (default: the run's FID monitor's, else 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="noise seed (default: the run's FID monitor's, else 0)")
    parser.add_argument("--raw", action="store_true", help="use the trained G, not its EMA copy")
    parser.add_argument("--weights", help="Inception weights file (default: found by regan-fid-weights' cache)")
    parser.add_argument("--cache-dir", help="statistics/classifier cache folder (default $REGAN_CACHE_DIR or ~/.cache/lightning_regan)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.images is None):
        parser.error("give either a checkpoint or --images DIR")
    for name, minimum, why in (("num_samples", 2, " (FID needs 2 samples)"), ("batch_size", 1, ""),
                               ("kid_subsets", 1, ""), ("kid_subset_size", 2, "")):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}{why}, got {getattr(args, name)}")
    if args.num_real_samples is not None and args.num_real_samples < 2:
        parser.error(f"--num-real-samples must be >= 2 (FID needs 2 samples), got {args.num_real_samples}")
    if args.images is not None and args.data is None:
        parser.error("--images needs --data to say which dataset to compare with")
    for option in args.data_option:
        if "=" not in option or option.startswith("="):
            parser.error(f"--data-option {option!r}: write KEY=VALUE, e.g. --data-option image_size=28")
    data_overrides = [f"data.{o.removeprefix('data.')}" for o in args.data_option]

    from hydra.errors import InstantiationException

    from lightning_regan.cli.checks import one_line
    from lightning_regan.cli.sample import CheckpointError, load_module

    try:
        module = None
        expect = None
        monitor: dict[str, Any] = {}
        if args.checkpoint is not None:
            module, cfg = load_module(args.checkpoint, map_location=args.device)
            expect = check_fits(module, cfg, f"checkpoint {str(args.checkpoint)!r}", args.data)
            monitor = monitor_settings(cfg)
        # the command line, else the run's FID monitor (checkpoints), else FIDMonitor's defaults
        for key, value in EVAL_DEFAULTS.items():
            if getattr(args, key, None) is None:
                setattr(args, key, monitor.get(key, value))
        if args.data is not None:
            datamodule = build_datamodule(args.data, args.data_root, data_overrides, native_size=module is None,
                                          expect=expect)
        else:
            from lightning_regan.builders import build_datamodule as _build

            if data_overrides:
                from omegaconf import OmegaConf

                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(data_overrides))
            datamodule = _datamodule_from_cfg(cfg, args.data_root, _build, expect)
        spec = resolve_extractor_spec(args.feature_extractor, datamodule)
        if module is not None:
            batches = checkpoint_batches(module, args.num_samples, args.seed, args.batch_size, raw=args.raw)
            source = str(args.checkpoint)
        else:
            shape = getattr(datamodule, "shape", None)
            if shape is None or len(shape) != 3:
                raise EvaluationError(f"--images needs an image dataset; {args.data!r} has sample shape {shape}.")
            files = image_files(args.images)[: args.num_samples]
            size = None if spec == "inception" else (int(shape[1]), int(shape[2]))
            # Prepared exactly like the real images (e.g. resized to data.image_size), so that only the images differ.
            transform = datamodule.image_transform() if hasattr(datamodule, "image_transform") else None
            batches = folder_batches(files, int(shape[0]), size, args.batch_size, transform)
            source = str(args.images)
        result = evaluate(
            batches, datamodule, spec, args.num_real_samples or args.num_samples, kid=args.kid,
            kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets, batch_size=args.batch_size,
            seed=args.seed, weights_path=args.weights, cache_dir=args.cache_dir, device=args.device,
            progress=not args.no_progress, num_generated=len(files) if module is None else args.num_samples,
            mmd=args.mmd, mmd_scales=args.mmd_scales,
        )
    except (CheckpointError, EvaluationError, FileNotFoundError, ValueError, InstantiationException) as exc:
        # incl. missing weights/data and bad --data-option values
        print(f"regan-eval: {cli_spelling(one_line(exc))}", file=sys.stderr)
        return 2
    from lightning_regan.fid.stats import few_real_samples_warning

    few = few_real_samples_warning(int(result.get("num_real_samples") or 0),
                                   "raise --num-real-samples, or evaluate against more real data")
    if few is not None:
        print(f"regan-eval: {few}", file=sys.stderr)
    result = {"source": source, "data": args.data or getattr(datamodule, "name", type(datamodule).__name__), **result}
    shape = tuple(getattr(datamodule, "shape", ()) or ())
    size = ""
    if len(shape) == 3:  # images: the size both sides were compared at (before the extractor's own resizing)
        result["image_size"] = [int(shape[1]), int(shape[2])]
        size = f", at {shape[2]}x{shape[1]} px"
    line = f"FID {result['fid']:.4f}"
    if args.kid:
        line += f"  KID {result['kid_mean']:.5f} +- {result['kid_std']:.5f}"
    if args.mmd:
        line += f"  MMD {result['mmd']:.6g}"
    print(f"{line}  ({result['feature_extractor']} features, {result['num_samples']} generated vs "
          f"{result['num_real_samples']} real{size}, {result['seconds']:.1f} s)")
    if args.json is not None:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
