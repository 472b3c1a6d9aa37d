"""FID evaluation benchmark: the FIDMonitor's images/s against a raw Inception forward, and proof that an evaluation
encodes no real image once the real statistics exist.

* **throughput**: a ``FIDMonitor`` evaluation (generate with the fixed noise, encode, accumulate the moments, the
  Fréchet distance) against the bare torch-fidelity Inception network run on the same images (already as ``uint8``,
  same batch size, ``inference_mode``), interleaved repeats; ratio = monitor images/s / raw images/s.
* **proof**: a wrapper around the extractor counts the images it encodes and how many of them are real (equal to a
  reference image), per phase: fit 1 (empty statistics cache) computes the real statistics once, its evaluations 1
  and 2 encode generated images only; fit 2 (same cache) loads them and encodes no real image at all.
* **fixes**: the Fréchet distance by the ``d x d`` route and by the ``n x n`` low-rank route on the same features
  (time, value); in full mode, the raw Inception speed in the default and channels-last layouts and two batch sizes.
* **bf16** (``--device cuda`` only): FID and speed with the extractor under bf16 autocast, against fp32.

Examples::

    python scripts/bench_fid.py             # full mode (a few minutes on a 2-core CPU)
    python scripts/bench_fid.py --quick     # 16 images, well under a minute
    python scripts/bench_fid.py --smoke     # a tiny extractor instead of Inception (no weights needed)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

import lightning_regan.fid.stats as stats_module  # noqa: E402
from lightning_regan import FIDMonitor, GANModule, max_steps_for  # noqa: E402
from lightning_regan.data import DigitsDataModule  # noqa: E402
from lightning_regan.fid import InceptionExtractor, extractor_key, extractor_name  # noqa: E402
from lightning_regan.fid.metric import frechet_distance, frechet_distance_low_rank  # noqa: E402
from lightning_regan.models import DCGANDiscriminator, DCGANGenerator  # noqa: E402

RATIO_TARGET = 0.9
BF16_TOLERANCE = 1e-3  # relative FID change allowed for bf16
LATENT_DIM = 64
SHAPE = (1, 8, 8)

MODES: dict[str, dict[str, Any]] = {
    "smoke": {"extractor": "tiny", "num_samples": 8, "batch_size": 8, "repeats": 1, "sweep": False},
    "quick": {"extractor": "inception", "num_samples": 16, "batch_size": 16, "repeats": 2, "sweep": False},
    "full": {"extractor": "inception", "num_samples": 32, "batch_size": 32, "repeats": 3, "sweep": True},
}


class TinyFeatures(nn.Module):
    """A small fixed random conv feature extractor (16-d): the smoke mode needs no Inception weights."""

    name = "tiny"
    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                     nn.Linear(32, self.num_features))
        self.requires_grad_(False)

    @property
    def cache_key(self) -> str:
        return "tiny-features-v1"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())


class CountingExtractor(nn.Module):
    """Wraps a feature extractor and counts the images it encodes, and how many of them are real.

    An image is real when it equals one of ``reference`` (the data's real images) to within float rounding; the
    generator's tanh outputs never do.
    """

    def __init__(self, inner: nn.Module, reference: Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.num_features = int(inner.num_features)
        self.name = extractor_name(inner)
        self.reference = reference.detach().float().reshape(reference.shape[0], -1).cpu()
        self.images = 0
        self.real_images = 0

    @property
    def cache_key(self) -> str:
        return extractor_key(self.inner)

    def snapshot(self) -> tuple[int, int, int]:
        """``(images, real images, real samples encoded by lightning_regan.fid.stats)`` so far."""
        return self.images, self.real_images, stats_module.encoded_real_samples

    def forward(self, x: Tensor) -> Tensor:
        flat = x.detach().float().reshape(x.shape[0], -1).cpu()
        self.images += x.shape[0]
        if flat.shape[1] == self.reference.shape[1]:
            dist = torch.cdist(flat, self.reference, compute_mode="donot_use_mm_for_euclid_dist")
            self.real_images += int((dist.min(dim=1).values <= 1e-5).sum())
        return self.inner(x)


def build_extractor(kind: str) -> nn.Module:
    return TinyFeatures() if kind == "tiny" else InceptionExtractor()


def fixed_noise(num_samples: int, seed: int) -> Tensor:
    """The monitor's evaluation noise (FIDMonitor: ``torch.randn(num_samples, latent_dim)`` seeded ``seed``)."""
    return torch.randn(num_samples, LATENT_DIM, generator=torch.Generator().manual_seed(seed))


def raw_forward(extractor: nn.Module, images: Tensor, batch_size: int, device: torch.device,
                net: Optional[nn.Module] = None) -> Tensor:
    """The bare network on prepared inputs: torch-fidelity's Inception on ``uint8`` RGB, else the extractor."""
    out = []
    with torch.inference_mode():
        if isinstance(extractor, InceptionExtractor):
            net = net or extractor.net
            for chunk in images.split(batch_size):
                out.append(net(chunk.to(device))[0])
        else:
            for chunk in images.split(batch_size):
                out.append(extractor(chunk.to(device)))
    return torch.cat(out).float()


def as_inception_input(images: Tensor) -> Tensor:
    """``[-1, 1]`` grey images as torch-fidelity's ``uint8`` RGB input (what InceptionExtractor feeds its net)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


class Timer:
    """Wall-clock and process CPU seconds of a block (after the device's queued work)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "Timer":
        self.start = common.stamp(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        end = common.stamp(self.device)
        self.wall, self.cpu = end[0] - self.start[0], end[1] - self.start[1]


def make_module() -> GANModule:
    torch.manual_seed(0)
    return GANModule(DCGANGenerator(LATENT_DIM, SHAPE), DCGANDiscriminator(SHAPE))


def fit(module: GANModule, monitor: FIDMonitor, g_steps: int, device: torch.device) -> L.Trainer:
    trainer = L.Trainer(accelerator=device.type, devices=1, max_steps=max_steps_for(g_steps), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[monitor])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    return trainer


class TimedFIDMonitor(FIDMonitor):
    """FIDMonitor that records, per evaluation, its duration and the extractor's counters."""

    def __init__(self, *args: Any, device: torch.device, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device = device
        self.records: list[dict[str, Any]] = []
        self.after_setup: Optional[tuple[int, int, int]] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.after_setup = self.extractor.snapshot()  # type: ignore[union-attr,operator]

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        counter: CountingExtractor = self.extractor  # type: ignore[assignment]
        before = counter.snapshot()
        compute = self._metric.compute
        compute_time: dict[str, float] = {}

        def timed_compute() -> dict[str, float]:
            with Timer(self.device) as t:
                out = compute()
            compute_time.update(wall=t.wall, cpu=t.cpu)
            return out

        self._metric.compute = timed_compute  # type: ignore[method-assign]
        try:
            with Timer(self.device) as t:
                values = super().evaluate(trainer, pl_module)
        finally:
            del self._metric.compute
        after = counter.snapshot()
        self.records.append({
            "g_step": int(getattr(pl_module, "g_steps", trainer.global_step)), "fid": values["fid"],
            "wall_s": t.wall, "cpu_s": t.cpu, "distance_wall_s": compute_time["wall"], "distance_cpu_s": compute_time["cpu"],
            "images_encoded": after[0] - before[0], "real_images_encoded": after[1] - before[1],
            "real_samples_counted_by_stats": after[2] - before[2],
        })
        return values


def phase(name: str, before: tuple[int, int, int], after: tuple[int, int, int], **extra: Any) -> dict[str, Any]:
    return {"phase": name, "images_encoded": after[0] - before[0], "real_images_encoded": after[1] - before[1],
            "real_samples_counted_by_stats": after[2] - before[2], **extra}


def distance_routes(monitor: FIDMonitor, features: Tensor, device: torch.device) -> dict[str, Any]:
    """The Fréchet distance of the same features by the d x d route and the low-rank route: time and value."""
    mu1, s1, root = monitor._metric._real_moments(device)  # the run's real moments and S1^1/2, computed once
    f = features.double().to(device)
    n = f.shape[0]
    mu2 = f.mean(0)
    s2 = (f - mu2).T @ (f - mu2) / (n - 1)
    with Timer(device) as full:
        v_full = float(frechet_distance(mu1, s1, mu2, s2, sqrt_sigma1=root))
    with Timer(device) as low:
        v_low = float(frechet_distance_low_rank(mu1, s1, f, root))
    from torchmetrics.image.fid import _compute_fid

    v_tm = float(_compute_fid(mu1, s1, mu2, s2))
    return {"num_samples": n, "num_features": int(f.shape[1]),
            "full_s": {"wall": full.wall, "cpu": full.cpu}, "low_rank_s": {"wall": low.wall, "cpu": low.cpu},
            "fid_full": v_full, "fid_low_rank": v_low, "fid_torchmetrics_formula": v_tm,
            "rel_diff_low_rank_vs_torchmetrics": abs(v_low - v_tm) / max(abs(v_tm), 1e-12)}


def layout_sweep(extractor: InceptionExtractor, images: Tensor, device: torch.device, clock: str,
                 repeats: int) -> list[dict[str, Any]]:
    """Raw Inception images/s in the default and channels-last layouts at two batch sizes, interleaved."""
    nets = {"default": copy.deepcopy(extractor.net).to(memory_format=torch.contiguous_format),
            "channels_last": extractor.net}
    configs = [(layout, bs) for layout in nets for bs in (8, 32)]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    reference = raw_forward(extractor, images[:2], 2, device, nets["default"])
    diff = float((raw_forward(extractor, images[:2], 2, device, nets["channels_last"]) - reference).abs().max())
    for _ in range(repeats):
        for layout, bs in configs:
            with Timer(device) as t:
                raw_forward(extractor, images, bs, device, nets[layout])
            times[(layout, bs)].append(t.cpu if clock == "cpu" else t.wall)
    return [{"layout": layout, "batch_size": bs, "images_per_s": images.shape[0] / common.median(times[(layout, bs)]),
             "max_abs_feature_diff_vs_default": 0.0 if layout == "default" else diff} for layout, bs in configs]


def bf16_check(extractor: InceptionExtractor, monitor: FIDMonitor, images: Tensor, batch_size: int,
               device: torch.device) -> dict[str, Any]:
    """FID and speed of the raw Inception forward under bf16 autocast against fp32 (GPU only)."""
    mu1, s1, root = monitor._metric._real_moments(device)
    out: dict[str, Any] = {}
    for name, ctx in (("fp32", torch.autocast("cuda", enabled=False)), ("bf16", torch.autocast("cuda", dtype=torch.bfloat16))):
        with ctx:
            raw_forward(extractor, images[:batch_size], batch_size, device)  # warm-up
            with Timer(device) as t:
                feats = raw_forward(extractor, images, batch_size, device)
        f = feats.double()
        if f.shape[0] <= f.shape[1]:
            fid = frechet_distance_low_rank(mu1, s1, f, root)
        else:
            fid = frechet_distance(mu1, s1, f.mean(0), torch.cov(f.T), sqrt_sigma1=root)
        out[name] = {"images_per_s": images.shape[0] / t.wall, "fid": float(fid)}
    out["rel_fid_change"] = abs(out["bf16"]["fid"] - out["fp32"]["fid"]) / max(abs(out["fp32"]["fid"]), 1e-12)
    out["tolerance"] = BF16_TOLERANCE
    out["ok"] = out["rel_fid_change"] <= BF16_TOLERANCE
    return out


def benchmark(cfg: dict[str, Any], device: torch.device, clock: str, verbose: bool = True) -> dict[str, Any]:
    n, bs, repeats = cfg["num_samples"], cfg["batch_size"], cfg["repeats"]
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    reference = DigitsDataModule().reference_dataset().tensors[0]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        monitor_kw = dict(num_samples=n, num_real_samples=n, batch_size=bs, cache_dir=cache, seed=0, verbose=False)
        # Fit 1: empty cache. Setup computes the real statistics; evaluations at G steps 1 and 2.
        say("fit 1: real statistics (empty cache), evaluations 1 and 2")
        counter1 = CountingExtractor(build_extractor(cfg["extractor"]), reference)
        monitor1 = TimedFIDMonitor(every_n_g_steps=1, feature_extractor=counter1, device=device, **monitor_kw)
        start = counter1.snapshot()
        fit(make_module(), monitor1, 2, device)
        phases = [phase("fit 1: setup (empty cache)", start, monitor1.after_setup, real_statistics=monitor1.real_stats.source)]
        phases += [{"phase": f"fit 1: evaluation {i + 1} (G step {r['g_step']})", **_counts(r)}
                   for i, r in enumerate(monitor1.records)]
        # Fit 2: same cache. Setup loads the statistics; then the timed evaluations.
        say("fit 2: real statistics from the cache")
        counter2 = CountingExtractor(build_extractor(cfg["extractor"]), reference)
        # A cadence past the fit's single G step: prepared (an inactive monitor would prepare nothing), never run.
        monitor2 = TimedFIDMonitor(every_n_g_steps=10**9, feature_extractor=counter2, device=device, **monitor_kw)
        module = make_module()
        before = counter2.snapshot()
        trainer = fit(module, monitor2, 1, device)
        phases.append(phase("fit 2: setup (cached statistics)", before, monitor2.after_setup,
                            real_statistics=monitor2.real_stats.source))

        # Throughput: the monitor's evaluation vs the raw network on the same images, interleaved.
        inner = counter2.inner
        images = module.generate(z=fixed_noise(n, 0).to(module.device))
        prepared = as_inception_input(images) if isinstance(inner, InceptionExtractor) else images
        raw_forward(inner, prepared[:2], 2, device)  # warm-up
        raw_t: dict[str, list[float]] = {"wall": [], "cpu": []}
        features = torch.empty(0)
        for r in range(repeats):
            for which in (("raw", "monitor") if r % 2 == 0 else ("monitor", "raw")):
                if which == "raw":
                    with Timer(device) as t:
                        features = raw_forward(inner, prepared, bs, device)
                    raw_t["wall"].append(t.wall)
                    raw_t["cpu"].append(t.cpu)
                else:
                    monitor2.evaluate(trainer, module)
            say(f"  repeat {r + 1}/{repeats} done")
        timed = monitor2.records
        phases += [{"phase": f"fit 2: evaluation {i + 1}", **_counts(rec)} for i, rec in enumerate(timed)]
        key = "cpu_s" if clock == "cpu" else "wall_s"
        mon_s = [rec[key] for rec in timed]
        raw_s = raw_t[clock]
        ratios = [rs / ms for rs, ms in zip(raw_s, mon_s)]
        results["throughput"] = {
            "extractor": counter2.name, "num_samples": n, "batch_size": bs, "clock": clock,
            "monitor_images_per_s": n / common.median(mon_s), "raw_images_per_s": n / common.median(raw_s),
            "ratio": common.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "target": RATIO_TARGET, "ok": common.median(ratios) >= RATIO_TARGET,
            "distance_s_median": common.median([rec["distance_" + key] for rec in timed]),
            "monitor_eval_s": mon_s, "raw_s": raw_s,
        }
        eval_phases = [p for p in phases if "evaluation" in p["phase"]]
        setup2 = next(p for p in phases if p["phase"].startswith("fit 2: setup"))
        results["proof"] = {
            "phases": phases,
            "holds": (all(p["real_images_encoded"] == 0 and p["real_samples_counted_by_stats"] == 0
                          and p["images_encoded"] == n for p in eval_phases)
                      and setup2["images_encoded"] == 0 and setup2["real_statistics"] == "cache"),
        }
        # FID value and the two distance routes on the same features (the raw network's).
        results["distance"] = distance_routes(monitor2, features, device)
        results["distance"]["monitor_fid"] = timed[-1]["fid"]
        d = results["distance"]
        extra = d["full_s"][clock] - d["low_rank_s"][clock]  # what the d x d route would add to each evaluation
        results["throughput"]["ratio_with_full_route_estimate"] = common.median(
            [rs / (ms + extra) for rs, ms in zip(raw_s, mon_s)])
        results["distance"]["rel_diff_monitor_vs_torchmetrics"] = (
            abs(timed[-1]["fid"] - results["distance"]["fid_torchmetrics_formula"])
            / max(abs(results["distance"]["fid_torchmetrics_formula"]), 1e-12))
        if cfg["sweep"] and isinstance(inner, InceptionExtractor):
            say("raw Inception layouts and batch sizes")
            results["layout_sweep"] = layout_sweep(inner, prepared[:16], device, clock, repeats=2)
        if device.type == "cuda" and isinstance(inner, InceptionExtractor):
            results["bf16"] = bf16_check(inner, monitor2, prepared, bs, device)
    return results


def _counts(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("images_encoded", "real_images_encoded", "real_samples_counted_by_stats")}


def format_tables(results: dict[str, Any]) -> str:
    t = results["throughput"]
    text = f"FID evaluation throughput ({t['extractor']} features, {t['num_samples']} images, batch {t['batch_size']}, {t['clock']} clock)\n"
    text += common.markdown_table(
        ["monitor images/s", "raw network images/s", "monitor / raw", "range", "target", "", "distance s per eval"],
        [[f"{t['monitor_images_per_s']:.2f}", f"{t['raw_images_per_s']:.2f}", f"{t['ratio']:.3f}",
          f"{t['ratio_min']:.3f}-{t['ratio_max']:.3f}", f">= {t['target']}", common.verdict(t["ratio"], t["target"], True),
          f"{t['distance_s_median']:.3f}"]])
    p = results["proof"]
    text += "\n\nImages through the extractor per phase (real = equal to a real digit; stats = the library's own counter)\n"
    text += common.markdown_table(
        ["phase", "images", "real images", "real (stats counter)", "real statistics"],
        [[ph["phase"], ph["images_encoded"], ph["real_images_encoded"], ph["real_samples_counted_by_stats"],
          ph.get("real_statistics", "")] for ph in p["phases"]])
    text += f"\nno real image encoded after the statistics exist: {'yes' if p['holds'] else 'NO'}"
    d = results["distance"]
    text += (f"\n\nFréchet distance of the same {d['num_samples']} x {d['num_features']} features: d x d route "
             f"{d['full_s']['cpu']:.3f} s CPU, low-rank route {d['low_rank_s']['cpu']:.4f} s CPU; FID {d['fid_low_rank']:.6g} "
             f"(torchmetrics formula {d['fid_torchmetrics_formula']:.6g}, rel. diff {d['rel_diff_low_rank_vs_torchmetrics']:.1e}); "
             f"monitor's last FID {d['monitor_fid']:.6g}; monitor / raw with the d x d route (estimated): "
             f"{t['ratio_with_full_route_estimate']:.3f}")
    if "layout_sweep" in results:
        text += "\n\nRaw Inception images/s by layout and batch size\n"
        text += common.markdown_table(["layout", "batch", "images/s", "max |feature diff| vs default"],
                                      [[r["layout"], r["batch_size"], f"{r['images_per_s']:.2f}",
                                        f"{r['max_abs_feature_diff_vs_default']:.1e}"] for r in results["layout_sweep"]])
    if "bf16" in results:
        b = results["bf16"]
        text += (f"\n\nbf16 autocast: {b['bf16']['images_per_s']:.0f} vs {b['fp32']['images_per_s']:.0f} images/s, FID "
                 f"change {b['rel_fid_change']:.2e} (tolerance {b['tolerance']}): {'ok' if b['ok'] else 'NOT OK'}")
    return text


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="16 images, 2 repeats (well under a minute on a 2-core CPU)")
    mode.add_argument("--smoke", action="store_true", help="tiny extractor, 8 images: checks the script (no Inception weights)")
    p.add_argument("--num-samples", type=int, help="generated (and real) images per evaluation (default: by mode)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: by mode)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default: by mode)")
    p.add_argument("--extractor", choices=("inception", "tiny"), help="feature extractor (default: by mode)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on the CPU (default 1; 0 = torch's default)")
    p.add_argument("--clock", choices=("cpu", "wall"),
                   help="clock of the ratio: cpu (process CPU time, default on the CPU) or wall (default on a GPU)")
    p.add_argument("--out", help="JSON output (default bench/results/bench_fid.json)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    for key, arg in (("num_samples", args.num_samples), ("batch_size", args.batch_size), ("repeats", args.repeats),
                     ("extractor", args.extractor)):
        if arg is not None:
            cfg[key] = arg
    if cfg["num_samples"] < 2:
        raise SystemExit("--num-samples must be >= 2 (a covariance needs two samples).")
    device = common.resolve_device(args.device)
    clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    start = time.perf_counter()
    with common.bench_session(device, args.threads):
        machine = common.machine_info(device)  # inside: records the threads used
        results = benchmark(cfg, device, clock)
    payload = {
        "schema": common.SCHEMA_VERSION,
        "benchmark": "fid",
        "mode": mode,
        "command": common.command_line(__file__, argv),
        "machine": machine,
        "config": {**cfg, "clock": clock, "generator": "DCGANGenerator(64, (1, 8, 8)) on digits",
                   "real_data": "sklearn digits (the first num_samples)"},
        "wall_time_s": time.perf_counter() - start,
        **results,
    }
    payload["markdown"] = format_tables(results)
    path = common.write_json(payload, args.out, "bench_fid.json")
    print(payload["markdown"])
    print(f"\nwrote {path} ({payload['wall_time_s']:.0f} s)")
    if path.name in ("bench_step.json", "bench_fid.json"):
        common.write_results_readme(path.parent)
    return payload


if __name__ == "__main__":
    main()
