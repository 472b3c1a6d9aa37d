"""Pure stop rules: scripted metric sequences through every stop and non-stop, resume, bad arguments."""

from __future__ import annotations

import json
import math

import pytest

from lightning_regan.stopping import (
    CODE_REASONS,
    REASON_CODES,
    Divergence,
    LossPlateau,
    Plateau,
    StopReason,
    StopRule,
    normalize_reason,
)

G, D = "train/g_loss", "train/d_loss"


def first_stop(rule, sequence):
    """Feed ``(g_step, metrics)`` pairs to a rule's new state (or to a given state); return ``(g_step, message)`` of
    the first stop or ``None``."""
    state = rule.new_state() if isinstance(rule, StopRule) else rule
    for g_step, metrics in sequence:
        stop, message = state.update(g_step, metrics)
        if stop:
            return g_step, message
    return None


def losses(n, g=lambda s: 0.8, d=lambda s: 1.3, start=1):
    return [(s, {G: g(s), D: d(s)}) for s in range(start, n + 1)]


def oscillating(level, amplitude):
    """A loss that jumps by +-amplitude (relative) every step, the way GAN losses do, without a trend."""
    return lambda s: level * (1 + amplitude * (1 if s % 2 else -1) * (1 + (s % 7) / 7))


def fids(values, every=100):
    return [((i + 1) * every, {"val/fid": v}) for i, v in enumerate(values)]


# ---------------------------------------------------------------------------------------------- StopReason
def test_stop_reason_values_and_codes():
    assert [r.value for r in StopReason] == ["max_steps", "loss_plateau", "plateau", "collapsed", "divergence"]
    assert StopReason("plateau") is StopReason.PLATEAU and StopReason.DIVERGENCE == "divergence"
    # divergence outranks the plateaus when ranks or rules disagree; codes round-trip
    codes = [REASON_CODES[r] for r in (StopReason.DIVERGENCE, StopReason.COLLAPSED, StopReason.PLATEAU,
                                       StopReason.LOSS_PLATEAU)]
    assert codes[0] > codes[1] > codes[2] > codes[3] > 0
    assert all(CODE_REASONS[code] is reason for reason, code in REASON_CODES.items())
    # The codes are reduced across DDP ranks (ranks of different versions must agree): they never change.
    assert {r and r.value: code for r, code in REASON_CODES.items()} == {None: 0, "loss_plateau": 1, "plateau": 2,
                                                                         "collapsed": 3, "divergence": 4}


def test_the_old_plateau_reason_reads_as_plateau():
    # Code written before the rename, and summaries of older runs, say FID_PLATEAU / "fid_plateau".
    assert StopReason.FID_PLATEAU is StopReason.PLATEAU and StopReason("fid_plateau") is StopReason.PLATEAU
    assert normalize_reason("fid_plateau") == "plateau" == normalize_reason(StopReason.PLATEAU)
    assert normalize_reason("divergence") == "divergence" and normalize_reason(None) is None
    with pytest.raises(ValueError):
        StopReason("fid_collapse")


# ---------------------------------------------------------------------------------------------- LossPlateau
def plateau(**kw):
    args = dict(window=10, min_delta=0.05, patience=3, warmup_g_steps=0, check_every_n_g_steps=10)
    args.update(kw)
    return LossPlateau(**args)


def test_loss_plateau_stops_on_oscillating_but_flat_losses_at_the_exact_check():
    # +-20 % step-to-step oscillation: the raw values never look flat, the EMA does.
    rule = plateau()
    hit = first_stop(rule, losses(500, g=oscillating(0.8, 0.2), d=oscillating(1.3, 0.2)))
    # first check at G step 10 sets the references; checks 20, 30, 40 are flat -> stop at the third
    assert hit is not None and hit[0] == 40, hit
    assert "Loss plateau" in hit[1] and "3 checks" in hit[1]
    assert rule.reason is StopReason.LOSS_PLATEAU


def test_loss_plateau_does_not_stop_on_steady_slow_progress():
    # 2 % per check is below min_delta = 5 %, but it adds up against the reference (6 % after 3 checks),
    # so the loss counts as moving before patience (3) runs out; comparing with the previous check would stop.
    slow = losses(600, g=lambda s: 0.8 * 0.998 ** s, d=lambda s: 1.3)
    assert first_stop(plateau(), slow) is None
    # slower than min_delta / patience per check (1 %) is a plateau by definition
    assert first_stop(plateau(), losses(600, g=lambda s: 0.8 * 0.999 ** s, d=lambda s: 1.3))[0] == 40


