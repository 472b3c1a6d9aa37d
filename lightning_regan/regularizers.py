"""Discriminator regularizers: small modules that return an (unweighted) penalty tensor.

The discriminator loss is ``L_D = adversarial + sum_i weight_i * gain_i * R_i(D, real, fake)``.
A regularizer never calls ``backward``; :class:`~lightning_regan.GANModule` sums the terms and calls
``manual_backward`` once. A term with ``weight == 0`` is switched off (not computed at all).

Lazy regularization (Karras et al. 2020, StyleGAN2): with ``every=k`` a term is computed on every k-th
discriminator step only, and multiplied by the gain ``k`` so that its expected gradient is unchanged.
We do not rescale the optimizer's learning rate or betas as StyleGAN2 does (that adjustment is defined for a
single lazy term); set the D optimizer yourself if you want it.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm_param

from lightning_regan.validation import check_int, check_number


@dataclass
class DiscriminatorBatch:
    """What a regularizer may look at during one discriminator step.

    Attributes:
        discriminator: The discriminator being trained.
        real: Real samples as fed to D (``requires_grad`` is set when a due term needs input gradients).
        fake: Generated samples as fed to D, detached from G (same rule for ``requires_grad``).
        d_real: D's outputs on ``real``.
        d_fake: D's outputs on ``fake``.
        grad_scaler: The AMP ``GradScaler`` in use (16-mixed), or ``None``. Gradient penalties scale the
            outputs before ``autograd.grad`` and unscale the gradients, as in PyTorch's AMP recipe.
        real_labels: Class labels D was called with on ``real`` (class-conditional GANs), else ``None``.
        fake_labels: Class labels D was called with on ``fake`` (those G generated them for), else ``None``.
    """

    discriminator: nn.Module
    real: Tensor
    fake: Tensor
    d_real: Tensor
    d_fake: Tensor
    grad_scaler: Optional[torch.amp.GradScaler] = None
    real_labels: Optional[Tensor] = None
    fake_labels: Optional[Tensor] = None

    def discriminate(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """``discriminator(x)``, or ``discriminator(x, labels)`` when labels are given (conditional GANs)."""
        return self.discriminator(x) if labels is None else self.discriminator(x, labels)


class Regularizer(nn.Module):
    """Base class of discriminator regularizers.

    Args:
        weight: Multiplier of the penalty (``gamma`` for R1/R2, ``lambda`` for WGAN-GP/LeCam). ``0`` disables it.
        every: Lazy interval k: apply on every k-th D step with gain k. ``1`` applies it every step.
    """

    #: Whether the term needs gradients of D's output with respect to the real / fake input.
    needs_real_grad: bool = False
    needs_fake_grad: bool = False
    #: Whether the term differentiates through D twice (``create_graph=True``): under ``GANModule(compile=True)`` a D
    #: step with such a term due runs D eagerly (double backward does not go through compiled graphs).
    needs_double_backward: bool = False
    #: Name used in logs (``train/d_reg/<name>``).
    default_name: str = "reg"

    def __init__(self, weight: float = 1.0, every: int = 1) -> None:
        super().__init__()
        check_number(type(self).__name__, "weight (0 disables the term)", weight, 0.0)
        check_int(type(self).__name__, "every (1 = every D step)", every, 1)
        self.weight = float(weight)
        self.every = every

    @property
    def gain(self) -> int:
        """Multiplier compensating for lazy application."""
        return self.every

    def is_due(self, d_step: int) -> bool:
        """Whether the term is applied at the D step with 0-based index ``d_step``."""
        return self.weight > 0 and d_step % self.every == 0

    def forward(self, batch: DiscriminatorBatch) -> Tensor:  # pragma: no cover - abstract
        """Return the unweighted penalty as a scalar tensor."""
        raise NotImplementedError

    def check_discriminator(self, discriminator: nn.Module) -> None:
        """Raise ``ValueError`` (one line saying what to pass) when this term cannot apply to ``discriminator``;
        :class:`~lightning_regan.GANModule` calls it at construction. Nothing to check by default."""

    def extra_repr(self) -> str:
        return f"weight={self.weight}, every={self.every}"


def input_gradients(outputs: Tensor, inputs: Tensor, grad_scaler: Optional[torch.amp.GradScaler] = None) -> Tensor:
    """Gradient of ``outputs.sum()`` with respect to ``inputs``, kept in the graph (double backward).

    Uses out-of-place ``torch.autograd.grad`` (no ``.grad`` accumulation, safe under DDP). Under fp16 AMP the
    outputs are scaled before differentiation to avoid underflow and the gradients unscaled afterwards; if the
    scaled gradients overflow, they are recomputed without the scale.
    """
    total = outputs.float().sum()
    if grad_scaler is not None and grad_scaler.is_enabled():
        (scaled,) = torch.autograd.grad(grad_scaler.scale(total), inputs, create_graph=True)
        grads = scaled * (1.0 / grad_scaler.get_scale())
        if bool(torch.isfinite(grads).all()):
            return grads.float()
        # The loss scale overflowed fp16 inside D (GradScaler starts too high and lowers the scale only after
        # this step). Scaled, the penalty would read NaN and pass for divergence; the unscaled gradient is the
        # true value (a genuinely non-finite gradient stays non-finite). The graph is kept by create_graph.
    (grads,) = torch.autograd.grad(total, inputs, create_graph=True)
    return grads.float()


def _per_sample_sq_norm(grads: Tensor) -> Tensor:
    return grads.reshape(grads.shape[0], -1).square().sum(dim=1)


def _penalized_parameters(module: nn.Module, include_bias: bool) -> list[Tensor]:
    # Weight matrices and conv kernels have ndim >= 2; biases and norm gains/shifts are 1-D.
    return [p for p in module.parameters() if p.requires_grad and (include_bias or p.ndim >= 2)]


def _weight_parameters(owner: Regularizer, module: nn.Module, include_bias: bool) -> list[Tensor]:
    """The parameters a weight norm penalizes, or ``ValueError`` in one line when there are none."""
    params = _penalized_parameters(module, include_bias)
    if params:
        return params
    trainable = [p for p in module.parameters() if p.requires_grad]
    name = type(owner).__name__
    if trainable:  # all 1-D: a linear D written with a vector weight, or biases and norm gains only
        raise ValueError(
            f"{name}: the discriminator {type(module).__name__} has no weight matrix or convolution kernel (every "
            f"trainable parameter is 1-D), so there is nothing to penalize by default; pass include_bias=True "
            f"(regularizer.{owner.default_name}.include_bias=true) to penalize its 1-D parameters, or use another "
            "regularizer (r1, r2, wgan_gp, lecam).")
    raise ValueError(f"{name}: the discriminator {type(module).__name__} has no trainable parameters to penalize; "
                     "use a gradient penalty (r1, r2, wgan_gp) or lecam instead.")


class WeightL1(Regularizer):
    """L1 norm of D's weights, ``sum |w|`` (the seed's R(D) = ||w||_1).

    Only weight matrices and convolution kernels count by default (``ndim >= 2``); biases and normalization
    parameters do not, as with weight decay: they do not scale D's Lipschitz constant.

    Args:
        weight: Multiplier.
        every: Lazy interval.
        include_bias: Also penalize 1-D parameters (biases, norm gains).
    """

    default_name = "l1"

    def __init__(self, weight: float = 1e-4, every: int = 1, include_bias: bool = False) -> None:
        super().__init__(weight, every)
        self.include_bias = include_bias

    def check_discriminator(self, discriminator: nn.Module) -> None:
        _weight_parameters(self, discriminator, self.include_bias)

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        params = _weight_parameters(self, batch.discriminator, self.include_bias)
        return torch.stack([p.abs().sum() for p in params]).sum()


class WeightL2(Regularizer):
    """Squared L2 norm of D's weights, ``sum w^2`` (the seed's R(D) = ||w||_2^2; weight decay as a loss term).

    Parameter selection as in :class:`WeightL1`.
    """

    default_name = "l2"

    def __init__(self, weight: float = 1e-4, every: int = 1, include_bias: bool = False) -> None:
        super().__init__(weight, every)
        self.include_bias = include_bias

    def check_discriminator(self, discriminator: nn.Module) -> None:
        _weight_parameters(self, discriminator, self.include_bias)

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        params = _weight_parameters(self, batch.discriminator, self.include_bias)
        return torch.stack([p.square().sum() for p in params]).sum()


class R1(Regularizer):
    """Zero-centred gradient penalty on real data (Mescheder et al. 2018).

    Returns ``0.5 * E_real ||grad_x D(x)||^2``, so with ``weight = gamma`` the term is StyleGAN2's
    ``gamma / 2 * E ||grad||^2``.
    """

    needs_real_grad = True
    needs_double_backward = True
    default_name = "r1"

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        grads = input_gradients(batch.d_real, batch.real, batch.grad_scaler)
        return 0.5 * _per_sample_sq_norm(grads).mean()


class R2(Regularizer):
    """Zero-centred gradient penalty on generated data: ``0.5 * E_fake ||grad_x D(x)||^2``."""

    needs_fake_grad = True
    needs_double_backward = True
    default_name = "r2"

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        grads = input_gradients(batch.d_fake, batch.fake, batch.grad_scaler)
        return 0.5 * _per_sample_sq_norm(grads).mean()


class WGANGP(Regularizer):
    """WGAN-GP gradient penalty (Gulrajani et al. 2017): ``E ||grad D(x_hat)|| - center)^2``.

    ``x_hat`` interpolates uniformly between paired real and fake samples. Runs its own D forward pass; in a
    class-conditional GAN D judges ``x_hat`` with the real sample's label (as StudioGAN does).

    Args:
        weight: ``lambda`` (10 in the paper).
        every: Lazy interval.
        center: Target gradient norm (1 in the paper).
        one_sided: Penalize only norms above ``center`` (TF-GAN's one-sided variant).
    """

    needs_double_backward = True
    default_name = "wgan_gp"

    def __init__(self, weight: float = 10.0, every: int = 1, center: float = 1.0, one_sided: bool = False) -> None:
        super().__init__(weight, every)
        self.center = check_number("WGANGP", "center", center, 0.0)
        self.one_sided = one_sided

    def interpolation_weights(self, real: Tensor) -> Tensor:
        """Uniform coefficients, one per sample, shaped to broadcast over ``real``.

        Override to control them (the DDP tests give each rank its slice of a global draw).
        """
        return torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        real, fake = batch.real.detach(), batch.fake.detach()
        n = min(real.shape[0], fake.shape[0])
        real, fake = real[:n], fake[:n]
        eps = self.interpolation_weights(real)
        x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
        labels = batch.real_labels[:n] if batch.real_labels is not None else None
        grads = input_gradients(batch.discriminate(x_hat, labels), x_hat, batch.grad_scaler)
        gap = _per_sample_sq_norm(grads).add(1e-12).sqrt() - self.center
        if self.one_sided:
            gap = F.relu(gap)
        return gap.square().mean()


class LeCam(Regularizer):
    """LeCam regularizer (Tseng et al. 2021), as in the authors' code.

    ``R = E relu(D(x) - alpha_fake)^2 + E relu(alpha_real - D(G(z)))^2`` where ``alpha_real`` / ``alpha_fake``
    are exponential moving averages of D's mean output on real / fake samples. The anchors are buffers (saved
    in checkpoints) and, under ``torch.distributed``, averaged over ranks before each update so that every
    replica holds the same anchors.

    Args:
        weight: ``lambda`` (the paper uses 0.1-0.5 with hinge loss).
        every: Lazy interval.
        decay: EMA decay of the anchors.
    """

    default_name = "lecam"

    def __init__(self, weight: float = 0.3, every: int = 1, decay: float = 0.99) -> None:
        super().__init__(weight, every)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam: decay must be in [0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.register_buffer("anchor_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("anchor_fake", torch.zeros((), dtype=torch.float32))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _update_anchors(self, d_real: Tensor, d_fake: Tensor) -> None:
        means = torch.stack([d_real.detach().float().mean(), d_fake.detach().float().mean()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(means)
            means /= dist.get_world_size()
        if not bool(self.initialized):
            self.anchor_real.copy_(means[0])
            self.anchor_fake.copy_(means[1])
            self.initialized.fill_(True)
        else:
            self.anchor_real.lerp_(means[0], 1.0 - self.decay)
            self.anchor_fake.lerp_(means[1], 1.0 - self.decay)

    def forward(self, batch: DiscriminatorBatch) -> Tensor:
        if self.training:
            self._update_anchors(batch.d_real, batch.d_fake)
        d_real, d_fake = batch.d_real.float(), batch.d_fake.float()
        return F.relu(d_real - self.anchor_fake).square().mean() + F.relu(self.anchor_real - d_fake).square().mean()


# nn.Embedding: the class embedding of a projection discriminator is normalized too (Miyato & Koyama 2018).
_SN_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def spectral_norm(module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> nn.Module:
    """Apply spectral normalization (Miyato et al. 2018) to every linear and conv layer of ``module``, in place.

    Uses ``torch.nn.utils.parametrizations.spectral_norm``; layers that already carry a parametrization of
    their weight are left alone, so applying it twice is harmless.

    Returns:
        The same module, for chaining (``D = spectral_norm(MyD())``).
    """
    check_int("spectral_norm", "n_power_iterations", n_power_iterations, 1)
    for layer in module.modules():
        if isinstance(layer, _SN_LAYERS) and not parametrize.is_parametrized(layer, "weight"):
            _spectral_norm_param(layer, n_power_iterations=n_power_iterations, eps=eps)
    return module


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether any layer of ``module`` has a parametrized (e.g. spectrally normalized) weight."""
    return any(parametrize.is_parametrized(m, "weight") for m in module.modules() if isinstance(m, _SN_LAYERS))


