"""Mixed precision: bf16-mixed on CPU, and the fp16 (16-mixed) GradScaler path exercised on CPU.

Lightning turns ``precision="16-mixed"`` on CPU into bf16; passing ``MixedPrecision("16-mixed", "cpu", scaler)``
as a plugin keeps fp16 autocast with a real ``GradScaler`` on CPU, which runs the same scaler code as on a GPU
(the CUDA autocast op lists and fp16 kernels themselves can only be checked on a GPU).
"""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_regan import GANModule, max_steps_for
from lightning_regan.regularizers import (
    R1, R2, WGANGP, DiscriminatorBatch, LeCam, WeightL1, WeightL2, input_gradients,
)

from helpers import TinyD, TinyG, point_loader, quiet_trainer


def _cpu_fp16_amp_available() -> bool:
    try:
        scaler = torch.amp.GradScaler("cpu", enabled=True)
        with torch.autocast("cpu", dtype=torch.float16):
            y = nn.Linear(2, 1)(torch.ones(1, 2))
        return scaler.is_enabled() and y.dtype == torch.float16
    except (RuntimeError, TypeError, ValueError):
        return False


needs_cpu_fp16 = pytest.mark.skipif(not _cpu_fp16_amp_available(), reason="this torch has no CPU fp16 autocast / GradScaler")


def fp16_plugin(init_scale: float = 2.0**16) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))


def make_batch(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, scaler=None) -> DiscriminatorBatch:
    real = real.clone().requires_grad_(True)
    fake = fake.clone().requires_grad_(True)
    return DiscriminatorBatch(d, real, fake, d(real).float(), d(fake).float(), scaler)


