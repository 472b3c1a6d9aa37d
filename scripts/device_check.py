"""Helpers of ``scripts/device_check.sh`` (the one-shot GPU check): each subcommand writes or prints one JSON.

Subcommands::

    python scripts/device_check.py gpu-or-exit                 # one line and exit code 2 where no CUDA GPU is present
    python scripts/device_check.py env OUT.json                # GPU name, torch / CUDA / cuDNN versions, driver
    python scripts/device_check.py run-check RUN_DIR OUT.json  # a regan-train run: status, finite losses, FID decreasing
    python scripts/device_check.py fid-folders CKPT MNIST_ROOT WORK N OUT.json
        # N generated samples and N real MNIST test digits as PNG folders; FID of the folders by regan-eval and by
        # torch-fidelity (same images, same Inception weights: $REGAN_INCEPTION_WEIGHTS), and their agreement
    python scripts/device_check.py summarize OUT_DIR           # every JSON of OUT_DIR into OUT_DIR/device_check.json

Nothing here reaches the internet: the weights come from ``$REGAN_INCEPTION_WEIGHTS``, the data from the given folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

NO_GPU = ("device_check.sh: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with one "
          "CUDA GPU (nothing was measured).")


def gpu_or_exit() -> int:
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    return 0


def write(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def env(out: str) -> int:
    import lightning
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "lightning": lightning.__version__, "python": sys.version.split()[0],
        "gpu_count": torch.cuda.device_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable ({exc})"
    write(out, info)
    return 0


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def run_check(run_dir: str, out: str) -> int:
    """Status of a finished regan-train run: its summary, whether every logged loss is finite, the FID history."""
    run = Path(run_dir)
    result: dict[str, Any] = {"run_dir": str(run)}
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    result["summary"] = {k: summary.get(k) for k in ("status", "stop_reason", "best_fid", "g_steps", "wall_time_s",
                                                    "train_time_s") if k in summary}
    metrics = sorted(run.rglob("metrics.csv"))
    rows: list[dict[str, str]] = []
    if metrics:
        with metrics[0].open() as f:
            rows = list(csv.DictReader(f))
    losses = {k: _floats(rows, k) for k in (rows[0].keys() if rows else []) if k.startswith("train/") and "loss" in k}
    for k, v in (summary.get("final_metrics") or {}).items():  # the last step's values, also when nothing was logged
        if k.startswith("train/") and "loss" in k:
            losses.setdefault(k, []).append(float(v))
    result["losses_logged"] = {k: len(v) for k, v in losses.items()}
    result["losses_finite"] = bool(losses) and all(math.isfinite(x) for v in losses.values() for x in v)
    fids = [(int(float(r.get("train/g_step") or r.get("g_step") or 0)), float(r["val/fid"]))
            for r in rows if r.get("val/fid") not in (None, "")]
    history = summary.get("fid_history")
    if not fids and isinstance(history, list):  # the summary's copy, whatever its entry layout
        fids = [(int(h[0]), float(h[1])) for h in history]  # [[g_step, fid], ...]
    result["fid"] = fids
    result["fid_decreasing"] = len(fids) >= 2 and fids[-1][1] < fids[0][1]
    result["ok"] = bool(result["losses_finite"] and result["fid_decreasing"] and summary.get("status") not in ("failed",))
    write(out, result)
    print(json.dumps({k: result[k] for k in ("losses_finite", "fid_decreasing", "ok")}))
    return 0


def _save_png_folder(images: Any, folder: Path) -> None:
    """``(N, C, H, W)`` floats in [-1, 1] as 8-bit RGB PNGs (what both FID implementations read alike)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to("cpu").byte()
    if arr.shape[1] == 1:
        arr = arr.expand(-1, 3, -1, -1)
    for i, img in enumerate(arr.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img, mode="RGB").save(folder / f"{i:05d}.png")


