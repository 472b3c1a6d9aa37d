import pytest
import torch
from torch import nn

from lightning_regan.regularizers import (
    R1, R2, WGANGP, DiscriminatorBatch, LeCam, WeightL1, WeightL2, has_spectral_norm, spectral_norm,
)


def linear_d(w: torch.Tensor, b: float = 0.3) -> nn.Linear:
    d = nn.Linear(w.numel(), 1)
    with torch.no_grad():
        d.weight.copy_(w.view(1, -1))
        d.bias.fill_(b)
    return d


def make_batch(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorBatch:
    real = real.clone().requires_grad_(True)
    fake = fake.clone().requires_grad_(True)
    return DiscriminatorBatch(d, real, fake, d(real).squeeze(1), d(fake).squeeze(1))


W = torch.tensor([3.0, -4.0, 1.0])  # ||w||^2 = 26, ||w|| = sqrt(26), sum|w| = 8


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return make_batch(linear_d(W), torch.randn(16, 3), torch.randn(16, 3))


def test_r1_of_linear_d_is_half_squared_weight_norm(batch):
    # grad_x (w.x + b) = w for every sample, so R1 = 1/2 ||w||^2 (and gamma * R1 = gamma/2 ||w||^2).
    assert R1(weight=10.0)(batch).item() == pytest.approx(0.5 * 26.0, rel=1e-6)
    assert R2()(batch).item() == pytest.approx(0.5 * 26.0, rel=1e-6)


def test_wgan_gp_of_linear_d(batch):
    assert WGANGP()(batch).item() == pytest.approx((26.0 ** 0.5 - 1.0) ** 2, rel=1e-5)
    # One-sided: a D with ||w|| < 1 is not penalized.
    small = make_batch(linear_d(W / 10), batch.real.detach(), batch.fake.detach())
    assert WGANGP(one_sided=True)(small).item() == pytest.approx(0.0, abs=1e-7)
    assert WGANGP()(small).item() == pytest.approx((1 - 26.0 ** 0.5 / 10) ** 2, rel=1e-5)


def test_weight_norms_exclude_bias_by_default(batch):
    assert WeightL1()(batch).item() == pytest.approx(8.0)
    assert WeightL2()(batch).item() == pytest.approx(26.0)
    assert WeightL1(include_bias=True)(batch).item() == pytest.approx(8.3)
    assert WeightL2(include_bias=True)(batch).item() == pytest.approx(26.09)


class VectorD(nn.Module):
    """A linear D written with a vector weight: every parameter is 1-D."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0, -4.0, 1.0]))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w + self.b).unsqueeze(1)


@pytest.mark.parametrize("cls", [WeightL1, WeightL2])
def test_weight_norms_refuse_a_d_without_weight_matrices_in_one_line(cls):
    from lightning_regan import GANModule

    from helpers import TinyG

    with pytest.raises(ValueError, match=r"^" + cls.__name__ + r": the discriminator VectorD has no weight matrix .*"
                                         r"pass include_bias=True \(regularizer\.l[12]\.include_bias=true\)") as err:
        GANModule(TinyG(out_dim=3), VectorD(), regularizers=[cls()])
    assert "\n" not in str(err.value)
    GANModule(TinyG(out_dim=3), VectorD(), regularizers=[cls(weight=0.0)])  # switched off: nothing to check
    module = GANModule(TinyG(out_dim=3), VectorD(), regularizers=[cls(include_bias=True)])
    batch = make_batch(module.discriminator, torch.randn(4, 3), torch.randn(4, 3))
    expected = 8.3 if cls is WeightL1 else 26.09
    assert module.regularizers[cls.default_name](batch).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="no weight matrix"):  # the term itself, used without GANModule
        cls()(batch)


def test_gradient_penalty_is_differentiable_wrt_d_params(batch):
    # d/dw [1/2 ||w||^2] = w: the double backward reaches D's weights.
    R1()(batch).backward()
    assert torch.allclose(batch.discriminator.weight.grad.view(-1), W)
    assert batch.discriminator.bias.grad is None or batch.discriminator.bias.grad.abs().max() == 0


def test_lecam_by_hand():
    d = linear_d(W)
    reg = LeCam(decay=0.5)
    dr = torch.tensor([1.0, 3.0])  # mean 2
    df = torch.tensor([-1.0, 0.0])  # mean -0.5
    b = DiscriminatorBatch(d, torch.zeros(2, 3), torch.zeros(2, 3), dr, df)
    # First call: anchors = batch means (2, -0.5).
    v = reg(b).item()
    expected = ((1 + 0.5) ** 2 + (3 + 0.5) ** 2) / 2 + ((2 + 1) ** 2 + (2 - 0) ** 2) / 2
    assert v == pytest.approx(expected)
    # Second call with new means (0, 0): anchors move half way -> (1, -0.25).
    b2 = DiscriminatorBatch(d, b.real, b.fake, torch.zeros(2), torch.zeros(2))
    v2 = reg(b2).item()
    assert reg.anchor_real.item() == pytest.approx(1.0) and reg.anchor_fake.item() == pytest.approx(-0.25)
    assert v2 == pytest.approx(0.25 ** 2 + 1.0)
    # Anchors are buffers, saved in the state dict.
    assert {"anchor_real", "anchor_fake", "initialized"} <= set(reg.state_dict())


@pytest.mark.parametrize("cls", [WeightL1, WeightL2, R1, R2, WGANGP, LeCam])
def test_bad_weight_or_interval_rejected(cls):
    with pytest.raises(ValueError, match="weight"):
        cls(weight=-1.0)
    with pytest.raises(ValueError, match="every"):
        cls(every=0)


def test_lazy_schedule_and_zero_weight():
    r = R1(weight=2.0, every=4)
    assert [s for s in range(10) if r.is_due(s)] == [0, 4, 8]
    assert r.gain == 4
    assert not any(R1(weight=0.0).is_due(s) for s in range(5))


def test_spectral_norm_transform():
    d = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))
    assert not has_spectral_norm(d)
    spectral_norm(d)
    spectral_norm(d)  # idempotent
    assert has_spectral_norm(d)
    lin = d[2]
    for _ in range(30):  # power iteration converges in training mode
        lin(torch.randn(2, 144))
    sigma = torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()
    assert sigma == pytest.approx(1.0, rel=1e-2)