class DtypeSpy(GANModule):
    """Records the dtype of D's raw output during the D step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.d_output_dtypes: set[torch.dtype] = set()
        self.discriminator.register_forward_hook(lambda mod, inp, out: self.d_output_dtypes.add(out.dtype))


# ----------------------------------------------------------------------------- bf16-mixed on CPU
def test_bf16_mixed_gan_step_runs_on_cpu():
    torch.manual_seed(0)
    g, d = TinyG(), TinyD()
    before = [p.detach().clone() for p in [*g.parameters(), *d.parameters()]]
    regs = {"r1": R1(1.0), "r2": R2(1.0), "wgan_gp": WGANGP(1.0), "lecam": LeCam(0.1), "l2": WeightL2(1e-3)}
    m = DtypeSpy(g, d, regularizers=regs, ema_decay=0.9)
    trainer = quiet_trainer(max_steps=max_steps_for(4, 1), precision="bf16-mixed")
    trainer.fit(m, point_loader())
    assert m.g_steps == 4
    assert torch.bfloat16 in m.d_output_dtypes, "autocast was not active in the GAN step"
    for key in ("train/d_loss", "train/g_loss", *(f"train/d_reg/{k}" for k in regs)):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    after = [*g.parameters(), *d.parameters()]
    assert all(p.dtype == torch.float32 for p in after), "mixed precision must keep fp32 master weights"
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("make_reg", [R1, R2, WGANGP, LeCam, WeightL1, WeightL2], ids=lambda c: c.__name__)
def test_regularizer_values_under_bf16_autocast_match_fp32(make_reg):
    torch.manual_seed(0)
    d = TinyD()
    real, fake = torch.randn(64, 2) * 0.5 + 1.0, torch.randn(64, 2)

    def value(autocast: bool) -> float:
        torch.manual_seed(1)  # WGAN-GP's interpolation draws
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            batch = make_batch(d, real, fake)
            return make_reg()(batch).item()

    fp32, bf16 = value(False), value(True)
    assert fp32 > 0
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 % per value); a few layers deep, 3 % is ample.
    assert bf16 == pytest.approx(fp32, rel=3e-2)


def test_r1_of_linear_d_under_bf16_is_half_gamma_weight_norm():
    w = torch.tensor([0.3, -0.7, 1.1, 0.05])
    d = nn.Linear(4, 1)
    with torch.no_grad():
        d.weight.copy_(w.view(1, -1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = make_batch(d, torch.randn(32, 4), torch.randn(32, 4))
        assert batch.d_real.dtype == torch.float32  # module casts D's bf16 logits to fp32, as make_batch does
        r1 = R1(weight=10.0)(batch)
    expected = 0.5 * w.square().sum().item()  # gamma * R1 = gamma/2 ||w||^2
    assert r1.item() == pytest.approx(expected, rel=1e-2)


# ----------------------------------------------------------------------------- fp16 GradScaler path
@needs_cpu_fp16
def test_input_gradients_scaled_then_unscaled_equal_plain():
    torch.manual_seed(0)
    d = TinyD()
    real = torch.randn(16, 2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    assert scaler.is_enabled()

    def grads_and_param_grads(grad_scaler):
        d.zero_grad(set_to_none=True)
        x = real.clone().requires_grad_(True)
        g = input_gradients(d(x), x, grad_scaler)
        g.square().sum().backward()  # the double backward reaches D's parameters
        return g.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in d.parameters()]

    plain, plain_params = grads_and_param_grads(None)
    scaled, scaled_params = grads_and_param_grads(scaler)
    assert plain.abs().sum() > 0
    # Scaling by a power of two commutes with fp32 rounding: the results are the same bits.
    assert torch.equal(plain, scaled)
    assert all(torch.equal(a, b) for a, b in zip(plain_params, scaled_params))


class TinySlopeD(nn.Module):
    """A linear D whose input gradient (1e-8 per coordinate) is below fp16's smallest subnormal (6e-8)."""


    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        with torch.no_grad():
            self.linear.weight.fill_(1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * 1e-5


@needs_cpu_fp16
def test_grad_scaler_rescues_fp16_underflow_of_the_penalty():
    d, x = TinySlopeD(), torch.randn(8, 3)
    with torch.autocast("cpu", dtype=torch.float16):
        x_plain = x.clone().requires_grad_(True)
        plain = input_gradients(d(x_plain), x_plain, None)
        x_scaled = x.clone().requires_grad_(True)
        # 2^14, not GradScaler's default 2^16: fp16 tops out at 65504, so 2^16 itself overflows (and the function
        # falls back to the unscaled gradient, see the next test).
        scaled = input_gradients(d(x_scaled), x_scaled, torch.amp.GradScaler("cpu", init_scale=2.0**14))
    true = torch.full_like(x, 1e-8)
    assert torch.count_nonzero(plain) == 0, "expected fp16 underflow without a scaler (test premise)"
    torch.testing.assert_close(scaled, true, rtol=2e-2, atol=0)


@needs_cpu_fp16
def test_overflowing_scale_falls_back_to_the_unscaled_gradient():
    torch.manual_seed(0)
    d, x = TinyD(), torch.randn(8, 2)
    with torch.autocast("cpu", dtype=torch.float16):
        x_ref = x.clone().requires_grad_(True)
        ref = input_gradients(d(x_ref), x_ref, None)
        x_big = x.clone().requires_grad_(True)
        # 2^24 * O(1) gradients overflow fp16 (max 65504) inside D.
        big = input_gradients(d(x_big), x_big, torch.amp.GradScaler("cpu", init_scale=2.0**24))
    assert torch.isfinite(ref).all()
    assert torch.equal(big, ref)


@needs_cpu_fp16
@pytest.mark.parametrize("reg", [R1(1.0), WGANGP(10.0)], ids=["r1", "wgan_gp"])
def test_16_mixed_gan_step_passes_the_shared_scaler_and_stays_finite(reg):
    torch.manual_seed(0)
    seen = []

    class Spy(GANModule):
        def discriminator_step(self, real, d_opt):
            out = super().discriminator_step(real, d_opt)
            seen.append(out)
            return out

    scalers = []
    original_forward = reg.forward

    def spy_forward(batch):
        scalers.append(batch.grad_scaler)
        return original_forward(batch)

    reg.forward = spy_forward
    init_scale = 2.0**16  # GradScaler's default; 2^16 > fp16's max, so the first scaled gradients overflow
    plugin = fp16_plugin(init_scale)
    m = Spy(TinyG(), TinyD(), regularizers=[reg])
    trainer = quiet_trainer(max_steps=max_steps_for(5, 1), plugins=[plugin])
    trainer.fit(m, point_loader())
    assert m.g_steps == 5
    assert len(scalers) == 5 and all(s is plugin.scaler for s in scalers), "the penalty must use Lightning's scaler"
    # A NaN penalty at the first step would make the Divergence rule stop the run there.
    values = [float(out[f"d_reg/{reg.default_name}"]) for out in seen]
    assert all(torch.isfinite(torch.tensor(values))), values
    assert all(torch.isfinite(out["d_loss"]) for out in seen)


@needs_cpu_fp16
def test_gradient_clipping_under_16_mixed_clips_the_true_gradients():
    torch.manual_seed(0)
    clip = 1e-2
    norms: list[float] = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            # GradScaler.step calls this after unscale_: these are the gradients the update uses.
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in self.param_groups[0]["params"]]).item())
            return super().step(closure)

    m = GANModule(TinyG(), TinyD(), regularizers=[R1(100.0)], gradient_clip_val=clip,
                  d_optimizer=functools.partial(Spy, lr=0.1), g_optimizer=functools.partial(Spy, lr=0.1))
    trainer = quiet_trainer(max_steps=max_steps_for(4, 1), plugins=[fp16_plugin(2.0**8)])
    trainer.fit(m, point_loader())
    assert norms
    # Clipping the still-scaled gradients at `clip` would leave norms of clip / 2^8 at most.
    assert max(norms) <= clip * 1.001
    assert max(norms) >= clip * 0.5
