"""GANModule: the two-optimizer GAN step with a regularized discriminator loss (manual optimization)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_regan.compile import CompiledNetworks, compile_options
from lightning_regan.distributed import all_reduce_gradients, broadcast_buffers, ddp_model, optimizer_parameters
from lightning_regan.freeze import freeze_d_blocks, keep_frozen
from lightning_regan.inputs import batch_labels, batch_samples, check_labels, label_distribution
from lightning_regan.inputs import class_inputs, seeded_inputs, seeded_noise  # public here too (their first home)
from lightning_regan.losses import AdversarialLoss, get_loss
from lightning_regan.regularizers import DiscriminatorBatch, Regularizer, regularizer_dict
from lightning_regan.steps import max_steps_for  # noqa: F401  (public here too: its first home)
from lightning_regan.validation import check_int, check_number

OptimizerFactory = Callable[..., Optimizer]
CHECKPOINT_KEY = "regan"
CHECKPOINT_VERSION = 1


def _default_optimizer() -> OptimizerFactory:
    return functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


class GANModule(L.LightningModule):
    """A GAN trained with manual optimization and a regularized discriminator loss.

    ``L_D = loss.d_loss(D(x), D(G(z))) + sum_i weight_i * gain_i * R_i(D, x, G(z))`` and
    ``L_G = loss.g_loss(D(G(z)))``. Each training batch takes one D step; every ``n_critic`` D steps one
    G step follows. Works with any generator ``G(z)`` and discriminator ``D(x)`` modules and any loader that
    yields images, ``(images, labels)`` or ``{"image": images}``.

    Class-conditional (``num_classes`` set): the loader must yield labels (``(images, labels)`` or
    ``{"image": ..., "label": ...}``); the networks are called ``G(z, y)`` and ``D(x, y)``, real samples with their
    own labels and fakes with the labels they were generated for, drawn by :meth:`sample_labels`.

    Args:
        generator: Maps latent vectors ``(N, latent_dim)`` to samples.
        discriminator: Maps samples to logits (any shape with leading ``N``; losses average all elements).
        g_optimizer: Factory ``f(params) -> Optimizer`` (e.g. ``functools.partial(Adam, lr=2e-4)`` or a Hydra
            ``_partial_: true`` config). Defaults to Adam(lr=2e-4, betas=(0.5, 0.999)).
        d_optimizer: Same for D.
        loss: Adversarial loss name (``minimax``, ``non_saturating``, ``hinge``, ``wasserstein``,
            ``least_squares``) or an :class:`~lightning_regan.losses.AdversarialLoss`.
        regularizers: Discriminator regularizers, a list or a ``{name: regularizer}`` mapping.
        n_critic: D steps per G step.
        latent_dim: Size of ``z``; read from ``generator.latent_dim`` when omitted.
        ema_decay: Keep an exponential moving average of G (``torch.optim.swa_utils``) with this decay; used
            for sampling and evaluation. ``None`` disables it.
        ema_start_g_step: G step at which the average starts (before that, the raw G is used).
        gradient_clip_val: Clip both networks' gradients (manual optimization ignores the Trainer's option).
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        num_fixed_samples: Size of the fixed latent batch used for sample grids.
        seed: Seed of the fixed latent batch.
        num_classes: Number of classes for a class-conditional GAN (``None``: unconditional).
        label_probs: Class frequencies that :meth:`sample_labels` draws fake labels from (e.g. the data's label
            frequencies); ``None`` draws uniformly. Needs ``num_classes`` entries, non-negative, not all zero.
        compile: ``torch.compile`` the G and D forwards of the adversarial terms (``True``, or a mapping of
            ``torch.compile`` arguments such as ``{"mode": "max-autotune"}``); terms needing double backward run
            through the eager networks (:mod:`lightning_regan.compile`, ``docs/compile.md``). Pays on GPUs only.
        augment: Differentiable augmentation of every image D sees, real and fake, in the D and the G step
            (:mod:`lightning_regan.augment`); its ``observe(real_logits)``, if any, runs after each D step.
        freeze_d_layers: FreezeD (Mo et al. 2020, for fine-tuning): freeze D's first ``k`` blocks, as listed by its
            ``freezable_blocks()`` method (:mod:`lightning_regan.freeze`): no gradients, not in D's optimizer, eval
            mode throughout. 0 freezes nothing.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        g_optimizer: Optional[OptimizerFactory] = None,
        d_optimizer: Optional[OptimizerFactory] = None,
        loss: Union[str, AdversarialLoss] = "non_saturating",
        regularizers: Union[None, Mapping[str, Regularizer], Sequence[Regularizer]] = None,
        n_critic: int = 1,
        latent_dim: Optional[int] = None,
        ema_decay: Optional[float] = None,
        ema_start_g_step: int = 0,
        gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: str = "norm",
        num_fixed_samples: int = 64,
        seed: int = 0,
        num_classes: Optional[int] = None,
        label_probs: Optional[Sequence[float]] = None,
        compile: Union[bool, Mapping[str, Any]] = False,
        augment: Optional[nn.Module] = None,
        freeze_d_layers: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(generator, nn.Module) or not isinstance(discriminator, nn.Module):
            raise TypeError("GANModule: generator and discriminator must be torch.nn.Module instances.")
        check_int("GANModule", "n_critic (D steps per G step)", n_critic, 1)
        check_number("GANModule", "ema_decay", ema_decay, 0.0, strict=True, optional=True, maximum=1.0)
        check_int("GANModule", "ema_start_g_step", ema_start_g_step, 0)
        check_number("GANModule", "gradient_clip_val", gradient_clip_val, 0.0, strict=True, optional=True)
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(f"GANModule: gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}.")
        check_int("GANModule", "num_fixed_samples", num_fixed_samples, 1)
        check_int("GANModule", "num_classes (None: unconditional)", num_classes, 2, optional=True)
        latent_dim = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
        check_int("GANModule", "latent_dim (pass latent_dim=... or give the generator a `latent_dim` attribute)",
                  latent_dim, 1)
        options = compile_options(compile)
        #: D's frozen blocks (``freeze_d_layers``), a plain list: the modules stay where D holds them.
        self.frozen_d_blocks: list[nn.Module] = freeze_d_blocks(discriminator, freeze_d_layers)
        self.freeze_d_layers = freeze_d_layers
        self.save_hyperparameters(ignore=["generator", "discriminator", "g_optimizer", "d_optimizer", "loss", "regularizers", "augment"])
        self.automatic_optimization = False

        self.generator = generator
        self.discriminator = discriminator
        self.loss = get_loss(loss)
        self.regularizers = regularizer_dict(regularizers)
        for reg in self.regularizers.values():  # a term that cannot apply says so now, not at the first D step
            if reg.weight > 0 and callable(getattr(reg, "check_discriminator", None)):
                reg.check_discriminator(discriminator)
        self.augment = augment
        self.g_optimizer_factory = g_optimizer or _default_optimizer()
        self.d_optimizer_factory = d_optimizer or _default_optimizer()
        self.n_critic = n_critic
        self.latent_dim = latent_dim
        self.ema_decay = ema_decay
        self.ema_start_g_step = ema_start_g_step
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.ema_generator: Optional[AveragedModel] = None
        if ema_decay is not None:
            self.ema_generator = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema_generator.requires_grad_(False)
        self.num_classes = num_classes
        #: Class frequencies of :meth:`sample_labels` (``None``: uniform). Not a buffer: part of the config.
        self.label_probs = label_distribution(label_probs, num_classes)
        self.num_fixed_samples = num_fixed_samples
        self.fixed_noise_seed = seed
        self._fixed_noise: Optional[Tensor] = None
        self.g_steps = 0
        self.d_steps = 0
        #: Plain-python copy of the config this module was built from (set by ``train``); saved in checkpoints.
        self.run_config: Optional[dict[str, Any]] = None
        #: Where the weights were started from (:meth:`load_pretrained`; ``summary.json`` "init_from"), else ``None``.
        self.initialized_from: Optional[dict[str, Any]] = None
        #: Detached metrics of the last training step (keys without the ``train/`` prefix).
        self.last_step_metrics: dict[str, Tensor] = {}
        #: Whether the last training batch took a G step: the one place that turns batches into G-step events
        #: (``lightning_regan.callbacks.GStepCallback``).
        self.g_step_taken = False
        self._labels_range_checked = False
        #: Compiled G and D forwards (``compile``), held outside the module tree: state-dict keys do not change.
        self.compiled_networks = None if options is None else CompiledNetworks(generator, discriminator, options)

    # ------------------------------------------------------------------ sampling
    @property
    def eval_generator(self) -> nn.Module:
        """The generator used for samples and evaluation: the EMA copy once it has started, else G."""
        if self.ema_generator is not None and int(self.ema_generator.n_averaged) > 0:
            return self.ema_generator.module
        return self.generator

    @property
    def fixed_noise(self) -> Tensor:
        """``num_fixed_samples`` latent vectors of :meth:`sample_noise` drawn under ``seed`` (sample grids)."""
        if self._fixed_noise is None or self._fixed_noise.device != self.device:
            self._fixed_noise = seeded_noise(self, self.num_fixed_samples, self.fixed_noise_seed)
        return self._fixed_noise

    @property
    def conditional(self) -> bool:
        """Whether G and D take class labels (``num_classes`` is set)."""
        return self.num_classes is not None

    def sample_noise(self, n: int) -> Tensor:
        """Draw ``n`` latent vectors on the module's device. Override for other priors."""
        return torch.randn(n, self.latent_dim, device=self.device)

    def sample_labels(self, n: int) -> Tensor:
        """Draw ``n`` class labels for generated samples (uniform, or ``label_probs``). Override for others.

        The one source of fake labels: training, FID, sample grids, ``regan-eval`` and ``regan-sample`` use it.
        """
        if self.num_classes is None:
            raise RuntimeError("sample_labels: this GANModule is unconditional (num_classes=None).")
        if self.label_probs is None:
            return torch.randint(self.num_classes, (n,), device=self.device)
        return torch.multinomial(self.label_probs.to(self.device), n, replacement=True)

    def check_labels(self, labels: Optional[Tensor], n: int) -> Optional[Tensor]:
        """``labels`` as a long tensor on the module's device for a conditional module (clear errors otherwise);
        ``None`` for an unconditional one."""
        return check_labels(labels, n, self.num_classes, self.device)

    def run_generator(self, generator: nn.Module, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """``generator(z)``, or ``generator(z, labels)`` when labels are given."""
        return generator(z) if labels is None else generator(z, labels)

    def run_discriminator(self, x: Tensor, labels: Optional[Tensor] = None, discriminator: Optional[Callable[..., Tensor]] = None) -> Tensor:
        """``discriminator(x)``, or ``discriminator(x, labels)`` when labels are given (default: ``self.discriminator``)."""
        d = self.discriminator if discriminator is None else discriminator
        return d(x) if labels is None else d(x, labels)

    def training_networks(self, due: Sequence[tuple[str, Regularizer]] = ()) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
        """G and D for the adversarial forwards: the compiled ones under ``compile``, except that D runs eagerly while a
        due term declares ``needs_double_backward`` (double backward does not go through compiled graphs)."""
        if self.compiled_networks is None:
            return self.generator, self.discriminator
        eager_d = any(getattr(reg, "needs_double_backward", False) for _, reg in due)
        return self.compiled_networks.generator, self.discriminator if eager_d else self.compiled_networks.discriminator

    @torch.no_grad()
    def generate(self, n: Optional[int] = None, z: Optional[Tensor] = None, y: Optional[Tensor] = None) -> Tensor:
        """Samples from :attr:`eval_generator` in eval mode (train mode is restored afterwards).

        Args:
            n: Number of samples from fresh noise (and fresh :meth:`sample_labels` when conditional and ``y`` is
                not given); ignored when ``z`` is given.
            z: Latent vectors to decode.
            y: Class labels of the samples (conditional modules; required with ``z``).
        """
        if z is None:
            if n is None:
                raise ValueError("generate: pass n or z.")
            z = self.sample_noise(n)
            if self.conditional and y is None:
                y = self.sample_labels(n)
        labels = self.check_labels(y, z.shape[0])
        g = self.eval_generator
        was_training = g.training
        g.eval()
        try:
            return self.run_generator(g, z.to(self.device), labels)
        finally:
            g.train(was_training)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Decode ``z`` (with labels ``y`` when conditional) with the training generator."""
        return self.run_generator(self.generator, z, self.check_labels(y, z.shape[0]))

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> list[Optimizer]:
        """G's optimizer first, then D's (``g_opt, d_opt = self.optimizers()``); D's leaves out its frozen blocks."""
        frozen = {id(p) for block in self.frozen_d_blocks for p in block.parameters()}
        return [
            self.g_optimizer_factory(self.generator.parameters()),
            self.d_optimizer_factory([p for p in self.discriminator.parameters() if id(p) not in frozen]),
        ]

    def train(self, mode: bool = True) -> "GANModule":
        """``nn.Module.train``, with D's frozen blocks (``freeze_d_layers``) kept frozen and in eval mode."""
        super().train(mode)
        if getattr(self, "frozen_d_blocks", None):
            keep_frozen(self.frozen_d_blocks)
        return self

    #: The samples and the labels of a batch (override for other batch layouts).
    real_samples = staticmethod(batch_samples)
    real_labels = staticmethod(batch_labels)

    def _attached_trainer(self) -> Optional[L.Trainer]:
        """The Trainer running this module, or ``None`` outside ``fit`` (public API: ``trainer`` raises then)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def _grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        trainer = self._attached_trainer()
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return getattr(plugin, "scaler", None)

    def _clip(self, optimizer: Any) -> None:
        if self.gradient_clip_val is None:
            return
        clip_val = self.gradient_clip_val
        scaler = self._grad_scaler()
        if scaler is not None and scaler.is_enabled():
            # Under 16-mixed the gradients are still multiplied by the loss scale S here (Lightning unscales them
            # inside opt.step()); clipping S*g at S*c is clipping g at c, by norm and by value alike.
            clip_val = clip_val * scaler.get_scale()
        self.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=self.gradient_clip_algorithm)

    def backward_and_reduce(self, loss: Tensor, optimizer: Any) -> None:
        """``manual_backward(loss)``; under DDP inside ``no_sync()`` (DDP's reducer stays idle), then one
        all-reduce (mean) of ``optimizer``'s gradients, before clipping and ``optimizer.step()``
        (:mod:`lightning_regan.distributed`). Subclasses that override a step call this instead of ``manual_backward``.
        """
        ddp = ddp_model(self.trainer.strategy)
        if ddp is None:
            self.manual_backward(loss)
            return
        with ddp.no_sync():
            self.manual_backward(loss)
        all_reduce_gradients(optimizer_parameters(optimizer), ddp.process_group)

    def _broadcast_network_buffers(self) -> None:
        """Under DDP with ``broadcast_buffers`` (its default), rank 0's buffers of G and D, as DDP's forward would."""
        ddp = ddp_model(self.trainer.strategy)
        if ddp is not None and ddp.broadcast_buffers:
            broadcast_buffers([self.generator, self.discriminator], ddp.process_group)

    def discriminator_step(self, real: Tensor, d_opt: Any, labels: Optional[Tensor] = None) -> dict[str, Tensor]:
        """One D update: adversarial loss plus the regularizers due at this D step.

        ``labels``: the real samples' classes (conditional modules); fakes get :meth:`sample_labels`.
        """
        due = [(name, reg) for name, reg in self.regularizers.items() if reg.is_due(self.d_steps)]
        z = self.sample_noise(real.shape[0])
        fake_labels = self.sample_labels(real.shape[0]) if labels is not None else None
        G, D = self.training_networks(due)
        with torch.no_grad():
            fake = self.run_generator(G, z, fake_labels)
            if self.augment is not None:  # penalties are then taken at D's inputs, the augmented images
                real, fake = self.augment(real), self.augment(fake)
        real_in = real.detach().requires_grad_(any(r.needs_real_grad for _, r in due))
        fake_in = fake.detach().requires_grad_(any(r.needs_fake_grad for _, r in due))
        metrics: dict[str, Tensor] = {}
        with self.toggled_optimizer(d_opt):
            d_real = self.run_discriminator(real_in, labels, D).float()
            d_fake = self.run_discriminator(fake_in, fake_labels, D).float()
            d_adv = self.loss.d_loss(d_real, d_fake)
            d_loss = d_adv
            batch = DiscriminatorBatch(
                self.discriminator, real_in, fake_in, d_real, d_fake, self._grad_scaler(),
                real_labels=labels, fake_labels=fake_labels,
            )
            for name, reg in due:
                value = reg(batch)
                d_loss = d_loss + (reg.weight * reg.gain) * value
                metrics[f"d_reg/{name}"] = value.detach()
            d_opt.zero_grad(set_to_none=True)
            self.backward_and_reduce(d_loss, d_opt)
            self._clip(d_opt)
            d_opt.step()
        self.d_steps += 1
        metrics.update(d_loss=d_loss.detach(), d_adv=d_adv.detach(), d_real=d_real.detach().mean(), d_fake=d_fake.detach().mean())
        metrics["rt"] = torch.sign(d_real.detach()).mean()  # ADA's overfitting heuristic E[sign(D(real))]
        if getattr(self.augment, "observe", None) is not None:
            metrics.update(self.augment.observe(d_real.detach()))
        return metrics

    def generator_step(self, batch_size: int, g_opt: Any) -> dict[str, Tensor]:
        """One G update; D's parameters are frozen by toggling so no D gradient is computed."""
        G, D = self.training_networks()
        with self.toggled_optimizer(g_opt):
            z = self.sample_noise(batch_size)
            labels = self.sample_labels(batch_size) if self.conditional else None
            fake = self.run_generator(G, z, labels)
            if self.augment is not None:
                fake = self.augment(fake)
            g_loss = self.loss.g_loss(self.run_discriminator(fake, labels, D).float())
            g_opt.zero_grad(set_to_none=True)
            self.backward_and_reduce(g_loss, g_opt)
            self._clip(g_opt)
            g_opt.step()
        self.g_steps += 1
        if self.ema_generator is not None and self.g_steps > self.ema_start_g_step:
            self.ema_generator.update_parameters(self.generator)
        return {"g_loss": g_loss.detach()}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One D step, then one G step every ``n_critic`` D steps. Logs ``train/*`` metrics."""
        real = self.real_samples(batch)
        self._broadcast_network_buffers()
        g_opt, d_opt = self.optimizers()
        if self.conditional:
            labels = self.check_labels(self.real_labels(batch), real.shape[0])
            # The range check reads two numbers back to the host: free on a CPU, a pipeline stall per step on an
            # accelerator, so there it runs on the first batch only (later bad labels fail in the label embedding).
            if labels.device.type == "cpu" or not self._labels_range_checked:
                low, high = (int(v) for v in torch.aminmax(labels))
                if low < 0 or high >= self.num_classes:
                    raise ValueError(f"GANModule: batch labels must lie in [0, {self.num_classes}), got {low}..{high}.")
                self._labels_range_checked = True
            metrics = self.discriminator_step(real, d_opt, labels)
        else:  # the unconditional call, unchanged for subclasses that override discriminator_step(real, d_opt)
            metrics = self.discriminator_step(real, d_opt)
        g_step_taken = self.d_steps % self.n_critic == 0
        if g_step_taken:
            metrics.update(self.generator_step(real.shape[0], g_opt))
        metrics["g_step"] = torch.tensor(float(self.g_steps))
        self.g_step_taken = g_step_taken
        self.last_step_metrics = metrics
        self._publish_train_metrics(metrics)
        # Returning nothing: a returned tensor would be passed through DDP's output hooks.
        return None

    def _publish_train_metrics(self, metrics: Mapping[str, Tensor]) -> None:
        """``train/*`` into ``trainer.callback_metrics`` now (the stop rules read them every step) and to the loggers
        every ``log_every_n_steps`` batches (= D steps), as ``self.log(on_step=True)`` would, without its ~1 ms per
        key on a CPU (``docs/studies/benchmarks.md``)."""
        trainer = self._attached_trainer()
        if trainer is None:
            return
        values = {f"train/{k}": v for k, v in metrics.items()}
        trainer.callback_metrics.update(values)
        every = trainer.log_every_n_steps
        if trainer.loggers and (trainer.fast_dev_run or (every > 0 and self.d_steps % every == 0)):
            row = {k: float(v) for k, v in values.items()}
            row["epoch"] = trainer.current_epoch
            for logger in trainer.loggers:
                logger.log_metrics(row, step=self.d_steps - 1)

    def configure_callbacks(self) -> list[L.Callback]:
        """The random-stream plumbing every GAN fit needs (per-rank seeding, RNG states in checkpoints)."""
        from lightning_regan.callbacks.random_streams import RandomStreams

        return [RandomStreams()]

    # ------------------------------------------------------------------ checkpoints
    def load_pretrained(self, source: Any, parts: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Start from trained weights before ``fit`` (fine-tuning): G, D and/or the EMA of G from a regan-train
        checkpoint or a plain state-dict file (:mod:`lightning_regan.pretrained`); optimizers, counters and callback
        state stay fresh. The networks must match tensor for tensor (one-line
        :class:`~lightning_regan.errors.PretrainedWeightsError` naming the first that does not, nothing loaded).

        Args:
            source: A file path, a loaded state-dict mapping, or :class:`~lightning_regan.pretrained.PretrainedWeights`.
            parts: Which of ``"generator"``, ``"discriminator"``, ``"ema"`` to load; ``None``: all that both have.

        Returns:
            What was loaded (also kept in :attr:`initialized_from` and in this module's checkpoints).
        """
        from lightning_regan.pretrained import load_pretrained

        return load_pretrained(self, source, parts)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # RandomStreams (a callback, called before this hook) adds the ranks' random states to the same section.
        checkpoint.setdefault(CHECKPOINT_KEY, {}).update(
            version=CHECKPOINT_VERSION, g_steps=self.g_steps, d_steps=self.d_steps, config=self.run_config,
            init_from=self.initialized_from,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                "This checkpoint was not written by lightning_regan.GANModule (no 'regan' section); "
                "load it with the module class that wrote it."
            )
        # Checkpoints of earlier versions hold the fixed noise as a buffer; it is drawn from sample_noise now.
        checkpoint.get("state_dict", {}).pop("fixed_noise", None)
        self.g_steps = int(state["g_steps"])
        self.d_steps = int(state["d_steps"])
        self.run_config = state.get("config")
        self.initialized_from = state.get("init_from")  # a resumed fine-tune keeps saying where it started from


__all__ = ["GANModule", "class_inputs", "max_steps_for", "seeded_inputs", "seeded_noise"]
