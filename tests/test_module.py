import functools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.regularizers import R1, R2, WGANGP, LeCam, WeightL2

from helpers import TinyD, TinyG, point_loader, quiet_trainer


def fit(module, loader=None, g_steps=5, **trainer_kw):
    trainer = quiet_trainer(max_steps=max_steps_for(g_steps, module.n_critic), **trainer_kw)
    trainer.fit(module, loader or point_loader())
    return trainer


class Recorder(torch.optim.Adam):
    """Adam that checks the backward before its step left another module's gradients untouched."""

    def __init__(self, params, watch: nn.Module, **kw):
        super().__init__(params, **kw)
        self.watch = watch
        self.others_untouched: list[bool] = []
        self._snapshot: list = []

    def zero_grad(self, set_to_none: bool = True):
        # Mutate in place: LightningOptimizer wraps a shallow copy of this object's __dict__.
        self._snapshot[:] = [None if p.grad is None else p.grad.clone() for p in self.watch.parameters()]
        super().zero_grad(set_to_none)

    def step(self, closure=None):
        now = [p.grad for p in self.watch.parameters()]
        assert len(self._snapshot) == len(now)
        same = all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                   for a, b in zip(self._snapshot, now))
        self.others_untouched.append(same)
        return super().step(closure)


@pytest.mark.parametrize("n_critic", [1, 3])
def test_counts_g_steps_not_global_step(n_critic):
    torch.manual_seed(0)
    m = GANModule(TinyG(), TinyD(), n_critic=n_critic)
    trainer = fit(m, g_steps=7)
    assert m.g_steps == 7 and m.d_steps == 7 * n_critic
    assert trainer.global_step == 7 * (n_critic + 1)
    assert trainer.callback_metrics["train/g_step"].item() == 7


def test_drop_in_user_networks_and_labelled_loader():
    torch.manual_seed(0)

    class UserG(nn.Module):  # no latent_dim attribute: passed explicitly
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2 * 4 * 4)

        def forward(self, z):
            return torch.tanh(self.fc(z)).view(-1, 2, 4, 4)

    class UserD(nn.Module):  # conv D returning (N, 1, 2, 2) patch logits
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 1, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    images = torch.rand(64, 2, 4, 4) * 2 - 1
    loader = DataLoader(TensorDataset(images, torch.arange(64)), batch_size=16, drop_last=True)
    g, d = UserG(), UserD()
    g0 = [p.detach().clone() for p in g.parameters()]
    m = GANModule(g, d, latent_dim=3, regularizers=[R1(1.0)], loss="hinge")
    trainer = fit(m, loader, g_steps=6)
    assert m.g_steps == 6
    assert all(not torch.equal(a, b) for a, b in zip(g0, g.parameters()))
    for key in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/d_reg/r1"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert m.generate(5).shape == (5, 2, 4, 4)


def test_dict_batches_are_accepted():
    x = torch.randn(64, 2)
    loader = DataLoader([{"image": xi} for xi in x], batch_size=16, drop_last=True)
    m = GANModule(TinyG(), TinyD())
    fit(m, loader, g_steps=2)
    assert m.g_steps == 2


@pytest.mark.parametrize("reg", [R1(5.0), R2(5.0), WGANGP(5.0), LeCam(1.0), WeightL2(1.0)])
def test_d_regularizer_never_reaches_g(reg):
    torch.manual_seed(0)
    g, d = TinyG(), TinyD()
    m = GANModule(
        g, d, regularizers=[reg],
        d_optimizer=functools.partial(Recorder, watch=g, lr=1e-3),
        g_optimizer=functools.partial(Recorder, watch=d, lr=1e-3),
    )
    fit(m, g_steps=3)
    g_opt, d_opt = m.trainer.optimizers
    assert len(d_opt.others_untouched) == 3 and all(d_opt.others_untouched), "the D step changed G's gradients"
    assert len(g_opt.others_untouched) == 3 and all(g_opt.others_untouched), "the G step changed D's gradients"


