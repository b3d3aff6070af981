"""Detection metrics on arrays of scores, fake as the positive class.

ROC AUC, average precision, EER, TPR at a fixed FPR, verdict metrics at a threshold, the
expected calibration error with its reliability bins, and stratified bootstrap intervals. The
scikit-learn implementations are used where they exist; the rest is written to match them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd


def two_classes(y_true: np.ndarray) -> bool:
    """Whether a 0/1 label array holds both classes."""
    return bool(y_true.any() and not y_true.all())


def equal_error_rate(y_true: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """Equal error rate: where the false-positive rate equals the false-negative rate.

    The ROC curve is interpolated linearly between its operating points to find the crossing.

    Args:
        y_true: 1 for fake, 0 for real.
        scores: fake scores.

    Returns:
        (EER, threshold): the rate, and the score threshold of the first operating point at or
        past the crossing. NaN when a class is missing.
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=int)
    if not two_classes(y_true):
        return math.nan, math.nan
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
    gap = (1.0 - tpr) - fpr
    index = int(np.flatnonzero(gap <= 0)[0])
    if gap[index] == 0:
        return float(fpr[index]), float(thresholds[index])
    weight = gap[index - 1] / (gap[index - 1] - gap[index])
    eer = fpr[index - 1] + weight * (fpr[index] - fpr[index - 1])
    return float(eer), float(thresholds[index])