def fidelity_fid(gen: Path, real: Path, cuda: bool) -> dict[str, Any]:
    """torch-fidelity's FID of two image folders with the weights of ``$REGAN_INCEPTION_WEIGHTS``, and its wall time."""
    import torch_fidelity

    t0 = time.perf_counter()
    metrics = torch_fidelity.calculate_metrics(
        input1=str(gen), input2=str(real), cuda=cuda, fid=True, verbose=False,
        feature_extractor_weights_path=os.environ.get("REGAN_INCEPTION_WEIGHTS"), save_cpu_ram=True,
    )
    return {"fid": float(metrics["frechet_inception_distance"]), "wall_s": time.perf_counter() - t0,
            "version": torch_fidelity.__version__}


def fid_folders(ckpt: str, mnist_root: str, work: str, n: int, out: str) -> int:
    import torch

    from lightning_regan.cli.sample import load_module  # regan-sample's loader

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work_dir = Path(work)
    gen, real = work_dir / "generated", work_dir / "real"
    module, _ = load_module(ckpt)
    module = module.to(device)
    torch.manual_seed(0)
    samples = torch.cat([module.generate(n=min(500, n - i)) for i in range(0, n, 500)])
    _save_png_folder(samples, gen)
    from torchvision.datasets import MNIST

    test = MNIST(mnist_root, train=False, download=False)
    _save_png_folder(test.data[:n, None].float() / 127.5 - 1, real)
    result: dict[str, Any] = {"num_images": n, "weights": os.environ.get("REGAN_INCEPTION_WEIGHTS")}

    ours_json = work_dir / "regan_eval_folders.json"
    t0 = time.perf_counter()
    subprocess.run(
        ["regan-eval", "--images", str(gen), "--data", "image_folder", "--data-root", str(real),
         "--data-option", "data.image_size=28", "--data-option", "data.channels=3", "--data-option", "data.verify=false",
         "-n", str(n), "--num-real-samples", str(n), "--feature-extractor", "inception", "--no-progress",
         "--cache-dir", str(work_dir / "cache"), "--json", str(ours_json)],
        check=True,
    )
    ours = json.loads(ours_json.read_text())
    result["regan_eval"] = {"fid": ours["fid"], "seconds": ours.get("seconds"), "wall_s": time.perf_counter() - t0}

    result["torch_fidelity"] = fidelity_fid(gen, real, cuda=device.type == "cuda")
    a, b = result["regan_eval"]["fid"], result["torch_fidelity"]["fid"]
    result["abs_diff"] = abs(a - b)
    result["rel_diff"] = abs(a - b) / max(abs(b), 1e-12)
    write(out, result)
    print(json.dumps({"regan_eval": a, "torch_fidelity": b, "rel_diff": result["rel_diff"]}))
    return 0


def summarize(out_dir: str) -> int:
    """Gather ``OUT_DIR/*.json`` (and the step log) into ``OUT_DIR/device_check.json``."""
    folder = Path(out_dir)
    parts: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name != "device_check.json":
            try:
                parts[path.stem] = json.loads(path.read_text())
            except ValueError as exc:
                parts[path.stem] = {"unreadable": str(exc)}
    steps = folder / "steps.tsv"
    status = [dict(zip(("step", "exit_code", "seconds"), line.split("\t"))) for line in steps.read_text().splitlines()] \
        if steps.is_file() else []
    write(folder / "device_check.json", {"steps": status, **parts})
    print(f"wrote {folder / 'device_check.json'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"gpu-or-exit": (gpu_or_exit, 0), "env": (env, 1), "run-check": (run_check, 2),
                "fid-folders": (fid_folders, 5), "summarize": (summarize, 1)}
    if not args or args[0] not in commands or len(args) - 1 != commands[args[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = commands[args[0]]
    rest: list[Any] = args[1:]
    if args[0] == "fid-folders":
        rest[3] = int(rest[3])
    return fn(*rest)


if __name__ == "__main__":
    sys.exit(main())
