"""Score calibration (temperature or Platt scaling) and threshold choice on labelled scores.

The fitting half of an operating point (see :mod:`deepfake_toolkit.operating_points`): a
:class:`ScoreCalibration` maps fake scores onto calibrated probabilities, and
:func:`choose_threshold` picks a threshold by balanced accuracy or a false-positive-rate target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from .metrics import two_classes

__all__ = ["CALIBRATION_METHODS", "CalibrationMethod", "ScoreCalibration", "choose_threshold"]

CalibrationMethod = Literal["temperature", "platt"]
CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt")
_SCORE_EPS = 1e-7


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=float), _SCORE_EPS, 1 - _SCORE_EPS)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


@dataclass(frozen=True)
class ScoreCalibration:
    """A monotone map of fake scores onto calibrated probabilities: sigmoid(slope * logit(s) +
    intercept).

    Temperature scaling fixes ``intercept`` at 0 (``slope`` = 1 / temperature); Platt scaling
    fits both. Neither changes the order of scores (so not the AUC) while the slope is positive.

    Attributes:
        method: "temperature" or "platt".
        slope: Multiplier of the score's logit.
        intercept: Added to the scaled logit.
    """

    method: CalibrationMethod
    slope: float
    intercept: float = 0.0

    @property
    def temperature(self) -> float:
        """1 / slope: above 1 the model was over-confident, below 1 under-confident."""
        return 1.0 / self.slope if self.slope else math.inf

    def __call__(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated fake scores (NaN stays NaN)."""
        return _sigmoid(self.slope * _logit(np.asarray(scores, dtype=float)) + self.intercept)

    @classmethod
    def fit(cls, y_true: Sequence[int], scores: Sequence[float],
            method: CalibrationMethod = "temperature") -> ScoreCalibration:
        """Fit by minimising the log-loss of the calibrated scores.

        Args:
            y_true: 1 for fake, 0 for real.
            scores: fake scores of the same images (no missing values).
            method: "temperature" (one parameter, the safer choice on small sets) or "platt"
                (slope and intercept; also corrects a bias towards one class).
        """
        from scipy.optimize import minimize

        if method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, not {method!r}")
        y_true = np.asarray(y_true, dtype=float)
        if not two_classes(y_true.astype(int)):
            raise ValueError("calibration needs real and fake images")
        logits = _logit(np.asarray(scores, dtype=float))

        def log_loss(params: np.ndarray) -> float:
            slope = math.exp(params[0]) if method == "temperature" else params[0]
            intercept = params[1] if method == "platt" else 0.0
            z = slope * logits + intercept
            # log(1 + exp(z)) - y z, written to stay finite for large |z|.
            return float(np.mean(np.logaddexp(0.0, z) - y_true * z))

        start = np.zeros(1) if method == "temperature" else np.array([1.0, 0.0])
        best = minimize(log_loss, start, method="BFGS")
        if method == "temperature":
            return cls(method, float(math.exp(best.x[0])), 0.0)
        return cls(method, float(best.x[0]), float(best.x[1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreCalibration:
        method = data.get("method")
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, float(data["slope"]), float(data.get("intercept", 0.0)))


def choose_threshold(y_true: Sequence[int], scores: Sequence[float],
                     target_fpr: float | None = None) -> float:
    """Pick a threshold on labelled scores.

    Args:
        y_true: 1 for fake, 0 for real.
        scores: fake scores.
        target_fpr: None to maximise balanced accuracy (Youden's J); else the threshold with the
            highest true-positive rate whose false-positive rate is at most this.

    Returns:
        A threshold half-way between the chosen operating point's lowest fake-labelled score and
        the next lower score, so the labels of these images are those of the operating point
        while the margin to the next image is split evenly.

    Raises:
        ValueError: A class is missing.
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=int)
    if not two_classes(y_true):
        raise ValueError("choosing a threshold needs real and fake images")
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
    if target_fpr is None:
        index = int(np.argmax(tpr - fpr))
    else:
        index = int(np.flatnonzero(fpr <= target_fpr + 1e-12)[-1])
    if index == 0:
        return float(min(1.0, np.nextafter(thresholds[1], np.inf)))
    lower = thresholds[index + 1] if index + 1 < len(thresholds) else 0.0
    return float(min(1.0, (thresholds[index] + lower) / 2))