def test_loss_plateau_needs_every_monitored_loss_flat():
    rule = plateau()
    moving_g = lambda s: 0.8 + 0.01 * s  # noqa: E731  (G's loss keeps rising)
    assert first_stop(rule, losses(300, g=moving_g)) is None
    single = plateau(monitors=[D])  # only D monitored: its flat loss stops
    assert first_stop(single, losses(300, g=moving_g))[0] == 40


def test_loss_plateau_warmup_and_window():
    rule = plateau(warmup_g_steps=200)
    assert first_stop(rule, losses(1000))[0] == 230  # checks at 200 (reference), 210, 220, 230
    rule = plateau(window=50)  # the EMA must have seen a full window before any check
    assert first_stop(rule, losses(1000))[0] == 80


def test_loss_plateau_ignores_missing_and_non_finite_values():
    rule = plateau().new_state()
    seq = [(s, {G: (math.nan if s % 3 == 0 else 0.8), D: (math.inf if s == 25 else 1.3)}) for s in range(1, 500)]
    hit = first_stop(rule, seq)
    assert hit is not None and math.isfinite(rule.ema[G]) and math.isfinite(rule.ema[D])
    assert first_stop(plateau(), [(s, {}) for s in range(1, 500)]) is None


def test_loss_plateau_scale_floor_for_losses_near_zero():
    # A Wasserstein-like loss wandering around 0 by +-0.05: relative to |ref| ~ 0 that is huge movement,
    # relative to scale_floor = 1 it is below min_delta.
    wander = lambda s: 0.04 * math.sin(s / 30)  # noqa: E731
    assert first_stop(plateau(scale_floor=1e-3), losses(1000, g=wander, d=wander)) is None
    assert first_stop(plateau(scale_floor=1.0), losses(1000, g=wander, d=wander)) is not None


def test_loss_plateau_resume_mid_plateau_gives_the_same_decision():
    seq = losses(500, g=oscillating(0.8, 0.1), d=lambda s: 1.3 + 0.5 * math.exp(-s / 30))
    expected = first_stop(plateau(), seq)
    assert expected is not None
    rule = plateau().new_state()
    cut = expected[0] - 15  # one or more flat checks already counted
    first_stop(rule, [item for item in seq if item[0] <= cut])
    assert rule.wait_count >= 1
    saved = json.loads(json.dumps(rule.state_dict()))  # plain, JSON-able
    resumed = plateau().new_state()
    resumed.load_state_dict(saved)
    assert first_stop(resumed, [item for item in seq if item[0] > cut]) == expected


def test_loss_plateau_changed_config_wins_over_checkpoint():
    rule = plateau(patience=3).new_state()
    first_stop(rule, losses(35))
    state = rule.state_dict()
    resumed = plateau(patience=6).new_state()
    with pytest.warns(UserWarning, match="patience: 3 -> 6"):
        resumed.load_state_dict(state)
    assert resumed.rule.patience == 6 and resumed.wait_count == rule.wait_count
    assert first_stop(resumed, losses(1000, start=36))[0] == 70  # 3 flat checks more than with patience 3


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window": 0}, "window"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"min_delta": math.nan}, "min_delta"),
        ({"patience": 0}, "patience"),
        ({"patience": 2.5}, "patience"),
        ({"warmup_g_steps": -1}, "warmup_g_steps"),
        ({"check_every_n_g_steps": 0}, "check_every_n_g_steps"),
        ({"scale_floor": 0}, "scale_floor"),
        ({"monitors": []}, "monitors"),
    ],
)
def test_loss_plateau_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"LossPlateau: {name}"):
        LossPlateau(**kwargs)


def test_loss_plateau_until_logged_switches_off_for_the_rest_of_the_run():
    seq = losses(500, g=oscillating(0.8, 0.2), d=oscillating(1.3, 0.2))
    assert first_stop(plateau(until_logged="val/mmd"), seq)[0] == 40
    # val/mmd logged at G step 25 (before the third flat check): the rule is off from there on, also when the metric
    # is missing again later (a resumed run's callback_metrics), and its state says so across a checkpoint.
    logged = [(g, {**m, "val/mmd": 0.1} if g == 25 else m) for g, m in seq]
    state = plateau(until_logged="val/mmd").new_state()
    assert first_stop(state, logged[:30]) is None and state.off
    resumed = plateau(until_logged="val/mmd").new_state()
    resumed.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert first_stop(resumed, logged[30:]) is None
    assert LossPlateau(until_logged="val/mmd").keys == ("train/g_loss", "train/d_loss", "val/mmd")
    assert LossPlateau(until_logged="val/mmd").required_keys == ("train/g_loss", "train/d_loss")


