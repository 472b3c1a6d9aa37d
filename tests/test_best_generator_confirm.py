"""BestGenerator's best-of confirmation: the top-k candidates by the monitored metric are re-scored with a larger
sample by the monitor itself (``FIDMonitor.score``) when training ends, and the best of them is handed back.

Scripted runs (the generator's weight is the G step it was produced at; a scripted scorer) pin the decision; real
runs (a tiny MLP GAN on 2-D points, identity features, ``val/mmd``) pin the measurement; a 2-process gloo run pins
the agreement of the ranks. Run as a script (``python tests/test_best_generator_confirm.py <scenarios> <out>``) it is
one DDP rank.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script by the DDP launcher
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_regan import GANModule, max_steps_for  # noqa: E402
from lightning_regan.callbacks.best_generator import BestGenerator, Scorer  # noqa: E402
from lightning_regan.callbacks.fid_monitor import FIDMonitor  # noqa: E402
from lightning_regan.callbacks.g_step import GStepCallback  # noqa: E402
from lightning_regan.callbacks.run_summary import RunSummary  # noqa: E402

from helpers import Identity2D, TinyD, TinyG  # noqa: E402

MMD = "val/mmd"


# ---------------------------------------------------------------------------------------------- scripted pieces
def scripted():
    """ScriptedGAN and its Trainer helpers (imported lazily: the DDP ranks do not need them)."""
    import test_early_termination as et

    return et


class ScriptedScorer(GStepCallback):
    """Stands in for FIDMonitor: logs ``val/mmd`` (and its G step) from ``logged`` and scores the evaluated generator
    (whose weight is the G step it came from) from ``confirm``."""

    num_samples = 100
    seed = 7
    scored_metrics = (MMD,)

    def __init__(self, logged: dict[int, float], confirm: dict[int, float]) -> None:
        self.logged, self.confirm = dict(logged), dict(confirm)
        self.calls: list[tuple[int, int, int]] = []  # (generator's G step, num_samples, seed)

    def on_g_step(self, trainer, pl_module, g):
        if g in self.logged:
            pl_module.log_dict({MMD: self.logged[g], f"{MMD}_g_step": float(g)}, on_step=True, on_epoch=False,
                               batch_size=1)

    def score(self, trainer, pl_module, num_samples, seed):
        step = int(pl_module.eval_generator.weight.item())
        self.calls.append((step, num_samples, seed))
        return {MMD: self.confirm[step], "val/fid": 0.0}


class LogOnly(ScriptedScorer):
    """Logs the metric but cannot score (no ``score``): no confirmation is possible."""

    score = None  # type: ignore[assignment]


def keeper(**kw) -> BestGenerator:
    return BestGenerator(**{"monitor": MMD, "verbose": False, **kw})


# ---------------------------------------------------------------------------------------------- bookkeeping
def test_top_k_bookkeeping_with_fake_metrics():
    best = keeper(top_k=3)
    w = {"w": torch.zeros(1)}
    for g, v in [(1, 5.0), (2, 4.0), (3, math.nan), (4, 6.0), (5, 3.0), (6, 4.5), (7, 4.0), (8, 2.0), (9, math.inf)]:
        best.offer(g, v, w)
    # kept: the three lowest finite values, best first; a tie with the worst kept (4.0 at 7) does not enter
    assert [(c["g_step"], c["value"]) for c in best.candidates] == [(8, 2.0), (5, 3.0), (2, 4.0)]
    assert best.best_value == 2.0 and best.best_g_step == 8 and best.best_generator_step == 8
    # higher is better
    best = keeper(mode="max", top_k=2)
    for g, v in [(1, 0.1), (2, 0.5), (3, 0.3), (4, 0.2)]:
        best.offer(g, v, w)
    assert [c["g_step"] for c in best.candidates] == [2, 3] and best.best_value == 0.5
    # a best evaluation without a copy (an older step's) is a candidate without weights: nothing to hand back
    best = keeper(top_k=2)
    best.offer(1, 3.0, w)
    best.offer(2, 1.0, None)
    assert best.best_g_step == 2 and best.best_generator_step is None and [c["g_step"] for c in best.candidates] == [2, 1]
    # off: one candidate
    for off in (keeper(top_k=1), keeper(confirm_samples=0)):
        for g, v in [(1, 3.0), (2, 1.0), (3, 2.0)]:
            off.offer(g, v, w)
        assert [c["g_step"] for c in off.candidates] == [2] and not off.confirming


@pytest.mark.parametrize("kw, match", [({"top_k": 0}, "top_k"), ({"confirm_samples": 1}, "confirm_samples"),
                                       ({"confirm_samples": -5}, "confirm_samples"), ({"confirm_seed": 1.5}, "confirm_seed")])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        keeper(**kw)


# ---------------------------------------------------------------------------------------------- the decision
LOGGED = {5: 3.0, 10: 1.0, 15: 2.0, 20: 5.0, 25: 2.5, 30: 4.0}
CONFIRM = {5: 3.5, 10: 1.5, 15: 0.5, 25: 2.0}  # the monitor's best (10) is beaten by 15 on the larger sample


def test_a_worse_monitor_value_with_a_better_confirmation_wins_and_is_handed_back(tmp_path):
    et = scripted()
    scorer = ScriptedScorer(LOGGED, CONFIRM)
    best = keeper(restore="always", top_k=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor=MMD, mode="min", filename="best", save_top_k=1,
                           every_n_train_steps=10)  # 10 global steps = 5 G steps
    module = et.ScriptedGAN()
    et.fit(module, [scorer, best, RunSummary(tmp_path, plots=False), ckpt], g_steps=30, enable_checkpointing=True)
    assert [(c["g_step"], c["value"]) for c in best.candidates] == [(10, 1.0), (15, 2.0), (25, 2.5)]
    # each candidate scored once, with 4 x the monitor's samples and a seed that is not the monitor's
    assert scorer.calls == [(10, 400, 8), (15, 400, 8), (25, 400, 8)]
    assert best.restored and best.restored_g_step == 15 and module.generator.weight.item() == 15.0
    block = json.loads((tmp_path / "summary.json").read_text())["best_generator"]
    conf = block["confirmation"]
    assert conf["metric"] == MMD and conf["samples"] == 400 and conf["seed"] == 8 and conf["time_s"] >= 0
    assert conf["winner_g_step"] == 15 == block["winner_g_step"] == block["restored_g_step"] and conf["changed"]
    assert conf["candidates"] == [{"g_step": 10, "monitor_value": 1.0, "confirm_value": 1.5},
                                  {"g_step": 15, "monitor_value": 2.0, "confirm_value": 0.5},
                                  {"g_step": 25, "monitor_value": 2.5, "confirm_value": 2.0}]
    assert block["best_g_step"] == 10 and block["top_k"] == 3
    # best.ckpt holds the monitor's best (G step 10), not the generator handed back: the summary says so
    assert torch.load(ckpt.best_model_path, weights_only=True)["scripted"]["g_steps"] == 10
    assert block["checkpoint_best_holds_winner"] is False


def test_at_the_budget_on_stop_confirms_but_keeps_the_last_generator(tmp_path):
    et = scripted()
    scorer = ScriptedScorer(LOGGED, CONFIRM)
    best = keeper(top_k=3, confirm_samples=250, confirm_seed=3)
    module = et.ScriptedGAN()
    trainer = et.fit(module, [scorer, best], g_steps=30)
    assert best.confirmation["winner_g_step"] == 15 and best.confirmation["samples"] == 250
    assert scorer.calls == [(10, 250, 3), (15, 250, 3), (25, 250, 3)]
    assert not best.restored and module.generator.weight.item() == 30.0  # the last weights, put back after scoring
    block = best.summary_fields(trainer, module)["best_generator"]
    assert block["winner_g_step"] == 15 and block["restored_g_step"] is None
    assert block["checkpoint_best_holds_winner"] is None  # no best checkpoint in this run


def test_the_monitors_best_is_confirmed_when_it_stays_best():
    et = scripted()
    scorer = ScriptedScorer(LOGGED, {10: 0.1, 15: 0.5, 25: 2.0})
    best = keeper(restore="always")
    module = et.ScriptedGAN()
    et.fit(module, [scorer, best], g_steps=30)
    assert best.restored_g_step == 10 and module.generator.weight.item() == 10.0 and not best.confirmation["changed"]


def test_off_switches_and_no_scoring_monitor_keep_the_unconfirmed_best(caplog):
    et = scripted()
    for kw in ({"top_k": 1}, {"confirm_samples": 0}):
        scorer = ScriptedScorer(LOGGED, CONFIRM)
        best = keeper(restore="always", **kw)
        module = et.ScriptedGAN()
        et.fit(module, [scorer, best], g_steps=30)
        assert scorer.calls == [] and best.confirmation is None and len(best.candidates) == 1
        assert best.restored_g_step == 10 and module.generator.weight.item() == 10.0
    caplog.set_level(logging.INFO, logger="lightning_regan")
    best = BestGenerator(monitor=MMD, restore="always")
    module = et.ScriptedGAN()
    et.fit(module, [LogOnly(LOGGED, CONFIRM), best], g_steps=30)
    lines = [r.getMessage() for r in caplog.records if "no callback scores" in r.getMessage()]
    assert len(lines) == 1 and MMD in lines[0]
    assert best.confirmation is None and len(best.candidates) == 1 and module.generator.weight.item() == 10.0


def test_confirm_seed_equal_to_the_monitors_is_refused():
    et = scripted()
    with pytest.raises(ValueError, match="confirm_seed=7 is the monitor's seed"):
        et.fit(et.ScriptedGAN(), [ScriptedScorer(LOGGED, CONFIRM), keeper(confirm_seed=7)], g_steps=5)


def test_configured_in_callbacks_best_generator():
    from hydra.utils import instantiate

    from lightning_regan.config import compose_config

    default = instantiate(compose_config(["output_dir=x"]).callbacks.best_generator)
    assert (default.monitor, default.top_k, default.confirm_samples, default.confirm_seed) == (MMD, 3, None, None)
    assert default.confirming
    tuned = instantiate(compose_config(["output_dir=x", "callbacks.best_generator.top_k=5",
                                        "callbacks.best_generator.confirm_samples=8000",
                                        "callbacks.best_generator.confirm_seed=11"]).callbacks.best_generator)
    assert (tuned.top_k, tuned.confirm_samples, tuned.confirm_seed) == (5, 8000, 11)
    off = instantiate(compose_config(["output_dir=x", "callbacks.best_generator.confirm_samples=0"]).callbacks.best_generator)
    assert not off.confirming


@pytest.mark.parametrize("override, expected", [
    ("callbacks.best_generator.top_k=0", ["callbacks.best_generator", "top_k must be an integer >= 1, got 0"]),
    ("callbacks.best_generator.confirm_samples=1", ["callbacks.best_generator", "confirm_samples", "got 1"]),
    ("callbacks.best_generator.confirm_seed=0", ["confirm_seed=0 is callbacks.fid.seed", "fresh samples"]),
])
def test_bad_values_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, override, expected):
    from lightning_regan.cli import entry

    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["regan-train", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}",
                                      override])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 2 and len(lines) == 1 and lines[0].startswith("regan-train: error: "), lines
    assert all(text in lines[0] for text in expected), lines[0]
    assert not (run / "summary.json").exists()


# ---------------------------------------------------------------------------------------------- resume
def test_state_round_trip_and_the_old_single_copy_state(tmp_path):
    best = keeper()
    for g, v in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 9.0)]:
        best.offer(g, v, {"w": torch.full((2,), float(g))})
    path = tmp_path / "state.pt"
    torch.save(best.state_dict(), path)
    again = keeper()
    again.load_state_dict(torch.load(path, weights_only=True))  # tensors and plain containers only
    assert [(c["g_step"], c["value"], c["weights"]["w"][0].item()) for c in again.candidates] == \
        [(2, 1.0, 2.0), (3, 2.0, 3.0), (1, 3.0, 1.0)]
    assert again.best_value == 1.0 and again.best_g_step == 2 and again.best_generator_step == 2
    # the state of 0.3 (one copy of the best) loads as one candidate
    old = {"best_value": 1.0, "best_g_step": 20, "best_generator_step": 20, "weights": {"w": torch.ones(2)},
           "last_step": 25.0, "last_value": None}
    again.load_state_dict(old)
    assert [(c["g_step"], c["value"]) for c in again.candidates] == [(20, 1.0)] and again.best_generator_step == 20
    again.load_state_dict({**old, "weights": None, "best_generator_step": None})
    assert again.best_generator_step is None and again.best_g_step == 20
    again.load_state_dict({"best_value": None, "best_g_step": None, "weights": None})
    assert again.candidates == [] and again.best_value is None


def test_a_resumed_run_confirms_the_same_candidates(tmp_path):
    et = scripted()
    whole = keeper(restore="always")
    et.fit(et.ScriptedGAN(), [ScriptedScorer(LOGGED, CONFIRM), whole], g_steps=30)
    first = keeper()  # at its budget (G step 22) it confirms, and hands nothing back
    trainer = et.fit(et.ScriptedGAN(), [ScriptedScorer(LOGGED, CONFIRM), first], g_steps=22)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, scorer, module = keeper(restore="always"), ScriptedScorer(LOGGED, CONFIRM), et.ScriptedGAN()
    trainer = et.make_trainer(30, [scorer, resumed])
    trainer.fit(module, et.loader(), ckpt_path=str(ckpt), weights_only=True)
    assert module.g_steps == 30 and resumed.confirmation == {**whole.confirmation, "time_s": resumed.confirmation["time_s"]}
    assert [c["g_step"] for c in resumed.candidates] == [10, 15, 25] and module.generator.weight.item() == 15.0


# ---------------------------------------------------------------------------------------------- real monitor
class Points(L.LightningDataModule):
    """2-D points; ``shape`` tells FIDMonitor the sample shape."""

    shape = (2,)

    def __init__(self, n: int = 256, batch_size: int = 16) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        points = torch.randn(self.n, 2, generator=torch.Generator().manual_seed(3)) * 0.5 + 1.0
        return DataLoader(points, batch_size=self.batch_size, shuffle=True, drop_last=True)


def real_monitor(**kw: Any) -> FIDMonitor:
    real = torch.randn(256, 2, generator=torch.Generator().manual_seed(9)) * 0.5 + 1.0
    return FIDMonitor(**{"every_n_g_steps": 5, "num_samples": 64, "batch_size": 32, "feature_extractor": Identity2D(),
                         "real_data": real, "verbose": False, "mmd": True, **kw})


class LastWeights(Callback):
    """Copies the evaluated generator when training ends, before BestGenerator (listed before it)."""

    weights: Optional[dict[str, torch.Tensor]] = None

    def on_train_end(self, trainer, pl_module):
        self.weights = {k: v.clone() for k, v in pl_module.eval_generator.state_dict().items()}


def test_score_is_the_monitors_metric_and_the_winner_is_loaded(tmp_path):
    L.seed_everything(0, verbose=False)
    fid = real_monitor()
    assert isinstance(fid, Scorer) and fid.scored_metrics == ("val/fid", MMD)
    best = BestGenerator(monitor=MMD, restore="always", verbose=False)
    last = LastWeights()
    module = GANModule(TinyG(), TinyD(), ema_decay=0.9)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_steps=max_steps_for(30, 1),
                        callbacks=[fid, last, best, RunSummary(tmp_path, plots=False)])
    trainer.fit(module, datamodule=Points())
    mmd_history = dict(fid.signal_history["mmd"])
    assert len(mmd_history) == 6 and fid.evaluations == 6  # the confirmation is not an evaluation
    # score() with the monitor's own sample size and seed is the evaluation itself (the last one, G step 30)
    saved_eval_time = fid.eval_time_s
    restored = {k: v.clone() for k, v in module.eval_generator.state_dict().items()}
    module.eval_generator.load_state_dict(last.weights)
    again = fid.score(trainer, module, fid.num_samples, fid.seed)
    assert again[MMD] == pytest.approx(mmd_history[30], rel=1e-5, abs=1e-7)
    assert again["val/fid"] == pytest.approx(fid.history[-1][1], rel=1e-5)
    assert fid.eval_time_s == saved_eval_time and fid.evaluations == 6
    module.eval_generator.load_state_dict(restored)
    # the three best evaluations were re-scored with 4 x 64 samples under the monitor's seed + 1
    conf = best.confirmation
    ranked = sorted(mmd_history.items(), key=lambda kv: kv[1])[:3]
    assert [(c["g_step"], c["monitor_value"]) for c in conf["candidates"]] == ranked
    assert conf["samples"] == 256 and conf["seed"] == fid.seed + 1 and conf["time_s"] > 0
    values = [c["confirm_value"] for c in conf["candidates"]]
    winner = min(range(3), key=values.__getitem__)
    assert best.restored_g_step == conf["candidates"][winner]["g_step"] == conf["winner_g_step"]
    # what was loaded back scores exactly the winner's confirmation value
    assert fid.score(trainer, module, 256, fid.seed + 1)[MMD] == pytest.approx(values[winner], rel=1e-6, abs=1e-9)
    for name, tensor in module.eval_generator.state_dict().items():
        assert torch.equal(tensor, best.candidates[[c["g_step"] for c in best.candidates].index(best.restored_g_step)]
                           ["weights"][name])
    block = json.loads((tmp_path / "summary.json").read_text())["best_generator"]
    assert block["confirmation"]["samples"] == 256 and block["confirmation"]["time_s"] > 0
    assert [c["confirm_value"] for c in block["confirmation"]["candidates"]] == pytest.approx(values)


# ---------------------------------------------------------------------------------------------- DDP (2 gloo ranks)
class RankBiasedMonitor(FIDMonitor):
    """Rank 1 reads every confirmation value backwards (as if its rounding differed): only a choice taken once and
    shared keeps the ranks together."""

    def score(self, trainer, pl_module, num_samples, seed):
        values = super().score(trainer, pl_module, num_samples, seed)
        return {k: -v if trainer.global_rank == 1 else v for k, v in values.items()}


def scenario_confirm(out: Path) -> None:
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    results = {}
    for name, cls in (("plain", FIDMonitor), ("rank_biased", RankBiasedMonitor)):
        L.seed_everything(0, verbose=False)
        real = torch.randn(256, 2, generator=torch.Generator().manual_seed(9)) * 0.5 + 1.0
        fid = cls(every_n_g_steps=4, num_samples=64, batch_size=16, feature_extractor="identity", real_data=real,
                  verbose=False)
        best = BestGenerator(monitor=MMD, restore="always", verbose=False)
        module = GANModule(TinyG(), TinyD(), ema_decay=0.9)
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                            max_steps=max_steps_for(24, 1), logger=False, callbacks=[fid, best],
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, datamodule=Points(n=2 * 160, batch_size=8))
        results[name] = {"confirmation": best.confirmation, "restored_g_step": best.restored_g_step,
                         "generator": {k: v.clone() for k, v in module.eval_generator.state_dict().items()}}
    rank = dist.get_rank()
    (out / "confirm").mkdir(parents=True, exist_ok=True)
    torch.save(results, out / "confirm" / f"rank{rank}.pt")


SCENARIOS = {"confirm": scenario_confirm}


@pytest.mark.slow
def test_ddp_ranks_confirm_and_hand_back_the_same_candidate(tmp_path):
    _launch_here(["confirm"], tmp_path, 2)
    ranks = [torch.load(tmp_path / "confirm" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    plain = [r["plain"] for r in ranks]
    # every rank measured the same values (samples split over the ranks, statistics synced) and chose alike
    assert plain[0]["confirmation"]["candidates"] == plain[1]["confirmation"]["candidates"]
    assert len(plain[0]["confirmation"]["candidates"]) == 3 and plain[0]["confirmation"]["samples"] == 256
    assert plain[0]["restored_g_step"] == plain[1]["restored_g_step"] == plain[0]["confirmation"]["winner_g_step"]
    assert all(torch.equal(plain[0]["generator"][k], plain[1]["generator"][k]) for k in plain[0]["generator"])
    biased = [r["rank_biased"] for r in ranks]
    values = [[c["confirm_value"] for c in b["confirmation"]["candidates"]] for b in biased]
    assert values[1] == [-v for v in values[0]] and len(set(values[0])) == 3  # the ranks disagree on the order
    # rank zero's choice is every rank's
    assert biased[0]["restored_g_step"] == biased[1]["restored_g_step"]
    assert biased[0]["restored_g_step"] == biased[0]["confirmation"]["candidates"][
        min(range(3), key=values[0].__getitem__)]["g_step"]
    assert all(torch.equal(biased[0]["generator"][k], biased[1]["generator"][k]) for k in biased[0]["generator"])


def _launch_here(scenarios: list[str], out: Path, world: int, timeout: float = 300) -> None:
    """Start ``world`` ranks of this file, torchrun-style (as ``tests/test_ddp.py`` does for its own scenarios)."""
    import os
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0")
    env.pop("PL_GLOBAL_SEED", None)
    logs = [open(out / f"rank{r}.log", "w") for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), ",".join(scenarios), str(out)],
                              env=dict(env, LOCAL_RANK=str(r)), stdout=logs[r], stderr=subprocess.STDOUT)
             for r in range(world)]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log_file in logs:
            log_file.close()
    if codes is None or any(codes):
        tails = "\n".join(f"--- rank {r}:\n" + (out / f"rank{r}.log").read_text()[-4000:] for r in range(world))
        raise AssertionError(f"DDP scenarios {scenarios} {'hung' if codes is None else f'failed {codes}'}:\n{tails}")


if __name__ == "__main__":
    import torch.distributed as dist

    for _name in sys.argv[1].split(","):
        SCENARIOS[_name](Path(sys.argv[2]))
    if dist.is_initialized():
        dist.destroy_process_group()
