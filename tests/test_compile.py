"""GANModule(compile=True): compiled G and D forwards that stay correct with every regularizer.

Double backward does not go through a compiled graph (pytorch/pytorch#91469: an error in torch 2.14, a silent drop of
second-order terms in others), so terms that need it run through the eager networks. These tests pin that down:
gradients of every regularizer and of the adversarial losses equal the eager ones; a seeded compiled run follows the
eager run; checkpoints are interchangeable; a compile failure falls back with one warning; recompiles stay bounded.

Compiling costs seconds per graph on a CPU, so the compiled objects are shared (module-scoped fixtures, tiny MLPs);
the Trainer-level checks of every regularizer, EMA, conditional and resume are marked slow.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
import torch._dynamo
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.compile import CompiledNetworks, compile_options
from lightning_regan.regularizers import R1, R2, WGANGP, DiscriminatorBatch, LeCam, Regularizer, WeightL1, WeightL2

from helpers import TinyCondD, TinyCondG, TinyD, TinyG, labelled_points, quiet_trainer

REGULARIZERS = {
    "l1": lambda: WeightL1(0.1),
    "l2": lambda: WeightL2(0.1),
    "r1": lambda: R1(1.0),
    "r2": lambda: R2(1.0),
    "wgan_gp": lambda: WGANGP(1.0),
    "lecam": lambda: LeCam(0.3),
}
LOSSES = ("non_saturating", "hinge", "wasserstein", "least_squares")


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it compiles and hands them to another backend."""

    def __init__(self, inner: str = "inductor") -> None:
        self.inner = inner
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Any:
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        return lookup_backend(self.inner)(gm, example_inputs)


