import math

import pytest
import torch

from lightning_regan.losses import LOSSES, AdversarialLoss, get_loss

LOG2 = math.log(2.0)
ZERO = torch.zeros(4)
R = torch.tensor([2.0, -1.0])
F_ = torch.tensor([0.5, -3.0])


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize(
    "name, d_expected, g_expected",
    [
        ("minimax", (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2, -(sp(0.5) + sp(-3)) / 2),
        ("non_saturating", (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2, (sp(-0.5) + sp(3)) / 2),
        ("hinge", (0 + 2) / 2 + (1.5 + 0) / 2, -(0.5 - 3) / 2),
        ("wasserstein", (0.5 - 3) / 2 - (2 - 1) / 2, -(0.5 - 3) / 2),
        ("least_squares", 0.5 * ((1 + 4) / 2 + (0.25 + 9) / 2), 0.5 * (0.25 + 16) / 2),
    ],
)
def test_losses_match_hand_values(name, d_expected, g_expected):
    loss = get_loss(name)
    assert loss.d_loss(R, F_).item() == pytest.approx(d_expected, rel=1e-6)
    assert loss.g_loss(F_).item() == pytest.approx(g_expected, rel=1e-6)


def test_minimax_at_equilibrium_is_2log2():
    loss = get_loss("minimax")
    assert loss.d_loss(ZERO, ZERO).item() == pytest.approx(2 * LOG2)
    assert loss.g_loss(ZERO).item() == pytest.approx(-LOG2)


def test_minimax_saturates_where_non_saturating_does_not():
    # D confidently rejects fakes (logit -10): minimax G gradient vanishes, non-saturating does not.
    f = torch.full((8,), -10.0, requires_grad=True)
    get_loss("minimax").g_loss(f).backward()
    g_mm = f.grad.abs().max().item()
    f.grad = None
    get_loss("non_saturating").g_loss(f).backward()
    g_ns = f.grad.abs().max().item()
    assert g_mm < 1e-5 < g_ns


def test_get_loss_by_name_instance_and_errors():
    assert set(LOSSES) == {"minimax", "non_saturating", "hinge", "wasserstein", "least_squares"}
    inst = get_loss("non-saturating")
    assert isinstance(inst, AdversarialLoss) and get_loss(inst) is inst
    with pytest.raises(ValueError, match="Unknown adversarial loss 'foo'"):
        get_loss("foo")
    with pytest.raises(TypeError):
        get_loss(3)
