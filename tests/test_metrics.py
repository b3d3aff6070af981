"""Metrics, thresholds and calibration against scikit-learn and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from deepfake_toolkit.calibration import ScoreCalibration, choose_threshold
from deepfake_toolkit.metrics import (
    _rank_auc,
    binary_metrics,
    bootstrap_intervals,
    equal_error_rate,
    expected_calibration_error,
    reliability_bins,
    tpr_at_fpr,
)
from deepfake_toolkit.operating_points import (
    OperatingPoint,
    load_operating_points,
    save_operating_points,
)

# Reals score 0.1, 0.2, 0.3, 0.6 and fakes 0.4, 0.7, 0.8, 0.9: at threshold 0.6 one real in four
# is called fake (FPR 1/4) and one fake in four is missed (FNR 1/4), so the EER is exactly 0.25.
HAND_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
HAND_SCORES = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


@pytest.fixture()
def noisy_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 400)
    scores = np.clip(rng.normal(0.4 + 0.25 * y_true, 0.2), 0, 1).round(2)  # rounding makes ties
    return y_true, scores


def test_binary_metrics_match_scikit_learn(noisy_scores):
    y_true, scores = noisy_scores
    result = binary_metrics(y_true, scores, threshold=0.5, n_bootstrap=0)
    predicted = (scores >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, predicted).ravel()
    assert result["auc"] == pytest.approx(skm.roc_auc_score(y_true, scores))
    assert result["average_precision"] == pytest.approx(skm.average_precision_score(y_true, scores))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, predicted))
    assert result["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y_true, predicted))
    assert result["precision"] == pytest.approx(skm.precision_score(y_true, predicted))
    assert result["recall"] == pytest.approx(skm.recall_score(y_true, predicted))
    assert result["f1"] == pytest.approx(skm.f1_score(y_true, predicted))
    assert result["brier"] == pytest.approx(skm.brier_score_loss(y_true, scores))
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)
    assert result["real_accuracy"] == pytest.approx(tn / (tn + fp))
    assert result["fake_accuracy"] == pytest.approx(tp / (tp + fn))
    assert result["n_real"] + result["n_fake"] == len(y_true)


def test_equal_error_rate_hand_computed():
    eer, threshold = equal_error_rate(HAND_Y, HAND_SCORES)
    assert eer == pytest.approx(0.25)
    assert threshold == pytest.approx(0.6)


def test_equal_error_rate_of_two_gaussians():
    # Unit-variance classes two standard deviations apart cross half-way: EER = Phi(-1).
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 1, 20000), rng.normal(2, 1, 20000)])
    y_true = np.repeat([0, 1], 20000)
    eer, threshold = equal_error_rate(y_true, scores)
    assert eer == pytest.approx(norm.cdf(-1), abs=0.006)
    assert threshold == pytest.approx(1.0, abs=0.05)


def test_tpr_at_fpr_hand_computed():
    assert tpr_at_fpr(HAND_Y, HAND_SCORES, 0.0) == pytest.approx(0.75)
    assert tpr_at_fpr(HAND_Y, HAND_SCORES, 0.2) == pytest.approx(0.75)
    assert tpr_at_fpr(HAND_Y, HAND_SCORES, 0.25) == pytest.approx(1.0)
    result = binary_metrics(HAND_Y, HAND_SCORES, n_bootstrap=0)
    assert result["tpr_at_fpr_1pct"] == pytest.approx(0.75)
    assert result["tpr_at_fpr_5pct"] == pytest.approx(0.75)


def test_tpr_at_fpr_on_a_large_set(noisy_scores):
    y_true, scores = noisy_scores
    fpr, tpr, _ = skm.roc_curve(y_true, scores)
    for target in (0.01, 0.05):
        expected = tpr[fpr <= target].max()
        assert tpr_at_fpr(y_true, scores, target) == pytest.approx(expected)


def test_expected_calibration_error_hand_computed():
    # Bins: (0.05 | real) gap 0.05; (0.15, 0.15 | real, fake) gap |0.5 - 0.15|; (0.95 | fake)
    # gap 0.05 -> (0.05 * 1 + 0.35 * 2 + 0.05 * 1) / 4 = 0.2.
    y_true = [0, 0, 1, 1]
    scores = [0.05, 0.15, 0.15, 0.95]
    assert expected_calibration_error(y_true, scores) == pytest.approx(0.2)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == pytest.approx(0.0)


def test_reliability_bins_match_scikit_learn(noisy_scores):
    y_true, scores = noisy_scores
    bins = reliability_bins(y_true, scores, n_bins=10)
    fraction, mean = calibration_curve(y_true, scores, n_bins=10, strategy="uniform")
    filled = bins[bins["count"] > 0]
    np.testing.assert_allclose(filled["fraction_fake"], fraction)
    np.testing.assert_allclose(filled["mean_score"], mean)
    assert bins["count"].sum() == len(y_true)


def test_rank_auc_equals_scikit_learn_with_ties(noisy_scores):
    y_true, scores = noisy_scores
    auc = _rank_auc(scores[y_true == 1][None, :], scores[y_true == 0][None, :])[0]
    assert auc == pytest.approx(skm.roc_auc_score(y_true, scores))


def test_bootstrap_intervals_contain_the_estimate_and_repeat_with_a_seed(noisy_scores):
    y_true, scores = noisy_scores
    point = binary_metrics(y_true, scores, 0.5, n_bootstrap=0)
    first = bootstrap_intervals(y_true, scores, 0.5, n_bootstrap=500, seed=7)
    again = bootstrap_intervals(y_true, scores, 0.5, n_bootstrap=500, seed=7)
    other = bootstrap_intervals(y_true, scores, 0.5, n_bootstrap=500, seed=8)
    assert first == again
    assert first != other
    for name in ("auc", "balanced_accuracy"):
        low, high = first[name]
        assert low < point[name] < high
        assert high - low < 0.2
    with_intervals = binary_metrics(y_true, scores, 0.5, n_bootstrap=500, seed=7)
    assert (with_intervals["auc_low"], with_intervals["auc_high"]) == first["auc"]


def test_one_class_gives_nan_for_two_class_metrics():
    result = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2], threshold=0.5)
    assert math.isnan(result["auc"]) and math.isnan(result["eer"])
    assert math.isnan(result["auc_low"]) and math.isnan(result["balanced_accuracy"])
    assert result["real_accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(result["fake_accuracy"])


def test_missing_scores_are_refused():
    with pytest.raises(ValueError, match="missing"):
        binary_metrics([0, 1], [0.2, float("nan")])


def test_choose_threshold_hand_computed():
    y_true = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]
    # Perfect separation: half-way between the lowest fake and the highest real.
    assert choose_threshold(y_true, scores) == pytest.approx(0.45)
    # With an overlap, FPR <= 0 must keep every real below the threshold.
    y_true = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.75, 0.4, 0.7, 0.8, 0.9]
    threshold = choose_threshold(y_true, scores, target_fpr=0.0)
    assert threshold == pytest.approx((0.8 + 0.75) / 2)
    assert choose_threshold(y_true, scores, target_fpr=0.25) == pytest.approx((0.4 + 0.3) / 2)


def test_threshold_at_target_fpr_transfers_to_a_new_set():
    rng = np.random.default_rng(3)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y_true = np.repeat([0, 1], n)
        return y_true, np.concatenate([rng.beta(2, 5, n), rng.beta(5, 2, n)])

    tune_y, tune_scores = draw(4000)
    test_y, test_scores = draw(4000)
    threshold = choose_threshold(tune_y, tune_scores, target_fpr=0.05)
    on_tune = binary_metrics(tune_y, tune_scores, threshold, n_bootstrap=0)
    on_test = binary_metrics(test_y, test_scores, threshold, n_bootstrap=0)
    assert on_tune["fp"] <= 0.05 * on_tune["n_real"]
    assert on_tune["fp"] + 1 > 0.05 * on_tune["n_real"]  # the most fakes the budget allows
    assert 1 - on_test["real_accuracy"] == pytest.approx(0.05, abs=0.015)


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True P(fake) uniform; the reported score is over-confident (logit x 3) and biased."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.98, n)
    y_true = (rng.uniform(size=n) < truth).astype(int)
    logit = np.log(truth / (1 - truth))
    return y_true, 1 / (1 + np.exp(-(3 * logit + 0.5)))


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_lowers_ece_on_held_out_scores(method):
    fit_y, fit_scores = _miscalibrated(4000, seed=0)
    test_y, test_scores = _miscalibrated(4000, seed=1)
    calibration = ScoreCalibration.fit(fit_y, fit_scores, method)
    before = expected_calibration_error(test_y, test_scores)
    after = expected_calibration_error(test_y, calibration(test_scores))
    assert before > 0.08
    assert after < before / 2
    assert calibration.slope == pytest.approx(1 / 3, abs=0.06)
    if method == "platt":
        assert calibration.intercept == pytest.approx(-0.5 / 3, abs=0.1)
    else:
        assert calibration.intercept == 0.0
    # A monotone map keeps the ranking, so the AUC is unchanged.
    assert skm.roc_auc_score(test_y, calibration(test_scores)) == pytest.approx(
        skm.roc_auc_score(test_y, test_scores))


def test_operating_points_round_trip_through_json(tmp_path):
    points = {
        "a": OperatingPoint("a", 0.42, "fpr", 0.05, ScoreCalibration("platt", 0.5, -0.1),
                            "val/", 10, 12),
        "b": OperatingPoint("b", 0.5),
    }
    path = save_operating_points(points, tmp_path / "points.json")
    loaded = load_operating_points(path)
    assert loaded == points
    np.testing.assert_allclose(loaded["a"].scores([0.2, 0.9]), points["a"].scores([0.2, 0.9]))
    assert "FPR <= 5.0%" in loaded["a"].describe()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an operating-points file"):
        load_operating_points(tmp_path / "bad.json")
