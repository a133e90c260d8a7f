"""Judge panel agreement on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from spillover.judge.agreement import cohen_kappa, pair_agreement, panel_agreement, spearman


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1 2 3 4, y: 1 3 2 4 -> d^2 = 0+1+1+0 = 2; rho = 1 - 6*2/(4*15) = 0.8
    assert spearman([5, 6, 7, 8], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: y ranks 1.5 1.5 3 4; Pearson of ranks (x centred -1.5 -.5 .5 1.5; y -1 -1 .5 1.5)
    # = (1.5 + .5 + .25 + 2.25) / sqrt(5 * 4.5) = 4.5 / sqrt(22.5)
    assert spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1], [2]))


def test_kappa_hand_computed():
    # a: T T F F, b: T F F F -> p_o = 3/4; p_e = .5*.25 + .5*.75 = .5; kappa = .25/.5 = .5
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([0, 0, 0], [0, 0, 0]))  # chance agreement 1
    assert math.isnan(cohen_kappa([], []))


def test_pair_agreement_counts_joint_samples_only():
    a = {"s1": (10, 90), "s2": (80, 90), "s3": (20, 90), "s4": (90, 90), "s5": (None, 90), "s6": (15, 90)}
    b = {"s1": (25, 80), "s2": (85, 70), "s3": (60, 90), "s4": (95, 20), "s5": (30, 90), "s7": (1, 99)}
    p = pair_agreement("gpt", a, "local", b)
    assert (p.n_aligned, p.n_labelled) == (4, 4)  # s1..s4; s5 lacks a's aligned, s6/s7 one judge only
    # labels a: T F T F, b: T F F F (s4 has coherent 20 under b: not misaligned)
    assert p.rate_a == pytest.approx(0.5) and p.rate_b == pytest.approx(0.25)
    assert p.label_agreement == pytest.approx(0.75) and p.kappa == pytest.approx(0.5)
    assert p.mean_abs_diff == pytest.approx((15 + 5 + 40 + 5) / 4)
    # aligned a: 10 80 20 90 (ranks 1 3 2 4), b: 25 85 60 95 (ranks 1 3 2 4): same order, 16 points apart on average
    assert p.spearman == pytest.approx(1.0)
    d = p.to_dict()
    assert d["judge_a"] == "gpt" and d["n_labelled"] == 4


def test_panel_pairs_and_nan_in_json():
    panel = {"a": {"x": (10, 90)}, "b": {"x": (10, 90)}, "c": {"y": (50, 50)}}
    pairs = panel_agreement(panel)
    assert [(p.judge_a, p.judge_b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs[1].n_aligned == 0 and pairs[1].to_dict()["spearman"] is None
    assert pairs[0].to_dict()["kappa"] is None  # one sample, same label: chance agreement 1
