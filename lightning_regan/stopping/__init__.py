"""Stop rules for GAN training, without Lightning: the reasons and the rule base (``base``), the curve fits
(``fits``) and the rules (``rules``).

A rule is configuration (never changed after construction) declaring the metric it reads (``monitor``), its
``mode`` and its ``cadence``; ``rule.new_state()`` is the per-run state machine fed ``update(g_step, metrics)``.
:class:`~lightning_regan.callbacks.EarlyTermination` runs a list of rules; a user's rule subclasses
:class:`StopRule` and :class:`RuleState`.

The metric rules have metric-neutral names (:class:`Trend`, :class:`Plateau`, :class:`NoisePlateau`,
:class:`LogLinearTrend`, :class:`PowerLaw`); their old names (``FIDPlateau``, ``FIDNoisePlateau``, ``FIDTrend``,
``FIDPowerLaw``) remain as deprecated aliases, and the stop reason ``"fid_plateau"`` of older runs reads as
``"plateau"`` (:func:`normalize_reason`).
"""

from lightning_regan.stopping.base import (
    CODE_REASONS,
    LEGACY_REASONS,
    REASON_CODES,
    STATUS_RANKS,
    RuleState,
    StopReason,
    StopRecord,
    StopRule,
    first_stop,
    normalize_reason,
    rule_name,
)
from lightning_regan.stopping.fits import fit_power_law, theil_sen_slope
from lightning_regan.stopping.rules import (
    Collapse,
    Divergence,
    FIDNoisePlateau,
    FIDPlateau,
    FIDPowerLaw,
    FIDTrend,
    LogLinearTrend,
    LossPlateau,
    NoisePlateau,
    Plateau,
    PowerLaw,
    Trend,
)

__all__ = ["CODE_REASONS", "LEGACY_REASONS", "REASON_CODES", "STATUS_RANKS", "Collapse", "Divergence",
           "FIDNoisePlateau", "FIDPlateau", "FIDPowerLaw", "FIDTrend", "LogLinearTrend", "LossPlateau",
           "NoisePlateau", "Plateau", "PowerLaw", "RuleState", "StopReason", "StopRecord", "StopRule", "Trend",
           "first_stop", "fit_power_law", "normalize_reason", "rule_name", "theil_sen_slope"]