def regularizer_dict(regularizers: Union[None, Mapping[str, Regularizer], Sequence[Regularizer]]) -> nn.ModuleDict:
    """Regularizers as a ``{name: regularizer}`` ModuleDict: a mapping keeps its names, a list takes each one's
    ``default_name`` (clear errors for a non-regularizer or a repeated name)."""
    if regularizers is None:
        return nn.ModuleDict()
    if isinstance(regularizers, Mapping):
        items = list(regularizers.items())
    else:
        items = [(getattr(r, "default_name", type(r).__name__.lower()), r) for r in regularizers]
    out = nn.ModuleDict()
    for name, reg in items:
        if not isinstance(reg, Regularizer):
            raise TypeError(
                f"regularizer {name!r} must be a lightning_regan.regularizers.Regularizer, got {type(reg).__name__}."
            )
        if name in out:
            raise ValueError(f"Two regularizers are named {name!r}; pass a dict to give them distinct names.")
        out[name] = reg
    return out


__all__ = [
    "DiscriminatorBatch",
    "LeCam",
    "R1",
    "R2",
    "Regularizer",
    "WGANGP",
    "WeightL1",
    "WeightL2",
    "has_spectral_norm",
    "input_gradients",
    "regularizer_dict",
    "spectral_norm",
]
