"""Starting a run from trained weights (fine-tuning, ``regan-train init_from=...``).

Two kinds of file are read, both with ``torch.load(weights_only=True)`` (tensors and plain containers only; a file
holding other objects, or a raw pickle, is refused without being unpickled):

- a ``regan-train`` checkpoint (``<run>/checkpoints/best.ckpt``, ``last.ckpt``, ...): its G, D and EMA-of-G weights;
- a plain ``state_dict`` file for networks of one's own, in one of two layouts::

      torch.save({"generator": G.state_dict(), "discriminator": D.state_dict()}, "weights.pt")  # "ema" optional
      torch.save(gan_module.state_dict(), "weights.pt")  # keys "generator.*", "discriminator.*", "ema_generator.module.*"

Only weights are taken: optimizers, G-step counter, budget and every callback's state start fresh (that is what
makes it a fine-tune and not a resume; ``ckpt_path`` resumes). The networks must match tensor for tensor: the first
missing, extra or differently shaped tensor is named in one line before anything is loaded.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from lightning_regan.errors import PretrainedWeightsError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's torch-free checks read PARTS
    from torch import Tensor, nn

#: The parts of a GAN that can be started from trained weights: G, D, and the EMA copy of G.
PARTS = ("generator", "discriminator", "ema")
#: Key prefixes of each part in a GANModule's ``state_dict`` (and so in a regan-train checkpoint).
PREFIXES = {"ema": "ema_generator.module.", "generator": "generator.", "discriminator": "discriminator."}
#: The first bytes of torch.save's legacy (non-zip) format: a protocol-2 pickle of torch's magic number.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

Source = Union[str, "os.PathLike[str]", Mapping[str, Any]]


@dataclass
class PretrainedWeights:
    """Weights read from an ``init_from`` source.

    Attributes:
        source: The file path (or ``"<mapping>"`` for an in-memory state dict), for messages and ``summary.json``.
        kind: ``"regan_checkpoint"`` or ``"state_dict"``.
        parts: ``{part: {tensor name: tensor}}`` for the parts the source holds (see :data:`PARTS`).
        g_steps: G steps of the run that wrote a regan-train checkpoint (``None`` for a state-dict file).
        config: That run's config (``None`` for a state-dict file).
    """

    source: str
    kind: str
    parts: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    g_steps: Optional[int] = None
    config: Optional[dict[str, Any]] = None

    @property
    def where(self) -> str:
        return f"init_from={self.source!r}"


def _refusal(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to load it unsafely."""
    text = str(exc)
    if "Weights only load failed" in text:
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        named = [p for p in paragraphs if "weights_only" not in p and "torch.load" not in p]
        reason = named[0].splitlines()[0].replace("WeightsUnpickler error:", "").strip().rstrip(".") if named else ""
        if "global" in reason.lower():
            return f"it holds objects other than tensors and plain containers ({reason}), which are never loaded"
        return f"not a torch weights file ({reason or 'unreadable pickle'})"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"not a torch weights file ({type(exc).__name__}{': ' + first if first else ''})"


def read_pretrained(path: Union[str, "os.PathLike[str]"]) -> PretrainedWeights:
    """Read a regan-train checkpoint or a plain state-dict file safely (``weights_only=True``) and check it.

    Raises:
        PretrainedWeightsError: a missing, unsafe, unreadable or damaged file, or one with no G/D weights.
    """
    path = Path(path)
    where = f"init_from={str(path)!r}"
    hint = "pass a regan-train checkpoint (e.g. <run>/checkpoints/best.ckpt) or a torch.save'd state_dict file"
    if not path.is_file():
        raise PretrainedWeightsError(f"{where} does not exist; {hint}.")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_HEAD))
        if head != _LEGACY_TORCH_HEAD:
            what = ("a raw pickle, not a torch file; it was not unpickled (unsafe: a pickle can run code)"
                    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 else "not a torch file")
            raise PretrainedWeightsError(f"{where} is refused: {what}; {hint}.")
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors of a foreign file; unsafe objects refused by torch
        raise PretrainedWeightsError(f"{where} is refused: {_refusal(exc)}; {hint}.") from None
    return parse_pretrained(obj, str(path))


