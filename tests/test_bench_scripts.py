"""The benchmark scripts run end to end in their smallest mode and write the documented JSON.

No timing is asserted (that is what the scripts report); what is asserted is the JSON schema, that the hand loop
computes exactly GANModule's updates, and that no real image is encoded once the real statistics exist.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lightning_regan.fid.metric import FeatureDistances, frechet_distance
from lightning_regan.fid.stats import accumulate

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
MACHINE_KEYS = {"cpu", "cpu_cores", "torch_threads", "device", "torch", "lightning", "python", "date"}


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def finite_positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_step_smoke_writes_schema_and_same_maths(tmp_path):
    out = tmp_path / "bench_step.json"
    threads = torch.get_num_threads()
    load_script("bench_step").main(["--smoke", "--setups", "mlp_ring", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert torch.get_num_threads() == threads  # the session restores the thread count
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["benchmark"] == "step" and data["mode"] == "smoke"
    assert "bench_step.py" in data["command"] and "--smoke" in data["command"]
    assert MACHINE_KEYS <= set(data["machine"]) and data["machine"]["torch_threads"] == 1
    assert data["config"]["clock"] == "cpu" and data["config"]["optimizer"].startswith("Adam")
    setup = data["setups"]["mlp_ring"]
    assert {f["regularizer"] for f in setup["framework"]} == {"none", "r1"}
    for f in setup["framework"]:
        assert finite_positive(f["lightning_ms"]) and finite_positive(f["hand_ms"]) and finite_positive(f["ratio"])
        assert f["target"] == 1.05 and isinstance(f["ok"], bool)
        # same start, same random stream: the hand loop reproduces GANModule's updates exactly
        assert f["max_param_diff"] == 0.0, f
    (r1,) = setup["regularizers"]
    assert r1["regularizer"] == "r1" and r1["target"] == 2.0 and finite_positive(r1["ratio"])
    assert finite_positive(setup["logger"]["ratio"])
    assert finite_positive(setup["breakdown"]["lightning_over_hand"])
    assert finite_positive(setup["before_fix"]["ratio_over_hand"])
    for clock in ("wall", "cpu"):
        times = setup["step_time_s"][clock]
        assert {"lightning:none", "hand:none", "lightning:r1", "hand:r1", "lightning_csv:none", "minimal:none",
                "selflog:none"} == set(times)
        assert all(len(v["values"]) == data["config"]["repeats"] for v in times.values())
    readme = (tmp_path / "README.md").read_text()  # regenerated next to the default-named JSON
    assert data["command"] in readme and "| mlp_ring | none |" in readme


@pytest.mark.slow
def test_bench_step_ddp_smoke_reports_before_and_after(tmp_path):
    """2 gloo worker processes (about 30-45 s, mostly imports): the DDP section's schema and byte counts."""
    out = tmp_path / "bench_step_ddp.json"
    load_script("bench_step").main(["--smoke", "--ddp-only", "--device", "cpu", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["setups"] == {} and data["mode"] == "smoke"
    ddp = data["ddp"]
    g, d = ddp["g_params"], ddp["d_params"]
    assert ddp["min_bytes_per_g_step"] == 4 * (g + d)
    assert ddp["before"]["bytes_per_g_step"] == 2 * 4 * (g + d)  # both networks at both backward passes
    assert ddp["after"]["bytes_per_g_step"] == 4 * (g + 1 + d + 1)  # each network once, plus one count element
    assert ddp["after_over_min_bytes"] <= 1.05
    for v in ("before", "after"):
        assert finite_positive(ddp[v]["step_ms"])
        assert all(len(ddp["step_time_s"][c][v]["values"]) == ddp["repeats"] for c in ("wall", "cpu"))
    assert finite_positive(ddp["step_time_ratio_after_over_before"])
    assert "| after |" in data["markdown"]


def test_bench_step_profile_prints_the_top_functions(capsys):
    script = load_script("bench_step")
    assert script.main(["--profile", "lightning:none", "--setups", "mlp_ring", "--steps", "8", "--device", "cpu",
                        "--threads", "1"]) == {}
    out = capsys.readouterr().out
    assert "mlp_ring lightning:none:" in out and "ms per step" in out
    assert "cumulative" in out and "training_step" in out  # cProfile's table, with GANModule's step in it
    with pytest.raises(SystemExit, match="variant must be"):
        script.main(["--profile", "nonsense", "--setups", "mlp_ring", "--device", "cpu"])


def test_bench_fid_smoke_proves_no_real_image_is_reencoded(tmp_path):
    out = tmp_path / "bench_fid.json"
    load_script("bench_fid").main(["--smoke", "--device", "cpu", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["benchmark"] == "fid" and data["mode"] == "smoke"
    assert MACHINE_KEYS <= set(data["machine"])
    n = data["config"]["num_samples"]
    t = data["throughput"]
    assert t["extractor"] == "tiny" and t["num_samples"] == n
    assert finite_positive(t["monitor_images_per_s"]) and finite_positive(t["raw_images_per_s"]) and finite_positive(t["ratio"])
    phases = {p["phase"]: p for p in data["proof"]["phases"]}
    setup1 = phases["fit 1: setup (empty cache)"]
    assert setup1["real_statistics"] == "computed"
    assert setup1["images_encoded"] == setup1["real_images_encoded"] == setup1["real_samples_counted_by_stats"] == n
    setup2 = phases["fit 2: setup (cached statistics)"]
    assert setup2["real_statistics"] == "cache" and setup2["images_encoded"] == 0
    evaluations = [p for name, p in phases.items() if "evaluation" in name]
    assert len(evaluations) >= 3
    for p in evaluations:
        assert p["images_encoded"] == n and p["real_images_encoded"] == 0 and p["real_samples_counted_by_stats"] == 0
    assert data["proof"]["holds"] is True
    d = data["distance"]
    assert d["rel_diff_low_rank_vs_torchmetrics"] < 1e-6 and d["rel_diff_monitor_vs_torchmetrics"] < 1e-5
    assert data["command"] in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("n", [3, 16, 40])
def test_low_rank_route_equals_full_route(n):
    """FeatureDistances takes the low-rank route for n <= num_features (16) and the d x d route beyond."""
    g = torch.Generator().manual_seed(n)
    real = torch.randn(64, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(n, 16, generator=g, dtype=torch.float64) + 0.3
    metric = FeatureDistances(16)
    metric.set_real(accumulate(real))
    for chunk in fake.float().split(5):
        metric.update(chunk)
    f = fake.float().double()
    expected = frechet_distance(real.mean(0), torch.cov(real.T), f.mean(0), torch.cov(f.T))
    assert metric.compute()["fid"] == pytest.approx(float(expected), rel=1e-7)
    # told the sample count, FID alone keeps the features only while the low-rank route can use them
    told = FeatureDistances(16, num_samples=n)
    told.update(fake.float())
    assert bool(told.fake_features) == (n <= 16)



def test_bench_conditional_smoke_writes_both_step_times(tmp_path):
    out = tmp_path / "bench_conditional.json"
    load_script("bench_conditional").main(["--smoke", "--setups", "mlp_digits", "--device", "cpu", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "conditional" and data["mode"] == "smoke" and MACHINE_KEYS <= set(data["machine"])
    row = data["setups"]["mlp_digits"]
    assert finite_positive(row["unconditional_step_ms"]) and finite_positive(row["conditional_step_ms"])
    assert row["ratio_median"] == pytest.approx(row["conditional_step_ms"] / row["unconditional_step_ms"])
    assert "| mlp_digits |" in data["markdown"]


def test_bench_augment_smoke_writes_the_ratios_side_by_side(tmp_path):
    out = tmp_path / "bench_augment.json"
    load_script("bench_augment").main(["--smoke", "--width", "4", "--device", "cpu", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "augment" and data["mode"] == "smoke" and MACHINE_KEYS <= set(data["machine"])
    rows = data["variants"]
    assert all(finite_positive(rows[v]["step_ms"]) for v in ("none", "diffaugment", "ada"))
    for v in ("diffaugment", "ada"):
        assert rows[v]["ratio_median"] == pytest.approx(rows[v]["step_ms"] / rows["none"]["step_ms"])
        assert data[f"step_ratio_{v}"] == rows[v]["ratio_median"]
    assert "| ada |" in data["markdown"]
    r1 = data["r1_placement"]
    assert r1["d_input"]["finite"] and r1["through_pipeline"]["finite"] and finite_positive(r1["ratio_through_pipeline"])