def test_loss_plateau_accepts_a_single_monitor_name():
    assert LossPlateau(monitors="train/g_loss").monitors == ("train/g_loss",)


# ---------------------------------------------------------------------------------------------- Plateau
def test_plateau_noisy_but_improving_never_stops():
    # -4 % per evaluation on average, +-6 % noise that alternates, an extra +4 % bump every 5th evaluation
    noisy = [100 * 0.96**i * (1 + 0.06 * (-1) ** i + 0.04 * (i % 5 == 0)) for i in range(60)]
    assert sum(b > a for a, b in zip(noisy, noisy[1:])) >= 25  # really noisy: goes up about every other time
    for window in (1, 3, 5):
        assert first_stop(Plateau(patience=3, window=window), fids(noisy)) is None


def test_plateau_spike_then_recovery_does_not_stop_before_patience():
    # StyleGAN2-ADA #68: 48.7 -> 84.0 -> 56.2, then recovery below the best.
    series = [120.0, 80.0, 60.0, 48.7, 84.0, 56.2, 52.0, 49.5, 46.0, 44.0, 43.0, 41.0]
    for window in (1, 3):
        rule = Plateau(patience=5, window=window).new_state()
        assert first_stop(rule, fids(series)) is None
        assert rule.wait_count == 0 and rule.best < 48.7
    # the median of 3 ignores the spike: it never becomes the smoothed value
    smoothed = Plateau(window=3).new_state()
    seen = []
    for g, m in fids(series):
        smoothed.update(g, m)
        seen.append(smoothed.smoothed)
    assert 84.0 not in seen and max(seen[4:]) <= 60.0
    # with too little patience the raw rule does stop during the recovery (the test can tell)
    hit = first_stop(Plateau(patience=3, window=1), fids(series))
    assert hit is not None and hit[0] == 700


def test_plateau_stops_at_the_patience_th_evaluation_without_improvement():
    series = [90.0, 70.0, 55.0, 50.0, 50.2, 49.9, 51.0, 50.5, 49.8, 50.1]
    rule = Plateau(patience=4, window=1, min_delta=0.01).new_state()
    hit = first_stop(rule, fids(series))
    # best 50.0 at G step 400; 49.9 and 49.8 improve by < 1 %; 4th non-improving evaluation is at G step 800
    assert hit is not None and hit[0] == 800
    assert "Plateau" in hit[1] and "50 at G step 400" in hit[1]
    assert rule.best == 50.0 and rule.best_step == 400
    # without min_delta 49.9 (G step 600) and 49.8 (G step 900) count as improvements
    assert first_stop(Plateau(patience=4, window=1, min_delta=0.0), fids(series)) is None


def test_plateau_only_counts_evaluations_and_non_finite_is_no_improvement():
    rule = Plateau(patience=2, window=1).new_state()
    assert rule.update(100, {"train/g_loss": 1.0}) == (False, "") and rule.evaluations == 0
    rule.update(200, {"val/fid": 30.0})
    assert rule.update(300, {"val/fid": math.nan})[0] is False
    stop, message = rule.update(400, {"val/fid": math.inf})
    assert stop and rule.wait_count == 2 and rule.best == 30.0 and rule.evaluations == 3


def test_plateau_warmup_does_not_count():
    series = [50.0, 60.0, 60.0, 60.0, 60.0, 60.0]
    assert first_stop(Plateau(patience=2, window=1), fids(series))[0] == 300
    assert first_stop(Plateau(patience=2, window=1, warmup_g_steps=450), fids(series))[0] == 600


def test_plateau_custom_monitor():
    rule = Plateau(patience=1, window=1, monitor="val/kid").new_state()
    rule.update(1, {"val/kid": 0.1})
    assert rule.update(2, {"val/fid": 0.01}) == (False, "")
    assert rule.update(3, {"val/kid": 0.2})[0]