def parse_pretrained(obj: Any, source: str = "<mapping>") -> PretrainedWeights:
    """Sort a loaded checkpoint or state dict into :class:`PretrainedWeights` (layouts: the module docstring).

    Raises:
        PretrainedWeightsError: no G/D weights found, a value that is not a tensor, or a non-finite weight.
    """
    import torch

    where = f"init_from={source!r}"
    if not isinstance(obj, Mapping):
        raise PretrainedWeightsError(f"{where} holds a {type(obj).__name__}, not a checkpoint or a state_dict mapping.")
    regan, state = obj.get("regan"), obj.get("state_dict")
    if isinstance(regan, Mapping) and isinstance(state, Mapping):
        weights = PretrainedWeights(source, "regan_checkpoint", _split_flat(state), g_steps=_int_or_none(regan.get("g_steps")),
                                    config=dict(regan["config"]) if isinstance(regan.get("config"), Mapping) else None)
    elif any(isinstance(obj.get(part), Mapping) for part in PARTS):
        weights = PretrainedWeights(source, "state_dict", {p: dict(obj[p]) for p in PARTS if isinstance(obj.get(p), Mapping)})
    else:
        weights = PretrainedWeights(source, "state_dict", _split_flat(obj))
    if not weights.parts.get("generator") and not weights.parts.get("discriminator"):
        keys = ", ".join(str(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
        raise PretrainedWeightsError(
            f"{where} holds no generator or discriminator weights (top-level keys: {keys or 'none'}); expected a "
            "regan-train checkpoint, {'generator': G.state_dict(), 'discriminator': D.state_dict()} or a GANModule "
            "state_dict (keys generator.*, discriminator.*)."
        )
    for part, tensors in weights.parts.items():
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise PretrainedWeightsError(f"{where}: {part} entry {name!r} is a {type(value).__name__}, not a tensor.")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise PretrainedWeightsError(
                    f"{where}: {part} tensor {name!r} holds NaN/inf values; the run diverged before it was saved or the "
                    "file is damaged (use another checkpoint, e.g. checkpoints/best.ckpt)."
                )
    return weights


def _split_flat(state: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
    """``{"generator.x": t, "ema_generator.module.x": t, ...}`` -> ``{"generator": {"x": t}, "ema": {"x": t}}``."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        for part, prefix in PREFIXES.items():  # "ema_generator.module." before "generator.": no overlap either way
            if isinstance(key, str) and key.startswith(prefix):
                parts.setdefault(part, {})[key[len(prefix):]] = value
                break
    return parts


def _int_or_none(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_parts(parts: Optional[Sequence[str]]) -> Optional[list[str]]:
    """Validate a choice of parts (``None``: every part the source and the module both have).

    Raises:
        ValueError: unknown, repeated or no parts.
    """
    if parts is None:
        return None
    if isinstance(parts, str) or not isinstance(parts, Sequence):
        raise ValueError(f"init_from_parts must be a list of {', '.join(PARTS)} (or null for all), got {parts!r}.")
    chosen = [str(p) for p in parts]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"init_from_parts must list distinct parts among {', '.join(PARTS)} (or be null for all), got {list(parts)}."
        )
    return chosen


def _targets(module: Any) -> dict[str, Optional[nn.Module]]:
    ema = getattr(module, "ema_generator", None)
    return {"generator": module.generator, "discriminator": module.discriminator,
            "ema": ema.module if ema is not None else None}


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def mismatch(weights: PretrainedWeights, module: Any, parts: Sequence[str]) -> Optional[str]:
    """The first tensor of ``parts`` whose name or shape differs between ``weights`` and ``module``, as one line
    (``None`` when all match)."""
    for part in parts:
        target = _targets(module)[part]
        assert target is not None
        have, want = weights.parts[part], target.state_dict()
        for name, tensor in want.items():
            if name not in have:
                return f"{part} tensor {name!r} {_shape(tensor)} of this run is missing from {weights.where}"
            if tuple(have[name].shape) != tuple(tensor.shape):
                return (f"{part} tensor {name!r} has shape {_shape(have[name])} in {weights.where} and "
                        f"{_shape(tensor)} in this run")
        extra = [name for name in have if name not in want]
        if extra:
            return f"{part} tensor {extra[0]!r} of {weights.where} has no counterpart in this run's {part}"
    return None


def resolve_parts(weights: PretrainedWeights, module: Any, parts: Optional[Sequence[str]]) -> list[str]:
    """The parts to load: ``parts`` checked against what the source and the module have, or by default every part
    both have (G, D, and the EMA copy when the module keeps one).

    Raises:
        PretrainedWeightsError: a chosen part the source or the module lacks.
    """
    chosen = check_parts(parts)
    targets = _targets(module)
    if chosen is None:
        chosen = [p for p in PARTS if p in weights.parts and targets[p] is not None]
    for part in chosen:
        if part not in weights.parts:
            found = ", ".join(weights.parts) or "none"
            raise PretrainedWeightsError(
                f"{weights.where} has no {part} weights (it has: {found}); choose init_from_parts among those."
            )
        if targets[part] is None:
            raise PretrainedWeightsError(
                f"init_from_parts includes ema but this run keeps no EMA of G (module.ema_decay=null); set "
                "module.ema_decay or leave ema out."
            )
    return chosen


def load_pretrained(module: Any, source: Union[Source, PretrainedWeights], parts: Optional[Sequence[str]] = None,
                    hint: str = "") -> dict[str, Any]:
    """Load trained weights into a :class:`~lightning_regan.GANModule` before ``fit`` (see the module docstring).

    Everything is checked before any tensor is copied. The EMA copy, when loaded, continues averaging from the loaded
    weights; when it is not loaded it starts from G at the first G step, as in a fresh run.

    Args:
        module: The GANModule (``generator``, ``discriminator``, ``ema_generator``).
        source: A file path, a loaded mapping, or :class:`PretrainedWeights`.
        parts: Which of :data:`PARTS` to load; ``None``: every part both have.
        hint: Appended to a shape-mismatch message (e.g. which settings differ from the pretraining run).

    Returns:
        What was loaded, as recorded in ``summary.json`` (``init_from``): ``path``, ``kind``, ``parts``, ``g_steps``.

    Raises:
        PretrainedWeightsError: the source is unusable, lacks a chosen part, or its networks do not match.
    """
    if isinstance(source, PretrainedWeights):
        weights = source
    elif isinstance(source, Mapping):
        weights = parse_pretrained(source)
    else:
        weights = read_pretrained(source)
    try:
        chosen = resolve_parts(weights, module, parts)
    except ValueError as exc:
        if isinstance(exc, PretrainedWeightsError):
            raise
        raise PretrainedWeightsError(str(exc)) from None
    problem = mismatch(weights, module, chosen)
    if problem is not None:
        raise PretrainedWeightsError(
            f"{problem}: the networks must match the pretraining run's{hint or ' (same model settings and data shape)'}; "
            "nothing was loaded."
        )
    import torch

    targets = _targets(module)
    with torch.no_grad():
        for part in chosen:
            targets[part].load_state_dict(weights.parts[part])  # type: ignore[union-attr]
    ema = getattr(module, "ema_generator", None)
    if "ema" in chosen and ema is not None:
        ema.n_averaged.fill_(1)  # started: the next update averages into the loaded weights instead of copying G
    record = {"path": str(Path(weights.source).resolve()) if weights.source != "<mapping>" else weights.source,
              "kind": weights.kind, "parts": chosen, "g_steps": weights.g_steps}
    module.initialized_from = record
    return record


__all__ = ["PARTS", "PretrainedWeights", "check_parts", "load_pretrained", "mismatch", "parse_pretrained",
           "read_pretrained", "resolve_parts"]
