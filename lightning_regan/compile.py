"""Compiled generator and discriminator forwards for :class:`~lightning_regan.GANModule` (``compile=True``).

``torch.compile`` fuses the many small ops of a GAN step, but double backward (R1, R2, WGAN-GP) does not go through
a compiled graph (pytorch/pytorch#91469). So the adversarial forwards run through compiled callables while every
term that needs double backward runs through the eager networks, which share the same parameters:

* the G step (G forward, D forward on the fakes) is always compiled;
* a D step runs D compiled unless a due regularizer declares ``needs_double_backward`` (R1, R2, WGAN-GP); then that
  D step's forwards run eagerly. With lazy R1 (``every=16``), 15 of 16 D steps stay compiled.

The compiled callables are kept outside the module tree (a plain object, not a submodule), so checkpoints hold
the same state-dict keys with and without compile (no ``_orig_mod.``) and a compiled run resumes uncompiled and
the other way round. A compilation error falls back to the eager networks with one warning naming the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # torch is imported on first use: the CLI checks the config value without importing torch
    from torch import nn

__all__ = ["COMPILE_OPTIONS", "CompiledNetworks", "compile_options"]

#: Keyword arguments of ``torch.compile`` that ``GANModule(compile={...})`` passes through.
COMPILE_OPTIONS = ("backend", "mode", "fullgraph", "dynamic", "options")


def compile_options(value: Union[None, bool, Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """``GANModule``'s ``compile`` argument as ``torch.compile`` keyword arguments, or ``None`` (eager).

    ``False``/``None``: eager; ``True``: ``torch.compile`` defaults; a mapping: those ``torch.compile`` arguments
    (keys among :data:`COMPILE_OPTIONS`, e.g. ``{"mode": "max-autotune"}``). Anything else raises ``ValueError``.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - set(COMPILE_OPTIONS))
        if unknown:
            raise ValueError(
                f"GANModule: compile accepts true, false or a mapping of torch.compile arguments "
                f"{list(COMPILE_OPTIONS)}; unknown key(s) {unknown}."
            )
        return {str(k): v for k, v in value.items()}
    raise ValueError(
        f"GANModule: compile must be true, false or a mapping of torch.compile arguments, got {value!r}."
    )


class CompiledNetworks:
    """Compiled callables of a generator and a discriminator, created on first use, with a fallback to eager.

    Not an ``nn.Module``: assigned to a module attribute, it registers nothing, so state dicts are unchanged.

    Args:
        generator: The eager generator (the registered submodule; parameters are shared, not copied).
        discriminator: The eager discriminator.
        options: ``torch.compile`` keyword arguments (see :func:`compile_options`).
    """

    def __init__(self, generator: "nn.Module", discriminator: "nn.Module", options: Mapping[str, Any]) -> None:
        self.eager: dict[str, "nn.Module"] = {"generator": generator, "discriminator": discriminator}
        self.options = dict(options)
        #: Why compilation was abandoned (``None`` while compiled callables are in use).
        self.failure: Optional[str] = None
        self._compiled: dict[str, Any] = {}

    @property
    def generator(self) -> "_Forward":
        """Callable like the generator, compiled."""
        return _Forward(self, "generator")

    @property
    def discriminator(self) -> "_Forward":
        """Callable like the discriminator, compiled."""
        return _Forward(self, "discriminator")

    def call(self, name: str, *args: Any) -> Any:
        """Run network ``name`` compiled; on a compilation error, eagerly from now on (one warning)."""
        module = self.eager[name]
        if self.failure is not None:
            return module(*args)
        try:
            fn = self._compiled.get(name)
            if fn is None:
                import torch

                fn = self._compiled[name] = torch.compile(module, **self.options)
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler error; the eager call re-raises a network's own
            out = module(*args)  # a genuine error of the network (bad shapes...) is raised here, with no warning
            self._fall_back(exc)
            return out

    def _fall_back(self, exc: BaseException) -> None:
        reason = _first_line(exc)
        root = getattr(exc, "inner_exception", None) or exc.__cause__  # Dynamo wraps a backend's own error
        if root is not None and root is not exc:
            reason = f"{reason.rstrip(':')}: {_first_line(root)}"
        self.failure = reason
        self._compiled.clear()
        warnings.warn(
            f"GANModule(compile=...): torch.compile failed ({reason}); training continues with the eager "
            "generator and discriminator.",
            RuntimeWarning,
            stacklevel=3,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Compiled callables do not pickle or deep-copy; a copy compiles again on first use.
        state = self.__dict__.copy()
        state["_compiled"] = {}
        return state


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"


class _Forward:
    """``network(*args)`` through :meth:`CompiledNetworks.call` (what ``GANModule.run_generator`` is given)."""

    __slots__ = ("networks", "name")

    def __init__(self, networks: CompiledNetworks, name: str) -> None:
        self.networks, self.name = networks, name

    def __call__(self, *args: Any) -> Any:
        return self.networks.call(self.name, *args)