def tpr_at_fpr(y_true: Sequence[int], scores: Sequence[float], target_fpr: float) -> float:
    """Highest true-positive rate of any threshold whose false-positive rate is <= ``target_fpr``.

    No interpolation: the rate is one a real threshold achieves on these scores. With fewer than
    1/target_fpr real images the only such thresholds allow no false positive at all.
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=int)
    if not two_classes(y_true):
        return math.nan
    fpr, tpr, _ = roc_curve(y_true, scores, drop_intermediate=False)
    return float(tpr[fpr <= target_fpr + 1e-12].max())


def reliability_bins(y_true: Sequence[int], scores: Sequence[float],
                     n_bins: int = 10) -> pd.DataFrame:
    """Reliability data: fraction of fakes against the mean fake score, in equal-width bins.

    Bins are (0, 0.1], (0.1, 0.2], ... (a score of exactly 0 joins the first), the same as
    scikit-learn's ``calibration_curve(strategy="uniform")``.

    Returns:
        One row per bin: bin, lower, upper, count, mean_score, fraction_fake (NaN when empty).
    """
    y_true = np.asarray(y_true, dtype=float)
    scores = np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges[1:-1], scores)
    count = np.bincount(bin_of, minlength=n_bins)
    score_sum = np.bincount(bin_of, weights=scores, minlength=n_bins)
    fake_sum = np.bincount(bin_of, weights=y_true, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.where(count > 0, score_sum / count, np.nan)
        fraction_fake = np.where(count > 0, fake_sum / count, np.nan)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
                         "count": count, "mean_score": mean_score,
                         "fraction_fake": fraction_fake})


def expected_calibration_error(y_true: Sequence[int], scores: Sequence[float],
                               n_bins: int = 10) -> float:
    """Expected calibration error of fake scores read as P(fake).

    The count-weighted mean, over :func:`reliability_bins`, of |fraction of fakes - mean score|.
    """
    bins = reliability_bins(y_true, scores, n_bins)
    filled = bins[bins["count"] > 0]
    if filled.empty:
        return math.nan
    gaps = (filled["fraction_fake"] - filled["mean_score"]).abs()
    return float((gaps * filled["count"]).sum() / filled["count"].sum())


def _rank_auc(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUC per row from Mann-Whitney ranks (ties count half), for 2-D (resample, value) arrays."""
    from scipy.stats import rankdata

    n_positive, n_negative = positive.shape[1], negative.shape[1]
    ranks = rankdata(np.concatenate([positive, negative], axis=1), axis=1)
    rank_sum = ranks[:, :n_positive].sum(axis=1)
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def bootstrap_intervals(y_true: Sequence[int], scores: Sequence[float], threshold: float,
                        n_bootstrap: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for ROC AUC and balanced accuracy.

    Real and fake images are resampled separately (a stratified bootstrap), so every resample
    keeps the class counts and both metrics stay defined.

    Args:
        y_true: 1 for fake, 0 for real.
        scores: fake scores.
        threshold: Balanced accuracy counts fake_score >= threshold as fake.
        n_bootstrap: Resamples.
        seed: Seed of the resampling; the same seed gives the same intervals.
        confidence: Coverage of the interval.

    Returns:
        {"auc": (low, high), "balanced_accuracy": (low, high)}; NaNs when a class is missing or
        ``n_bootstrap`` is 0.
    """
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    nan_pair = (math.nan, math.nan)
    if not two_classes(y_true) or n_bootstrap < 1:
        return {"auc": nan_pair, "balanced_accuracy": nan_pair}
    rng = np.random.default_rng(seed)
    fake_scores, real_scores = scores[y_true == 1], scores[y_true == 0]
    aucs, balanced = [], []
    # Chunks keep memory bounded for large sets (chunk x n values at a time).
    chunk = max(1, min(n_bootstrap, 2_000_000 // len(scores)))
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        fakes = fake_scores[rng.integers(0, len(fake_scores), (size, len(fake_scores)))]
        reals = real_scores[rng.integers(0, len(real_scores), (size, len(real_scores)))]
        aucs.append(_rank_auc(fakes, reals))
        balanced.append(((fakes >= threshold).mean(axis=1) + (reals < threshold).mean(axis=1))
                        / 2)
    tail = (1 - confidence) / 2
    quantiles = [tail, 1 - tail]
    return {"auc": tuple(float(v) for v in np.quantile(np.concatenate(aucs), quantiles)),
            "balanced_accuracy": tuple(float(v) for v in
                                       np.quantile(np.concatenate(balanced), quantiles))}


def binary_metrics(y_true: Sequence[int], scores: Sequence[float], threshold: float = 0.5, *,
                   n_bootstrap: int = 1000, seed: int = 0, n_bins: int = 10) -> dict[str, float]:
    """Detection metrics with fake as the positive class.

    Args:
        y_true: 1 for fake, 0 for real.
        scores: fake scores in [0, 1] (no missing values).
        threshold: fake_score >= threshold counts as a fake verdict.
        n_bootstrap: Resamples for the 95% intervals of AUC and balanced accuracy (0: none).
        seed: Seed of the bootstrap.
        n_bins: Bins of the expected calibration error.

    Returns:
        n_real, n_fake, auc (+ auc_low, auc_high), average_precision, eer, eer_threshold,
        tpr_at_fpr_1pct, tpr_at_fpr_5pct, threshold, accuracy, balanced_accuracy
        (+ _low, _high), precision, recall, f1, real_accuracy, fake_accuracy, tn, fp, fn, tp,
        ece, brier. Metrics that need both classes are NaN when one is missing.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        brier_score_loss,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).any():
        raise ValueError("scores must not contain missing values; drop unscored images first")
    both = two_classes(y_true)
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, predicted, labels=[0, 1]).ravel())
    nan = math.nan
    eer, eer_threshold = equal_error_rate(y_true, scores)
    intervals = bootstrap_intervals(y_true, scores, threshold, n_bootstrap, seed)
    metrics = {
        "n_real": int((y_true == 0).sum()),
        "n_fake": int((y_true == 1).sum()),
        "auc": float(roc_auc_score(y_true, scores)) if both else nan,
        "auc_low": intervals["auc"][0],
        "auc_high": intervals["auc"][1],
        "average_precision": float(average_precision_score(y_true, scores)) if both else nan,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "tpr_at_fpr_1pct": tpr_at_fpr(y_true, scores, 0.01),
        "tpr_at_fpr_5pct": tpr_at_fpr(y_true, scores, 0.05),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y_true, predicted)) if len(y_true) else nan,
        "balanced_accuracy": float(balanced_accuracy_score(y_true, predicted)) if both else nan,
        "balanced_accuracy_low": intervals["balanced_accuracy"][0],
        "balanced_accuracy_high": intervals["balanced_accuracy"][1],
        "precision": float(precision_score(y_true, predicted, zero_division=np.nan))
        if len(y_true) else nan,
        "recall": float(recall_score(y_true, predicted, zero_division=np.nan))
        if len(y_true) else nan,
        "f1": float(f1_score(y_true, predicted, zero_division=np.nan)) if len(y_true) else nan,
        "real_accuracy": tn / (tn + fp) if tn + fp else nan,
        "fake_accuracy": tp / (tp + fn) if tp + fn else nan,
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
        "ece": expected_calibration_error(y_true, scores, n_bins) if len(y_true) else nan,
        "brier": float(brier_score_loss(y_true, scores)) if len(y_true) else nan,
    }
    return metrics