@pytest.fixture(scope="module", autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def pair() -> tuple[GANModule, GANModule, CountingBackend]:
    """An eager and a compiled module with the same weights (one compiled module shared by the fast tests)."""
    torch.manual_seed(0)
    backend = CountingBackend()
    eager = GANModule(TinyG(), TinyD())
    compiled = GANModule(copy.deepcopy(eager.generator), copy.deepcopy(eager.discriminator), compile={"backend": backend})
    return eager, compiled, backend


def d_step_grads(module: GANModule, reg: Optional[Regularizer], real: Tensor, z: Tensor, loss: str) -> list[Tensor]:
    """D's parameter gradients of one D step's loss, computed as ``GANModule.discriminator_step`` does (networks from
    ``training_networks``, the eager D inside the regularizer's batch)."""
    from lightning_regan.losses import get_loss

    due = [] if reg is None else [("reg", reg)]
    G, D = module.training_networks(due)
    with torch.no_grad():
        fake = module.run_generator(G, z)
    real_in = real.detach().requires_grad_(reg is not None and reg.needs_real_grad)
    fake_in = fake.detach().requires_grad_(reg is not None and reg.needs_fake_grad)
    d_real = module.run_discriminator(real_in, None, D).float()
    d_fake = module.run_discriminator(fake_in, None, D).float()
    d_loss = get_loss(loss).d_loss(d_real, d_fake)
    if reg is not None:
        d_loss = d_loss + reg.weight * reg(DiscriminatorBatch(module.discriminator, real_in, fake_in, d_real, d_fake))
    return list(torch.autograd.grad(d_loss, list(module.discriminator.parameters())))


def g_step_grads(module: GANModule, z: Tensor, loss: str) -> list[Tensor]:
    from lightning_regan.losses import get_loss

    G, D = module.training_networks()
    g_loss = get_loss(loss).g_loss(module.run_discriminator(module.run_generator(G, z), None, D).float())
    return list(torch.autograd.grad(g_loss, list(module.generator.parameters())))


def assert_close(a: list[Tensor], b: list[Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- fast (default)
def test_every_regularizer_and_loss_gradient_equals_eager(pair):
    """The test that would have caught a silent drop of second-order terms: each regularizer's D gradient and each
    adversarial loss's D and G gradients, compiled vs eager, on a fixed batch."""
    eager, compiled, backend = pair
    torch.manual_seed(1)
    real, z = torch.randn(16, 2), torch.randn(16, 4)
    for name, make in REGULARIZERS.items():
        torch.manual_seed(2)  # WGAN-GP's interpolation draw
        want = d_step_grads(eager, make(), real, z, "non_saturating")
        torch.manual_seed(2)
        got = d_step_grads(compiled, make(), real, z, "non_saturating")
        assert any(float(g.abs().sum()) > 0 for g in got), name
        assert_close(got, want)
        # the penalty itself contributes: its gradient differs from the adversarial loss's alone
        if name in ("r1", "r2", "wgan_gp"):
            assert not all(torch.allclose(g, h) for g, h in zip(got, d_step_grads(compiled, None, real, z, "non_saturating")))
    for loss in LOSSES:
        assert_close(d_step_grads(compiled, None, real, z, loss), d_step_grads(eager, None, real, z, loss))
        assert_close(g_step_grads(compiled, z, loss), g_step_grads(eager, z, loss))
    assert compiled.compiled_networks.failure is None and backend.graphs >= 2  # really compiled


def test_double_backward_terms_use_the_eager_discriminator(pair):
    _, compiled, _ = pair
    G, D = compiled.training_networks([("r1", R1(1.0))])
    assert D is compiled.discriminator  # the registered eager module, shared parameters
    lazy = R1(1.0, every=16)
    not_due_r1 = [("r1", lazy)] if lazy.is_due(1) else []  # D step 1 of 16: R1 is not due, D stays compiled
    for due in (not_due_r1, [("l2", WeightL2())], [("lecam", LeCam())], []):
        G, D = compiled.training_networks(due)
        assert D is not compiled.discriminator and G is not compiled.generator
    assert {n for n, make in REGULARIZERS.items() if make().needs_double_backward} == {"r1", "r2", "wgan_gp"}


def test_state_dict_keys_do_not_change(pair):
    eager, compiled, _ = pair
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    copy.deepcopy(compiled)  # compiled callables are dropped from copies (they compile again on first use)


def test_compile_argument_checks():
    assert compile_options(False) is None and compile_options(None) is None and compile_options(True) == {}
    assert compile_options({"mode": "max-autotune", "dynamic": False}) == {"mode": "max-autotune", "dynamic": False}
    with pytest.raises(ValueError, match="unknown key"):
        GANModule(TinyG(), TinyD(), compile={"mood": "fast"})
    with pytest.raises(ValueError, match="compile must be true, false"):
        GANModule(TinyG(), TinyD(), compile="yes")
    assert GANModule(TinyG(), TinyD()).compiled_networks is None  # the default stays eager


def _raising_backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Any:
    raise RuntimeError("no C++ compiler found\nsecond line")


def test_compile_failure_falls_back_to_eager_with_one_warning():
    torch.manual_seed(0)
    G, D = TinyG(), TinyD()
    nets = CompiledNetworks(G, D, {"backend": _raising_backend})
    z = torch.randn(8, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [nets.generator(z), nets.discriminator(nets.generator(z)), nets.generator(z)]
    ours = [w for w in caught if "torch.compile failed" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "no C++ compiler found" in str(ours[0].message) and "second line" not in str(ours[0].message)
    assert nets.failure is not None and "no C++ compiler found" in nets.failure
    torch.testing.assert_close(outs[0], G(z))
    torch.testing.assert_close(outs[1], D(G(z)))


def test_torch_compile_itself_raising_falls_back(monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", broken)
    G, D = TinyG(), TinyD()
    nets = CompiledNetworks(G, D, {})
    z = torch.randn(4, 4)
    with pytest.warns(RuntimeWarning, match="Dynamo is not supported"):
        out = nets.generator(z)
    torch.testing.assert_close(out, G(z))


def test_a_network_error_is_raised_not_swallowed():
    nets = CompiledNetworks(TinyG(), TinyD(), {"backend": _raising_backend})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning for the network's own error
        with pytest.raises(RuntimeError, match="shapes|size"):
            nets.generator(torch.randn(4, 7))  # TinyG wants 4 latent dims
    assert nets.failure is None


# ----------------------------------------------------------------------------------------------- seeded runs
class Losses(Callback):
    """Each step's metrics, and the graphs ``backend`` had compiled by then."""

    def __init__(self, backend: Optional[CountingBackend] = None) -> None:
        self.backend = backend
        self.rows: list[dict[str, float]] = []
        self.graphs: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.rows.append({k: float(v) for k, v in pl_module.last_step_metrics.items()})
        self.graphs.append(self.backend.graphs if self.backend is not None else 0)


def odd_loader(n: int = 72, batch_size: int = 16) -> DataLoader:
    """4 batches of 16 and a last batch of 8 (no drop_last): the batch size changes in every epoch."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(3)) * 0.5 + 1.0
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False)


def seeded_run(compile: Any, g_steps: int, regs: Optional[dict[str, Regularizer]] = None, **kw: Any) -> tuple[GANModule, Losses]:
    torch.manual_seed(0)
    module = GANModule(TinyG(), TinyD(), regularizers=regs, compile=compile,
                       d_optimizer=functools.partial(torch.optim.Adam, lr=1e-3), **kw)
    backend = compile.get("backend") if isinstance(compile, dict) else None
    losses = Losses(backend if isinstance(backend, CountingBackend) else None)
    quiet_trainer(max_steps=max_steps_for(g_steps), callbacks=[losses]).fit(module, odd_loader())
    return module, losses


def test_seeded_compiled_run_follows_eager_and_recompiles_are_bounded():
    """20 G steps (4 epochs of 4 full batches and a half one) with lazy R1 (every 2: D steps alternate between the
    compiled and the eager D) and LeCam: the losses follow the eager run's, and no graph is compiled after the
    second epoch (by then every batch size has met every phase; no recompiling every step)."""
    torch._dynamo.reset()  # count from a clean cache (the earlier tests' graphs do not use up the recompile limit)
    backend = CountingBackend()

    def regs() -> dict[str, Regularizer]:
        return {"r1": R1(1.0, every=2), "lecam": LeCam(0.1)}

    eager, eager_losses = seeded_run(False, 20, regs())
    compiled, losses = seeded_run({"backend": backend}, 20, regs())
    assert compiled.compiled_networks.failure is None
    assert losses.graphs[9] == losses.graphs[-1] >= 2, losses.graphs  # compiled in epochs 1-2, never after
    assert losses.graphs[-1] <= 8, losses.graphs  # G and D: grad / no-grad phases, static and dynamic batch size
    assert len(losses.rows) == len(eager_losses.rows) == 20
    for got, want in zip(losses.rows, eager_losses.rows):
        for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_reg/lecam"):
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), (key, got, want)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_trainer_step_with_each_regularizer_equals_eager(name):
    """Through ``discriminator_step`` itself: 3 G steps with the regularizer every step, compiled vs eager."""
    eager, want = seeded_run(False, 3, {name: REGULARIZERS[name]()})
    compiled, got = seeded_run(True, 3, {name: REGULARIZERS[name]()})
    assert compiled.compiled_networks.failure is None
    for g, w in zip(got.rows, want.rows, strict=True):
        assert g == pytest.approx(w, rel=1e-3, abs=1e-4)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_ema_generator_follows_eager():
    eager, _ = seeded_run(False, 6, {"r1": R1(1.0, every=3)}, ema_decay=0.9)
    compiled, _ = seeded_run(True, 6, {"r1": R1(1.0, every=3)}, ema_decay=0.9)
    assert int(compiled.ema_generator.n_averaged) == 6
    for p, q in zip(compiled.ema_generator.parameters(), eager.ema_generator.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_conditional_compiled_run_follows_eager():
    x, y = labelled_points(96)

    def run(compile: bool) -> GANModule:
        torch.manual_seed(0)
        module = GANModule(TinyCondG(), TinyCondD(), num_classes=3, regularizers={"r1": R1(1.0, every=2)}, compile=compile)
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
        quiet_trainer(max_steps=max_steps_for(6)).fit(module, loader)
        return module

    eager, compiled = run(False), run(True)
    assert compiled.compiled_networks.failure is None
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_bf16_autocast_compiled_run_follows_eager():
    """AMP: under bf16-mixed autocast (CPU here, the GPU's trainer=gpu default) the compiled run stays finite and
    follows the eager one within bf16 rounding."""
    def run(compile: bool) -> tuple[GANModule, Losses]:
        torch.manual_seed(0)
        module = GANModule(TinyG(), TinyD(), regularizers={"r1": R1(1.0, every=2)}, compile=compile)
        losses = Losses()
        quiet_trainer(max_steps=max_steps_for(6), precision="bf16-mixed", callbacks=[losses]).fit(module, odd_loader(64))
        return module, losses

    (eager, want), (compiled, got) = run(False), run(True)
    assert compiled.compiled_networks.failure is None
    for g, w in zip(got.rows, want.rows, strict=True):
        assert all(v == v and abs(v) < 1e6 for v in g.values())
        assert g["d_loss"] == pytest.approx(w["d_loss"], abs=0.05) and g["g_loss"] == pytest.approx(w["g_loss"], abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [(True, False), (False, True)])
def test_checkpoint_resumes_across_compile(tmp_path, first, then):
    """A compiled run's checkpoint resumes uncompiled and the other way round, and continues as the uninterrupted run
    (as tests/test_resume.py: an 8-G-step run checkpointing every 2 G steps, resumed from its 4th)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def module(compile: bool) -> GANModule:
        L.seed_everything(7, verbose=False)  # RandomStreams seeds from the global seed
        return GANModule(TinyG(), TinyD(), regularizers={"r1": R1(1.0, every=2)}, compile=compile, ema_decay=0.9)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    straight = module(first)
    quiet_trainer(max_steps=max_steps_for(8), callbacks=[ckpt], enable_checkpointing=True).fit(straight, odd_loader(64))
    path = tmp_path / "step=8.ckpt"  # 4 G steps (global steps count G and D)
    state = torch.load(path, weights_only=False)
    assert list(state["state_dict"]) == list(module(then).state_dict())
    assert not any("_orig_mod" in k for k in state["state_dict"])
    resumed = module(then)
    quiet_trainer(max_steps=max_steps_for(8)).fit(resumed, odd_loader(64), ckpt_path=str(path), weights_only=True)
    assert resumed.g_steps == straight.g_steps == 8
    for p, q in zip(resumed.state_dict().values(), straight.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def _ddp_worker(out: Path) -> None:
    """One rank of the 2-process gloo run: eager then compiled, same seed and data; saves both final states."""
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    results = {}
    for compile in (False, True):
        L.seed_everything(0, verbose=False)
        module = GANModule(TinyG(), TinyD(), regularizers={"r1": R1(1.0, every=2), "lecam": LeCam(0.1)}, compile=compile)
        trainer = quiet_trainer(devices=2, strategy=DDPStrategy(process_group_backend="gloo"), max_steps=max_steps_for(6))
        trainer.fit(module, odd_loader(128))
        assert not compile or module.compiled_networks.failure is None
        results[str(compile)] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    torch.save(results, out / f"rank{trainer.global_rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_compiled_follows_eager(tmp_path):
    """2 gloo processes (about a minute: imports and compiling on each rank): the compiled replicas stay identical
    and end where the eager DDP run ends (gradients all-reduced as without compile)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    env.pop("PL_GLOBAL_SEED", None)
    procs = [subprocess.Popen([sys.executable, __file__, "ddp", str(tmp_path)], env=dict(env, LOCAL_RANK=str(r)),
                              stdout=open(tmp_path / f"rank{r}.log", "w"), stderr=subprocess.STDOUT) for r in range(2)]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], (tmp_path / "rank0.log").read_text()[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["True"].items():
        assert torch.equal(value, ranks[1]["True"][key]), key  # replicas identical
        if value.is_floating_point():
            torch.testing.assert_close(value, ranks[0]["False"][key], rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------- config
def test_config_key_defaults_off_and_builds_a_compiled_module():
    from lightning_regan.builders import build_module
    from lightning_regan.cli.checks import check_values, compose_checked

    cfg = compose_checked([])
    assert cfg.module.compile is False
    for override, options in (("module.compile=true", {}), ("module.compile={mode:max-autotune}", {"mode": "max-autotune"})):
        cfg = compose_checked([override, "model=mlp", "data=gaussians"])
        check_values(cfg)
        module = build_module(cfg, TinyG(), TinyD())
        assert module.compiled_networks is not None and module.compiled_networks.options == options


def test_bad_config_value_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    import sys

    from lightning_regan.cli import entry

    monkeypatch.setattr(sys, "argv", ["regan-train", f"hydra.run.dir={tmp_path}", "module.compile={speed:max}"])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 2 and len(lines) == 1, lines
    assert "module.compile" in lines[0] and "speed" in lines[0]


# ----------------------------------------------------------------------------------------------- benchmark script
def test_bench_compile_smoke_writes_the_issue_keys(tmp_path):
    import json

    from test_bench_scripts import MACHINE_KEYS, load_script

    out = tmp_path / "bench_compile.json"
    load_script("bench_compile").main(["--smoke", "--setups", "mlp_ring", "--regs", "none", "r1_lazy16",
                                       "--backend", "aot_eager", "--device", "cpu", "--out", str(out)])
    data = json.loads(out.read_text())
    assert {"compiled_over_eager_dcgan", "compiled_over_eager_dcgan_lazy_r1", "compiled_over_eager_dcgan_r1",
            "compiled_over_eager_mlp", "compile_time_s", "command", "date", "machine"} <= set(data)
    assert data["compiled_over_eager_mlp"] > 0 and data["compiled_over_eager_dcgan"] is None  # DCGAN not run
    assert "bench_compile.py" in data["command"] and "--smoke" in data["command"] and MACHINE_KEYS <= set(data["machine"])
    setup = data["setups"]["mlp_ring"]
    assert setup["graphs_compiled"] >= 2 and set(data["compile_time_s"]) == {"mlp_ring"}
    for reg in ("none", "r1_lazy16"):
        r = setup["regularizers"][reg]
        assert r["eager_ms"] > 0 and r["compiled_ms"] > 0 and r["hand_ms"] > 0 and r["compiled_over_eager"]["median"] > 0


if __name__ == "__main__":  # a rank of test_ddp_two_processes_compiled_follows_eager
    import sys

    if sys.argv[1:2] == ["ddp"]:
        _ddp_worker(Path(sys.argv[2]))