def test_plateau_resume_mid_plateau_gives_the_same_decision():
    series = [100.0, 80.0, 65.0, 60.0, 63.0, 59.9, 61.0, 62.0, 60.5, 64.0, 60.2, 61.0]
    expected = first_stop(Plateau(patience=4), fids(series))
    assert expected is not None
    rule = Plateau(patience=4).new_state()
    first_stop(rule, fids(series)[:8])
    assert rule.wait_count >= 1
    resumed = Plateau(patience=4).new_state()
    resumed.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert first_stop(resumed, fids(series)[8:]) == expected
    # a state dict without newer keys still loads
    old = Plateau().new_state()
    old.load_state_dict({"best": 5.0, "wait_count": 1})
    assert old.best == 5.0 and old.recent == [] and old.evaluations == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"patience": 0}, "patience"), ({"min_delta": -1}, "min_delta"), ({"min_delta": 1.0}, "min_delta"),
     ({"window": 0}, "window"), ({"warmup_g_steps": -5}, "warmup_g_steps"), ({"monitor": ""}, "monitor")],
)
def test_plateau_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Plateau: {name}"):
        Plateau(**kwargs)


# ---------------------------------------------------------------------------------------------- Divergence
def div_seq(n, d_adv=lambda s: 1.2, g=lambda s: 0.8, d=lambda s: 1.3):
    return [(s, {"train/d_adv": d_adv(s), G: g(s), D: d(s)}) for s in range(1, n + 1)]


@pytest.mark.parametrize("key", ["train/d_loss", "train/g_loss", "train/d_adv"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_divergence_non_finite_stops_immediately_even_in_warmup(key, bad):
    rule = Divergence(warmup_g_steps=1000)
    seq = div_seq(50)
    seq[29][1][key] = bad
    hit = first_stop(rule, seq)
    assert hit is not None and hit[0] == 30 and key in hit[1] and "not finite" in hit[1]
    assert rule.reason is StopReason.DIVERGENCE
    assert first_stop(Divergence(check_finite=False), seq) is None


def test_divergence_collapse_after_patience_consecutive_checks():
    rule = Divergence(d_loss_floor=1e-3, patience=20)
    hit = first_stop(rule, div_seq(200, d_adv=lambda s: 1e-5 if s > 50 else 1.0))
    assert hit is not None and hit[0] == 70 and "G steps 51..70" in hit[1] and "D has won" in hit[1]
    # an interruption resets the count
    blips = div_seq(200, d_adv=lambda s: 1e-5 if s > 50 and s % 15 else 1.0)
    assert first_stop(Divergence(d_loss_floor=1e-3, patience=20), blips) is None


def test_divergence_ceilings_use_magnitudes():
    up = first_stop(Divergence(g_loss_ceiling=100.0, patience=3), div_seq(50, g=lambda s: 500.0 if s >= 10 else 1.0))
    assert up is not None and up[0] == 12
    sinking = div_seq(50, d_adv=lambda s: -500.0 if s >= 20 else -1)
    down = first_stop(Divergence(d_loss_ceiling=100.0, patience=3), sinking)
    assert down is not None and down[0] == 22
    # Wasserstein-like values: negative and away from 0 are no collapse
    wass = div_seq(300, d_adv=lambda s: -2.0 - math.sin(s), g=lambda s: -30.0)
    assert first_stop(Divergence(d_loss_floor=1e-4, d_loss_ceiling=1e3, g_loss_ceiling=1e3, patience=5), wass) is None


def test_divergence_warmup_delays_thresholds_only():
    seq = div_seq(100, d_adv=lambda s: 0.0)
    assert first_stop(Divergence(d_loss_floor=1e-3, patience=5, warmup_g_steps=40), seq)[0] == 44


def test_divergence_resume_mid_violation():
    seq = div_seq(200, d_adv=lambda s: 0.0 if s > 30 else 1.0)
    expected = first_stop(Divergence(d_loss_floor=1e-3, patience=50), seq)
    rule = Divergence(d_loss_floor=1e-3, patience=50).new_state()
    first_stop(rule, seq[:60])
    resumed = Divergence(d_loss_floor=1e-3, patience=50).new_state()
    resumed.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert first_stop(resumed, seq[60:]) == expected == (80, expected[1])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"d_loss_floor": 0}, "d_loss_floor"), ({"d_loss_ceiling": -1.0}, "d_loss_ceiling"),
     ({"g_loss_ceiling": math.inf}, "g_loss_ceiling"), ({"patience": 0}, "patience"),
     ({"check_finite": "yes"}, "check_finite"), ({"warmup_g_steps": -1}, "warmup_g_steps"),
     ({"d_loss_floor": 10.0, "d_loss_ceiling": 1.0}, "d_loss_floor"), ({"monitors": ()}, "monitors")],
)
def test_divergence_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Divergence: {name}"):
        Divergence(**kwargs)