def _one_d_step_params(regularizers, seed=0):
    torch.manual_seed(seed)
    g, d = TinyG(), TinyD()
    m = GANModule(g, d, regularizers=regularizers, n_critic=5, d_optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    torch.manual_seed(seed + 1)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(m, point_loader())
    return [p.detach().clone() for p in d.parameters()], trainer.callback_metrics


def test_zero_weight_disables_term():
    base, _ = _one_d_step_params([])
    zero, metrics = _one_d_step_params([R1(0.0)])
    on, metrics_on = _one_d_step_params([R1(10.0)])
    assert all(torch.equal(a, b) for a, b in zip(base, zero))
    assert "train/d_reg/r1" not in metrics
    assert "train/d_reg/r1" in metrics_on
    assert not all(torch.equal(a, b) for a, b in zip(base, on))


def test_lazy_term_runs_every_k_with_gain_k():
    torch.manual_seed(0)
    seen = []

    class Spy(GANModule):
        def discriminator_step(self, real, d_opt):
            step = self.d_steps
            out = super().discriminator_step(real, d_opt)
            seen.append((step, out))
            return out

    m = Spy(TinyG(), TinyD(), regularizers={"r1": R1(2.0, every=3)}, n_critic=1)
    fit(m, g_steps=7)
    applied = [s for s, out in seen if "d_reg/r1" in out]
    assert applied == [0, 3, 6]
    for s, out in seen:
        reg = out.get("d_reg/r1")
        expected = out["d_adv"] + (2.0 * 3 * reg if reg is not None else 0.0)
        assert out["d_loss"].item() == pytest.approx(float(expected), rel=1e-5)


def test_ema_generator_tracks_g_and_is_used_for_sampling():
    torch.manual_seed(0)
    decay = 0.5
    history = []

    class Spy(GANModule):
        def generator_step(self, batch_size, g_opt):
            out = super().generator_step(batch_size, g_opt)
            history.append([p.detach().clone() for p in self.generator.parameters()])
            return out

    m = Spy(TinyG(), TinyD(), ema_decay=decay)
    assert m.eval_generator is m.generator  # before any G step
    fit(m, g_steps=3)
    expected = history[0]
    for params in history[1:]:
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, params)]
    ema = list(m.ema_generator.module.parameters())
    assert all(torch.allclose(e, a, atol=1e-6) for e, a in zip(expected, ema))
    assert m.eval_generator is m.ema_generator.module
    assert not any(p.requires_grad for p in m.ema_generator.parameters())
    z = m.fixed_noise[:4]
    assert torch.allclose(m.generate(z=z), m.ema_generator.module.eval()(z))


def test_gradient_clipping_bounds_update():
    torch.manual_seed(0)
    clip = 1e-3
    grads = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            grads.append(torch.nn.utils.get_total_norm([p.grad for p in self.param_groups[0]["params"]]).item())
            return super().step(closure)

    m = GANModule(TinyG(), TinyD(), regularizers=[R1(100.0)], gradient_clip_val=clip,
                  d_optimizer=functools.partial(Spy, lr=0.1), g_optimizer=functools.partial(Spy, lr=0.1))
    fit(m, g_steps=3)
    assert grads and max(grads) <= clip * 1.001


def test_checkpoint_round_trip_keeps_counters_and_ema(tmp_path):
    torch.manual_seed(0)
    m = GANModule(TinyG(), TinyD(), ema_decay=0.9, regularizers=[LeCam(1.0)])
    trainer = fit(m, g_steps=4)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    m2 = GANModule.load_from_checkpoint(path, generator=TinyG(), discriminator=TinyD(), regularizers=[LeCam(1.0)],
                                        weights_only=True)
    assert (m2.g_steps, m2.d_steps) == (4, 4)
    for a, b in zip(m.ema_generator.state_dict().values(), m2.ema_generator.state_dict().values()):
        assert torch.equal(a, b)
    assert m2.regularizers["lecam"].anchor_real == m.regularizers["lecam"].anchor_real


def test_foreign_checkpoint_rejected(tmp_path):
    m = GANModule(TinyG(), TinyD())
    with pytest.raises(ValueError, match="not written by lightning_regan"):
        m.on_load_checkpoint({"state_dict": {}})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_critic": 0}, "n_critic"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"loss": "nope"}, "Unknown adversarial loss"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GANModule(TinyG(), TinyD(), **kwargs)


def test_latent_dim_required_when_generator_has_none():
    with pytest.raises(ValueError, match="latent_dim"):
        GANModule(nn.Linear(3, 2), TinyD())


def test_max_steps_for():
    assert max_steps_for(10, 1) == 20 and max_steps_for(10, 5) == 60
    with pytest.raises(ValueError):
        max_steps_for(10, 0)
